"""``meshfed proxy``'s Mixer address from the mesh config, and ``proxy-status``'s MIXER column
from what a proxy's client says about itself (pure: no server)."""

from __future__ import annotations

import argparse

from meshfed.cli_pilot import _mixer_column, mixer_address
from meshfed.mixer.settings import DataPathSettings, MixerSettings


class Mesh:
    def __init__(self, mixer: MixerSettings | None) -> None:
        self.mixer = mixer


def args(mixer: str = "", no_mixer: bool = False, from_config: bool = True) -> argparse.Namespace:
    return argparse.Namespace(mixer=mixer, no_mixer=no_mixer, mixer_from_config=from_config)


ON = MixerSettings(enabled=True, listen="0.0.0.0:9091")


def test_the_address_comes_from_the_mesh_config_unless_given_or_refused() -> None:
    assert mixer_address(args(), Mesh(ON)) == "127.0.0.1:9091"  # wildcard: this host
    listen = MixerSettings(enabled=True, listen="127.0.0.7:9191")
    assert mixer_address(args(), Mesh(listen)) == "127.0.0.7:9191"
    assert mixer_address(args("127.0.0.9:1"), Mesh(ON)) == "127.0.0.9:1"
    assert mixer_address(args(no_mixer=True), Mesh(ON)) == ""
    assert mixer_address(args(), Mesh(None)) == ""  # no spec.mixer at all
    assert mixer_address(args(), Mesh(MixerSettings(enabled=False))) == ""
    # the data path off, CUSTOM AuthorizationPolicies still reach Mixer through the client
    off = MixerSettings(
        enabled=True, listen="0.0.0.0:9091", data_path=DataPathSettings(enabled=False)
    )
    assert mixer_address(args(), Mesh(off)) == "127.0.0.1:9091"
    assert mixer_address(args(), Mesh(MixerSettings(enabled=True, listen="[::]:9091"))) == (
        "127.0.0.1:9091"
    )
    # commands that only write a bootstrap (no client runs there) never guess one
    assert mixer_address(args(from_config=False), Mesh(ON)) == ""
    assert mixer_address(args(), Mesh(MixerSettings(enabled=True, listen="127.0.0.1:0"))) == ""


def test_the_mixer_column_says_who_cannot_reach_mixer() -> None:
    assert _mixer_column("p", "127.0.0.2", None) == ("-", [])
    assert _mixer_column("p", "127.0.0.2", {"statusPort": 15021, "mixerReachable": True}) == (
        "ok :15021",
        [],
    )
    column, lines = _mixer_column(
        "p",
        "127.0.0.2",
        {
            "statusPort": 15021,
            "mixerReachable": False,
            "mixer": "127.0.0.1:9091",
            "unreachableSeconds": 4.2,
            "lastError": "UNAVAILABLE: refused",
        },
    )
    assert column == "UNREACHABLE :15021"
    (line,) = lines
    assert "cannot reach Mixer at 127.0.0.1:9091 (for 4.2s: UNAVAILABLE: refused)" in line
    assert "http://127.0.0.2:15021/metrics" in line
    column, lines = _mixer_column("p", "127.0.0.2", {"statusPort": 15021, "error": "refused"})
    assert column == "? :15021" and lines == ["p: mixer client: refused"]
