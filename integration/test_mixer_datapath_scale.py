"""Mixer in the data path at full size, through real Envoy and the real hub: every figure
the feature promises, counted on real traffic (each load bounded in count and time).

- Telemetry: 1,000 requests give 1,000 ``stdio`` JSON lines, one per request and none twice,
  though the hub (a ``meshfed up`` process) is stopped with SIGTERM while its Reports are in
  flight, started again on the same address, killed with SIGKILL and started again: the
  client holds and retries the batches; each new process's ``prometheus`` ``request_count``
  (source, destination, code) equals the entries it received.
- Check cache: 5,000 bookinfo-shaped requests (two destinations, three users, many paths, a
  new request id each) are answered from the sidecars' caches at least 90 % of the time; a
  rule change makes the stale answers unused within their validity.
- memquota of 10 requests/s: 50 requests/s for 5 s give 50 +- 2 answers 200, the rest 429.
- redisquota: two hubs (this one and a ``meshfed up`` process) and two sidecars of one
  service, each sidecar's client calling another hub, hold one limit in one real Redis.
- listchecker: a whitelist of ``source.labels["app"]``, the labels coming from a real Consul
  catalog, admits the Consul-registered frontend's sidecar and refuses the backend's.

Hosts: 127.0.135.x.
"""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import consul
import pytest

from integration.mixer_datapath_helpers import (
    MEMQUOTA_API,
    MixerHubProcess,
    call,
    datapath_mesh,
    eventually,
    load,
    mixer_hub_process,
    paced,
    request_count,
    stdio_lines,
    workload,
)
from meshfed.config import RegistryConfig
from meshfed.mixer.settings import DataPathSettings

pytestmark = pytest.mark.timeout(240)

CLIENT_IP, API_IP, API_B_IP = "127.0.135.2", "127.0.135.11", "127.0.135.12"
REVIEWS_IP, RATINGS_IP = "127.0.135.21", "127.0.135.22"
FRONT_IP, BACK_IP, WEB_IP = "127.0.135.31", "127.0.135.32", "127.0.135.33"
HUB_IP, HUB2_IP = "127.0.135.49", "127.0.135.50"
CLIENT = "client.default.svc.cluster.local"
API = "api.default.svc.cluster.local"
REVIEWS = "reviews.default.svc.cluster.local"
RATINGS = "ratings.default.svc.cluster.local"
WEB = "web.default.svc.cluster.local"
SIDECAR = f"http://{CLIENT_IP}:15001"

TELEMETRY = """
apiVersion: config.istio.io/v1alpha2
kind: metric
metadata: {{name: requestcount, namespace: istio-system}}
spec:
  value: "1"
  dimensions:
    source_service: source.service | "unknown"
    destination_service: destination.service | "unknown"
    response_code: response.code | 200
---
apiVersion: config.istio.io/v1alpha2
kind: prometheus
metadata: {{name: handler, namespace: istio-system}}
spec:
  metrics:
  - name: request_count
    instance_name: requestcount.metric.istio-system
    kind: COUNTER
    label_names: [source_service, destination_service, response_code]
---
apiVersion: config.istio.io/v1alpha2
kind: stdio
metadata: {{name: handler, namespace: istio-system}}
spec:
  outputAsJson: true
  logStream: FILE
  outputPath: {log}
---
apiVersion: config.istio.io/v1alpha2
kind: logentry
metadata: {{name: accesslog, namespace: istio-system}}
spec:
  severity: '"Default"'
  variables:
    url: request.path | ""
    method: request.method | ""
    responseCode: response.code | 0
    source: source.service | "unknown"
    destination: destination.service | "unknown"
---
apiVersion: config.istio.io/v1alpha2
kind: rule
metadata: {{name: telemetry, namespace: istio-system, labels: {{istio-protocol: http}}}}
spec:
  actions:
  - handler: handler.prometheus
    instances: [requestcount.metric]
  - handler: handler.stdio
    instances: [accesslog.logentry]
"""


