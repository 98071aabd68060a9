"""py-consul clients for the configured agents, with fail-over and the two queries we need.

Why a layer over py-consul at all:
- Several addresses: watches spread over them, and when the agent a watch talks to dies (a server
  that was the Raft leader, say), its next query goes to the next address, so one lost server
  never leaves the mesh without updates.
- Consistency: py-consul's ``health.service`` has no consistency argument; we default to
  ``stale`` so any server answers -- including while the cluster elects a new leader, which is
  exactly when the default mode would fail with "No cluster leader".
- Enterprise namespace (``ns``) and the response headers (``X-Consul-KnownLeader``), which the
  high-level API drops. We still go through py-consul's own HTTP client and response checks.

Every method here blocks; callers run them in worker threads (see :mod:`adapters.consul.watch`).
The request timeout of a blocking query is py-consul's: the connect/read timeout *plus* the
wait *plus* wait/16, because Consul adds up to wait/16 of jitter before answering; a shorter
client timeout would turn every idle wait into a spurious error.
"""

from __future__ import annotations

import threading
import zlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs
import consul
import consul.std
from consul.callback import CB

from meshfed.adapters.consul.params import ConsulParams, go_duration

# Idle blocking queries each hold a connection; the pool must be able to keep them all, or
# urllib3 discards (and later re-opens) every connection above its default of 10.
POOL_SIZE = 1024


@attrs.frozen(slots=True)
class QueryResult:
    """A Consul read: its raft index (as Consul sent it), body, and who answered."""

    index: int
    data: Any
    address: str
    known_leader: bool = True
    acl_filtered: bool = False  # Consul left out entries this token may not read


def split_address(address: str) -> tuple[str, str, int]:
    """``[scheme://]host:port`` -> (scheme, host, port); scheme defaults to http."""
    scheme, sep, rest = address.partition("://")
    if not sep:
        scheme, rest = "http", address
    host, _, port = rest.rstrip("/").rpartition(":")
    return scheme, host.strip("[]"), int(port)


def parse_index(value: Any) -> int:
    """X-Consul-Index as an integer (Consul sends a decimal string); garbage counts as 0."""
    try:
        return max(0, int(str(value).strip()))
    except (TypeError, ValueError):
        return 0


def bexpr_string(value: str) -> str | None:
    """``value`` as a string literal of Consul's filter language, or None if it has none.

    Measured on Consul 1.16: a double-quoted literal cannot hold an escaped quote (``"a\\"b"`` is
    a syntax error), a backquoted one is taken as is; so backquotes, unless the value has one.
    """
    if "`" not in value:
        return f"`{value}`"
    if '"' not in value and "\\" not in value:
        return f'"{value}"'
    return None


def _result_callback(address: str) -> Any:
    decode = CB.json(index=True)

    def callback(response: Any) -> QueryResult:
        index, data = decode(response)  # raises ConsulException on 4xx/5xx
        headers = response.headers
        leader = str(headers.get("X-Consul-KnownLeader", "true")).lower() != "false"
        filtered = str(headers.get("X-Consul-Results-Filtered-By-ACLs", "")).lower() == "true"
        return QueryResult(parse_index(index), data, address, leader, filtered)

    return callback


class TooManyConnections(consul.ConsulException):
    """Consul answered 429: this host holds more connections than the agent allows."""


@attrs.define
class Route:
    """Which configured address one watch reads from; it moves on when that address fails."""

    position: int


