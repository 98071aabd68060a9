import datetime as dt

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshfed.mixer.handlers import memquota
from meshfed.mixer.handlers.api import QuotaRequest
from meshfed.mixer.handlers.quotas import UnknownQuota
from meshfed.mixer.handlers.tests.helpers import field_errors, parse_ok
from meshfed.mixer.templates import Quota


class Clock:
    def __init__(self, now=1000.0):
        self.now = now

    def __call__(self):
        return self.now


def handler(spec, clock):
    return memquota.MemQuota(parse_ok(memquota.KIND, spec), clock)


RATE = {
    "quotas": [
        {
            "name": "requestcount.quota.istio-system",
            "maxAmount": 5,
            "validDuration": "1s",
            "overrides": [
                {"dimensions": {"destination": "ratings"}, "maxAmount": 1},
                {"dimensions": {"destination": "reviews", "source": "pp"}, "maxAmount": 2},
            ],
        }
    ]
}


def q(**dims):
    return Quota("requestcount.quota.istio-system", dims)


def test_n_per_second_grants_exactly_n():
    clock = Clock()
    h = handler(RATE, clock)
    granted = sum(h.alloc(q(), QuotaRequest(1)).granted for _ in range(50))
    assert granted == 5
    clock.now += 0.5
    assert h.alloc(q(), QuotaRequest(1)).granted == 0
    clock.now += 0.5  # one full window later every grant is back
    assert sum(h.alloc(q(), QuotaRequest(1)).granted for _ in range(50)) == 5


def test_steady_traffic_over_ten_seconds_grants_n_per_second():
    clock = Clock(0.0)
    h = handler(RATE, clock)
    granted_at = []
    for i in range(2000):  # 200 requests a second for 10 s
        clock.now = i / 200
        if h.alloc(q(), QuotaRequest(1)).granted:
            granted_at.append(clock.now)
    assert len(granted_at) == 50
    for start in granted_at:  # no window of 1 s (tick-aligned) ever holds more than N
        assert sum(1 for t in granted_at if start <= t < start + 0.9) <= 5


def test_result_carries_validity_and_all_or_nothing():
    clock = Clock()
    h = handler(RATE, clock)
    first = h.alloc(q(), QuotaRequest(3))
    assert first.granted == 3 and first.valid_duration == dt.timedelta(seconds=1)
    assert h.alloc(q(), QuotaRequest(3)).granted == 0  # 2 left, not best effort: nothing
    best = h.alloc(q(), QuotaRequest(3, best_effort=True))
    assert best.granted == 2
    assert h.alloc(q(), QuotaRequest(1, best_effort=True)).granted == 0


def test_overrides_by_dimensions_first_match_wins():
    clock = Clock()
    h = handler(RATE, clock)
    take = lambda inst: sum(h.alloc(inst, QuotaRequest(1)).granted for _ in range(10))  # noqa: E731
    assert take(q(destination="ratings", source="x")) == 1
    assert take(q(destination="reviews", source="pp")) == 2
    assert take(q(destination="reviews", source="other")) == 5  # partial match: the default
    assert take(q(destination="details")) == 5  # each dimension set counts on its own


def test_dedup_same_answer_without_consuming_again():
    clock = Clock()
    h = handler({**RATE, "minDeduplicationDuration": "2s"}, clock)
    first = h.alloc(q(), QuotaRequest(4, deduplication_id="call-1"))
    again = h.alloc(q(), QuotaRequest(4, deduplication_id="call-1"))
    assert first == again and first.granted == 4
    assert h.alloc(q(), QuotaRequest(1, deduplication_id="call-2")).granted == 1
    assert h.alloc(q(), QuotaRequest(1, deduplication_id="call-3")).granted == 0
    clock.now += 2.5  # the id is forgotten: a new request under it consumes
    assert h.alloc(q(), QuotaRequest(4, deduplication_id="call-1")).granted == 4


def test_allocation_quota_never_replenishes():
    clock = Clock()
    h = handler({"quotas": [{"name": "conns", "maxAmount": 3}]}, clock)
    assert h.alloc(Quota("conns", {}), QuotaRequest(2)).granted == 2
    clock.now += 3600
    assert h.alloc(Quota("conns", {}), QuotaRequest(2, best_effort=True)).granted == 1


