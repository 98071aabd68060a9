"""Pilot: turns the unified registry model into Envoy v3 configuration and serves it over ADS.

Layout, one job per module:
- ``translate/``: pure functions from model objects to Envoy protos (clusters, endpoints,
  listeners, routes, interception-mode listeners; routing rules, subsets, policies, egress and
  gateways arrive through ``traffic_hooks``). No state, no I/O.
- ``config/``: routing-rule kinds, validation and the config store.
- ``node``: what a proxy says about itself in its bootstrap (id, namespace, IP, app ports).
- ``resources``: the shared vocabulary (resource, version digest, change, proxy view); a leaf.
- ``plugins``: the listener-plugin interface every HTTP/TCP chain and service cluster passes
  through (``docs/pilot-plugins.md``); ``mtls_plugin`` is mutual TLS as the first plugin.
- ``cache``: resources built once per registry change and shared by every proxy, each with a
  content-hash version; ``traffic_hooks`` adds what routing config needs through a narrow API.
- ``views``: the one pipeline that builds a proxy's view (sidecar or gateway, interception,
  locality, no-SDS fallback) from the cache.
- ``watch``: per-stream, per-type version/nonce/ACK/NACK bookkeeping (pure, unit tested);
  ``push_queue``: at most one pending response per type per stream (merged, latest wins);
  ``nacklog``: bounded, per-proxy rate-limited NACK logging.
- ``debounce``: quiet-period + max-delay batching of registry events.
- ``ads``: the ``grpc.aio`` AggregatedDiscoveryService (state-of-the-world and delta).
- ``server``: wires the aggregate registry, debounce, cache and ADS together.
- ``status`` / ``metrics``: the operator view (``/debug/syncz``, config dumps, Prometheus).
"""
