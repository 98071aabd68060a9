"""Bounded logging of what proxies send back: a NACK's error is unauthenticated input.

An Envoy (or anything speaking xDS to Pilot) chooses the text of its NACKs. Logged verbatim and
for every NACK, five 4 MB NACKs wrote 21 MB of log in 3 s. So:

- the error kept for ``proxy-status`` is cut to :data:`ERROR_LIMIT` characters (with a note
  saying how much was cut), which is plenty for Envoy's own messages;
- a log line quotes at most :data:`LOG_LIMIT` characters of it, and of the node id;
- each proxy gets at most one NACK line per :data:`LOG_INTERVAL` seconds; the next line says
  how many were not logged. Every NACK is still counted (``meshfed_pilot_xds_nacks_total``)
  and the latest is shown in ``proxy-status``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import cachetools

ERROR_LIMIT = 1024
LOG_LIMIT = 300
LOG_INTERVAL = 10.0


def bounded(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, saying how many were left out."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text) - limit} more characters)"


class NackLog:
    """Per-proxy rate limit for NACK log lines."""

    def __init__(
        self,
        logger: logging.Logger,
        interval: float = LOG_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.interval = interval
        self.clock = clock
        # proxy -> (when its last line was written, NACKs not logged since)
        self._seen: cachetools.LRUCache[str, tuple[float | None, int]] = cachetools.LRUCache(4096)

    def nack(self, proxy: str, type_short: str, version: str, error: str) -> bool:
        """Log one NACK unless this proxy had a line less than ``interval`` ago (True: logged)."""
        now = self.clock()
        last, skipped = self._seen.get(proxy, (None, 0))
        if last is not None and now - last < self.interval:
            self._seen[proxy] = (last, skipped + 1)
            return False
        self._seen[proxy] = (now, 0)
        more = f" ({skipped} more NACKs from this proxy not logged)" if skipped else ""
        self.logger.warning(
            "proxy %s rejected %s version %s: %s%s",
            bounded(proxy, LOG_LIMIT),
            type_short,
            bounded(version, 64),
            bounded(error, LOG_LIMIT),
            more,
            extra={"proxy": bounded(proxy, LOG_LIMIT), "type": type_short},
        )
        return True
