"""Root rotation: which phase a rotation is in, computed from timestamps alone.

Why timestamps: every CA replica, and a CA that restarts half-way, must agree on which root
signs and which roots are trusted without talking to each other. The operator's
``meshfed ca rotate-root`` stores one record (when it started, how long each phase lasts, the
old and the new root); every CA derives the phase from that record and its clock. Nothing has
to be written when a phase ends.

The three phases (the standard overlap rotation):

1. ``add``: the new root joins the trust bundle; the old root still signs. It lasts at least the
   longest leaf lifetime (plus a margin), so every agent has renewed once and every Envoy has
   been handed a bundle with both roots before anything signed by the new root appears.
2. ``switch``: the new root signs; the bundle still holds both. It lasts at least the longest
   leaf lifetime, so every leaf from the old root has been replaced (or has expired).
3. ``retired``: the old root leaves the bundle. The rotation is complete; the next
   ``rotate-root`` folds it into the stored material before starting another.

A CA whose clock is behind the record's start treats the rotation as being in ``add``: signing
is unchanged and the extra trusted root is harmless.

Everything here is pure (callers pass ``now``), so the phase arithmetic is tested without
waiting.
"""

from __future__ import annotations

import datetime as dt
import enum

import attrs

#: The margin added to each phase: a tenth of the longest leaf lifetime, at least this much,
#: which covers renewal retries (jittered backoff) and small clock differences.
MIN_MARGIN = dt.timedelta(minutes=1)
MARGIN_FRACTION = 0.1


class Phase(enum.StrEnum):
    ADD = "add"
    SWITCH = "switch"
    RETIRED = "retired"


def default_margin(max_leaf_ttl: dt.timedelta) -> dt.timedelta:
    """The safety margin for a mesh whose leaves live at most ``max_leaf_ttl``."""
    return max(max_leaf_ttl * MARGIN_FRACTION, MIN_MARGIN)


def default_durations(
    max_leaf_ttl: dt.timedelta, margin: dt.timedelta | None = None
) -> tuple[dt.timedelta, dt.timedelta]:
    """(add, switch) durations: each the longest leaf lifetime plus the margin."""
    pad = default_margin(max_leaf_ttl) if margin is None else margin
    return max_leaf_ttl + pad, max_leaf_ttl + pad


def check_durations(
    add: dt.timedelta, switch: dt.timedelta, max_leaf_ttl: dt.timedelta
) -> list[str]:
    """Why (add, switch) would break traffic for leaves of up to ``max_leaf_ttl`` (empty: fine)."""
    problems = []
    if add < max_leaf_ttl:
        problems.append(
            f"the add phase ({add}) is shorter than the longest leaf lifetime ({max_leaf_ttl}): "
            "an agent that has not renewed yet would not trust the new root at the switch"
        )
    if switch < max_leaf_ttl:
        problems.append(
            f"the switch phase ({switch}) is shorter than the longest leaf lifetime "
            f"({max_leaf_ttl}): leaves from the old root would still be in use at retirement"
        )
    return problems


@attrs.frozen(slots=True)
class Schedule:
    """When a rotation started and how long its first two phases last."""

    started_at: dt.datetime
    add: dt.timedelta
    switch: dt.timedelta

    def __attrs_post_init__(self) -> None:
        if self.started_at.tzinfo is None:
            raise ValueError("started_at must be timezone-aware")
        if self.add <= dt.timedelta(0) or self.switch <= dt.timedelta(0):
            raise ValueError(
                f"phase durations must be positive: add={self.add} switch={self.switch}"
            )

    @property
    def switch_at(self) -> dt.datetime:
        return self.started_at + self.add

    @property
    def retire_at(self) -> dt.datetime:
        return self.started_at + self.add + self.switch

    def phase(self, now: dt.datetime) -> Phase:
        if now < self.switch_at:
            return Phase.ADD
        if now < self.retire_at:
            return Phase.SWITCH
        return Phase.RETIRED

    def next_change(self, now: dt.datetime) -> dt.datetime | None:
        """When the phase next changes after ``now`` (None once retired)."""
        if now < self.switch_at:
            return self.switch_at
        if now < self.retire_at:
            return self.retire_at
        return None
