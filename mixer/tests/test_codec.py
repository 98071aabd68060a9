"""The wire codec: round trips of bags and delta-encoded batches, dictionary rules."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshfed.mixer.api.v1 import attributes_pb2
from meshfed.mixer.attributes import codec
from meshfed.mixer.attributes.dictionary import GLOBAL_WORDS

# names and strings: dictionary words and arbitrary text alike
words = st.one_of(st.sampled_from(list(GLOBAL_WORDS)), st.text(max_size=12))
values = st.one_of(
    words,
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False),
    st.booleans(),
    st.binary(max_size=16),
    st.datetimes(
        min_value=dt.datetime(1970, 1, 1),
        max_value=dt.datetime(2200, 1, 1),
        timezones=st.just(dt.UTC),
    ),
    st.timedeltas(min_value=dt.timedelta(days=-1000), max_value=dt.timedelta(days=1000)),
    st.dictionaries(words, words, max_size=4),
)
bags = st.dictionaries(words, values, max_size=8)


@given(bags, st.sampled_from([None, 10, 100, len(GLOBAL_WORDS)]))
def test_bag_round_trip(bag, word_count):
    msg = codec.encode(bag, word_count=word_count)
    wire = attributes_pb2.CompressedAttributes.FromString(msg.SerializeToString())
    assert codec.decode(wire, word_count or 0) == bag


@settings(max_examples=60)
@given(st.lists(bags, max_size=12), st.sampled_from([None, 50]))
def test_delta_batch_round_trip(batch, word_count):
    requests = codec.encode_batches(batch, word_count=word_count)
    decoded = [bag for request in requests for bag in codec.decode_batch(request)]
    assert decoded == batch


def test_delta_entries_carry_only_changes():
    bags = [{"request.path": f"/p{i}", "source.name": "a", "response.code": 200} for i in range(5)]
    (request,) = codec.encode_batches(bags)
    later = request.attributes[1]
    assert len(later.strings) == 1 and not later.int64s  # only the path changed
    assert list(codec.decode_batch(request)) == bags


def test_negative_indices_are_message_words():
    msg = attributes_pb2.CompressedAttributes(words=["my.attr", "v"])
    msg.strings[-1] = -2
    msg.strings[GLOBAL_WORDS.index("request.path")] = -2
    assert codec.decode(msg) == {"my.attr": "v", "request.path": "v"}


def test_default_words_apply_to_entries_without_their_own():
    request = codec.encode_batches([{"x.y": "z"}])[0]
    assert request.default_words and not request.attributes[0].words
    assert list(codec.decode_batch(request)) == [{"x.y": "z"}]


def test_shorter_dictionary_is_served_and_past_it_is_refused():
    msg = codec.encode({"source.service": "a"}, word_count=5)  # source.service is word 139
    assert codec.decode(msg, 5) == {"source.service": "a"}
    full = codec.encode({"source.service": "a"})
    with pytest.raises(codec.DecodeError, match="past the 5 global words"):
        codec.decode(full, 5)


def test_longer_dictionary_is_refused():
    with pytest.raises(codec.DecodeError, match="newer dictionary"):
        codec.decode(attributes_pb2.CompressedAttributes(), len(GLOBAL_WORDS) + 1)


def test_bad_index_is_an_error():
    msg = attributes_pb2.CompressedAttributes()
    msg.strings[-3] = 0
    with pytest.raises(codec.DecodeError, match="past the message"):
        codec.decode(msg)


def test_global_dictionary_is_istios():
    assert len(GLOBAL_WORDS) == 159
    assert GLOBAL_WORDS[0] == "source.ip" and GLOBAL_WORDS[-1] == "source.service"
    assert GLOBAL_WORDS.count("200") == 2  # '200' and 200 are one string in Istio's list


def test_word_decoder_reads_own_then_global_words():
    word = codec.word_decoder(["mine"], word_count=5)
    assert (word(-1), word(0)) == ("mine", GLOBAL_WORDS[0])
    with pytest.raises(codec.DecodeError, match="past the 5 global words"):
        word(5)
    with pytest.raises(codec.DecodeError, match="past the message's 1 words"):
        word(-2)
