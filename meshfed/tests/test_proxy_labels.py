"""``meshfed bootstrap --label``: the proxy's labels reach its node metadata, which Istio
Gateways select on; a malformed label is refused before anything starts."""

from __future__ import annotations

import json

import pytest

from meshfed.cli import main


def test_labels_reach_the_bootstrap_metadata(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["bootstrap", "--ip", "127.0.0.9", "--workload", "gw", "--gateway"]
    assert main([*argv, "--label", "istio=ingressgateway", "--label", "app=gw"]) == 0
    boot = json.loads(capsys.readouterr().out)
    assert boot["node"]["metadata"]["LABELS"] == {"istio": "ingressgateway", "app": "gw"}
    assert boot["node"]["id"].startswith("router~")


def test_a_malformed_label_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stopped:
        main(["bootstrap", "--ip", "127.0.0.9", "--workload", "gw", "--label", "noequals"])
    assert stopped.value.code == 2
    assert "expected KEY=VALUE, got 'noequals'" in capsys.readouterr().err
