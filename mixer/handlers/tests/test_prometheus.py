import datetime as dt

import pytest

from meshfed.mixer.handlers import prometheus
from meshfed.mixer.handlers.tests.helpers import env, field_errors, parse_ok
from meshfed.mixer.templates import Metric

SPEC = {
    "metrics": [
        {
            "name": "request_count",
            "instanceName": "requestcount.metric.istio-system",
            "kind": "COUNTER",
            "labelNames": ["source_service", "destination_service", "response_code"],
        },
        {
            "name": "request_duration",
            "instanceName": "requestduration.metric.istio-system",
            "kind": "DISTRIBUTION",
            "labelNames": ["destination_service"],
            "buckets": {"explicitBuckets": {"bounds": [0.005, 0.01, 0.1, 1]}},
        },
        {"name": "in_flight", "instanceName": "inflight", "kind": "GAUGE"},
    ]
}


def count(dims):
    return Metric("requestcount.metric.istio-system", 1, dims)


async def test_counter_histogram_gauge_read_back_from_the_registry():
    e = env()
    h = await prometheus.KIND.build(parse_ok(prometheus.KIND, SPEC), e)
    dims = {"source_service": "a", "destination_service": "b", "response_code": 200}
    await h.report([count(dims)] * 3 + [count({**dims, "response_code": 503})])
    await h.report(
        [
            Metric(
                "requestduration.metric.istio-system",
                dt.timedelta(milliseconds=50),
                {"destination_service": "b"},
            ),
            Metric("requestduration.metric.istio-system", 2.5, {"destination_service": "b"}),
            Metric("inflight.metric.default", 7, {}),
        ]
    )
    r = e.metrics
    labels = {"source_service": "a", "destination_service": "b"}
    assert r.get_sample_value("istio_request_count_total", {**labels, "response_code": "200"}) == 3
    assert r.get_sample_value("istio_request_count_total", {**labels, "response_code": "503"}) == 1
    hist = {"destination_service": "b"}
    assert r.get_sample_value("istio_request_duration_count", hist) == 2
    assert r.get_sample_value("istio_request_duration_sum", hist) == pytest.approx(2.55)
    assert r.get_sample_value("istio_request_duration_bucket", {**hist, "le": "0.01"}) == 0
    assert r.get_sample_value("istio_request_duration_bucket", {**hist, "le": "0.1"}) == 1
    assert r.get_sample_value("istio_request_duration_bucket", {**hist, "le": "+Inf"}) == 2
    assert r.get_sample_value("istio_in_flight", {}) == 7
    await h.close()
    assert r.get_sample_value("istio_in_flight", {}) is None  # the last user unregistered it


async def test_linear_and_exponential_buckets():
    spec = {
        "metrics": [
            {
                "name": "lin",
                "instanceName": "lin",
                "kind": "DISTRIBUTION",
                "buckets": {"linearBuckets": {"numFiniteBuckets": 3, "width": 10, "offset": 1}},
            },
            {
                "name": "exp",
                "instanceName": "exp",
                "kind": "DISTRIBUTION",
                "buckets": {
                    "exponentialBuckets": {"numFiniteBuckets": 3, "growthFactor": 10, "scale": 0.1}
                },
            },
        ]
    }
    params = parse_ok(prometheus.KIND, spec)
    assert params.metrics[0].buckets == (1, 11, 21, 31)
    assert params.metrics[1].buckets == pytest.approx((0.1, 1, 10, 100))


async def test_missing_dimension_and_bad_values_do_not_lose_the_batch():
    e = env()
    h = await prometheus.KIND.build(parse_ok(prometheus.KIND, SPEC), e)
    await h.report(
        [
            count({"source_service": "a"}),
            Metric("requestcount.metric.istio-system", "lots", {}),
            Metric("requestcount.metric.istio-system", -1, {}),
            count({"source_service": "a"}),
        ]
    )
    value = e.metrics.get_sample_value(
        "istio_request_count_total",
        {"source_service": "a", "destination_service": "", "response_code": ""},
    )
    assert value == 2
    await h.close()


