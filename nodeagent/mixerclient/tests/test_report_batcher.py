"""Report batching: size and time triggers, delta encoding, retry without loss, the bound."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshfed.mixer.api.v1 import report_pb2
from meshfed.mixer.attributes import codec
from meshfed.nodeagent.mixerclient.report_batcher import ReportBatcher


class Hub:
    """This test's own receiving end: records what it accepts, fails while told to."""

    def __init__(self, fail_times: int = 0) -> None:
        self.requests: list[report_pb2.ReportRequest] = []
        self.fail_times = fail_times
        self.down = False
        self.calls = 0

    async def send(self, request: report_pb2.ReportRequest, bags: object = ()) -> None:
        self.calls += 1
        await asyncio.sleep(0)
        if self.down or self.fail_times > 0:
            self.fail_times -= 1
            raise ConnectionError("hub unavailable")
        # what the hub would see: the bytes on the wire
        self.requests.append(report_pb2.ReportRequest.FromString(request.SerializeToString()))

    def bags(self) -> list[dict]:
        return [bag for r in self.requests for bag in codec.decode_batch(r)]


def entry(i: int, **extra: object) -> dict[str, object]:
    return {
        "destination.service": "reviews.default.svc.cluster.local",
        "request.path": f"/reviews/{i % 7}",
        "request.headers": {"x-request-id": f"id-{i}"},
        "response.code": 200,
        **extra,
    }


async def until(predicate, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.005)


@contextlib.asynccontextmanager
async def running(batcher: ReportBatcher):
    task = asyncio.create_task(batcher.run())
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_a_full_batch_is_sent_at_once_and_the_rest_after_max_delay():
    hub = Hub()
    batcher = ReportBatcher(hub.send, max_entries=10, max_delay=0.5)
    sent = [entry(i) for i in range(25)]
    async with running(batcher):
        for bag in sent:
            batcher.add(bag)
        await until(lambda: batcher.stats.sent == 20, timeout=0.4)  # before max_delay
        assert [len(r.attributes) for r in hub.requests] == [10, 10]
        await asyncio.sleep(0.1)
        assert batcher.stats.sent == 20  # the last 5 wait for max_delay...
        await until(lambda: batcher.stats.sent == 25)  # ...and then go
    assert hub.bags() == sent
    assert batcher.pending == 0 and batcher.stats.requests == 3


async def test_max_delay_counts_from_the_oldest_pending_bag():
    hub = Hub()
    batcher = ReportBatcher(hub.send, max_entries=1000, max_delay=0.3)
    loop = asyncio.get_running_loop()
    async with running(batcher):
        await asyncio.sleep(0.05)  # an idle sender waits for the first bag
        start = loop.time()
        batcher.add(entry(0))
        await asyncio.sleep(0.25)
        batcher.add(entry(1))
        await until(lambda: hub.requests)
        elapsed = loop.time() - start
    assert 0.3 <= elapsed < 0.5  # from the newest bag it would be 0.55
    assert hub.bags() == [entry(0), entry(1)]


async def test_entries_are_delta_encoded():
    hub = Hub()
    batcher = ReportBatcher(hub.send, max_entries=100)
    bags = [entry(i) for i in range(50)]
    for bag in bags:
        batcher.add(bag)
    assert await batcher.flush()
    (request,) = hub.requests
    assert len(request.attributes) == 50
    later = request.attributes[1]
    assert not later.int64s and set(later.strings) == {codec.WordEncoder()("request.path")}
    assert request.default_words and not later.words
    assert hub.bags() == bags


async def test_a_bag_lacking_an_attribute_starts_a_new_request():
    hub = Hub()
    batcher = ReportBatcher(hub.send, max_entries=100)
    bags = [entry(0), entry(1), {"request.path": "/x"}, entry(3)]
    for bag in bags:
        batcher.add(bag)
    assert await batcher.flush()
    assert [len(r.attributes) for r in hub.requests] == [2, 2]
    assert hub.bags() == bags and batcher.stats.requests == 2


async def test_a_failed_send_is_retried_without_loss_or_reordering():
    hub = Hub(fail_times=3)
    batcher = ReportBatcher(hub.send, max_entries=10, max_delay=0.02, retry_min=0.01)
    sent = [entry(i) for i in range(35)]
    async with running(batcher):
        for bag in sent[:20]:
            batcher.add(bag)
        await until(lambda: batcher.stats.send_failures >= 1)
        assert batcher.failing
        for bag in sent[20:]:
            batcher.add(bag)  # more traffic while the hub is away
        await until(lambda: batcher.stats.sent == 35)
    assert hub.bags() == sent
    assert batcher.stats.send_failures == 3 and batcher.stats.dropped == 0
    assert not batcher.failing


async def test_a_hub_restart_loses_nothing():
    hub = Hub()
    batcher = ReportBatcher(hub.send, max_entries=20, max_delay=0.02, retry_min=0.01)
    sent = [entry(i) for i in range(300)]
    async with running(batcher):
        for i, bag in enumerate(sent):
            if i == 100:
                hub.down = True
            if i == 200:
                hub.down = False
            batcher.add(bag)
            if i % 10 == 0:
                await asyncio.sleep(0.005)
        await until(lambda: batcher.stats.sent == 300)
    assert hub.bags() == sent
    assert batcher.stats.send_failures >= 1 and batcher.stats.dropped == 0


