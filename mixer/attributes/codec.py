"""The wire form of attribute bags: compressed attributes and delta-encoded report batches.

Decoding follows Istio 0.2's Mixer: every string is a dictionary index, ``>= 0`` into the global
dictionary and ``< 0`` into the message's own words (``-1`` is ``words[0]``). A client names how
many global words it used (``global_word_count``): fewer than the server knows is fine (the
dictionary is append-only, so it is a prefix), more is a client the server cannot understand,
and an index past the client's count is an error. ``0`` means "not stated" (the full dictionary).

A ``ReportRequest`` is delta-encoded: entry *i* is applied on top of the bag entries ``0..i`` built,
so it carries only what changed; an entry with no words of its own uses ``default_words``. The
protocol cannot remove an attribute, so :func:`encode_batches` starts a new request when a bag
lacks an attribute its predecessor had.

Encoding is the same mechanism in reverse, for the node-local client and for tests.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from meshfed.mixer.api.v1 import attributes_pb2, report_pb2
from meshfed.mixer.attributes.dictionary import GLOBAL_INDEX, GLOBAL_WORDS, index_of

CompressedAttributes = attributes_pb2.CompressedAttributes


class DecodeError(ValueError):
    """The request cannot be understood (answered with INVALID_ARGUMENT)."""


def usable_word_count(stated: int, global_words: Sequence[str] = GLOBAL_WORDS) -> int:
    """How many global words a request may index, from its ``global_word_count``."""
    if stated == 0:
        return len(global_words)
    if stated > len(global_words):
        raise DecodeError(
            f"global_word_count {stated} is larger than this Mixer's global dictionary "
            f"({len(global_words)} words): the client uses a newer dictionary"
        )
    return stated


class _Words:
    """Index -> word for one message (its own words, then the usable global prefix)."""

    __slots__ = ("count", "glob", "own")

    def __init__(self, own: Sequence[str], glob: Sequence[str], count: int) -> None:
        self.own = own
        self.glob = glob
        self.count = count

    def __call__(self, index: int) -> str:
        if index < 0:
            slot = -index - 1
            if slot < len(self.own):
                return self.own[slot]
            raise DecodeError(f"word index {index} is past the message's {len(self.own)} words")
        if index < self.count:
            return self.glob[index]
        raise DecodeError(
            f"word index {index} is past the {self.count} global words the client uses"
        )


def word_decoder(
    own: Sequence[str],
    word_count: int | None = None,
    global_words: Sequence[str] = GLOBAL_WORDS,
) -> Callable[[int], str]:
    """index -> word for one message: ``own`` words (``-1`` is ``own[0]``), then the first
    ``word_count`` global words (all of them when ``None``). A bad index raises DecodeError."""
    return _Words(own, global_words, len(global_words) if word_count is None else word_count)


def decode_into(
    bag: dict[str, Any],
    msg: CompressedAttributes,
    global_words: Sequence[str] = GLOBAL_WORDS,
    word_count: int | None = None,
    default_words: Sequence[str] = (),
) -> dict[str, Any]:
    """Apply ``msg`` on top of ``bag`` (in place) and return it."""
    word = _Words(
        msg.words or default_words,
        global_words,
        len(global_words) if word_count is None else word_count,
    )
    for k, v in msg.strings.items():
        bag[word(k)] = word(v)
    for k, v in msg.int64s.items():
        bag[word(k)] = v
    for k, v in msg.doubles.items():
        bag[word(k)] = v
    for k, v in msg.bools.items():
        bag[word(k)] = v
    for k, v in msg.timestamps.items():
        bag[word(k)] = v.ToDatetime(tzinfo=dt.UTC)
    for k, v in msg.durations.items():
        bag[word(k)] = v.ToTimedelta()
    for k, v in msg.bytes.items():
        bag[word(k)] = bytes(v)
    for k, sm in msg.string_maps.items():
        bag[word(k)] = {word(mk): word(mv) for mk, mv in sm.entries.items()}
    return bag


def decode(
    msg: CompressedAttributes,
    global_word_count: int = 0,
    global_words: Sequence[str] = GLOBAL_WORDS,
) -> dict[str, Any]:
    """One bag from one message (``Check``)."""
    count = usable_word_count(global_word_count, global_words)
    return decode_into({}, msg, global_words, count)


def decode_batch(
    request: report_pb2.ReportRequest, global_words: Sequence[str] = GLOBAL_WORDS
) -> Iterator[dict[str, Any]]:
    """The bag after each entry of a delta-encoded batch. Each yielded bag is a fresh dict."""
    count = usable_word_count(request.global_word_count, global_words)
    bag: dict[str, Any] = {}
    for msg in request.attributes:
        decode_into(bag, msg, global_words, count, request.default_words)
        yield dict(bag)


class WordEncoder:
    """word -> index, using the global dictionary's usable prefix, else message words."""

    def __init__(
        self,
        global_index: Mapping[str, int] = GLOBAL_INDEX,
        word_count: int | None = None,
    ) -> None:
        self.global_index = global_index
        self.word_count = len(global_index) + 1_000_000 if word_count is None else word_count
        self.words: list[str] = []
        self._own: dict[str, int] = {}

    def __call__(self, word: str) -> int:
        index = self.global_index.get(word)
        if index is not None and index < self.word_count:
            return index
        own = self._own.get(word)
        if own is None:
            self.words.append(word)
            own = self._own[word] = -len(self.words)
        return own

    def own(self, word: str) -> int:
        """An index in the message's own words even when the global dictionary has the word
        (used where index 0 would read as "unset", e.g. a string-map key)."""
        own = self._own.get(word)
        if own is None:
            self.words.append(word)
            own = self._own[word] = -len(self.words)
        return own


