"""``pip install`` an adapter package that meshfed knows nothing of, and Mixer finds it.

The package (``example_adapter/``, the one docs/mixer-adapters.md walks through) is copied to a
temporary directory, built and installed into this venv by pip, and used in fresh interpreters
(as a restarted Mixer would): through ``load_kinds`` directly, and by a Mixer component whose
config -- the guide's YAML -- has a rule naming the kind, so a gRPC Check gets the plugin's
verdict. It is uninstalled afterwards.
"""

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

PACKAGE = "meshfed-adapter-prefixdenier"
SOURCE = Path(__file__).parent / "example_adapter"
GUIDE_CONFIG = Path(__file__).parent / "data" / "prefixdenier.yaml"

PROBE = textwrap.dedent(
    """
    import asyncio, json, logging
    import prometheus_client
    from meshfed.core.resources import FieldReader
    from meshfed.mixer.handlers.api import HandlerEnv, load_kinds
    from meshfed.mixer.templates import ListEntry

    async def main():
        kinds = load_kinds()
        kind = kinds["prefixdenier"]
        bad = FieldReader("handlers.yaml", "prefixdenier default/deny", {"prefixes": [], "code": 0})
        assert kind.parse_params(bad) is None
        good = FieldReader("handlers.yaml", "prefixdenier default/deny",
                           {"prefixes": ["test-"], "validDuration": "3s"})
        params = kind.parse_params(good)
        env = HandlerEnv("deny.prefixdenier.default", logging.getLogger("probe"),
                         prometheus_client.CollectorRegistry())
        handler = await kind.build(params, env)
        denied = await handler.check(ListEntry("user.listentry.default", "test-user"))
        allowed = await handler.check(ListEntry("user.listentry.default", "alice"))
        await handler.close()
        print(json.dumps({
            "kinds": sorted(kinds),
            "templates": sorted(kind.templates),
            "errors": [[e.field, e.message] for e in bad.errors],
            "denied": [denied.code, denied.message, denied.valid_duration.total_seconds()],
            "allowed": allowed.code,
        }))

    asyncio.run(main())
    """
)

# A Mixer component as the hub builds it (every installed kind, config from a folder), asked
# over gRPC by a client written against the protos.
RULE_PROBE = textwrap.dedent(
    """
    import asyncio, json, sys
    import grpc
    from meshfed.mixer.api.service import MixerStub
    from meshfed.mixer.api.v1 import check_pb2
    from meshfed.mixer.attributes import codec
    from meshfed.mixer.component import Mixer
    from meshfed.mixer.settings import MixerSettings

    async def main():
        mixer = Mixer(MixerSettings(enabled=True, listen="127.0.0.1:0",
                                    config_paths=(sys.argv[1],)))
        await mixer.start()
        handler = mixer.snapshot.handlers.get("testusers.prefixdenier.default")
        out = {"problems": [str(p) for p in mixer.problems()],
               "rules": [r.ref for r in mixer.snapshot.config.check_rules],
               "handler": type(handler).__module__}
        async with grpc.aio.insecure_channel(f"127.0.0.1:{mixer.port}") as channel:
            stub = MixerStub(channel)
            for user, service in [("test-user", "ratings"), ("alice", "ratings"),
                                  ("test-user", "reviews")]:
                bag = {"destination.service": f"{service}.default.svc.cluster.local",
                       "destination.namespace": "default",
                       "request.headers": {"x-user": user}}
                reply = await stub.Check(check_pb2.CheckRequest(attributes=codec.encode(bag)))
                pre = reply.precondition
                out[f"{user}@{service}"] = [pre.status.code, pre.status.message,
                                            pre.valid_duration.ToTimedelta().total_seconds()]
        await mixer.stop()
        print(json.dumps(out))

    asyncio.run(main())
    """
)


def pip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pip", "--disable-pip-version-check", *args],
        capture_output=True,
        text=True,
        timeout=240,
    )


@pytest.fixture
def installed(tmp_path):
    work = tmp_path / "adapter"
    shutil.copytree(SOURCE, work)
    # built in pip's isolated build env, as a user's install is; --no-deps: meshfed is here
    done = pip("install", "--no-deps", "-q", str(work))
    assert done.returncode == 0, done.stdout + done.stderr
    try:
        yield
    finally:
        gone = pip("uninstall", "-y", "-q", PACKAGE)
        assert gone.returncode == 0, gone.stdout + gone.stderr


def probe(script: str, *args: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stdout + out.stderr
    return json.loads(out.stdout.splitlines()[-1])


@pytest.mark.timeout(600)
def test_pip_installed_adapter_is_found_parsed_and_built(installed):
    seen = probe(PROBE)
    assert "prefixdenier" in seen["kinds"] and "denier" in seen["kinds"]
    assert seen["templates"] == ["listentry"]
    assert seen["errors"] == [
        ["prefixes", "expected at least one entry"],
        ["code", "a denier must not answer OK"],
    ]
    assert seen["denied"] == [7, "test-user starts with test-", 3.0]
    assert seen["allowed"] == 0


@pytest.mark.timeout(600)
def test_a_rule_naming_the_installed_kind_reaches_it_on_check(installed, tmp_path):
    config = tmp_path / "config"
    config.mkdir()
    shutil.copy(GUIDE_CONFIG, config / "mixer.yaml")
    seen = probe(RULE_PROBE, str(config))
    assert seen["problems"] == []
    assert seen["rules"] == ["no-test-users.rule.default"]
    assert seen["handler"] == "meshfed_adapter_prefixdenier"  # the plugin's own class
    # the plugin's verdict, through the runtime, in the gRPC answer
    assert seen["test-user@ratings"] == [
        7,
        "testusers.prefixdenier.default: test-user starts with test-",
        30.0,
    ]
    assert seen["alice@ratings"] == [0, "", 30.0]  # allowed, valid as long as the plugin says
    assert seen["test-user@reviews"][0] == 0  # the rule's match does not hold


def test_without_the_package_the_kind_is_absent():
    from meshfed.mixer.handlers.api import load_kinds

    assert pip("show", "-q", PACKAGE).returncode != 0
    assert "prefixdenier" not in load_kinds()


def test_without_the_package_the_rule_is_refused_by_name():
    """The same config with the plugin absent: errors naming the object and field, no crash."""
    from meshfed.core.resources import load_documents
    from meshfed.mixer.config.compile import compile_config
    from meshfed.mixer.config.parse import parsers
    from meshfed.mixer.config.store import default_attributes_path, parse_documents
    from meshfed.mixer.handlers.api import load_kinds

    kinds = load_kinds()
    assert "prefixdenier" not in kinds
    objects, problems = [], []
    for path in (default_attributes_path(), GUIDE_CONFIG):
        docs, errors = load_documents(path)
        objs, errs = parse_documents(docs, parsers(kinds))
        objects += objs
        problems += [str(e) for e in errors + errs]
    config = compile_config(objects, kinds)
    problems += [str(e) for e in config.errors]
    assert any("prefixdenier default/testusers: kind: unknown Mixer kind" in p for p in problems)
    assert any(
        "rule default/no-test-users: spec.actions[0].handler: no handler "
        "testusers.prefixdenier.default" in p
        for p in problems
    ), problems
    assert not config.rules
