"""The short-lived issuing child and the agent's side of it, without a CA: the answer forms,
refusals against retryable failures, a crashed or hung child, a bad request."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from meshfed.nodeagent.issuer import ChildIssuer, IssueFailed, IssueRefused


def _child(answer: str, code: int = 0) -> list[str]:
    """A stand-in child that reads the request and prints ``answer`` (the agent's side only
    needs a process that speaks the pipe protocol)."""
    script = f"import sys; sys.stdin.read(); sys.stdout.write({answer!r}); sys.exit({code})"
    return [sys.executable, "-c", script]


async def test_an_ok_answer_is_returned_and_an_issue_is_parsed() -> None:
    issued = {
        "ok": True,
        "key_pem": "KEY",
        "chain_pem": "CHAIN",
        "root_pem": "ROOT",
        "identity": "spiffe://td/ns/a/sa/b",
        "not_after": "2030-01-01T00:00:00",
        "serial": 42,
    }
    issuer = ChildIssuer(command=_child(json.dumps(issued)))
    got = await issuer.issue({"op": "bootstrap"})
    assert (got.key_pem, got.chain_pem, got.serial) == (b"KEY", b"CHAIN", 42)
    assert got.not_after.tzinfo is not None  # naive times are UTC
    assert issuer.calls == 1 and issuer.last_child_pid > 0


async def test_a_refusal_is_not_retryable_and_a_failure_is() -> None:
    refused = {"ok": False, "refused": True, "code": "PERMISSION_DENIED", "error": "already used"}
    with pytest.raises(IssueRefused) as caught:
        await ChildIssuer(command=_child(json.dumps(refused))).call({"op": "bootstrap"})
    assert caught.value.code == "PERMISSION_DENIED" and "already used" in str(caught.value)
    failed = {"ok": False, "refused": False, "error": "UNAVAILABLE: connection refused"}
    with pytest.raises(IssueFailed) as caught_failed:
        await ChildIssuer(command=_child(json.dumps(failed))).call({"op": "renew"})
    assert not isinstance(caught_failed.value, IssueRefused)
    assert "renew: UNAVAILABLE" in str(caught_failed.value)


async def test_a_crashed_child_is_a_failure_naming_its_exit_and_stderr() -> None:
    crash = [sys.executable, "-c", "import sys; sys.stderr.write('boom\\n'); sys.exit(3)"]
    with pytest.raises(IssueFailed, match=r"exited with 3: boom"):
        await ChildIssuer(command=crash).call({"op": "bundle"})


async def test_a_hung_child_is_killed_at_the_timeout() -> None:
    hang = [sys.executable, "-c", "import time; time.sleep(60)"]
    issuer = ChildIssuer(timeout=0.5, command=hang)
    with pytest.raises(IssueFailed, match=r"no answer within 0.5s"):
        await issuer.call({"op": "bundle"})
    with pytest.raises(ProcessLookupError):
        import os

        os.kill(issuer.last_child_pid, 0)  # killed and reaped


@pytest.mark.parametrize(
    ("stdin", "expected"),
    [
        ("not json", "request:"),
        ("[1, 2]", "request: expected a JSON object"),
        ('{"op": "mint"}', "op 'mint': unknown operation"),
        ('{"op": "bundle"}', "request: missing 'ca_address'"),
    ],
)
def test_the_real_child_answers_a_bad_request_with_an_error_not_a_traceback(
    stdin: str, expected: str
) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "meshfed.nodeagent.issue"],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0 and "Traceback" not in done.stderr
    answer = json.loads(done.stdout)
    assert answer["ok"] is False and answer["refused"] is True
    assert expected in answer["error"]
