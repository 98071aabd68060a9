"""The unified service model and the aggregate registry: pure data, no I/O.

Read this package first: every adapter writes into it and every consumer reads from it.
"""

from meshfed.registry.aggregate import AggregateRegistry, Conflict, Member
from meshfed.registry.events import ChangeEvent, EndpointChange
from meshfed.registry.model import (
    Endpoint,
    Labels,
    Locality,
    Location,
    Port,
    PortMap,
    Protocol,
    Resolution,
    Service,
    Workload,
    parse_spiffe_id,
    spiffe_id,
)

__all__ = [
    "AggregateRegistry",
    "ChangeEvent",
    "Conflict",
    "Endpoint",
    "EndpointChange",
    "Labels",
    "Locality",
    "Location",
    "Member",
    "Port",
    "PortMap",
    "Protocol",
    "Resolution",
    "Service",
    "Workload",
    "parse_spiffe_id",
    "spiffe_id",
]
