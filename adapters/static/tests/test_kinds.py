"""ServiceEntry / WorkloadEntry parsing and translation into the model."""

import textwrap
from pathlib import Path

from meshfed.adapters.static.registry import parse_file
from meshfed.adapters.static.translate import translate
from meshfed.registry import Locality, Location, Port, Protocol, Resolution


def write(tmp_path: Path, text: str, name: str = "svc.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


SERVICES = """
    apiVersion: networking.istio.io/v1beta1
    kind: ServiceEntry
    metadata: {name: reviews, namespace: shop}
    spec:
      hosts: [reviews.shop.svc.cluster.local, reviews.internal]
      addresses: [10.9.0.1]
      location: MESH_INTERNAL
      resolution: STATIC
      ports:
        - {number: 9080, name: http, protocol: http, targetPort: 8080}
        - {number: 9090, name: metrics}
      workloadSelector: {labels: {app: reviews}}
    ---
    apiVersion: networking.meshfed.io/v1alpha1
    kind: WorkloadEntry
    metadata: {name: vm-1, namespace: shop}
    spec:
      address: 127.0.0.21
      ports: {http: 9081}
      labels: {app: reviews, version: v2}
      serviceAccount: reviews
      locality: eu-west/zone-1
      weight: 3
    ---
    apiVersion: networking.meshfed.io/v1alpha1
    kind: WorkloadEntry
    metadata: {name: other-ns, namespace: elsewhere}
    spec: {address: 127.0.0.22, labels: {app: reviews}}
    ---
    apiVersion: networking.istio.io/v1
    kind: ServiceEntry
    metadata: {name: ext, namespace: shop}
    spec:
      hosts: [api.example.com]
      ports: [{number: 443, name: https, protocol: HTTPS}]
      resolution: DNS
    ---
    apiVersion: config.istio.io/v1alpha2
    kind: RouteRule
    metadata: {name: not-ours}
    spec: {destination: {name: reviews}}
"""


def test_service_entry_and_workload_entries_become_services_and_endpoints(tmp_path):
    state, errors = parse_file(write(tmp_path, SERVICES))
    assert errors == []
    services, endpoints, problems = translate(
        state.entries, state.workloads, "example.org", "static"
    )
    assert problems == []
    by_host = {s.hostname: s for s in services}
    reviews = by_host["reviews.shop.svc.cluster.local"]
    assert reviews.ports == (Port(9080, "http", Protocol.HTTP), Port(9090, "metrics"))
    assert reviews.address == "10.9.0.1"
    assert reviews.location is Location.MESH_INTERNAL
    assert by_host["reviews.internal"].ports == reviews.ports
    (ep,) = endpoints["reviews.shop.svc.cluster.local"]
    assert ep.address == "127.0.0.21"  # the other namespace's workload is not selected
    assert dict(ep.ports) == {"http": 9081, "metrics": 9090}
    assert ep.identity == "spiffe://example.org/ns/shop/sa/reviews"
    assert ep.workload == "vm-1"  # the WorkloadEntry's name
    assert ep.locality == Locality("eu-west", "zone-1")
    assert ep.weight == 3 and ep.labels["version"] == "v2" and ep.registry == "static"
    ext = by_host["api.example.com"]
    assert ext.resolution is Resolution.DNS and ext.location is Location.MESH_EXTERNAL
    assert ext.ports[0].protocol is Protocol.TLS
    assert "api.example.com" not in endpoints


def test_inline_endpoints_use_target_port(tmp_path):
    state, _ = parse_file(
        write(
            tmp_path,
            """
            apiVersion: networking.meshfed.io/v1alpha1
            kind: ServiceEntry
            metadata: {name: db}
            spec:
              hosts: [db.local]
              location: MESH_INTERNAL
              resolution: NONE
              ports: [{number: 5432, name: tcp-pg, targetPort: 15432}]
              endpoints: [{address: 127.0.0.9}]
            """,
        )
    )
    services, endpoints, _ = translate(state.entries, state.workloads, "td", "static")
    assert services[0].resolution is Resolution.PASSTHROUGH
    assert services[0].namespace == "default"
    assert dict(endpoints["db.local"][0].ports) == {"tcp-pg": 15432}
    assert endpoints["db.local"][0].identity == "spiffe://td/ns/default/sa/default"


def test_errors_name_file_object_field_and_expectation(tmp_path):
    path = write(
        tmp_path,
        """
        apiVersion: networking.meshfed.io/v1alpha1
        kind: ServiceEntry
        metadata: {name: broken, namespace: shop}
        spec:
          hosts: [web.shop]
          location: INSIDE
          ports:
            - {number: 70000, name: http}
          endpoints:
            - {address: 127.0.0.5, ports: {grpc: 80}}
        """,
    )
    state, errors = parse_file(path)
    assert state is None
    text = [str(e) for e in errors]
    location = next(t for t in text if "spec.location" in t)
    assert location.startswith(f"{path}: ServiceEntry shop/broken: spec.location: expected one of")
    assert location.endswith("MESH_EXTERNAL, MESH_INTERNAL, got 'INSIDE'")
    assert any(
        "spec.ports[0].number: expected an integer in 1..65535, got 70000" in t for t in text
    )
    assert any("spec.endpoints[0].ports.grpc: expected a name from spec.ports" in t for t in text)


def test_invalid_yaml_reports_line(tmp_path):
    state, errors = parse_file(write(tmp_path, "kind: ServiceEntry\n  bad: [indent\n"))
    assert state is None
    assert "invalid YAML" in str(errors[0]) and "line" in str(errors[0])


def test_duplicate_host_reported_and_first_kept(tmp_path):
    doc = """
        apiVersion: networking.meshfed.io/v1alpha1
        kind: ServiceEntry
        metadata: {{name: {name}}}
        spec:
          hosts: [dup.local]
          ports: [{{number: {port}, name: http}}]
          resolution: DNS
    """
    state_a, _ = parse_file(write(tmp_path, doc.format(name="a", port=80), "a.yaml"))
    state_b, _ = parse_file(write(tmp_path, doc.format(name="b", port=81), "b.yaml"))
    services, _, problems = translate([*state_b.entries, *state_a.entries], [], "td", "static")
    assert services[0].ports[0].number == 80
    assert "already declared by ServiceEntry default/a" in str(problems[0])
