"""pytest fixtures that start real peers on loopback for meshfed's integration tests.

Cheap peers (Redis, Envoy, a dev Consul agent, a three-server Consul cluster) are
function-scoped so a test may stop, kill or dirty them freely; slow ones (the
Kubernetes API server with etcd, the JVM-based Eureka server) are session-scoped, and
tests share them by using their own namespaces or application names. Every fixture
stops its processes (whole process group) on teardown, even after a failure.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pytest

from integration.peers.consul import ConsulAgent, ConsulCluster, start_cluster, start_dev_agent
from integration.peers.envoy import EnvoyProxy, start_envoy, start_static_envoy
from integration.peers.eureka import EurekaServer, start_eureka
from integration.peers.jaeger import JaegerServer, start_jaeger
from integration.peers.kube import KubeAPIServer, start_kube_apiserver
from integration.peers.redis import RedisServer, start_redis
from integration.peers.statsd import StatsdServer, start_statsd


@pytest.fixture
def consul_agent(tmp_path: Path) -> Iterator[ConsulAgent]:
    """A single in-memory ``consul agent -dev`` server, leader elected."""
    with start_dev_agent(tmp_path / "consul") as agent:
        yield agent


@pytest.fixture
def consul_cluster(tmp_path: Path) -> Iterator[ConsulCluster]:
    """Three Consul servers on distinct 127.0.0.x addresses with an agreed leader.

    Use ``cluster.leader()``, ``cluster.stop_member(agent)`` and
    ``cluster.start_member(agent)`` to test leader loss.
    """
    with start_cluster(tmp_path / "consul-cluster", size=3) as cluster:
        yield cluster


@pytest.fixture(scope="session")
def kube_apiserver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeAPIServer]:
    """kube-apiserver + etcd on loopback (no kubelet); shared by the whole session."""
    with start_kube_apiserver(tmp_path_factory.mktemp("kube")) as server:
        yield server


@pytest.fixture(scope="session")
def eureka_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EurekaServer]:
    """A Spring Cloud Netflix Eureka server; shared by the whole session."""
    with start_eureka(tmp_path_factory.mktemp("eureka")) as server:
        yield server


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A fresh ``redis-server`` without persistence."""
    with start_redis(tmp_path / "redis") as server:
        yield server


@pytest.fixture
def jaeger_server(tmp_path: Path) -> Iterator[JaegerServer]:
    """Jaeger all-in-one (OTLP + Zipkin in, in-memory store, query API) on loopback."""
    with start_jaeger(tmp_path / "jaeger") as server:
        yield server


@pytest.fixture
def statsd_server(tmp_path: Path) -> Iterator[StatsdServer]:
    """Etsy's statsd daemon on loopback, read back through its management interface."""
    with start_statsd(tmp_path / "statsd") as server:
        yield server


@pytest.fixture
def envoy_static(tmp_path: Path) -> Iterator[tuple[EnvoyProxy, int]]:
    """Envoy with a static bootstrap; yields (proxy, listener port answering 200)."""
    with start_static_envoy(tmp_path / "envoy") as started:
        yield started


@pytest.fixture
def envoy_factory(
    tmp_path: Path,
) -> Iterator[Callable[..., EnvoyProxy]]:
    """Start Envoys from bootstraps of the test's own (e.g. pointing at meshfed's xDS).

    ``envoy_factory(bootstrap_dict, wait_ready=True)`` returns a running
    :class:`EnvoyProxy`; all are stopped at teardown.
    """
    started: list[AbstractContextManager[EnvoyProxy]] = []

    def factory(bootstrap: dict[str, Any], **kwargs: Any) -> EnvoyProxy:
        cm = start_envoy(tmp_path / f"envoy{len(started)}", bootstrap, **kwargs)
        proxy = cm.__enter__()
        started.append(cm)
        return proxy

    yield factory
    for cm in reversed(started):
        cm.__exit__(None, None, None)
