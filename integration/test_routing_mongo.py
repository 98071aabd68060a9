"""MongoDB traffic through the mesh: pymongo -> the client's sidecar (Mongo proxy filter on the
service's MONGO port) -> a real Mongo-wire server.

Two servers, because Envoy's Mongo proxy filter decodes only the legacy opcodes (OP_QUERY,
OP_REPLY, OP_INSERT, OP_GET_MORE, ...) and not OP_MSG (opcode 2013), which drivers use with
every MongoDB >= 3.6 (envoyproxy/envoy#5036, #31810, #34365):

- FerretDB (announces MongoDB 7, so OP_MSG): inserts, updates, queries and deletes work through
  the mesh; the filter decodes each connection's OP_QUERY handshake, then counts one
  ``decoding_error`` and passes the rest through undecoded, so no operation is counted.
- mongo-java-server announcing MongoDB 3.4 (wire version 5, so pymongo 3.13 sends every command
  and query as OP_QUERY): the filter decodes everything, and its statistics count exactly the
  operations the driver sent, per command and per collection.

Hosts: 127.0.107.x.
"""

from __future__ import annotations

import asyncio
import collections
from pathlib import Path

import pytest

from integration.ferretdb import running_ferretdb
from integration.peers.mongo_legacy import start_mongo_legacy
from integration.routing_helpers import routing_mesh
from meshfed.pilot.translate.tcp_rules import MONGO_COUNTED_COMMANDS
from meshfed.registry.model import Endpoint, Port, Protocol, Service

pymongo = pytest.importorskip("pymongo")
from pymongo import monitoring  # noqa: E402

MONGO = "mongo.default.svc.cluster.local"
LEGACY = "mongo-legacy.default.svc.cluster.local"
A_IP, DB_IP, PORT = "127.0.107.2", "127.0.107.10", 27017
B_IP, LEGACY_IP = "127.0.107.3", "127.0.107.11"
PREFIX = f"mongo.outbound_mongo_{PORT}."
# Commands Envoy's Mongo proxy filter counts by name (cmd.<name>.*): the ones Pilot lists in
# its config; "find" is counted as a query on its collection; every other command is counted as
# cmd.unknown_command.
NAMED_COMMANDS = set(MONGO_COUNTED_COMMANDS)


async def stats(envoy, prefix: str) -> dict[str, int]:  # type: ignore[no-untyped-def]
    status, body = await envoy.admin(f"/stats?filter=^{prefix}")
    assert status == 200
    out = {}
    for line in body.splitlines():
        key, _, value = line.partition(": ")
        if value.isdigit():
            out[key.removeprefix(prefix)] = int(value)
    return out


def operations(address: str) -> list[dict]:
    client = pymongo.MongoClient(
        f"mongodb://{address}:{PORT}/?directConnection=true", serverSelectionTimeoutMS=5000
    )
    try:
        items = client.meshtest.items
        items.insert_many([{"n": i, "via": "mesh"} for i in range(5)])
        items.update_one({"n": 2}, {"$set": {"updated": True}})
        found = list(items.find({"n": {"$gte": 1}}, {"_id": 0}).sort("n", 1))
        items.delete_one({"n": 4})
        assert items.count_documents({}) == 4
        return found
    finally:
        client.close()


# A cold first run builds FerretDB from the Go module proxy (minutes on 2 busy cores).
@pytest.mark.timeout(900)
async def test_mongo_operations_through_the_sidecar(tmp_path: Path) -> None:
    with running_ferretdb(DB_IP, PORT, tmp_path / "ferretdb"):
        async with routing_mesh(tmp_path / "rules") as mesh:
            service = Service(MONGO, ports=(Port(PORT, "mongo", Protocol.MONGO),))
            mesh.member.replace([service], {MONGO: [Endpoint(DB_IP, ports={"mongo": PORT})]})
            a = await mesh.sidecar(A_IP, "app")
            found = await asyncio.to_thread(operations, A_IP)
            assert [d["n"] for d in found] == [1, 2, 3, 4]
            assert found[1]["updated"] is True
            mongo = await stats(a, PREFIX)
            tcp = await stats(a, f"cluster.outbound|{PORT}||{MONGO}.")
            # The Mongo proxy filter is in the chain and saw every connection. pymongo opens
            # each connection with an OP_QUERY isMaster, which the filter decodes (op_query,
            # op_reply); FerretDB announces wire version 21, so everything after that is
            # OP_MSG, which Envoy's decoder does not know: at a connection's first OP_MSG it
            # records one decoding_error and passes that connection's bytes through undecoded
            # from then on (here the operations' connection; the monitor's sent none yet, so
            # 1 <= decoding_error <= connections). So no operation is counted (the
            # legacy-wire test below shows the counters working); the traffic itself is
            # unaffected (above).
            assert mongo["op_query"] >= 1 and mongo["op_reply"] >= 1, mongo
            assert 1 <= mongo["decoding_error"] <= tcp["upstream_cx_total"], (mongo, tcp)
            assert mongo.get("cmd.insert.total", 0) == 0, mongo
            assert mongo.get("collection.items.query.total", 0) == 0, mongo
            assert tcp["upstream_cx_rx_bytes_total"] > 0 and tcp["upstream_cx_tx_bytes_total"] > 0