def encode_into(msg: CompressedAttributes, bag: Mapping[str, Any], word: WordEncoder) -> None:
    """Write ``bag``'s attributes into ``msg`` (words are left to the caller)."""
    for name, value in bag.items():
        k = word(name)
        if isinstance(value, bool):
            msg.bools[k] = value
        elif isinstance(value, int):
            msg.int64s[k] = value
        elif isinstance(value, float):
            msg.doubles[k] = value
        elif isinstance(value, str):
            msg.strings[k] = word(value)
        elif isinstance(value, dt.datetime):
            if value.tzinfo is None:
                value = value.replace(tzinfo=dt.UTC)
            msg.timestamps[k].FromDatetime(value)
        elif isinstance(value, dt.timedelta):
            msg.durations[k].FromTimedelta(value)
        elif isinstance(value, bytes):
            msg.bytes[k] = value
        elif isinstance(value, ipaddress.IPv4Address | ipaddress.IPv6Address):
            msg.bytes[k] = value.packed
        elif isinstance(value, Mapping):
            entries = msg.string_maps[k].entries
            for mk, mv in value.items():
                entries[word(str(mk))] = word(str(mv))
        else:
            raise TypeError(f"attribute {name}: cannot encode a {type(value).__name__}")


def encode(
    bag: Mapping[str, Any],
    word_count: int | None = None,
    global_words: Sequence[str] = GLOBAL_WORDS,
) -> CompressedAttributes:
    """One message for one bag, with its own words for strings outside the dictionary."""
    word = WordEncoder(
        GLOBAL_INDEX if global_words is GLOBAL_WORDS else index_of(global_words), word_count
    )
    msg = CompressedAttributes()
    encode_into(msg, bag, word)
    msg.words.extend(word.words)
    return msg


def encode_batches(
    bags: Sequence[Mapping[str, Any]],
    word_count: int | None = None,
    global_words: Sequence[str] = GLOBAL_WORDS,
) -> list[report_pb2.ReportRequest]:
    """Delta-encoded ReportRequests for ``bags``, in order, sharing ``default_words``.

    Normally one request; a new one starts where a bag lacks an attribute of the bag before it.
    """
    gindex = GLOBAL_INDEX if global_words is GLOBAL_WORDS else index_of(global_words)
    count = len(global_words) if word_count is None else word_count
    requests: list[report_pb2.ReportRequest] = []
    request: report_pb2.ReportRequest | None = None
    word = WordEncoder(gindex, count)
    previous: Mapping[str, Any] = {}
    for bag in bags:
        if request is None or any(name not in bag for name in previous):
            if request is not None:
                request.default_words.extend(word.words)
                requests.append(request)
            request = report_pb2.ReportRequest(global_word_count=count)
            word = WordEncoder(gindex, count)
            previous = {}
        delta = {k: v for k, v in bag.items() if k not in previous or not _same(previous[k], v)}
        encode_into(request.attributes.add(), delta, word)
        previous = bag
    if request is not None:
        request.default_words.extend(word.words)
        requests.append(request)
    return requests


def _same(a: Any, b: Any) -> bool:
    # 1 == 1.0 == True in Python, but they are different attributes on the wire.
    return type(a) is type(b) and a == b
