"""Tracing through real Envoy into a real Jaeger: the caller's sidecar, the destination's
sidecar and Mixer's Check in one trace; sampling 0 traces nothing.

A real hub (static registry, Pilot with the Mixer and tracing plugins, Mixer) whose mesh config
sends spans to a real Jaeger all-in-one over OTLP/gRPC, real Envoys with their node-local Mixer
clients, and a real backend. ``client`` (127.0.133.2) calls ``web`` through its sidecar; web's
sidecar checks with Mixer (ext_authz -> node-local client -> Mixer's Check) and reports (access
log -> Report). Jaeger's query API (``/api/traces?service=...``) is the proof.

Hosts: 127.0.133.x.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any

from integration.mixer_datapath_helpers import call, datapath_mesh, eventually, workload
from integration.peers.jaeger import JaegerServer
from meshfed.core.tracing import TracingSettings

CLIENT_IP, GW_IP, WEB_IP = "127.0.133.2", "127.0.133.3", "127.0.133.11"
WEB = "web.default.svc.cluster.local"
CLIENT = "client.default.svc.cluster.local"
GW_PORT = 8133
GATEWAY = f"gateway-{GW_IP}"
SERVICES = (
    workload("client", CLIENT, CLIENT_IP, 9080)
    + workload("web", WEB, WEB_IP, 9080)
    + """---
apiVersion: config.meshfed.io/v1alpha1
kind: Gateway
metadata: {name: front, namespace: default}
spec:
  rules:
  - host: web.example.com
    http:
      paths:
      - {path: /, backend: {serviceName: web, servicePort: 9080}}
