"""Istio 0.2's global attribute dictionary: words both ends of the Mixer API know by position.

The list is Istio's ``mixer/v1/global_dictionary.yaml`` (0.2) in order, read as strings, stored
as ``meshfed/mixer/api/global_dictionary.json``. It is append-only: a client built against a
shorter (older) list uses a prefix of it, which is why a request carries ``global_word_count``.
Some words occur twice (``'200'`` and ``200`` are one string); encoding uses the first.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from importlib import resources


def _load() -> tuple[str, ...]:
    text = resources.files("meshfed.mixer.api").joinpath("global_dictionary.json").read_text()
    return tuple(json.loads(text))


GLOBAL_WORDS: Sequence[str] = _load()


def index_of(words: Sequence[str]) -> Mapping[str, int]:
    """word -> its first position."""
    out: dict[str, int] = {}
    for i, word in enumerate(words):
        out.setdefault(word, i)
    return out


GLOBAL_INDEX: Mapping[str, int] = index_of(GLOBAL_WORDS)
