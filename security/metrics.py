"""Prometheus metrics of the CA, in the default registry (the hub's ``/metrics`` serves it).

Why a module of its own: the signing service, the CLI's ``ca serve`` monitoring port and the
benchmark all read the same counters; defining them once avoids duplicate registration errors.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

ISSUED = Counter(
    "meshfed_ca_certificates_issued_total",
    "Certificates the CA signed, by how the caller authenticated",
    ["credential"],
)
REFUSED = Counter(
    "meshfed_ca_sign_refused_total",
    "Signing requests refused, by reason",
    ["reason"],
)
SIGN_SECONDS = Histogram(
    "meshfed_ca_sign_seconds",
    "Time to authenticate, authorise and sign one request",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
)
ROOT_EXPIRY = Gauge(
    "meshfed_ca_root_expiry_timestamp_seconds", "When the CA's signing certificate expires"
)
