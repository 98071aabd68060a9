"""The Check cache: what a hit may return, expiry, bounds, and Istio 0.2's two keying flaws."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshfed.mixer.api.v1 import check_pb2
from meshfed.mixer.attributes.dictionary import GLOBAL_WORDS
from meshfed.mixer.server import encode_refs
from meshfed.nodeagent.mixerclient.check_cache import (
    ABSENCE,
    EXACT,
    REGEX,
    AttributeRef,
    CheckCache,
    Referenced,
    referenced_from_proto,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def request(user: str = "jason", request_id: str = "r1", **extra: object) -> dict[str, object]:
    bag: dict[str, object] = {
        "destination.service": "reviews.default.svc.cluster.local",
        "source.labels": {"app": "productpage", "version": "v1"},
        "request.headers": {"x-user": user, "x-request-id": request_id, ":path": "/reviews/0"},
        "request.path": "/reviews/0",
        "context.protocol": "http",
    }
    bag.update(extra)
    return bag


USER_RULE = Referenced(
    exact=[
        "context.protocol",
        "destination.service",
        ("request.headers", "x-user"),
        ("source.labels", "app"),
    ]
)


def proto(matches: list[tuple[object, int]], word_count: int = len(GLOBAL_WORDS)):
    """The references as the hub's server encodes them (its own encoder, in its order)."""
    return encode_refs(dict(matches), word_count)


def test_map_attribute_is_keyed_by_the_referenced_keys_only():
    # Istio 0.2 keyed request.headers by the whole map: a fresh x-request-id per request made
    # every key unique and nothing ever hit.
    cache: CheckCache[str] = CheckCache(100)
    assert cache.insert(request(request_id="r1"), USER_RULE, "allow", 10, 100)
    hit = cache.lookup(request(request_id="r2"))
    assert hit is not None and hit.answer == "allow"
    bag = request()
    bag["request.headers"] = {"x-user": "jason", "x-b3-traceid": "t", "user-agent": "curl"}
    assert cache.lookup(bag) is not None
    assert cache.lookup(request(user="mallory")) is None  # the referenced key differs
    assert (cache.stats.hits, cache.stats.misses) == (2, 1)


def test_references_in_any_order_are_one_key():
    # Istio 0.2 built keys in the order the hub listed the references; here the order the
    # server happens to send them in is irrelevant.
    names = ["destination.service", "context.protocol", "request.path", "source.ip"]
    forward = check_pb2.ReferencedAttributes()
    backward = check_pb2.ReferencedAttributes()
    for order, msg in ((names, forward), (names[::-1], backward)):
        for name in order:
            m = msg.attribute_matches.add(name=GLOBAL_WORDS.index(name), condition=EXACT)
            assert m.name >= 0
    a, b = referenced_from_proto(forward), referenced_from_proto(backward)
    assert a == b and hash(a) == hash(b)
    assert [r.name for r in a.exact] == sorted(names)
    cache: CheckCache[str] = CheckCache(100)
    bag = request(**{"source.ip": b"\x0a\x00\x00\x01"})
    assert cache.insert(bag, a, "first", 10, 100)
    assert cache.insert(bag, b, "second", 10, 100)
    assert (len(cache), cache.shapes) == (1, 1)  # one key: the second answer replaced the first
    hit = cache.lookup(bag)
    assert hit is not None and hit.answer == "second"


def test_exact_needs_the_same_value_and_type():
    cache: CheckCache[str] = CheckCache(100)
    refs = Referenced(exact=["request.size"])
    assert cache.insert({"request.size": 1}, refs, "a", 10, 100)
    assert cache.lookup({"request.size": 1}) is not None
    assert cache.lookup({"request.size": 2}) is None
    assert cache.lookup({"request.size": True}) is None  # 1 == True in Python, not on the wire
    assert cache.lookup({"request.size": 1.0}) is None
    assert cache.lookup({}) is None


