"""The shared value checks: what each accepts, what it refuses, and how it says so."""
# ruff: noqa: RUF001 - Unicode digits that look like ASCII ones are the point of these tests

from __future__ import annotations

import pytest

from meshfed.core import validators as v


@pytest.mark.parametrize("value", ["²", "٩٠٨٠", "８０", "1.5", "0x50", "", " ", "1e3", True, 1.0])
def test_integers_are_ascii_digits_only(value):
    with pytest.raises(v.Invalid, match="expected an integer"):
        v.ascii_int(value)


def test_integers_accept_ints_and_ascii_digit_strings():
    assert v.ascii_int(9080) == 9080 and v.ascii_int(" 9080 ") == 9080 and v.ascii_int("-3") == -3


@pytest.mark.parametrize("value", [0, 65536, 70000, -1, "70000"])
def test_ports_are_1_to_65535(value):
    with pytest.raises(v.Invalid, match=r"1\.\.65535"):
        v.port(value)


@pytest.mark.parametrize(
    "value",
    ["a..b", "host:80", "x\0y", "a" * 254, "", ".", "a.", "-a", "999.1.1.1", "a b", "a/b", "*"],
)
def test_malformed_hosts_are_refused(value):
    with pytest.raises(v.Invalid, match="expected a DNS name"):
        v.hostname(value, wildcard=True)


def test_hosts_are_lower_cased_and_wildcards_need_a_flag():
    assert v.hostname("Reviews.Default.SVC") == "reviews.default.svc"
    assert v.hostname("*.example.com", wildcard=True) == "*.example.com"
    with pytest.raises(v.Invalid):
        v.hostname("*.example.com")
    assert v.hostname("*", bare_wildcard=True) == "*"


@pytest.mark.parametrize("value", ["a/b", "..", "A", "a b", "a..b", "sa%2F", "", "-a", "a" * 254])
def test_identity_segments_are_service_account_names(value):
    with pytest.raises(v.Invalid):
        v.identity_segment(value)


@pytest.mark.parametrize(
    "value", ["(?P=n)", "(?P<n>a)(?P=n)", "(?>a)", "a*+", "(?=a)", "\\1", "(a"]
)
def test_regexes_envoy_cannot_compile_are_refused(value):
    with pytest.raises(v.Invalid, match="RE2"):
        v.re2_regex(value)


def test_re2_syntax_python_lacks_is_accepted_and_big_programs_are_not():
    assert v.re2_regex(r"\p{Greek}+") == r"\p{Greek}+"
    with pytest.raises(v.Invalid, match="program size"):
        v.re2_regex("a" * 200)


@pytest.mark.parametrize(
    ("value", "seconds"), [("250ms", 0.25), ("1.5s", 1.5), ("2m", 120), ("1h", 3600)]
)
def test_durations(value, seconds):
    assert v.duration(value) == pytest.approx(seconds)


@pytest.mark.parametrize("value", ["99999999999999h", "1e400s", "٥s", "-1s", "5", "s", 5])
def test_durations_outside_protobuf_or_malformed_are_refused(value):
    with pytest.raises(v.Invalid, match="duration"):
        v.duration(value)


def test_zero_is_refused_where_envoy_refuses_it():
    assert v.duration("0s") == 0
    for value in ("0s", "0.0001s", "0ms"):
        with pytest.raises(v.Invalid, match="at least 1ms"):
            v.positive_duration(value)


@pytest.mark.parametrize(
    "value", ["999.1.1.1:15014", "127.0.0.1:99999", "127.0.0.1", ":80", "h:80"]
)
def test_listen_addresses(value):
    with pytest.raises(v.Invalid):
        v.listen_address(value)
    assert v.listen_address("127.0.0.1:0") == ("127.0.0.1", 0)
    assert v.listen_address("[::1]:15010") == ("::1", 15010)


@pytest.mark.parametrize("value", ["my domain", "UPPER", "", "a/b", ".x"])
def test_trust_domains(value):
    with pytest.raises(v.Invalid, match="trust domain"):
        v.trust_domain(value)


def test_cidrs_and_addresses():
    assert v.cidr("10.0.0.1/8") == "10.0.0.0/8" and v.ip_address("::1") == "::1"
    for bad in ("10.0.0.0/33", "999.1.1.1", "x"):
        with pytest.raises(v.Invalid):
            v.cidr(bad)


@pytest.mark.parametrize("value", ["a,b", "a=b", "a|b", "x" * 64, "-a"])
def test_label_values_cannot_break_subset_names(value):
    with pytest.raises(v.Invalid):
        v.label_value(value)


def test_quoted_values_are_bounded():
    with pytest.raises(v.Invalid) as refused:
        v.hostname("a" * 100_000)
    assert len(str(refused.value)) < 2 * v.MAX_SHOWN
    big: list = []
    for _ in range(30):
        big = [big] * 10  # shared, like YAML aliases: huge when printed in full
    assert len(v.show(big)) < v.MAX_SHOWN