async def test_while_the_hub_is_away_memory_is_bounded_and_the_oldest_are_dropped():
    hub = Hub()
    hub.down = True
    batcher = ReportBatcher(
        hub.send, max_entries=10, max_pending=50, max_delay=0.01, retry_min=0.01, retry_max=0.02
    )
    sent = [entry(i) for i in range(120)]
    async with running(batcher):
        for bag in sent:
            batcher.add(bag)
            assert batcher.pending <= 50
        await until(lambda: batcher.stats.send_failures >= 2)
        assert batcher.pending == 50 and batcher.stats.dropped == 70
        hub.down = False
        await until(lambda: batcher.pending == 0)
    assert hub.bags() == sent[70:]
    assert batcher.stats.sent + batcher.stats.dropped == batcher.stats.added == 120


async def test_bags_added_while_a_batch_is_in_flight_never_drop_that_batch():
    release = asyncio.Event()
    got: list[report_pb2.ReportRequest] = []

    async def slow(request: report_pb2.ReportRequest, bags: object = ()) -> None:
        await release.wait()
        got.append(request)

    batcher = ReportBatcher(slow, max_entries=10, max_pending=15, max_delay=0.01)
    async with running(batcher):
        for i in range(10):
            batcher.add(entry(i))
        await until(lambda: batcher._inflight)
        for i in range(10, 30):
            batcher.add(entry(i))  # the bound drops from the queue, not from the batch in flight
        assert batcher.pending == 15 and batcher.stats.dropped == 15
        release.set()
        await until(lambda: batcher.pending == 0)
    decoded = [bag for r in got for bag in codec.decode_batch(r)]
    assert decoded == [entry(i) for i in (*range(10), *range(25, 30))]


async def test_an_unencodable_bag_is_dropped_and_the_others_sent():
    hub = Hub()
    batcher = ReportBatcher(hub.send, max_entries=10)
    batcher.add(entry(0))
    batcher.add({"request.path": "/x", "bad": object()})
    batcher.add(entry(2))
    assert await batcher.flush()
    assert hub.bags() == [entry(0), entry(2)]
    assert batcher.stats.invalid == 1 and batcher.pending == 0


async def test_a_cancelled_send_keeps_its_batch_for_the_final_flush():
    hang = asyncio.Event()
    hub = Hub()

    async def send(request: report_pb2.ReportRequest, bags: object = ()) -> None:
        if not hang.is_set():
            await asyncio.Event().wait()  # a hub that never answers, until cancelled
        await hub.send(request)

    batcher = ReportBatcher(send, max_entries=5, max_delay=0.01)
    async with running(batcher):
        for i in range(5):
            batcher.add(entry(i))
        await until(lambda: batcher._inflight)
    assert batcher.pending == 5  # the cancelled batch went back to the queue
    hang.set()
    assert await asyncio.wait_for(batcher.flush(), 5)
    assert hub.bags() == [entry(i) for i in range(5)]


async def test_flush_stops_at_a_failure_and_keeps_the_rest():
    hub = Hub()
    hub.down = True
    batcher = ReportBatcher(hub.send, max_entries=4)
    for i in range(10):
        batcher.add(entry(i))
    assert not await batcher.flush()
    assert hub.calls == 1 and batcher.pending == 10


def test_bad_settings_are_refused():
    async def send(request: report_pb2.ReportRequest, bags: object = ()) -> None:
        return None

    with pytest.raises(ValueError, match="max_pending"):
        ReportBatcher(send, max_entries=10, max_pending=5)
    with pytest.raises(ValueError, match="max_entries"):
        ReportBatcher(send, max_entries=0)
    with pytest.raises(ValueError, match="max_delay"):
        ReportBatcher(send, max_delay=0)


async def test_a_failed_flush_hands_its_batch_back_to_the_running_sender():
    # flush() takes the whole queue while run() waits; when flush fails, run() must be woken
    # to retry, or the entries wait for the next add()
    hub = Hub(fail_times=1)
    batcher = ReportBatcher(hub.send, max_entries=10, max_delay=0.01, retry_min=0.01)
    async with running(batcher):
        await asyncio.sleep(0)
        for i in range(3):
            batcher.add(entry(i))
        assert not await batcher.flush()
        await until(lambda: batcher.pending == 0)
    assert len(hub.bags()) == 3


@settings(max_examples=80, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 40), st.booleans()), min_size=1, max_size=12),
    st.integers(1, 8),
    st.integers(0, 24),
)
def test_whatever_fails_what_arrives_is_in_order_and_every_bag_is_accounted_for(
    rounds, max_entries, extra
):
    """Rounds of "add n bags, then flush with the hub up or down"; finally the hub stays up."""

    async def scenario() -> None:
        hub = Hub()
        batcher = ReportBatcher(hub.send, max_entries=max_entries, max_pending=max_entries + extra)
        added = 0
        for n, up in rounds:
            for _ in range(n):
                batcher.add(entry(added))
                added += 1
                assert batcher.pending <= max_entries + extra
            hub.down = not up
            await batcher.flush()
        hub.down = False
        for _ in range(added + 1):
            if await batcher.flush():
                break
        got = [int(b["request.headers"]["x-request-id"][3:]) for b in hub.bags()]
        assert got == sorted(got) and len(set(got)) == len(got)  # in order, none twice
        assert len(got) + batcher.stats.dropped == added == batcher.stats.added
        assert batcher.pending == 0
        if batcher.stats.dropped == 0:
            assert got == list(range(added))
        elif added:
            assert got[-1] == added - 1  # the bound drops the oldest, never the newest

    asyncio.run(scenario())