async def test_thousand_requests_logged_once_across_hub_processes_killed_and_restarted(
    tmp_path: Path,
) -> None:
    """The hub is a real ``meshfed up`` process on one address, run three times: the first
    gets SIGTERM while traffic and its Reports are in flight, the second SIGKILL, the third
    takes the rest. Each outage's Reports wait in the sidecar's client and are retried."""
    log = tmp_path / "access.jsonl"  # every hub process appends to the same file
    policy = tmp_path / "hub-policy"
    policy.mkdir()
    (policy / "mixer.yaml").write_text(TELEMETRY.format(log=log))
    services = workload("client", CLIENT, CLIENT_IP, 9080) + workload("api", API, API_IP, 9080)
    registry = tmp_path / "hub-registry"
    registry.mkdir()
    (registry / "services.yaml").write_text(services)
    hub = MixerHubProcess(tmp_path / "hub", HUB_IP, policy, registry)
    # the in-process hub serves Pilot only here: its own Mixer has no rule
    async with datapath_mesh(tmp_path / "pilot", services, "") as mesh:
        try:
            await hub.start()
            await mesh.backend("api", API_IP, 8080)
            await mesh.proxy(API_IP, "api", "9080:8080", mixer_address=hub.address)
            await mesh.proxy(CLIENT_IP, "client", mixer_client=False)
            (api_client,) = mesh.clients
            batcher = api_client.batcher

            def path(i: int) -> str:
                return f"/item/{i}"  # each request's unique id, as the stdio line shows it

            async def requests(first: int, count: int) -> None:
                codes = await load(SIDECAR, API, count, path=lambda i: path(first + i))
                assert codes == [200] * count  # cached answers, else the fail policy (open)

            async def logged(n: int) -> bool:
                return len(stdio_lines(log)) == n

            async def this_hub_counted(n: int) -> bool:
                return request_count(await hub.metrics(), CLIENT, API, 200) == n

            # 1. SIGTERM while requests 300..400 are answered and their Reports sent: what
            # the hub took it finishes (its stdio lines are written before it exits), what
            # it refused stays queued in the client
            await requests(0, 300)
            traffic = asyncio.create_task(requests(300, 100))

            async def reported(n: int) -> bool:
                return batcher.stats.added >= n

            await eventually(lambda: reported(350), 20, "350 bags given to the client")
            assert await hub.stop(signal.SIGTERM) == 0
            await traffic
            await requests(400, 150)  # the hub is away
            before = len(stdio_lines(log))
            assert before < 550

            # 2. a new process on the same address: the queued bags arrive, once
            await hub.start()
            await requests(550, 150)
            await eventually(lambda: logged(700), 30, "700 lines once the hub is back")
            await eventually(lambda: this_hub_counted(700 - before), 10, "its request_count")

            # 3. SIGKILL (every Report so far delivered and written), 150 requests away,
            # a third process
            assert await hub.stop(signal.SIGKILL) == -signal.SIGKILL
            await requests(700, 150)
            await hub.start()
            await requests(850, 150)
            await eventually(lambda: logged(1000), 30, "1,000 lines")
            await eventually(lambda: this_hub_counted(300), 10, "the third hub's count")
            await asyncio.sleep(1.0)  # nothing more arrives: no report was sent twice
            assert await logged(1000) and await this_hub_counted(300)
        finally:
            await hub.close()
        lines = stdio_lines(log)
        urls = [line["url"] for line in lines]
        assert len(urls) == len(set(urls)) == 1000, "a report lost or logged twice"
        assert set(urls) == {path(i) for i in range(1000)}
        assert {(line["responseCode"], line["method"]) for line in lines} == {(200, "GET")}
        assert {(line["source"], line["destination"]) for line in lines} == {(CLIENT, API)}
        assert {line["instance"] for line in lines} == {"accesslog.logentry.istio-system"}
        assert batcher.stats.send_failures >= 2  # both outages were felt and waited out
        assert batcher.stats.dropped == 0 and batcher.pending == 0
        assert batcher.stats.sent == 1000


BOOKINFO_POLICY = """
apiVersion: config.istio.io/v1alpha2
kind: denier
metadata: {{name: closed, namespace: istio-system}}
spec:
  status: {{code: 7, message: not for you}}
  validDuration: 3s  # how long a client may reuse the denial
---
apiVersion: config.istio.io/v1alpha2
kind: checknothing
metadata: {{name: nothing, namespace: istio-system}}
spec:
---
apiVersion: config.istio.io/v1alpha2
kind: rule
metadata: {{name: deny, namespace: istio-system}}
spec:
  match: destination.service == "{service}" && request.headers["x-user"] == "{user}"
  actions:
  - handler: closed.denier
    instances: [nothing.checknothing]
"""
USERS = ("jason", "mallory", "alice")


def user_of(i: int) -> str:
    return USERS[i % 3]


