"""ServiceEntry and WorkloadEntry: how VMs and external services are written down.

The field names are Istio's (``networking.istio.io`` ServiceEntry / WorkloadEntry), so a user who
knows those kinds can write these; Istio's documents are accepted as written next to meshfed's own
group ``networking.meshfed.io/v1alpha1``. Parsing validates every field and reports errors that
name the file, object, field and what was expected; it never raises on bad input.
"""

from __future__ import annotations

import functools

import attrs

from meshfed.core import validators as v
from meshfed.core.resources import ConfigError, Document, FieldReader
from meshfed.registry.model import Labels, Locality, Location, Port, Protocol, Resolution

API_VERSIONS = frozenset(
    {
        "networking.meshfed.io/v1alpha1",
        "networking.istio.io/v1alpha3",
        "networking.istio.io/v1beta1",
        "networking.istio.io/v1",
    }
)

RESOLUTION_ALIASES = {"NONE": Resolution.PASSTHROUGH, "DNS_ROUND_ROBIN": Resolution.DNS}
PROTOCOL_ALIASES = {"HTTPS": Protocol.TLS, "GRPC-WEB": Protocol.GRPC}


@attrs.frozen(slots=True)
class ServicePortSpec:
    port: Port
    target_port: int | None = None


@attrs.frozen(slots=True)
class WorkloadSpec:
    """A WorkloadEntry, or one inline endpoint of a ServiceEntry."""

    name: str
    namespace: str
    address: str
    ports: Labels = attrs.field(factory=Labels, converter=Labels)  # port name -> number (as str)
    labels: Labels = attrs.field(factory=Labels, converter=Labels)
    service_account: str = ""
    locality: Locality = attrs.field(factory=Locality)
    weight: int = 1


@attrs.frozen(slots=True)
class ServiceEntrySpec:
    name: str
    namespace: str
    file: str
    hosts: tuple[str, ...]
    addresses: tuple[str, ...]
    ports: tuple[ServicePortSpec, ...]
    location: Location
    resolution: Resolution
    endpoints: tuple[WorkloadSpec, ...]
    workload_selector: Labels | None
    labels: Labels = attrs.field(factory=Labels, converter=Labels)


def _locality(value: str) -> str:
    """``region/zone/subzone``: at most three parts, each without spaces or control
    characters (Envoy's locality fields, and metric labels built from them)."""
    parts = value.split("/")
    if len(parts) > 3 or any(not p or not p.isprintable() or " " in p for p in parts):
        raise v.Invalid(f"expected region, region/zone or region/zone/subzone, got {v.show(value)}")
    return value


def parse_locality(value: str) -> Locality:
    """``region/zone/subzone`` (Istio's locality string) into a Locality."""
    parts = [*value.split("/"), "", "", ""][:3] if value else ["", "", ""]
    return Locality(*parts)


def _check_api_version(doc: Document, reader: FieldReader) -> None:
    if doc.api_version not in API_VERSIONS:
        reader.errors.append(
            ConfigError(
                doc.file,
                doc.ref,
                "apiVersion",
                f"expected one of {', '.join(sorted(API_VERSIONS))}, got {doc.api_version!r}",
            )
        )


def _workload(reader: FieldReader, name: str, namespace: str) -> WorkloadSpec | None:
    before = len(reader.errors)
    reader.unknown_fields(
        {"address", "ports", "labels", "serviceAccount", "locality", "weight", "network"}
    )
    address = reader.checked("address", v.host_or_ip, required=True)
    ports = reader.str_map("ports")
    for port_name in list(ports):
        try:
            v.port_name(port_name)
            ports[port_name] = str(v.port(reader.data["ports"][port_name]))
        except v.Invalid as exc:
            reader.error(f"ports.{port_name}", str(exc))
    labels = reader.labels("labels")
    # It becomes the .../sa/<account> segment of the workload's SPIFFE ID.
    service_account = reader.checked("serviceAccount", v.identity_segment)
    locality = parse_locality(reader.checked("locality", _locality))
    weight = reader.int("weight", default=1, minimum=1, maximum=1 << 31)
    if len(reader.errors) > before:
        return None
    return WorkloadSpec(
        name, namespace, address, ports, labels, service_account, locality, weight or 1
    )