class ConsulClients:
    """One py-consul client per configured address, and a route per watch over them.

    Each watch starts at an address picked by a stable hash of its key, so watches spread over
    every configured agent: each idle blocking query holds one connection, and Consul limits
    connections per client IP and agent (``limits.http_max_conns_per_client``, default 200).
    A watch whose address fails (connection error, 5xx, 429) moves to the next one.
    """

    def __init__(self, params: ConsulParams) -> None:
        self.params = params
        self.addresses: tuple[str, ...] = params.addresses
        self._clients = [self._make(a) for a in self.addresses]
        self._default = Route(0)
        self._lock = threading.Lock()  # watches fail over from several worker threads at once
        # Called (from a worker thread) with (old address, new address) on each fail-over.
        self.on_failover: Callable[[str, str], None] | None = None

    def route(self, key: str) -> Route:
        """A route for the watch named ``key``, starting at its hashed address."""
        return Route(zlib.crc32(key.encode()) % len(self.addresses))

    def _make(self, address: str) -> consul.Consul:
        scheme, host, port = split_address(address)
        tls = self.params.tls
        if tls is not None and scheme == "http":
            scheme = "https"
        verify: bool | str = True
        cert: tuple[str, str] | None = None
        if tls is not None:
            verify = tls.ca_file or True
            if tls.cert_file:
                cert = (tls.cert_file, tls.key_file)
        client = consul.Consul(
            host=host,
            port=port,
            scheme=scheme,
            verify=verify,
            cert=cert,
            connections_timeout=self.params.timeout_s,
        )
        # py-consul lets CONSUL_HTTP_TOKEN override an explicit token; the mesh config wins here.
        if self.params.token:
            client.token = self.params.token
        session = getattr(client.http, "session", None)
        if session is not None:
            import requests.adapters

            adapter = requests.adapters.HTTPAdapter(pool_maxsize=POOL_SIZE)
            session.mount("http://", adapter)
            session.mount("https://", adapter)
        return client

    def failed(self, route: Route, position: int) -> None:
        """The address at ``position`` failed for ``route``: move it on to the next address."""
        with self._lock:
            if route.position != position or len(self._clients) < 2:
                return
            route.position = (position + 1) % len(self._clients)
            new = self.addresses[route.position]
        if self.on_failover is not None:
            self.on_failover(self.addresses[position], new)

    def _get(self, path: str, params: list[tuple[str, str]], route: Route | None) -> QueryResult:
        route = route or self._default
        position = route.position
        client, address = self._clients[position], self.addresses[position]
        try:
            return client.http.get(
                _result_callback(address), path, params=params, headers=client.prepare_headers()
            )
        except consul.ConsulException as exc:
            text = str(exc)
            if text.startswith("429"):
                self.failed(route, position)  # another agent may have connections to spare
                raise TooManyConnections(
                    f"{address} refused the query: too many concurrent connections from this "
                    "host (each per-service watch holds one; lower maxWatches below the agents' "
                    "limits.http_max_conns_per_client, default 200, minus other clients on this "
                    "host)"
                ) from exc
            # 5xx: the agent is up but cannot serve (no leader, RPC error), another may; other
            # 4xx (bad filter, ACL denied) would be the same everywhere, so stay put.
            if type(exc) is consul.ConsulException and text[:1] == "5":
                self.failed(route, position)
            raise
        except Exception:
            self.failed(route, position)
            raise

    def _params(
        self, datacenter: str, index: int, wait_s: float | None, extra: Sequence[tuple[str, str]]
    ) -> list[tuple[str, str]]:
        params: list[tuple[str, str]] = []
        if datacenter:
            params.append(("dc", datacenter))
        if index > 0:
            params.append(("index", str(index)))
            params.append(("wait", go_duration(wait_s or self.params.wait_s)))
        if self.params.consistency in ("stale", "consistent"):
            params.append((self.params.consistency, "1"))
        if self.params.namespace:
            params.append(("ns", self.params.namespace))
        params.extend(extra)
        return params

    def services(
        self,
        datacenter: str,
        index: int = 0,
        wait_s: float | None = None,
        route: Route | None = None,
    ) -> QueryResult:
        """``/v1/catalog/services``: service name -> union of its instances' tags."""
        params = self._params(datacenter, index, wait_s, ())
        return self._get("/v1/catalog/services", params, route)

    def health(
        self,
        datacenter: str,
        service: str,
        index: int = 0,
        wait_s: float | None = None,
        route: Route | None = None,
    ) -> QueryResult:
        """``/v1/health/service/<name>``: every instance with its node and checks."""
        extra = [("tag", t) for t in self.params.tag_filter]
        if self.params.filter:
            extra.append(("filter", self.params.filter))
        path = f"/v1/health/service/{service}"
        return self._get(path, self._params(datacenter, index, wait_s, extra), route)

    def checks(
        self,
        datacenter: str,
        index: int = 0,
        wait_s: float | None = None,
        route: Route | None = None,
    ) -> QueryResult:
        """``/v1/health/state/any``: every check of the datacenter (node, id, status, service)."""
        params = self._params(datacenter, index, wait_s, ())
        return self._get("/v1/health/state/any", params, route)

    def checks_index(self, datacenter: str, route: Route | None = None) -> QueryResult:
        """The check table's index alone: ``/v1/health/state/any`` filtered down to nothing.

        The index Consul answers a filtered read with is the table's, so this tells whether a
        given write touched any check without transferring the checks.
        """
        params = self._params(datacenter, 0, None, [("filter", 'CheckID == ""')])
        return self._get("/v1/health/state/any", params, route)

    def nodes(self, datacenter: str, route: Route | None = None) -> QueryResult:
        """``/v1/catalog/nodes``: every node with its CreateIndex/ModifyIndex.

        Nodes are not namespaced, so no ``ns``; the answer's index moves on every node *and*
        service write (measured on Consul 1.16).
        """
        params = [p for p in self._params(datacenter, 0, None, ()) if p[0] != "ns"]
        return self._get("/v1/catalog/nodes", params, route)

    def node_dump(self, datacenter: str, route: Route | None = None) -> QueryResult:
        """``/v1/internal/ui/nodes``: every node with its services (each with ModifyIndex)."""
        return self._get("/v1/internal/ui/nodes", self._params(datacenter, 0, None, ()), route)

    def service_summaries(self, datacenter: str, route: Route | None = None) -> QueryResult:
        """``/v1/internal/ui/services``: per service its instance count, nodes, tags and check
        counts (what Consul's UI lists; internal, so callers must survive its absence)."""
        params = self._params(datacenter, 0, None, ())
        return self._get("/v1/internal/ui/services", params, route)

    def services_on_nodes(
        self, datacenter: str, nodes: Sequence[str], route: Route | None = None
    ) -> QueryResult:
        """``/v1/catalog/services`` restricted to instances on ``nodes``: name -> tags.

        Raises ValueError for a node name the filter language cannot quote (see
        :func:`bexpr_string`).
        """
        literals = [bexpr_string(n) for n in nodes]
        if None in literals:
            raise ValueError("a node name holds both quote characters")
        expression = " or ".join(f"Node == {literal}" for literal in literals)
        params = self._params(datacenter, 0, None, [("filter", expression)])
        return self._get("/v1/catalog/services", params, route)

    def local_datacenter(self) -> str:
        """The datacenter of the agent we talk to (what an unset ``datacenters`` means)."""
        position = self._default.position
        try:
            client = self._clients[position]
            # Not client.agent.self(): py-consul sends no token with it, which an agent with
            # ACLs answers with "Permission denied".
            info: Mapping[str, Any] = client.http.get(
                CB.json(), "/v1/agent/self", headers=client.prepare_headers()
            )
        except Exception:
            self.failed(self._default, position)
            raise
        return str(info["Config"]["Datacenter"])

    def request_timeout(self, index: int) -> float | None:
        """The client-side timeout py-consul applies to a query at ``index`` (for describe)."""
        timeout = getattr(self._clients[0].http, "timeout", None)
        if timeout is None:
            return None
        return timeout(self._params("", index, None, ()))