async def test_check_cache_hit_ratio_and_no_stale_answer_after_a_rule_change(
    tmp_path: Path,
) -> None:
    services = (
        workload("client", CLIENT, CLIENT_IP, 9080)
        + workload("reviews", REVIEWS, REVIEWS_IP, 9080)
        + workload("ratings", RATINGS, RATINGS_IP, 9080)
    )
    policy = BOOKINFO_POLICY.format(service=RATINGS, user="mallory")
    async with datapath_mesh(tmp_path, services, policy) as mesh:
        await mesh.backend("reviews", REVIEWS_IP, 8080)
        await mesh.backend("ratings", RATINGS_IP, 8080)
        await mesh.proxy(REVIEWS_IP, "reviews", "9080:8080")
        await mesh.proxy(RATINGS_IP, "ratings", "9080:8080")
        await mesh.proxy(CLIENT_IP, "client", mixer_client=False)
        caches = [c.cache for c in mesh.clients]
        assert all(cache is not None for cache in caches)

        # bookinfo's shape: reviews and ratings, a few users, many product ids
        async def traffic(count: int) -> list[tuple[str, str, int]]:
            seen: list[tuple[str, str, int]] = []
            for service in (REVIEWS, RATINGS):
                name = service.split(".")[0]
                codes = await load(
                    SIDECAR,
                    service,
                    count // 2,
                    path=lambda i, name=name: f"/{name}/{i % 50}",
                    headers=lambda i: {"x-user": user_of(i)},
                )
                seen += [(service, user_of(i), code) for i, code in enumerate(codes)]
            return seen

        def totals() -> tuple[int, int]:
            return sum(c.stats.hits for c in caches), sum(c.stats.misses for c in caches)  # type: ignore[union-attr]

        hits0, misses0 = totals()
        seen = await traffic(5000)
        hits, misses = (a - b for a, b in zip(totals(), (hits0, misses0), strict=True))
        assert hits + misses == 5000, (hits, misses)
        ratio = hits / 5000
        assert ratio >= 0.9, f"hit ratio {ratio:.3f} ({hits} hits, {misses} misses)"
        # and correct: only mallory's ratings requests were refused, every one of them
        for service, user, code in seen:
            refused = (service, user) == (RATINGS, "mallory")
            assert code == (403 if refused else 200), (service, user, code)

        # The rule moves: now jason may not read reviews (and mallory reads ratings again).
        # The cached allow for jason on reviews must stop being used within its validity
        # (Mixer's default for an allowed Check: 10 s), and mallory's cached denial within
        # its 3 s; 5 s more for Mixer to notice the file and reload.
        mesh.write_policy(BOOKINFO_POLICY.format(service=REVIEWS, user="jason"))
        changed = time.monotonic()

        async def moved() -> bool:
            jason = await call(SIDECAR, REVIEWS, "/reviews/1", {"x-user": "jason"})
            mallory = await call(SIDECAR, RATINGS, "/ratings/1", {"x-user": "mallory"})
            return jason[0] == 403 and "not for you" in jason[1] and mallory[0] == 200

        await eventually(moved, 10 + 5, "the stale answers for jason and mallory to go unused")
        took = time.monotonic() - changed
        after = await traffic(600)
        for service, user, code in after:
            refused = (service, user) == (REVIEWS, "jason")
            assert code == (403 if refused else 200), (service, user, code, f"{took:.1f}s")


async def test_memquota_ten_per_second_over_five_seconds(tmp_path: Path) -> None:
    services = workload("client", CLIENT, CLIENT_IP, 9080) + workload("api", API, API_IP, 9080)
    data_path = DataPathSettings(quotas=("requestcount",))
    async with datapath_mesh(tmp_path, services, MEMQUOTA_API, data_path) as mesh:
        await mesh.backend("api", API_IP, 8080)
        await mesh.proxy(API_IP, "api", "9080:8080")
        await mesh.proxy(CLIENT_IP, "client", mixer_client=False)
        answers = await paced(SIDECAR, API, rate=50, seconds=5)
        assert len(answers) == 250
        late = max(began - i / 50 for i, (began, _) in enumerate(answers))
        assert late < 0.25, f"the load fell {late:.2f}s behind its pace: the rate is not 50/s"
        codes = [code for _, code in answers]
        assert set(codes) <= {200, 429}, codes
        assert abs(codes.count(200) - 50) <= 2, codes.count(200)


REDIS_QUOTA = """
apiVersion: config.istio.io/v1alpha2
kind: redisquota
metadata: {{name: handler, namespace: istio-system}}
spec:
  redisServerUrl: {redis}
  connectionPoolSize: 10
  quotas:
  - name: requestcount.quota.istio-system
    maxAmount: 10
    validDuration: 5s
    bucketDuration: 500ms
    rateLimitAlgorithm: ROLLING_WINDOW
---
apiVersion: config.istio.io/v1alpha2
kind: quota
metadata: {{name: requestcount, namespace: istio-system}}
spec:
  dimensions:
    destination: destination.service | "unknown"
---
apiVersion: config.istio.io/v1alpha2
kind: rule
metadata: {{name: quota, namespace: istio-system}}
spec:
  match: destination.service == "{service}"
  actions:
  - handler: handler.redisquota
    instances: [requestcount.quota]
"""

