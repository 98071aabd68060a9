"""Real peers for meshfed's integration suite: Consul, Kubernetes API server + etcd,
Eureka, Redis and Envoy, started on loopback by pytest fixtures.

Built by ``python -m integration.provision`` (see ``integration/README-peers.md``);
the fixtures live in ``integration/conftest.py``. Nothing here imitates a server: if a
peer cannot be had, its tests skip on a developer machine and fail under CI.
"""
