"""Whatever a handler resource's spec holds, parse_params answers params or field errors.

Hostile specs come from hypothesis: arbitrary YAML-shaped values, and the kinds' own field names
with values of every type, so the generator reaches past the unknown-field check.
"""

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshfed.mixer.handlers.api import load_kinds
from meshfed.mixer.handlers.tests.helpers import reader

KINDS = {name: kind for name, kind in load_kinds().items() if kind.__module__.startswith("meshfed")}

FIELDS = [
    "status", "code", "message", "validDuration", "validUseCount", "providerUrl",
    "refreshInterval", "ttl", "cachingInterval", "cachingUseCount", "overrides", "entryType",
    "blacklist", "quotas", "name", "maxAmount", "dimensions", "minDeduplicationDuration",
    "redisServerUrl", "connectionPoolSize", "bucketDuration", "rateLimitAlgorithm", "metrics",
    "instanceName", "kind", "labelNames", "buckets", "explicitBuckets", "bounds",
    "linearBuckets", "exponentialBuckets", "numFiniteBuckets", "width", "offset",
    "growthFactor", "scale", "logStream", "outputPath", "severityLevels", "metricLevel",
    "outputAsJson", "address", "prefix", "flushDuration", "flushBytes", "samplingRate", "type",
    "nameTemplate",
]  # fmt: skip

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True),
    st.text(max_size=12),
    st.sampled_from(["1s", "0s", "-1s", "COUNTER", "ROLLING_WINDOW", "REGEX", "(", "a:1", "FILE"]),
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=6), inner, max_size=5)
    ),
    max_leaves=25,
)
specs = st.dictionaries(st.sampled_from(FIELDS), values, max_size=6)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.sampled_from(sorted(KINDS)), specs)
def test_parse_params_never_raises(kind_name, spec):
    r = reader(spec, kind_name)
    params = KINDS[kind_name].parse_params(r)
    assert (params is None) == bool(r.errors)
    for e in r.errors:
        assert e.file and e.obj and e.message