def test_absence_references():
    cache: CheckCache[str] = CheckCache(100)
    refs = Referenced(
        exact=["destination.service"], absence=["source.user", ("request.headers", "x-admin")]
    )
    base = {"destination.service": "a", "request.headers": {"x-user": "u"}}
    assert cache.insert(base, refs, "deny", 10, 100)
    assert cache.lookup({**base, "request.headers": {"x-user": "other"}}) is not None
    assert cache.lookup({**base, "source.user": "spiffe://x"}) is None
    assert cache.lookup({**base, "request.headers": {"x-admin": "1"}}) is None
    # the map absent altogether is another request (Mixer may fill a map from the registry)
    assert cache.lookup({"destination.service": "a"}) is None


def test_whole_map_reference_keys_by_the_whole_map():
    cache: CheckCache[str] = CheckCache(100)
    refs = Referenced(exact=["source.labels"])
    assert cache.insert({"source.labels": {"app": "a", "v": "1"}}, refs, "x", 10, 100)
    assert cache.lookup({"source.labels": {"v": "1", "app": "a"}}) is not None
    assert cache.lookup({"source.labels": {"app": "a"}}) is None


def test_regex_and_unknown_conditions_are_not_cached():
    cache: CheckCache[str] = CheckCache(100)
    regex = referenced_from_proto(proto([("request.path", REGEX), ("context.protocol", EXACT)]))
    assert regex.uncacheable == "request.path is referenced by REGEX"
    assert not cache.insert(request(), regex, "a", 10, 100)
    unknown = referenced_from_proto(proto([("request.path", 0)]))
    assert unknown.uncacheable is not None and "unknown condition 0" in unknown.uncacheable
    assert not cache.insert(request(), unknown, "a", 10, 100)
    assert (len(cache), cache.stats.uncacheable) == (0, 2)


def test_undecodable_references_are_not_cached():
    msg = check_pb2.ReferencedAttributes(words=["a"])
    msg.attribute_matches.add(name=-2, condition=EXACT)
    ref = referenced_from_proto(msg)
    assert ref.uncacheable is not None and "past the message's 1 words" in ref.uncacheable
    past = check_pb2.ReferencedAttributes()
    past.attribute_matches.add(name=150, condition=EXACT)
    assert referenced_from_proto(past, global_word_count=100).uncacheable is not None


def test_answers_valid_for_nothing_or_that_the_bag_contradicts_are_refused():
    cache: CheckCache[str] = CheckCache(100)
    assert not cache.insert(request(), USER_RULE, "unavailable", 0, 0)  # fail-closed answer
    assert not cache.insert(request(), USER_RULE, "a", 10, 0)
    assert not cache.insert({"context.protocol": "http"}, USER_RULE, "a", 10, 100)
    assert not cache.insert(request(), Referenced(absence=["request.path"]), "a", 10, 100)
    assert len(cache) == 0 and cache.stats.uncacheable == 4


def test_valid_duration_with_an_injected_clock():
    clock = Clock()
    cache: CheckCache[str] = CheckCache(100, clock=clock)
    cache.insert(request(), USER_RULE, "a", 5.0, 1000)
    clock.now += 4.9
    hit = cache.lookup(request())
    assert hit is not None and hit.expires_in == pytest.approx(0.1)
    clock.now += 0.1
    assert cache.lookup(request()) is None
    assert (cache.stats.expired, len(cache)) == (1, 0)


def test_valid_use_count():
    cache: CheckCache[str] = CheckCache(100)
    cache.insert(request(), USER_RULE, "a", 10, 3)
    uses = [cache.lookup(request()) for _ in range(4)]
    assert [u.uses_left if u else None for u in uses] == [2, 1, 0, None]
    assert len(cache) == 0


