"""Per-stream, per-type xDS bookkeeping: subscriptions, versions, nonces, ACKs and NACKs.

This is the protocol logic of Envoy's xDS document, kept free of gRPC so it is unit tested:

- Each type has its own nonce and version. A request whose ``response_nonce`` is not the nonce
  of the latest response of that type is stale and is ignored for ACK/NACK purposes (a newer
  response is already on its way); a state-of-the-world stale request changes nothing at all.
- A request answering the latest nonce with ``error_detail`` is a NACK: the error is recorded
  and the rejected resources are remembered as *sent*, so the same version is never re-sent;
  only a newer version of the config goes out. The client keeps its last ACKed config, which
  stays visible as ``acked_version``.
- A request answering the latest nonce without error is an ACK of that response.
- State-of-the-world clusters and listeners are sent whole; endpoints and routes per resource
  (a response carries only the resources that changed, which Envoy treats as "others
  unchanged"). Delta streams always send only what changed, plus ``removed_resources``.

Status, as ``proxy-status`` shows it: NOT SENT (nothing sent yet), SYNCED (latest response
ACKed), STALE (sent, no answer yet), NACKED (latest response rejected; ``error`` says why).
"""

from __future__ import annotations

import enum
import sys
import time
from collections.abc import Iterable, Mapping

import attrs

from meshfed.pilot import xds_types as T
from meshfed.pilot.resources import ProxyView, Resource


class Status(enum.Enum):
    SYNCED = "SYNCED"
    NOT_SENT = "NOT SENT"
    STALE = "STALE"
    NACKED = "NACKED"


class RequestKind(enum.Enum):
    INITIAL = "initial"  # first request of the type on this stream
    ACK = "ack"
    NACK = "nack"
    STALE = "stale"  # answers an older response; ignore its ACK/NACK meaning
    UPDATE = "update"  # no nonce after the first request: a subscription change only


def _shared_names(names: Iterable[str]) -> set[str]:
    """Requested resource names as the process's one copy of each string: every proxy asks for
    the same names on every ACK, and each request's own copies would be held once per proxy."""
    return {sys.intern(n) for n in names}


@attrs.frozen(slots=True)
class Nack:
    nonce: str
    version: str
    error: str
    at: float


@attrs.frozen(slots=True)
class Plan:
    """A response to send: resources, removed names, the type version and the nonce."""

    type_url: str
    version: str
    nonce: str
    resources: tuple[Resource, ...]
    removed: tuple[str, ...] = ()