async def test_rebuilt_handler_shares_the_collector_while_the_old_one_drains():
    e = env()
    old = await prometheus.KIND.build(parse_ok(prometheus.KIND, SPEC), e)
    dims = {"source_service": "a", "destination_service": "b", "response_code": 200}
    labels = {k: str(v) for k, v in dims.items()}
    await old.report([count(dims)])
    new = await prometheus.KIND.build(parse_ok(prometheus.KIND, SPEC), e)  # next snapshot
    await new.report([count(dims)])
    await old.close()  # the old snapshot drained
    await new.report([count(dims)])
    assert e.metrics.get_sample_value("istio_request_count_total", labels) == 3
    changed = {
        "metrics": [{**SPEC["metrics"][0], "labelNames": ["source_service"]}]
    }  # a new shape replaces the metric at once
    third = await prometheus.KIND.build(parse_ok(prometheus.KIND, changed), e)
    await third.report([count(dims)])
    assert e.metrics.get_sample_value("istio_request_count_total", {"source_service": "a"}) == 1
    await new.close()
    assert e.metrics.get_sample_value("istio_request_count_total", {"source_service": "a"}) == 1
    await third.close()
    assert e.metrics.get_sample_value("istio_request_count_total", {"source_service": "a"}) is None


async def test_name_taken_by_another_collector_fails_build_and_leaves_nothing_behind():
    import prometheus_client

    e = env()
    prometheus_client.Gauge("istio_in_flight", "someone else's", registry=e.metrics)
    with pytest.raises(ValueError):
        await prometheus.KIND.build(parse_ok(prometheus.KIND, SPEC), e)
    assert e.metrics.get_sample_value("istio_request_count_total", {}) is None
    ok = await prometheus.KIND.build(parse_ok(prometheus.KIND, {"metrics": SPEC["metrics"][:2]}), e)
    await ok.close()


def test_bad_params_name_fields():
    errors = field_errors(
        prometheus.KIND,
        {
            "metrics": [
                {"name": "bad-name", "instanceName": "x", "kind": "COUNTER"},
                {"name": "ok", "instanceName": "y", "kind": "HISTOGRAM"},
                {"name": "d", "instanceName": "z", "kind": "DISTRIBUTION", "labelNames": ["le"]},
                {
                    "name": "e",
                    "instanceName": "w",
                    "kind": "DISTRIBUTION",
                    "buckets": {"explicitBuckets": {"bounds": [1, 1]}},
                },
                {"name": "f", "kind": "GAUGE", "buckets": {}},
            ]
        },
    )
    assert set(errors) == {
        "metrics[0].name",
        "metrics[1].kind",
        "metrics[2].labelNames[0]",
        "metrics[3].buckets.explicitBuckets.bounds[1]",
        "metrics[4].instanceName",
        "metrics[4].buckets",
    }


async def test_proto_field_names_as_istio_0_2_shipped_them():
    # Istio 0.2's default config writes proto names (instance_name, explicit_buckets) and
    # JSON names (exponentialBuckets) side by side; both must load without edits.
    labels = ["source_service", "destination_service", "response_code"]
    spec = {
        "metrics": [
            {
                "name": "request_count",
                "instance_name": "requestcount.metric.istio-system",
                "kind": "COUNTER",
                "label_names": labels,
            },
            {
                "name": "request_duration",
                "instance_name": "requestduration.metric.istio-system",
                "kind": "DISTRIBUTION",
                "label_names": labels,
                "buckets": {"explicit_buckets": {"bounds": [0.005, 0.01, 0.1, 1, 10]}},
            },
            {
                "name": "request_size",
                "instance_name": "requestsize.metric.istio-system",
                "kind": "DISTRIBUTION",
                "label_names": labels,
                "buckets": {
                    "exponentialBuckets": {"numFiniteBuckets": 8, "scale": 1, "growthFactor": 10}
                },
            },
        ]
    }
    params = parse_ok(prometheus.KIND, spec)
    assert params.metrics[0].label_names == tuple(labels)
    assert params.metrics[1].buckets == (0.005, 0.01, 0.1, 1, 10)
    assert params.metrics[2].buckets == tuple(10.0**i for i in range(9))
    e = env()
    h = await prometheus.KIND.build(params, e)
    dims = {"source_service": "a", "destination_service": "b", "response_code": 200}
    await h.report([Metric("requestsize.metric.istio-system", 1500, dims)])
    got = e.metrics.get_sample_value(
        "istio_request_size_bucket", {**{k: str(v) for k, v in dims.items()}, "le": "10000.0"}
    )
    assert got == 1
    await h.close()
    both = field_errors(
        prometheus.KIND,
        {"metrics": [{"name": "x", "instanceName": "a", "instance_name": "b", "kind": "GAUGE"}]},
    )
    assert list(both) == ["metrics[0].instance_name"]