def test_lru_bound_counts_evictions():
    cache: CheckCache[int] = CheckCache(3)
    for i in range(5):
        cache.insert(request(user=f"u{i}"), USER_RULE, i, 10, 100)
    assert len(cache) == 3 and cache.stats.evictions == 2
    assert cache.lookup(request(user="u0")) is None
    assert cache.lookup(request(user="u2")) is not None  # now the most recently used
    cache.insert(request(user="u5"), USER_RULE, 5, 10, 100)
    assert cache.lookup(request(user="u2")) is not None
    assert cache.lookup(request(user="u3")) is None


def test_several_shapes_coexist_and_the_newest_wins():
    cache: CheckCache[str] = CheckCache(100)
    by_service = Referenced(exact=["destination.service", "context.protocol"])
    by_user = Referenced(exact=["context.protocol", ("request.headers", "x-user")])
    ratings = request(**{"destination.service": "ratings"})
    assert cache.insert(ratings, by_service, "ratings-answer", 10, 100)
    assert cache.insert(request(), by_user, "user-answer", 10, 100)
    assert cache.shapes == 2
    hit = cache.lookup(request(user="jason", **{"destination.service": "ratings"}))
    assert hit is not None and hit.answer == "user-answer"  # both agree; the newest shape first
    other = cache.lookup(request(user="bob", **{"destination.service": "ratings"}))
    assert other is not None and other.answer == "ratings-answer"
    assert cache.lookup(request(user="bob")) is None


def test_shape_bound():
    cache: CheckCache[str] = CheckCache(100, max_shapes=2)
    for name in ("a", "b", "c"):
        cache.insert({name: 1}, Referenced(exact=[name]), name, 10, 100)
    assert cache.shapes == 2
    assert cache.lookup({"a": 1}) is None and cache.lookup({"c": 1}) is not None


def test_clear():
    cache: CheckCache[str] = CheckCache(100)
    cache.insert(request(), USER_RULE, "a", 10, 100)
    cache.clear()
    assert cache.lookup(request()) is None and cache.shapes == 0


def test_round_trip_with_the_servers_encoder():
    # x-user and source.ip as map keys: source.ip is global word 0, which the server must send
    # as a message word (map_key 0 reads as "no key")
    refs = {
        "context.protocol": EXACT,
        ("request.headers", "x-user"): EXACT,
        ("request.headers", "source.ip"): ABSENCE,
        "source.user": ABSENCE,
        ("source.labels", "app"): EXACT,
    }
    expected = Referenced(
        exact=["context.protocol", ("request.headers", "x-user"), ("source.labels", "app")],
        absence=["source.user", ("request.headers", "source.ip")],
    )
    for count in (0, 10, len(GLOBAL_WORDS)):
        wire = encode_refs(refs, count or len(GLOBAL_WORDS))
        msg = check_pb2.ReferencedAttributes.FromString(wire.SerializeToString())
        assert referenced_from_proto(msg, count) == expected


def test_unhashable_values_do_not_break_lookup():
    cache: CheckCache[str] = CheckCache(100)
    refs = Referenced(exact=["x"])
    assert not cache.insert({"x": [1]}, refs, "a", 10, 100)
    assert not cache.insert({"x": {"k": [1]}}, refs, "a", 10, 100)
    cache.insert({"x": 1}, refs, "a", 10, 100)
    assert cache.lookup({"x": [1]}) is None
    assert cache.lookup({"x": {"k": [1]}}) is None


def test_attribute_ref_text():
    assert str(AttributeRef("request.headers", "x-user")) == "request.headers['x-user']"


# --- properties -----------------------------------------------------------------------------

NAMES = ["a", "b", "c", "m", "n"]  # m and n hold maps
KEYS = ["k1", "k2", "k3"]
scalars = st.one_of(st.sampled_from(["x", "y"]), st.integers(0, 2), st.booleans())


