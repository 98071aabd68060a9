"""``meshfed completion``: the generated script, run by a real bash (and zsh when installed),
completes subcommands, nested subcommands, options and the fixed choices of the CLI's parser."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from meshfed.cli import main


def script(capsys: pytest.CaptureFixture[str], shell: str) -> str:
    assert main(["completion", shell]) == 0
    return capsys.readouterr().out


def complete(shell: str, text: str, words: list[str]) -> list[str]:
    """What the script offers for the last of ``words`` (``""``: a fresh word)."""
    quoted = " ".join(f"'{w}'" for w in words)
    call = (
        f"COMP_WORDS=({quoted}); COMP_CWORD={len(words) - 1}; _meshfed; "
        'printf "%s\\n" "${COMPREPLY[@]}"'
    )
    argv = [shell, "-c", f"source /dev/stdin <<'EOS'\n{text}EOS\n{call}"]
    if shell == "zsh":
        argv = ["zsh", "-f", "-c", f"{text}\n{call}"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=True)
    return [line for line in done.stdout.splitlines() if line]


CASES = [
    (["meshfed", "reg"], ["registry"]),
    (["meshfed", "registry", ""], ["get", "list"]),
    (["meshfed", "registry", "list", "-o", ""], ["table", "json", "yaml"]),
    (["meshfed", "--log-level", "INFO", "proxy-config", "l"], ["listener"]),
    (["meshfed", "completion", ""], ["bash", "zsh"]),
    (["meshfed", "ca", "s"], ["serve", "status"]),
]


@pytest.mark.parametrize(("words", "expected"), CASES)
def test_bash_completes_commands_options_and_choices(capsys, words, expected):
    text = script(capsys, "bash")
    offered = complete("bash", text, words)
    assert set(expected) <= set(offered), offered
    assert all(o.startswith(words[-1]) for o in offered), offered


def test_options_of_a_subcommand_are_offered_after_it(capsys):
    offered = complete("bash", script(capsys, "bash"), ["meshfed", "registry", "list", "--"])
    assert {"--hub", "--output", "--log-level"} <= set(offered)
    assert "--duration" not in offered  # the demo's, not this command's


@pytest.mark.skipif(shutil.which("zsh") is None, reason="zsh is not installed on this machine")
def test_zsh_runs_the_same_completion(capsys):
    text = script(capsys, "zsh")
    offered = complete("zsh", text, ["meshfed", "registry", ""])
    assert {"get", "list"} <= set(offered) and "bootstrap" not in offered, offered
    # zsh's own compadd filters by the typed prefix; the script hands it the choices
    assert set(complete("zsh", text, ["meshfed", "registry", "list", "-o", "y"])) == {
        "table",
        "json",
        "yaml",
    }