TWO_APIS = f"""---
apiVersion: networking.meshfed.io/v1alpha1
kind: ServiceEntry
metadata: {{name: api, namespace: default}}
spec:
  hosts: [{API}]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 9080, name: http, protocol: HTTP}}]
  endpoints:
  - {{address: {API_IP}, ports: {{http: 9080}}, labels: {{app: api, version: v1}}}}
  - {{address: {API_B_IP}, ports: {{http: 9080}}, labels: {{app: api, version: v1}}}}
"""


async def test_redisquota_one_limit_for_two_hubs_and_two_sidecars(
    redis_server, tmp_path: Path
) -> None:
    policy = REDIS_QUOTA.format(redis=f"{redis_server.host}:{redis_server.port}", service=API)
    data_path = DataPathSettings(quotas=("requestcount",))
    async with datapath_mesh(tmp_path / "hub1", TWO_APIS, policy, data_path) as mesh:
        other_policy = tmp_path / "hub2-policy"
        other_policy.mkdir()
        (other_policy / "mixer.yaml").write_text(policy)
        async with mixer_hub_process(tmp_path / "hub2", HUB2_IP, other_policy) as hub2:
            await mesh.backend("api", API_IP, 8080)
            await mesh.backend("api", API_B_IP, 8080)
            await mesh.proxy(API_IP, "api", "9080:8080")  # its client: this hub's Mixer
            await mesh.proxy(API_B_IP, "api", "9080:8080", mixer_address=hub2.address)
            one, two = mesh.clients
            sidecars = (f"http://{API_IP}:9080", f"http://{API_B_IP}:9080")
            started = time.monotonic()
            codes: list[list[int]] = [[], []]
            for i in range(40):  # alternately through each sidecar, so each hub
                codes[i % 2].append((await call(sidecars[i % 2], API))[0])
            assert time.monotonic() - started < 4, "the burst outlasted most of the window"
            granted = [c.count(200) for c in codes]
            assert sum(granted) == 10, codes  # one limit, not ten per hub
            assert all(set(c) == {200, 429} for c in codes), codes  # both hubs answered
            assert one.mixer_address != two.mixer_address == hub2.address
            assert two.last_error == "" and two.reachable is not False


CONSUL_SERVICES = workload("web", WEB, WEB_IP, 9080)
WHITELIST = f"""
apiVersion: config.istio.io/v1alpha2
kind: listchecker
metadata: {{name: whitelist, namespace: istio-system}}
spec:
  overrides: ["frontend"]
  blacklist: false
---
apiVersion: config.istio.io/v1alpha2
kind: listentry
metadata: {{name: appname, namespace: istio-system}}
spec:
  value: source.labels["app"] | "unknown"
---
apiVersion: config.istio.io/v1alpha2
kind: rule
metadata: {{name: checkapp, namespace: istio-system}}
spec:
  match: destination.service == "{WEB}"
  actions:
  - handler: whitelist.listchecker
    instances: [appname.listentry]
"""


async def test_listchecker_on_labels_from_consul(consul_agent, tmp_path: Path) -> None:
    c = consul.Consul(host=consul_agent.host, port=consul_agent.http_port)
    for node, ip, app in (("front", FRONT_IP, "frontend"), ("back", BACK_IP, "backend")):
        service = {"Service": app, "ID": f"{node}-1", "Port": 9080, "Meta": {"app": app}}
        assert c.catalog.register(node, ip, service=service)
    consul_registry = RegistryConfig(
        "consul", "consul", {"address": consul_agent.http_addr, "wait": "5s"}
    )
    async with datapath_mesh(
        tmp_path, CONSUL_SERVICES, WHITELIST, registries=(consul_registry,)
    ) as mesh:
        await mesh.backend("web", WEB_IP, 8080)
        await mesh.proxy(WEB_IP, "web", "9080:8080")
        # the callers' sidecars send from their own addresses, which Consul labels
        await mesh.proxy(FRONT_IP, "frontend", mixer_client=False)
        await mesh.proxy(BACK_IP, "backend", mixer_client=False)

        async def answered(ip: str, want: int) -> bool:
            return (await call(f"http://{ip}:15001", WEB))[0] == want

        await eventually(lambda: answered(FRONT_IP, 200), 20, "the Consul frontend admitted")
        status, body = await call(f"http://{BACK_IP}:15001", WEB)
        # Mixer's NOT_FOUND, as Istio mapped it
        assert status == 404 and "backend is not whitelisted" in body, (status, body)
        for _ in range(5):  # and each keeps its answer (cached or not)
            assert await answered(FRONT_IP, 200) and await answered(BACK_IP, 404)