@st.composite
def bags(draw):
    bag: dict[str, object] = {}
    for name in NAMES:
        if draw(st.booleans()):
            if name in ("m", "n"):
                bag[name] = draw(st.dictionaries(st.sampled_from(KEYS), st.sampled_from("xy")))
            else:
                bag[name] = draw(scalars)
    return bag


refs_items = st.one_of(
    st.sampled_from(NAMES), st.tuples(st.sampled_from(["m", "n"]), st.sampled_from(KEYS))
)
referenced = st.builds(
    Referenced,
    exact=st.lists(refs_items, max_size=4),
    absence=st.lists(refs_items, max_size=2),
)


def value(bag, ref):
    m = bag.get(ref.name, _ABSENT)
    if ref.map_key is None or m is _ABSENT:
        return m
    return m.get(ref.map_key, _ABSENT) if isinstance(m, dict) else _ABSENT


_ABSENT = object()


def agrees(stored: dict, bag: dict, refs: Referenced) -> bool:
    """An independent statement of when a stored answer may serve ``bag``."""
    for ref in refs.exact:
        a, b = value(stored, ref), value(bag, ref)
        if a is _ABSENT or b is _ABSENT or type(a) is not type(b) or a != b:
            return False
    for ref in refs.absence:
        if ref.map_key is None:
            if ref.name in bag:
                return False
        elif not isinstance(bag.get(ref.name), dict) or ref.map_key in bag[ref.name]:
            return False
    return True


@settings(max_examples=100)
@given(
    st.lists(st.tuples(bags(), referenced), min_size=1, max_size=5), st.lists(bags(), max_size=5)
)
def test_a_hit_always_agrees_with_its_answer_on_every_reference(stored, probes):
    cache: CheckCache[int] = CheckCache(100)
    for i, (bag, refs) in enumerate(stored):
        cache.insert(bag, refs, i, 10, 100)
    for probe in [*probes, *(bag for bag, _ in stored)]:
        hit = cache.lookup(probe)
        if hit is not None:
            bag, refs = stored[hit.answer]
            assert agrees(bag, probe, refs)


@settings(max_examples=200)
@given(bags(), referenced, bags())
def test_with_one_answer_a_lookup_hits_exactly_when_the_bag_agrees(stored, refs, probe):
    cache: CheckCache[str] = CheckCache(100)
    if not cache.insert(stored, refs, "answer", 10, 100):
        assert not agrees(stored, stored, refs)
        return
    assert (cache.lookup(probe) is not None) == agrees(stored, probe, refs)


@settings(max_examples=200)
@given(bags(), referenced, st.data())
def test_unreferenced_attributes_and_map_keys_do_not_matter(stored, refs, data):
    cache: CheckCache[str] = CheckCache(100)
    if not cache.insert(stored, refs, "answer", 10, 100):
        return
    referenced_names = {r.name for r in (*refs.exact, *refs.absence) if r.map_key is None}
    probe = {k: dict(v) if isinstance(v, dict) else v for k, v in stored.items()}
    probe["request.id"] = data.draw(st.text(max_size=8))  # never referenced
    for name in ("m", "n"):
        if name in referenced_names or not isinstance(probe.get(name), dict):
            continue
        keys = {r.map_key for r in (*refs.exact, *refs.absence) if r.name == name}
        for key in KEYS:
            if key not in keys and data.draw(st.booleans()):
                probe[name][key] = data.draw(st.text(max_size=4))  # added or changed
    for name in ("a", "b", "c"):
        if name not in referenced_names and data.draw(st.booleans()):
            probe[name] = "changed"
    assert cache.lookup(probe) is not None


def test_timestamps_and_durations_are_keys_too():
    cache: CheckCache[str] = CheckCache(100)
    t = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    refs = Referenced(exact=["request.time"])
    cache.insert({"request.time": t}, refs, "a", 10, 100)
    assert cache.lookup({"request.time": t}) is not None
    assert cache.lookup({"request.time": t + dt.timedelta(seconds=1)}) is None