@attrs.define
class TypeWatch:
    """One resource type on one stream."""

    type_url: str
    delta: bool = False
    requested: bool = False
    wildcard: bool = False
    # Replaced whenever it changes, never changed in place: a caller that kept the previous
    # set sees a change by identity, without copying a subscription of every assignment.
    subscribed: set[str] = attrs.field(factory=set)
    # name -> version of what we last sent (ACKed or not). Comparing against this, not against
    # what was ACKed, is what keeps a NACKed version from being sent again.
    sent: dict[str, str] = attrs.field(factory=dict)
    # The encoded names the last state-of-the-world request carried (pilot.wire.EncodedNames,
    # one object per distinct encoding): the same object means the same subscription, learned
    # without reading a name.
    names_key: object | None = None
    sent_version: str = ""
    sent_nonce: str = ""
    sent_at: float = 0.0
    sent_event_time: float | None = None
    acked_version: str = ""
    acked_nonce: str = ""
    acked_at: float = 0.0
    last_nack: Nack | None = None
    nacks: int = 0
    acks: int = 0

    # -- status -----------------------------------------------------------------------------
    @property
    def status(self) -> Status:
        if not self.sent_nonce:
            return Status.NOT_SENT
        if self.last_nack is not None and self.last_nack.nonce == self.sent_nonce:
            return Status.NACKED
        if self.acked_nonce == self.sent_nonce:
            return Status.SYNCED
        return Status.STALE

    # -- requests ---------------------------------------------------------------------------
    def on_request(
        self,
        nonce: str,
        version_info: str = "",
        error: str = "",
        names: Iterable[str] | None = None,
        subscribe: Iterable[str] = (),
        unsubscribe: Iterable[str] = (),
        initial_versions: Mapping[str, str] | None = None,
        now: float | None = None,
        names_key: object | None = None,
    ) -> tuple[RequestKind, set[str]]:
        """Record a request; returns its kind and the names that must be sent now.

        State-of-the-world passes ``names`` (the full subscription) and, when known,
        their encoding (``names_key``, see :mod:`pilot.wire`): the same object as last time,
        ``names`` is not read at all. Delta passes ``subscribe``/``unsubscribe``/
        ``initial_versions``.
        """
        now = time.monotonic() if now is None else now
        first = not self.requested
        self.requested = True
        if nonce and nonce != self.sent_nonce:
            kind = RequestKind.STALE
        elif nonce and error:
            kind = RequestKind.NACK
            self.nacks += 1
            self.last_nack = Nack(nonce, self.sent_version, error, now)
        elif nonce:
            kind = RequestKind.ACK
            self.acks += 1
            self.acked_nonce = nonce
            self.acked_version = self.sent_version if self.delta else version_info
            self.acked_at = now
        else:
            kind = RequestKind.INITIAL if first else RequestKind.UPDATE
        if self.delta:
            return kind, self._delta_subscription(first, subscribe, unsubscribe, initial_versions)
        if kind is RequestKind.STALE:
            return kind, set()
        return kind, self._sotw_subscription(first, names or (), names_key)

    def _sotw_subscription(
        self, first: bool, names: Iterable[str], names_key: object | None = None
    ) -> set[str]:
        if not first and names_key is not None and names_key is self.names_key:
            # The same names as last time (wildcard included): nothing to learn from them.
            return set()
        self.names_key = names_key
        wanted = set(names)
        if not first and wanted - {"*"} == self.subscribed:
            # An ACK repeating the subscription (every state-of-the-world ACK names it all):
            # keep the set we hold, and its shared strings.
            if self.type_url in T.FULL_STATE:
                self.wildcard = not wanted or "*" in wanted
            return set()
        wanted = _shared_names(wanted)
        if self.type_url in T.FULL_STATE:
            # Clusters and listeners: empty or "*" means everything (legacy wildcard).
            self.wildcard = not wanted or "*" in wanted
        if first:
            self.subscribed = wanted - {"*"}
            # Nothing known about what the client holds after a (re)connect: send everything.
            self.sent.clear()
            self.sent_version = ""
            return set(self.subscribed) | ({"*"} if self.wildcard else set())
        wanted.discard("*")
        added = wanted - self.subscribed
        removed = self.subscribed - wanted
        self.subscribed = wanted
        for name in removed:
            self.sent.pop(name, None)
        return added

    def _delta_subscription(
        self,
        first: bool,
        subscribe: Iterable[str],
        unsubscribe: Iterable[str],
        initial_versions: Mapping[str, str] | None,
    ) -> set[str]:
        subscribe = _shared_names(subscribe)
        if first:
            self.sent.clear()
            if self.type_url in T.FULL_STATE and (not subscribe or "*" in subscribe):
                self.wildcard = True
            if initial_versions:
                # The client already holds these from a previous stream: do not resend equal ones.
                self.sent.update(initial_versions)
        elif "*" in subscribe:
            self.wildcard = True
        fresh = {n for n in subscribe - {"*"} if n not in self.subscribed}
        if fresh:
            self.subscribed = self.subscribed | fresh
        for name in fresh:
            if not (first and initial_versions and name in initial_versions):
                self.sent.pop(name, None)
        gone = set(unsubscribe)
        if "*" in gone:
            self.wildcard = False
            gone.discard("*")
        if gone & self.subscribed:
            self.subscribed = self.subscribed - gone
        for name in gone:
            self.sent.pop(name, None)
        return fresh | ({"*"} if first and self.wildcard else set())

    # -- responses --------------------------------------------------------------------------
    def _candidates(
        self, available: Mapping[str, Resource], only: Iterable[str] | None, force: set[str]
    ) -> set[str]:
        """Names to compare: all wanted ones, or only those named (cheap endpoint pushes)."""
        if only is None:
            return self.wanted_names(available)
        return {
            n
            for n in (set(only) | force)
            if n in available and (self.wildcard or n in self.subscribed)
        }

    def wanted_names(self, available: Mapping[str, Resource]) -> set[str]:
        if self.wildcard:
            return set(available) | (self.subscribed & set(available))
        return self.subscribed & set(available)

    def plan(
        self,
        view: ProxyView,
        nonce: str,
        only: Iterable[str] | None = None,
        force: Iterable[str] = (),
        respond: bool = False,
    ) -> Plan | None:
        """What to send for this type given ``view``, or None when the client is up to date.

        ``only`` limits the comparison to some names (an endpoints-only push names the
        assignments that changed); ``force`` names resources to send even if unchanged (an
        updated EDS cluster needs its assignment again to finish warming). ``respond`` answers
        even when nothing is new (a first request on a stream: a reconnecting delta client that
        already holds everything still gets a nonce to ACK, so it can be seen as in sync).
        """
        if not self.requested:
            return None
        available = view.get(self.type_url)
        force = set(force)
        if self.delta:
            return self._plan_delta(view, available, nonce, only, force, respond)
        if self.type_url in T.FULL_STATE:
            version = view.version(self.type_url)
            if version == self.sent_version and not force & set(available):
                return None
            names = sorted(self.wanted_names(available))
            return self._record(
                Plan(self.type_url, version, nonce, tuple(available[n] for n in names)),
                full=True,
            )
        candidates = self._candidates(available, only, force)
        send = sorted(
            n for n in candidates if n in force or self.sent.get(n) != available[n].version
        )
        if not send and not respond:
            return None
        # Opaque to Envoy, which only echoes it: the version of everything of this type in the
        # view (shared across proxies, computed once) is cheaper than one per subscription.
        version = view.version(self.type_url)
        return self._record(
            Plan(self.type_url, version, nonce, tuple(available[n] for n in send)), full=False
        )

    def _plan_delta(
        self,
        view: ProxyView,
        available: Mapping[str, Resource],
        nonce: str,
        only: Iterable[str] | None,
        force: set[str],
        respond: bool = False,
    ) -> Plan | None:
        candidates = self._candidates(available, only, force)
        send = sorted(
            n for n in candidates if n in force or self.sent.get(n) != available[n].version
        )
        scope = self.sent if only is None else [n for n in only if n in self.sent]
        removed = sorted(
            n for n in scope if n not in available and (self.wildcard or n in self.subscribed)
        )
        if not send and not removed and not respond:
            return None
        for name in removed:
            self.sent.pop(name, None)
        version = view.version(self.type_url)
        return self._record(
            Plan(self.type_url, version, nonce, tuple(available[n] for n in send), tuple(removed)),
            full=False,
        )

    def _record(self, plan: Plan, full: bool) -> Plan:
        if full:
            self.sent = {r.name: r.version for r in plan.resources}
        else:
            self.sent.update((r.name, r.version) for r in plan.resources)
        self.sent_version = plan.version
        self.sent_nonce = plan.nonce
        self.sent_at = time.monotonic()
        return plan

    def describe(self) -> dict:
        nack = self.last_nack
        return {
            "status": self.status.value,
            "sent_version": self.sent_version,
            "sent_nonce": self.sent_nonce,
            "acked_version": self.acked_version,
            "resources": len(self.sent),
            "subscribed": "*" if self.wildcard else sorted(self.subscribed),
            "acks": self.acks,
            "nacks": self.nacks,
            "error": nack.error if nack is not None and self.status is Status.NACKED else "",
            "last_nack": None
            if nack is None
            else {"nonce": nack.nonce, "version": nack.version, "error": nack.error},
        }
