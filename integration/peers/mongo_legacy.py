"""A real Mongo-wire server that speaks the pre-3.6 protocol: mongo-java-server on Maven Central.

Why this peer exists: Envoy's Mongo proxy filter decodes only the legacy opcodes (OP_QUERY,
OP_REPLY, OP_INSERT, OP_GET_MORE, ...), not OP_MSG (opcode 2013), which every driver uses
with a MongoDB >= 3.6 server (wire version >= 6); on the first OP_MSG it counts one
``decoding_error`` and stops decoding that connection (envoyproxy/envoy#5036, #31810,
#34365). FerretDB announces wire version 21, so its traffic passes through undecoded.
This server, bwaldvogel's mongo-java-server (BSD) with its in-memory backend, announces
MongoDB 3.4 (maxWireVersion 5): pymongo 3.13 then sends every command and query as
OP_QUERY on ``<db>.$cmd`` and reads OP_REPLY, which Envoy decodes and counts.

The jar (``integration/build/mongo-legacy``) is built by provisioning with Maven from Maven
Central and cached by version and project digest, like the Eureka server.
"""

from __future__ import annotations

import shutil
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from integration.peers.artifacts import mongo_legacy_jar_path, require_binary
from integration.peers.process import PeerProcess

START_TIMEOUT = 60.0


@dataclass
class LegacyMongo:
    """Where the legacy-wire Mongo server listens."""

    host: str
    port: int
    log_path: Path
    process: PeerProcess

    @property
    def url(self) -> str:
        """A driver URL for a direct connection to this server."""
        return f"mongodb://{self.host}:{self.port}/?directConnection=true"


@contextmanager
def start_mongo_legacy(base: Path, host: str, port: int) -> Iterator[LegacyMongo]:
    """Start the server on ``host:port`` and yield once it has bound its port."""
    java = require_binary(
        Path(shutil.which("java") or "/nonexistent/java"), "java", "java", "mongo-legacy"
    )
    jar = require_binary(mongo_legacy_jar_path(), "mongo-java-server jar", "java", "mongo-legacy")
    workdir = base / f"mongo-legacy-{host}-{port}"
    workdir.mkdir(parents=True, exist_ok=True)
    argv = [
        java,
        "-Xms32m",
        "-Xmx256m",
        "-XX:TieredStopAtLevel=1",
        "-XX:+UseSerialGC",
        "-jar",
        jar,
        host,
        str(port),
    ]
    proc = PeerProcess(f"mongo-legacy@{host}:{port}", argv, workdir / "mongo.log", cwd=workdir)
    proc.start()

    def ready() -> bool:
        if "listening on" not in proc.log_tail():
            return False
        with socket.create_connection((host, port), 0.5):
            return True

    try:
        proc.wait_until(ready, "for its port", START_TIMEOUT)
        yield LegacyMongo(host, port, proc.log_path, proc)
    finally:
        proc.stop()
