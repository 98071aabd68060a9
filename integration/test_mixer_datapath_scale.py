"""Mixer in the data path at full size, through real Envoy and the real hub: every figure
the feature promises, counted on real traffic (each load bounded in count and time).

- Telemetry: 1,000 requests give ``request_count`` = 1,000 in the ``prometheus`` handler
  (source, destination, code) and 1,000 ``stdio`` JSON lines, though the hub's Mixer is
  stopped after 400 of them and restarted after 700: the queued batch is retried, nothing is
  lost and nothing counted twice.
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
import time
from pathlib import Path

import consul
import pytest

from integration.mixer_datapath_helpers import (
    MEMQUOTA_API,
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
HUB2_IP = "127.0.135.50"
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


async def test_thousand_requests_counted_and_logged_across_a_mixer_restart(
    tmp_path: Path,
) -> None:
    from integration.routing_helpers import free_port

    log = tmp_path / "access.jsonl"
    listen = f"127.0.0.1:{free_port()}"
    services = workload("client", CLIENT, CLIENT_IP, 9080) + workload("api", API, API_IP, 9080)
    async with datapath_mesh(
        tmp_path, services, TELEMETRY.format(log=log), mixer_listen=listen
    ) as mesh:
        await mesh.backend("api", API_IP, 8080)
        await mesh.proxy(API_IP, "api", "9080:8080")
        await mesh.proxy(CLIENT_IP, "client", mixer_client=False)
        (api_client,) = mesh.clients

        def path(i: int) -> str:
            return f"/item/{i}"

        async def counted(n: int) -> bool:
            return request_count(await mesh.metrics(), CLIENT, API, 200) == n

        async def logged(n: int) -> bool:
            return len(stdio_lines(log)) == n

        codes = await load(SIDECAR, API, 400, path=path)
        assert codes == [200] * 400
        await eventually(lambda: counted(400), 20, "400 requests counted")
        await eventually(lambda: logged(400), 10, "400 lines logged")

        await mesh.mixer.stop()  # Report cannot reach the hub: the client holds the bags
        codes = await load(SIDECAR, API, 300, path=lambda i: path(400 + i))
        assert codes == [200] * 300  # cached answers, else the fail policy (open)

        async def queued() -> bool:
            return api_client.batcher.pending == 300

        await eventually(queued, 10, "300 bags queued while Mixer is away")
        assert api_client.batcher.stats.send_failures >= 1  # a batch was tried and failed

        await mesh.restart_mixer()  # the same address: the queued batch is retried
        codes = await load(SIDECAR, API, 300, path=lambda i: path(700 + i))
        assert codes == [200] * 300
        # the restarted Mixer's prometheus handler counts from 0: the queued 300 and 300 more
        await eventually(lambda: counted(600), 30, "the queued and the new reports counted")
        await eventually(lambda: logged(1000), 10, "1,000 lines logged")
        await asyncio.sleep(1.0)  # nothing more arrives: no report was sent twice
        assert await counted(600) and await logged(1000)
        lines = stdio_lines(log)
        assert sorted(line["url"] for line in lines) == sorted(path(i) for i in range(1000))
        assert {(line["responseCode"], line["method"]) for line in lines} == {(200, "GET")}
        assert {(line["source"], line["destination"]) for line in lines} == {(CLIENT, API)}
        assert {line["instance"] for line in lines} == {"accesslog.logentry.istio-system"}
        assert api_client.batcher.stats.dropped == 0 and api_client.batcher.pending == 0


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
