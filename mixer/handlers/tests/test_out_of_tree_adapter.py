"""``pip install`` an adapter package that meshfed knows nothing of, and Mixer finds it.

The package (``example_adapter/``, the one docs/mixer-adapters.md walks through) is copied to a
temporary directory, built and installed into this venv by pip, used through ``load_kinds`` in a
fresh interpreter (as a restarted Mixer would), and uninstalled afterwards.
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


def probe() -> dict | None:
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        return None
    return json.loads(out.stdout)


@pytest.mark.timeout(600)
def test_pip_installed_adapter_is_found_parsed_and_built(installed):
    seen = probe()
    assert seen is not None
    assert "prefixdenier" in seen["kinds"] and "denier" in seen["kinds"]
    assert seen["templates"] == ["listentry"]
    assert seen["errors"] == [
        ["prefixes", "expected at least one entry"],
        ["code", "a denier must not answer OK"],
    ]
    assert seen["denied"] == [7, "test-user starts with test-", 3.0]
    assert seen["allowed"] == 0


def test_without_the_package_the_kind_is_absent():
    from meshfed.mixer.handlers.api import load_kinds

    assert pip("show", "-q", PACKAGE).returncode != 0
    assert "prefixdenier" not in load_kinds()