"""
)
ALLOW = ""  # no rule: every Check is OK, so each request's first Check reaches Mixer


def services_of(trace: dict[str, Any]) -> dict[str, str]:
    """spanID -> the service (Jaeger process) that made it."""
    processes = trace["processes"]
    return {s["spanID"]: processes[s["processID"]]["serviceName"] for s in trace["spans"]}


def ancestors(trace: dict[str, Any], span: dict[str, Any]) -> list[str]:
    """The services of ``span``'s parent, grandparent, ... up to the trace's root."""
    service = services_of(trace)
    spans = {s["spanID"]: s for s in trace["spans"]}
    out = []
    at = parent_of(span)
    while at in spans:
        out.append(service[at])
        at = parent_of(spans[at])
    return out


def parent_of(span: dict[str, Any]) -> str:
    refs = [r for r in span.get("references", []) if r["refType"] == "CHILD_OF"]
    return refs[0]["spanID"] if refs else ""


async def traces(jaeger: JaegerServer, service: str) -> list[dict[str, Any]]:
    return await asyncio.to_thread(jaeger.traces, service)


async def start(mesh: Any) -> None:
    await mesh.backend("web", WEB_IP, 8080)
    await mesh.proxy(WEB_IP, "web", "9080:8080")
    await mesh.proxy(CLIENT_IP, "client", "9080:8080")


async def test_one_trace_holds_both_sidecars_and_mixers_check(
    tmp_path: Path, jaeger_server: JaegerServer
) -> None:
    tracing = TracingSettings(enabled=True, collector=jaeger_server.otlp_grpc, sampling=100.0)
    async with datapath_mesh(tmp_path, SERVICES, ALLOW, tracing=tracing) as mesh:
        await start(mesh)
        marker = uuid.uuid4().hex
        status, body = await call(f"http://{CLIENT_IP}:15001", WEB, f"/{marker}")
        assert (status, body) == (200, "web")

        found: dict[str, Any] = {}

        async def traced() -> bool:
            for trace in await traces(jaeger_server, WEB):
                names = set(services_of(trace).values())
                if {CLIENT, WEB, "mixer"} <= names:
                    found["trace"] = trace
                    return True
            return False

        await eventually(traced, 30, "a trace with client's, web's and Mixer's spans in Jaeger")
        trace = found["trace"]
        service = services_of(trace)
        by_service: dict[str, list[dict[str, Any]]] = {}
        for span in trace["spans"]:
            by_service.setdefault(service[span["spanID"]], []).append(span)
        # the client's sidecar started the trace; web's sidecar continued it
        (root,) = [s for s in trace["spans"] if not parent_of(s)]
        assert service[root["spanID"]] == CLIENT
        tags = {t["key"]: t["value"] for t in root["tags"]}
        assert marker in str(tags.get("http.url", "")), tags
        web_server = [s for s in by_service[WEB] if parent_of(s) == root["spanID"]]
        assert web_server, [(s["operationName"], service[parent_of(s)]) for s in by_service[WEB]]
        # Mixer's Check is in the same trace, below web's node-local client and web's sidecar
        # (its ext_authz call); the client missed its cache
        (check,) = [s for s in by_service["mixer"] if s["operationName"] == "Mixer.Check"]
        chain = ancestors(trace, check)
        assert chain[:2] == ["mixer-client", WEB] and chain[-1] == CLIENT, chain
        (local,) = by_service["mixer-client"]
        assert local["operationName"] == "MixerClient.Check"
        assert {"key": "mixer.cache", "type": "string", "value": "miss"} in local["tags"]
        check_tags = {t["key"]: t["value"] for t in check["tags"]}
        assert check_tags["mixer.destination.service"] == WEB
        assert check_tags["mixer.status.code"] == 0

        # the request's report reaches Mixer after the client's batch delay: a Report span
        # in the same trace
        trace_id = trace["traceID"]

        async def reported() -> bool:
            got = await asyncio.to_thread(jaeger_server.trace, trace_id)
            return got is not None and any(
                s["operationName"] == "Mixer.Report" for s in got["spans"]
            )

        await eventually(reported, 30, "Mixer's Report span in the request's trace")

        # web's client sent that report in a batch: a MixerClient.Report span at the root of
        # its own trace, linked to this request's trace (Jaeger: a FOLLOWS_FROM reference),
        # and Mixer's Report span in the request's trace links back to the batch
        batch: dict[str, Any] = {}

        async def batched() -> bool:
            for got in await traces(jaeger_server, "mixer-client"):
                for span in got["spans"]:
                    refs = span.get("references", [])
                    if span["operationName"] == "MixerClient.Report" and any(
                        r["traceID"] == trace_id for r in refs
                    ):
                        batch["span"] = span
                        return True
            return False

        await eventually(batched, 30, "the client's Report batch span linked to the request")
        span = batch["span"]
        assert not parent_of(span) and span["traceID"] != trace_id
        (link,) = [r for r in span["references"] if r["traceID"] == trace_id]
        assert link["refType"] == "FOLLOWS_FROM"
        batch_tags = {t["key"]: t["value"] for t in span["tags"]}
        assert batch_tags["mixer.report.entries"] >= batch_tags["mixer.report.traced"] >= 1
        assert batch_tags["span.kind"] == "client"
        got = await asyncio.to_thread(jaeger_server.trace, trace_id)
        assert got is not None
        (mixer_report,) = [s for s in got["spans"] if s["operationName"] == "Mixer.Report"]
        assert {(r["traceID"], r["spanID"], r["refType"]) for r in mixer_report["references"]} >= {
            (span["traceID"], span["spanID"], "FOLLOWS_FROM")
        }, mixer_report["references"]

        # the same request again: web's client answers from its cache, so the trace has the
        # client's span (a hit) and no Mixer.Check
        again = uuid.uuid4().hex
        assert await call(f"http://{CLIENT_IP}:15001", WEB, f"/{again}") == (200, "web")
        cached: dict[str, Any] = {}

        async def hit() -> bool:
            for trace in await traces(jaeger_server, WEB):
                urls = [
                    t["value"] for s in trace["spans"] for t in s["tags"] if t["key"] == "http.url"
                ]
                if (
                    any(again in str(u) for u in urls)
                    and "mixer-client" in services_of(trace).values()
                ):
                    cached["trace"] = trace
                    return True
            return False

        await eventually(hit, 30, "the second request's trace with the client's cache hit")
        spans = cached["trace"]["spans"]
        local_spans = [s for s in spans if s["operationName"] == "MixerClient.Check"]
        assert local_spans and all(
            {"key": "mixer.cache", "type": "string", "value": "hit"} in s["tags"]
            for s in local_spans
        )
        assert not [s for s in spans if s["operationName"] == "Mixer.Check"]

        # north-south: gateway -> web's sidecar -> web, the gateway's Check in the same trace
        await mesh.proxy(GW_IP, "ingress", gateway_port=GW_PORT)
        assert await call(f"http://{GW_IP}:{GW_PORT}", "web.example.com", "/front") == (200, "web")
        entered: dict[str, Any] = {}

        async def through_gateway() -> bool:
            for trace in await traces(jaeger_server, GATEWAY):
                if {GATEWAY, WEB, "mixer"} <= set(services_of(trace).values()):
                    entered["trace"] = trace
                    return True
            return False

        await eventually(through_gateway, 30, "a trace from the gateway through web in Jaeger")
        trace = entered["trace"]
        service = services_of(trace)
        (root,) = [s for s in trace["spans"] if not parent_of(s)]
        assert service[root["spanID"]] == GATEWAY
        assert any(
            service[s["spanID"]] == WEB and ancestors(trace, s)[-1:] == [GATEWAY]
            for s in trace["spans"]
        )
        checks = [s for s in trace["spans"] if s["operationName"] == "Mixer.Check"]
        assert checks and all(ancestors(trace, c)[-1] == GATEWAY for c in checks)


async def test_sampling_zero_traces_nothing(tmp_path: Path, jaeger_server: JaegerServer) -> None:
    tracing = TracingSettings(enabled=True, collector=jaeger_server.otlp_grpc, sampling=0.0)
    async with datapath_mesh(tmp_path, SERVICES, ALLOW, tracing=tracing) as mesh:
        await start(mesh)
        sidecar = f"http://{CLIENT_IP}:15001"
        for i in range(20):
            assert (await call(sidecar, WEB, f"/unsampled-{i}"))[0] == 200
        # A request the caller asks to trace (x-client-trace-id, Envoy's client sampling)
        # is traced even at 0 %: once it is in Jaeger, spans of the others would be too.
        forced = uuid.uuid4().hex
        status, _ = await call(sidecar, WEB, "/forced", headers={"x-client-trace-id": forced})
        assert status == 200

        async def forced_arrived() -> bool:
            return bool(await traces(jaeger_server, WEB))

        await eventually(forced_arrived, 30, "the forced trace in Jaeger")
        await asyncio.sleep(1.0)  # anything else in flight arrives too
        got = await traces(jaeger_server, WEB) + await traces(jaeger_server, CLIENT)
        urls = {
            str(t["value"])
            for trace in got
            for s in trace["spans"]
            for t in s["tags"]
            if t["key"] == "http.url"
        }
        assert urls and all("/forced" in u for u in urls), urls
        assert len({trace["traceID"] for trace in got}) == 1


def test_the_sdk_provider_exports_to_jaeger_over_otlp_grpc(jaeger_server: JaegerServer) -> None:
    from meshfed.core.tracing import extract, tracer_provider

    settings = TracingSettings(enabled=True, collector=jaeger_server.otlp_grpc, sampling=0.0)
    provider = tracer_provider(settings, "sdk-smoke")
    tracer = provider.get_tracer("smoke")
    trace_id = uuid.uuid4().hex
    sampled = extract({"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"})
    tracer.start_span("joined", context=sampled).end()
    tracer.start_span("unsampled-root").end()  # sampling 0: a root span is dropped
    provider.shutdown()  # flushes

    deadline = time.monotonic() + 15
    got = jaeger_server.trace(trace_id)
    while got is None and time.monotonic() < deadline:
        time.sleep(0.2)
        got = jaeger_server.trace(trace_id)
    assert got is not None, "the span never reached Jaeger"
    (span,) = got["spans"]
    assert span["operationName"] == "joined"
    assert got["processes"][span["processID"]]["serviceName"] == "sdk-smoke"
    assert [t["traceID"] for t in jaeger_server.traces("sdk-smoke")] == [trace_id]


async def test_b3_headers_keep_one_trace_through_envoys_zipkin_tracer(
    tmp_path: Path, jaeger_server: JaegerServer
) -> None:
    """Istio 0.2's way: Envoy's Zipkin tracer (to Jaeger's Zipkin receiver) and an app that
    forwards ``x-b3-*``; the node-local client and Mixer read B3 and join the same trace."""
    tracing = TracingSettings(
        enabled=True,
        collector=jaeger_server.otlp_grpc,
        sampling=100.0,
        zipkin=jaeger_server.zipkin,
    )
    async with datapath_mesh(tmp_path, SERVICES, ALLOW, tracing=tracing) as mesh:
        await start(mesh)
        sidecar = f"http://{CLIENT_IP}:15001"
        multi_id, single_id = uuid.uuid4().hex, uuid.uuid4().hex
        app_span = "00f067aa0ba902b7"  # the calling app's span, as it forwards it
        multi = {"x-b3-traceid": multi_id, "x-b3-spanid": app_span, "x-b3-sampled": "1"}
        assert await call(sidecar, WEB, "/b3-multi", multi) == (200, "web")
        single = {"b3": f"{single_id}-{app_span}-1"}
        assert await call(sidecar, WEB, "/b3-single", single) == (200, "web")

        # the first Check misses web's client cache and reaches Mixer; the second is a hit
        for trace_id, path, cache in (
            (multi_id, "/b3-multi", "miss"),
            (single_id, "/b3-single", "hit"),
        ):
            wanted = {"MixerClient.Check", "Mixer.Report"} | (
                {"Mixer.Check"} if cache == "miss" else set()
            )
            found: dict[str, Any] = {}

            async def complete(
                trace_id: str = trace_id, found: dict[str, Any] = found, wanted: set[str] = wanted
            ) -> bool:
                got = await asyncio.to_thread(jaeger_server.trace, trace_id)
                found["trace"] = got
                names = {s["operationName"] for s in got["spans"]} if got else set()
                return wanted <= names and (
                    len(set(services_of(got).values()) - {"mixer", "mixer-client"}) >= 2
                )

            try:
                await eventually(complete, 30, f"the {path} trace with Envoy's and Mixer's spans")
            except AssertionError:
                got = found.get("trace")
                spans = (
                    []
                    if not got
                    else [(s["operationName"], services_of(got)[s["spanID"]]) for s in got["spans"]]
                )
                raise AssertionError(f"{path}: {spans}") from None
            trace = found["trace"]
            service = services_of(trace)
            envoy_spans = [
                s for s in trace["spans"] if service[s["spanID"]] not in ("mixer", "mixer-client")
            ]
            # the sidecars' spans (Zipkin), the client's outbound one the child of the app's
            urls = [t["value"] for s in envoy_spans for t in s["tags"] if t["key"] == "http.url"]
            assert any(path in str(u) for u in urls), urls
            assert any(parent_of(s) == app_span for s in envoy_spans), [
                (s["operationName"], parent_of(s)) for s in envoy_spans
            ]
            assert len({service[s["spanID"]] for s in envoy_spans}) >= 2  # both sidecars
            (local,) = [s for s in trace["spans"] if s["operationName"] == "MixerClient.Check"]
            assert {"key": "mixer.cache", "type": "string", "value": cache} in local["tags"]
            checks = [s for s in trace["spans"] if s["operationName"] == "Mixer.Check"]
            assert [parent_of(c) for c in checks] == ([local["spanID"]] if cache == "miss" else [])
            # the client's span hangs below an Envoy span (the ext_authz call's B3 context)
            assert service.get(parent_of(local)) not in (None, "mixer", "mixer-client")
