import datetime as dt

from hypothesis import given
from hypothesis import strategies as st

from meshfed.mixer.handlers import params as p
from meshfed.mixer.handlers.tests.helpers import reader


def test_durations_in_go_and_protobuf_form():
    assert p.parse_duration_text("1s") == dt.timedelta(seconds=1)
    assert p.parse_duration_text("500ms") == dt.timedelta(milliseconds=500)
    assert p.parse_duration_text("1m30s") == dt.timedelta(seconds=90)
    assert p.parse_duration_text("1.5h") == dt.timedelta(minutes=90)
    assert p.parse_duration_text("2") == dt.timedelta(seconds=2)
    for bad in ("", "s", "1x", "1s2", "ms1", "1 s", "-"):
        assert p.parse_duration_text(bad) is None, bad


@given(st.integers(0, 10**6), st.sampled_from(["ms", "s", "m", "h"]))
def test_duration_round_trip(n, unit):
    seconds = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]
    assert p.parse_duration_text(f"{n}{unit}") == dt.timedelta(seconds=n * seconds)


@given(st.text(max_size=20))
def test_duration_never_raises(text):
    r = reader({"d": text})
    value = p.duration(r, "d", dt.timedelta(seconds=7))
    assert isinstance(value, dt.timedelta)
    if r.errors:
        assert value == dt.timedelta(seconds=7) and r.errors[0].field == "d"


def test_duration_errors_name_the_field():
    r = reader({"validDuration": "soon", "other": "-1s"})
    p.duration(r, "validDuration", dt.timedelta(0))
    assert r.errors[0].field == "validDuration"
    assert "500ms" in r.errors[0].message and "'soon'" in r.errors[0].message


def test_rpc_codes_by_name_or_number():
    r = reader({"a": "PERMISSION_DENIED", "b": 5, "c": "NOPE", "d": 99})
    assert p.rpc_code(r, "a", 0) == 7
    assert p.rpc_code(r, "b", 0) == 5
    p.rpc_code(r, "c", 0)
    p.rpc_code(r, "d", 0)
    assert [e.field for e in r.errors] == ["c", "d"]
