"""MongoDB traffic through the mesh: pymongo -> the client's sidecar (Mongo proxy filter on the
service's MONGO port) -> FerretDB, a real Mongo-wire server: inserts, updates, queries and
deletes work through the mesh, and the Mongo proxy filter sits on every connection (see the
comment on its counters: Envoy does not decode the OP_MSG that current drivers use).

Hosts: 127.0.107.x.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from integration.ferretdb import running_ferretdb
from integration.routing_helpers import routing_mesh
from registry.model import Endpoint, Port, Protocol, Service

pymongo = pytest.importorskip("pymongo")

MONGO = "mongo.default.svc.cluster.local"
A_IP, DB_IP, PORT = "127.0.107.2", "127.0.107.10", 27017


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
            mongo = await stats(a, f"mongo.outbound_mongo_{PORT}.")
            tcp = await stats(a, f"cluster.outbound|{PORT}||{MONGO}.")
            # The Mongo proxy filter is in the chain and saw every connection. Envoy 1.40's
            # decoder knows only the legacy opcodes (OP_QUERY/OP_REPLY/OP_INSERT/...), and
            # current drivers speak OP_MSG (MongoDB >= 3.6), so it records one decoding_error
            # per connection and then passes that connection's bytes through undecoded: the
            # operation counters stay at zero. The traffic itself is unaffected (above).
            assert "op_query" in mongo and "decoding_error" in mongo, mongo
            assert tcp["upstream_cx_total"] >= 1
            assert mongo["decoding_error"] <= tcp["upstream_cx_total"], (mongo, tcp)
            assert tcp["upstream_cx_rx_bytes_total"] > 0 and tcp["upstream_cx_tx_bytes_total"] > 0
