"""Where catalog-wide mode spends its time, per stage, for ``describe`` and benchmarks.

Why this exists: a change that no watched index names goes through several reads (the summary,
the node list, a check probe, the catalog dump) before the read of the service itself; which of
them costs what decides what to make cheaper, so each is timed where it runs rather than
guessed from the end-to-end figure. Bounded: the last ``KEEP`` durations per stage.
"""

from __future__ import annotations

from collections import deque

KEEP = 512


def _percentile(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


class StageTimes:
    """Recent durations per named stage; ``summary`` gives count, p50, p99 and max in ms."""

    def __init__(self) -> None:
        self._times: dict[str, deque[float]] = {}
        self._counts: dict[str, int] = {}

    def record(self, stage: str, seconds: float) -> None:
        self._times.setdefault(stage, deque(maxlen=KEEP)).append(seconds)
        self._counts[stage] = self._counts.get(stage, 0) + 1

    def clear(self) -> None:
        self._times.clear()
        self._counts.clear()

    def summary(self) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {}
        for stage, times in sorted(self._times.items()):
            ordered = sorted(times)
            out[stage] = {
                "count": self._counts[stage],
                "p50Ms": round(_percentile(ordered, 0.5) * 1000, 1),
                "p99Ms": round(_percentile(ordered, 0.99) * 1000, 1),
                "maxMs": round(ordered[-1] * 1000, 1),
            }
        return out