def parse_workload_entry(doc: Document) -> tuple[WorkloadSpec | None, list[ConfigError]]:
    reader = FieldReader(doc.file, doc.ref, doc.spec, "spec")
    _check_api_version(doc, reader)
    spec = _workload(reader, doc.name, doc.namespace)
    return (None if reader.errors else spec), reader.errors


def parse_service_entry(doc: Document) -> tuple[ServiceEntrySpec | None, list[ConfigError]]:
    reader = FieldReader(doc.file, doc.ref, doc.spec, "spec")
    _check_api_version(doc, reader)
    reader.unknown_fields(
        {
            "hosts",
            "addresses",
            "ports",
            "location",
            "resolution",
            "endpoints",
            "workloadSelector",
            "exportTo",
            "subjectAltNames",
        }
    )
    hosts = tuple(
        reader.checked_list("hosts", functools.partial(v.hostname, wildcard=True), required=True)
    )
    # The first address is the service's virtual IP, which listeners and routes use as is.
    addresses = tuple(reader.checked_list("addresses", v.ip_address))
    ports: list[ServicePortSpec] = []
    seen_names: set[str] = set()
    for port_reader in reader.readers("ports", required=True):
        port_reader.unknown_fields({"number", "name", "protocol", "targetPort"})
        number = port_reader.port("number", required=True)
        name = port_reader.checked("name", v.port_name, required=True)
        protocol = port_reader.enum("protocol", Protocol, Protocol.TCP, PROTOCOL_ALIASES)
        target = port_reader.int("targetPort", minimum=1, maximum=65535) or None
        if name in seen_names:
            port_reader.error("name", f"expected a unique port name, {name!r} is used twice")
        seen_names.add(name)
        if number and name:
            ports.append(ServicePortSpec(Port(number, name, protocol), target))
    location = reader.enum("location", Location, Location.MESH_EXTERNAL)
    resolution = reader.enum("resolution", Resolution, Resolution.STATIC, RESOLUTION_ALIASES)
    endpoints = []
    for i, ep_reader in enumerate(reader.readers("endpoints")):
        workload = _workload(ep_reader, f"{doc.name}-{i}", doc.namespace)
        if workload is not None:
            unknown = set(workload.ports) - seen_names
            for port_name in sorted(unknown):
                ep_reader.error(
                    f"ports.{port_name}",
                    f"expected a name from spec.ports ({', '.join(sorted(seen_names))})",
                )
            endpoints.append(workload)
    if resolution is not Resolution.DNS:
        # Envoy takes STATIC (EDS) endpoints as IP addresses only; names need DNS resolution.
        for i, workload in enumerate(endpoints):
            try:
                v.ip_address(workload.address)
            except v.Invalid:
                reader.error(
                    f"endpoints[{i}].address",
                    f"expected an IP address for resolution {resolution.value} (a DNS name "
                    f"needs resolution: DNS), got {v.show(workload.address)}",
                )
    selector_reader = reader.reader("workloadSelector")
    selector = Labels(selector_reader.labels("labels")) if selector_reader else None
    if selector is not None and endpoints:
        reader.error("workloadSelector", "expected either endpoints or workloadSelector, not both")
    internal_static = location is Location.MESH_INTERNAL and resolution is Resolution.STATIC
    if internal_static and not endpoints and selector is None and hosts:
        # Nothing could ever answer such a service; say so rather than serve it.
        reader.error("endpoints", "expected endpoints or a workloadSelector for a STATIC service")
    if reader.errors:
        return None, reader.errors
    return (
        ServiceEntrySpec(
            doc.name,
            doc.namespace,
            doc.file,
            hosts,
            addresses,
            tuple(ports),
            location,
            resolution,
            tuple(endpoints),
            selector,
            doc.labels,
        ),
        [],
    )


PARSERS = {"ServiceEntry": parse_service_entry, "WorkloadEntry": parse_workload_entry}
