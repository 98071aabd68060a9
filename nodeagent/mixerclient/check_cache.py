"""A cache of Mixer Check answers, keyed by the attributes each answer depended on.

Mixer returns, with every precondition, the attributes its verdict looked at
(``referenced_attributes``): each one ``EXACT`` (its value was used) or ``ABSENCE`` (it was
absent), and for a string map the key looked up (``map_key``). Any later request that agrees
with the answered one on all of those may reuse the verdict, within ``valid_duration`` and for
``valid_use_count`` uses. This module promises:

- **Correctness**: :meth:`CheckCache.lookup` returns an answer only for a bag that agrees with
  the bag it was stored with on every referenced attribute: the same value (type included, so
  ``1``, ``1.0`` and ``True`` differ) for ``EXACT``, absent for ``ABSENCE``. For a map key,
  ``EXACT`` means the map is present with that key and the same value, ``ABSENCE`` that the map
  is present without the key (a map that is absent altogether is a different request: Mixer may
  fill ``source.labels`` from the registry, and then reports the map itself as absent).
- **Usefulness**: attributes and map keys the answer did not reference are not part of the key,
  so requests differing only in, e.g., ``request.headers["x-request-id"]`` share one entry when
  the rules looked only at ``request.headers["x-user"]``. Istio 0.2's client keyed a map
  attribute by the whole map (its request id made every key unique) and built its keys in the
  order the references arrived; here a :class:`Referenced` is canonical (sorted, deduplicated),
  so one set of references in any order is one value and one key.
- **Bounds**: at most ``max_entries`` answers (least recently used evicted first) and
  ``max_shapes`` distinct sets of references. Several *shapes* coexist because different rules
  look at different attributes (a request to ``ratings`` may be decided by other attributes than
  one to ``reviews``); a lookup tries the known shapes, most recently stored first, so after a
  rule change the newest answers win.
- An answer that references an attribute by ``REGEX`` (or by a condition this client does not
  know), or whose references cannot be decoded, is not cached: :meth:`CheckCache.insert`
  returns ``False``. So is one valid for no time or no use (Mixer's fail-closed answer).

The cache knows nothing about what an answer is (``CheckCache[T]`` stores a ``T``: a status, a
whole response). It caches preconditions only: a Check that asks for quota must still go to
Mixer, as in Istio, since quota is allocated per call. Not thread-safe: one event loop owns it.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from typing import Any, Generic, TypeVar

import attrs
from cachetools import LRUCache

from meshfed.mixer.api.v1 import check_pb2
from meshfed.mixer.attributes import codec
from meshfed.mixer.attributes.dictionary import GLOBAL_WORDS

T = TypeVar("T")

# ReferencedAttributes.Condition (mixer/api/v1/check.proto)
ABSENCE = 1
EXACT = 2
REGEX = 3

_MISSING: Any = object()


@attrs.frozen(slots=True)
class AttributeRef:
    """One referenced attribute: ``name``, or the key ``map_key`` of the string map ``name``."""

    name: str
    map_key: str | None = None

    def __str__(self) -> str:
        return self.name if self.map_key is None else f"{self.name}[{self.map_key!r}]"


RefLike = AttributeRef | str | tuple[str, str]


def _ref(item: RefLike) -> AttributeRef:
    if isinstance(item, AttributeRef):
        return item
    if isinstance(item, str):
        return AttributeRef(item)
    name, key = item
    return AttributeRef(name, key)


def _canonical(items: Iterable[RefLike]) -> tuple[AttributeRef, ...]:
    # Sorted and deduplicated: equal sets of references are equal values with equal hashes,
    # whatever order the hub listed them in.
    refs = {_ref(i) for i in items}
    return tuple(sorted(refs, key=lambda r: (r.name, r.map_key is not None, r.map_key or "")))


@attrs.frozen(slots=True, cache_hash=True)
class Referenced:
    """The attributes one answer depended on, in canonical order.

    ``exact`` and ``absence`` accept names, ``(name, map_key)`` pairs or :class:`AttributeRef`s in
    any order. ``uncacheable`` says why an answer with these references must not be cached
    (``None``: it may be).
    """

    exact: tuple[AttributeRef, ...] = attrs.field(default=(), converter=_canonical)
    absence: tuple[AttributeRef, ...] = attrs.field(default=(), converter=_canonical)
    uncacheable: str | None = None

    def signature(self, bag: Mapping[str, object]) -> tuple[Hashable, ...] | None:
        """The values ``bag`` has for the ``exact`` references, or ``None`` when ``bag`` does
        not satisfy these references (an ``EXACT`` one is absent, an ``ABSENCE`` one present)."""
        for ref in self.absence:
            if ref.map_key is None:
                if ref.name in bag:
                    return None
            else:
                m = bag.get(ref.name, _MISSING)
                if not isinstance(m, Mapping) or ref.map_key in m:
                    return None
        out: list[Hashable] = []
        for ref in self.exact:
            v = bag.get(ref.name, _MISSING)
            if v is _MISSING:
                return None
            if ref.map_key is not None:
                if not isinstance(v, Mapping):
                    return None
                v = v.get(ref.map_key, _MISSING)
                if v is _MISSING:
                    return None
            out.append(_value_key(v))
        return tuple(out)


def _value_key(v: object) -> Hashable:
    if isinstance(v, Mapping):
        return (Mapping, frozenset(v.items()))
    # The type is part of the key: 1, 1.0 and True are equal in Python, not on the wire.
    return (type(v), v)


def referenced_from_proto(
    msg: check_pb2.ReferencedAttributes,
    global_word_count: int = 0,
    global_words: Sequence[str] = GLOBAL_WORDS,
) -> Referenced:
    """A :class:`Referenced` from the hub's ``ReferencedAttributes``.

    ``global_word_count`` is the count this client sent in its ``CheckRequest`` (``0``: the whole
    dictionary), since Mixer encodes the references against it. Never raises: references that
    cannot be decoded, ``REGEX`` ones and unknown conditions give an uncacheable value whose
    ``uncacheable`` says why.
    """
    exact: list[AttributeRef] = []
    absence: list[AttributeRef] = []
    try:
        count = codec.usable_word_count(global_word_count, global_words)
        word = codec.word_decoder(msg.words, count, global_words)
        for match in msg.attribute_matches:
            # map_key 0 is proto3's "unset": the whole attribute (Mixer never sends word 0 as a
            # key index, it uses the message's own words for it)
            ref = AttributeRef(word(match.name), word(match.map_key) if match.map_key else None)
            if match.condition == EXACT:
                exact.append(ref)
            elif match.condition == ABSENCE:
                absence.append(ref)
            elif match.condition == REGEX:
                return Referenced(uncacheable=f"{ref} is referenced by REGEX")
            else:
                return Referenced(uncacheable=f"{ref} has unknown condition {match.condition}")
    except codec.DecodeError as exc:
        return Referenced(uncacheable=f"bad referenced attributes: {exc}")
    return Referenced(exact, absence)


@attrs.frozen(slots=True)
class CachedCheck(Generic[T]):
    """A cache hit: the stored answer, and how long / how many more uses it stays valid."""

    answer: T
    expires_in: float
    uses_left: int


@attrs.define(slots=True)
class CacheStats:
    """Counters since the cache was made (monotonic; a server exports them as metrics)."""

    hits: int = 0
    misses: int = 0
    inserts: int = 0
    uncacheable: int = 0  # answers refused by insert()
    evictions: int = 0  # removed by the size bound
    expired: int = 0  # found past valid_duration (used-up entries are removed on their last use)

    @property
    def hit_ratio(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0


@attrs.define(slots=True)
class _Entry(Generic[T]):
    answer: T
    expires_at: float
    uses_left: int


class _CountingLRU(LRUCache[tuple[Referenced, tuple[Hashable, ...]], _Entry[T]]):
    """cachetools' LRU, counting what its size bound evicts (it evicts through popitem)."""

    def __init__(self, maxsize: int, stats: CacheStats) -> None:
        super().__init__(maxsize)
        self._stats = stats

    def popitem(self) -> tuple[tuple[Referenced, tuple[Hashable, ...]], _Entry[T]]:
        item = super().popitem()
        self._stats.evictions += 1
        return item