def test_short_instance_name_matches_and_unknown_quota_fails_the_call():
    clock = Clock()
    h = handler(RATE, clock)
    assert sum(h.alloc(Quota("requestcount", {}), QuotaRequest(1)).granted for _ in range(9)) == 5
    with pytest.raises(UnknownQuota, match=r"'other\.quota\.default'.*requestcount\.quota"):
        h.alloc(Quota("other.quota.default", {}), QuotaRequest(99))


def test_idle_counters_are_swept():
    clock = Clock()
    h = handler(RATE, clock)
    for i in range(memquota.SWEEP_EVERY - 1):
        h.alloc(q(user=str(i)), QuotaRequest(1))
    assert h.counters == memquota.SWEEP_EVERY - 1
    clock.now += 5
    h.alloc(q(user="last"), QuotaRequest(1))
    assert h.counters == 1


@settings(max_examples=200)
@given(
    st.integers(1, 20),
    st.lists(st.tuples(st.floats(0, 0.5), st.integers(0, 6), st.booleans()), max_size=60),
)
def test_rolling_window_never_grants_more_than_max_in_any_window(max_amount, steps):
    clock = Clock(0.0)
    spec = {"quotas": [{"name": "q", "maxAmount": max_amount, "validDuration": "1s"}]}
    h = handler(spec, clock)
    grants = []
    for advance, amount, best in steps:
        clock.now += advance
        r = h.alloc(Quota("q", {}), QuotaRequest(amount, best_effort=best))
        assert 0 <= r.granted <= amount
        if not best:
            assert r.granted in (0, amount)
        grants.append((clock.now, r.granted))
    tick = 0.1
    for t, _ in grants:  # what was granted inside one tick-aligned window stays within max
        start = (t // tick) * tick
        assert sum(g for s, g in grants if start - 0.9 + 1e-9 <= (s // tick) * tick <= start) <= (
            max_amount
        )


def test_bad_params_name_fields():
    errors = field_errors(
        memquota.KIND,
        {
            "quotas": [
                {"name": "a", "maxAmount": -1, "validDuration": "1 sec"},
                {"maxAmount": 1, "overrides": [{"maxAmount": 2}, "x"]},
                {"name": "a", "maxAmount": 1},
            ],
            "minDeduplicationDuration": "0s",
        },
    )
    assert set(errors) == {
        "quotas[0].maxAmount",
        "quotas[0].validDuration",
        "quotas[1].name",
        "quotas[1].overrides[0].dimensions",
        "quotas[1].overrides[1]",
        "quotas[2].name",
        "minDeduplicationDuration",
    }


def test_proto_field_names_and_map_keys_kept_as_written():
    spec = {
        "quotas": [
            {
                "name": "q",
                "max_amount": 2,
                "valid_duration": "1s",
                "overrides": [{"dimensions": {"source_service": "a"}, "max_amount": 1}],
            }
        ],
        "min_deduplication_duration": "5s",
    }
    params = parse_ok(memquota.KIND, spec)
    assert params.min_dedup == dt.timedelta(seconds=5)
    assert params.quotas[0].overrides[0].dimensions == {"source_service": "a"}
    h = memquota.MemQuota(params, Clock())
    take = lambda dims: sum(h.alloc(Quota("q", dims), QuotaRequest(1)).granted for _ in range(5))  # noqa: E731
    assert take({"source_service": "a"}) == 1
    assert take({"source_service": "b"}) == 2


def test_rolling_window_returns_grants_tick_by_tick():
    clock = Clock(0.0)
    h = handler({"quotas": [{"name": "q", "maxAmount": 10, "validDuration": "10s"}]}, clock)
    assert h.alloc(Quota("q", {}), QuotaRequest(6)).granted == 6  # tick [0, 0.1)
    clock.now = 5.0
    assert h.alloc(Quota("q", {}), QuotaRequest(4)).granted == 4  # tick [5.0, 5.1)
    clock.now = 9.95
    assert h.alloc(Quota("q", {}), QuotaRequest(1)).granted == 0
    clock.now = 10.0  # the first tick left the window: its 6 are back, the later 4 are not
    assert h.alloc(Quota("q", {}), QuotaRequest(7, best_effort=True)).granted == 6
    clock.now = 15.0
    assert h.alloc(Quota("q", {}), QuotaRequest(10, best_effort=True)).granted == 4