class CommandLog(monitoring.CommandListener):
    """The commands the driver sent, from its own command monitoring (one event per command
    message; handshakes and heartbeats are not commands and are not logged here)."""

    def __init__(self) -> None:
        self.sent: list[str] = []
        self.errors: list[str] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        self.sent.append(event.command_name)

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        self.errors.append(f"{event.command_name}: {event.failure}")


def crud(items) -> tuple[list[int], int]:  # type: ignore[no-untyped-def]
    """Inserts, updates, queries (one of them in several batches) and deletes."""
    items.insert_one({"n": 0})
    items.insert_many([{"n": n} for n in range(1, 8)])
    items.insert_one({"n": 8})
    items.update_one({"n": 2}, {"$set": {"updated": True}})
    items.update_many({"n": {"$gte": 6}}, {"$set": {"big": True}})
    ns = [d["n"] for d in items.find({"n": {"$gte": 1}}).sort("n", 1).batch_size(3)]
    assert items.find_one({"n": 2})["updated"] is True
    items.delete_one({"n": 8})
    items.delete_many({"big": True})
    return ns, items.count_documents({})


# A cold first run builds the mongo-java-server jar with Maven (seconds to a minute).
@pytest.mark.timeout(300)
async def test_mongo_proxy_stats_count_legacy_wire_operations(tmp_path: Path) -> None:
    with start_mongo_legacy(tmp_path, LEGACY_IP, PORT):
        async with routing_mesh(tmp_path / "rules") as mesh:
            service = Service(LEGACY, ports=(Port(PORT, "mongo", Protocol.MONGO),))
            mesh.member.replace([service], {LEGACY: [Endpoint(LEGACY_IP, ports={"mongo": PORT})]})
            b = await mesh.sidecar(B_IP, "app")
            log = CommandLog()
            # No heartbeat during the test (the first check still runs), so the only OP_QUERYs
            # in the measured window are the commands the driver logs.
            client = pymongo.MongoClient(
                f"mongodb://{B_IP}:{PORT}/?directConnection=true",
                serverSelectionTimeoutMS=5000,
                heartbeatFrequencyMS=3_600_000,
                event_listeners=[log],
            )
            try:
                hello = await asyncio.to_thread(client.admin.command, "isMaster")
                # Below wire version 6 (MongoDB 3.6) drivers do not speak OP_MSG.
                assert hello["maxWireVersion"] == 5, hello
                before = await stats(b, PREFIX)
                sent_before = len(log.sent)
                ns, left = await asyncio.to_thread(crud, client.meshtest.items)
                after = await stats(b, PREFIX)
                sent = collections.Counter(log.sent[sent_before:])
            finally:
                await asyncio.to_thread(client.close)

    # The data went through the mesh to the server and back.
    assert ns == [1, 2, 3, 4, 5, 6, 7, 8]
    assert left == 6  # 9 inserted, n=8 deleted, then n=6 and n=7 (big)
    assert not log.errors, log.errors
    # What the driver sent for crud(): 3 insert, 2 update, 2 delete and 2 find commands, the
    # getMores of the 3-document batches, and count_documents' aggregate.
    assert {k: sent[k] for k in ("insert", "update", "delete", "find")} == {
        "insert": 3,
        "update": 2,
        "delete": 2,
        "find": 2,
    }, sent
    assert sent["getMore"] >= 2 and sent["aggregate"] == 1, sent

    def delta(name: str) -> int:
        return after.get(name, 0) - before.get(name, 0)

    # Envoy decoded every message and counted each one: one OP_QUERY and one OP_REPLY per
    # command, per-command counters for the named commands, finds as queries on their
    # collection, the rest as unknown commands; no decoding error on any connection.
    total = sum(sent.values())
    assert after.get("decoding_error", 0) == 0, after
    assert delta("op_query") == total, (sent, before, after)
    assert delta("op_reply") == total, (sent, before, after)
    for command in sorted(NAMED_COMMANDS):
        assert delta(f"cmd.{command}.total") == sent[command], (command, sent, after)
    assert delta("collection.items.query.total") == sent["find"], (sent, after)
    assert delta("collection.items.query.scatter_get") == sent["find"], (sent, after)
    others = sum(n for name, n in sent.items() if name not in NAMED_COMMANDS | {"find"})
    assert delta("cmd.unknown_command.total") == others, (sent, before, after)
    # Writes travel as commands inside OP_QUERY, never as the legacy OP_INSERT.
    assert after.get("op_insert", 0) == 0, after