class CheckCache(Generic[T]):
    """Check answers by referenced attributes; see the module docstring for the promises."""

    def __init__(
        self,
        max_entries: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
        max_shapes: int = 64,
    ) -> None:
        if max_entries < 1 or max_shapes < 1:
            raise ValueError("max_entries and max_shapes must be at least 1")
        self.stats = CacheStats()
        self._clock = clock
        self._entries: _CountingLRU[T] = _CountingLRU(max_entries, self.stats)
        # Known shapes, most recently stored last. A shape dropped by the bound leaves its
        # entries unreachable; the LRU bound then reclaims them.
        self._shapes: OrderedDict[Referenced, None] = OrderedDict()
        self._max_shapes = max_shapes

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def shapes(self) -> int:
        return len(self._shapes)

    def lookup(self, bag: Mapping[str, object]) -> CachedCheck[T] | None:
        """A stored answer for ``bag`` (counting one use of it), or ``None``."""
        now = self._clock()
        for shape in reversed(self._shapes):
            try:
                sig = shape.signature(bag)
                if sig is None:
                    continue
                key = (shape, sig)
                entry = self._entries.get(key)
            except TypeError:  # an unhashable value: no answer can be keyed by it
                continue
            if entry is None:
                continue
            if entry.expires_at <= now:
                del self._entries[key]
                self.stats.expired += 1
                continue
            entry.uses_left -= 1
            if entry.uses_left <= 0:
                del self._entries[key]
            self.stats.hits += 1
            return CachedCheck(entry.answer, entry.expires_at - now, entry.uses_left)
        self.stats.misses += 1
        return None

    def insert(
        self,
        bag: Mapping[str, object],
        referenced: Referenced,
        answer: T,
        valid_duration: float,
        valid_use_count: int,
    ) -> bool:
        """Store Mixer's ``answer`` for the request ``bag``; ``False`` when it is uncacheable.

        ``bag`` is what this client sent in the Check; an answer whose references ``bag`` itself
        does not satisfy (an ``EXACT`` attribute it lacks) cannot be keyed and is refused.
        """
        if referenced.uncacheable is not None or valid_duration <= 0 or valid_use_count <= 0:
            self.stats.uncacheable += 1
            return False
        entry = _Entry(answer, self._clock() + valid_duration, valid_use_count)
        try:
            sig = referenced.signature(bag)
            if sig is not None:
                self._entries[(referenced, sig)] = entry
        except TypeError:  # an unhashable value cannot be a key
            sig = None
        if sig is None:
            self.stats.uncacheable += 1
            return False
        self._shapes[referenced] = None
        self._shapes.move_to_end(referenced)
        if len(self._shapes) > self._max_shapes:
            self._shapes.popitem(last=False)
        self.stats.inserts += 1
        return True

    def clear(self) -> None:
        """Forget every answer (e.g. when the hub says its config changed)."""
        self._entries.clear()
        self._shapes.clear()
