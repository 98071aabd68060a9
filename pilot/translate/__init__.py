"""Pure translation from the unified model to Envoy v3 protos: no state, no I/O.

Each function takes model objects (and a proxy's node for per-proxy resources) and returns
protos; the cache decides when to call them and shares the results.
"""
