"""A generic list-then-watch loop for one Kubernetes resource, in a worker thread.

The ``kubernetes`` client is blocking, so each watched resource gets a daemon thread that lists,
then watches from the list's ``resourceVersion``, and hands what it saw to the asyncio loop with
``call_soon_threadsafe``. The consumer never sees a half state:

- ``SYNC`` carries the *complete* list (all pages of one consistent list); the consumer replaces
  its view of the resource with it and diffs. It is sent after the first list and after every
  relist, so a relist is exact: objects deleted while we were not watching disappear, objects
  created appear. Nothing else ever empties the view: a dropped connection keeps it as it was.
- ``ADDED`` / ``MODIFIED`` / ``DELETED`` carry one object each, in the server's order.

Why each workaround exists (the same list kopf's ``watching.py`` documents):

- *Bookmarks* are requested (``allowWatchBookmarks``) and their ``resourceVersion`` recorded, so
  a reconnect after a quiet period resumes from a recent version instead of one the server has
  already forgotten (which would force a full relist of a large cluster).
- *410 Gone* comes in two shapes: an HTTP 410 when the watch is opened, or an ``ERROR`` event with
  ``code: 410`` inside a running stream (the usual shape after etcd compaction or a watch-cache
  window passed). Both lead to a clean relist, never to a retry from the same version.
- The server ends every watch after ``timeoutSeconds`` (randomised, like client-go, so many
  watchers do not reconnect in lockstep); that is a normal end and reconnects at once.
- Anything else (connection refused, reset, an API server restart, a read timeout) is an outage:
  the health callback is told, and the loop retries with ``tenacity``'s jittered exponential
  backoff, resuming from the last known version. The backoff resets once a watch is open again.
- A resource whose API does not exist (a CRD not installed yet: HTTP 404) is treated as empty and
  re-listed with backoff, so the mesh still syncs and picks the kind up once it is installed. A
  resource that *was* served and answers 404 is given a grace period first: a restarting API
  server serves custom resources only once it has re-read their CRDs, and taking that moment for
  "every object is gone" would empty the mesh.
- ``stop()`` shuts the socket down for reading, which wakes the thread out of a blocking read
  at once instead of waiting for the server's timeout.

Lists and events are decoded straight from JSON (``_preload_content=False``), skipping the
client's model classes: the consumer works on plain dicts and big lists are much cheaper.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import attrs
import tenacity
from kubernetes.client.exceptions import ApiException
from kubernetes.watch.watch import iter_resp_lines

from meshfed.adapters.kubernetes import metrics

log = logging.getLogger("meshfed.adapters.kubernetes.watch")

LIST_PAGE = 500
ABSENT_GRACE_S = 60.0  # how long a resource that was served may answer 404 before it counts as gone
CONNECT_TIMEOUT_S = 5.0


@attrs.frozen(slots=True)
class WatchEvent:
    type: str  # SYNC, ADDED, MODIFIED, DELETED
    obj: dict[str, Any] | None = None
    objects: tuple[dict[str, Any], ...] = ()


class Expired(Exception):
    """The resource version we hold is gone (410); only a relist helps."""


class _Stopped(Exception):
    pass


class _Paused(Exception):
    """:meth:`Watcher.pause` was called: wait for :meth:`Watcher.resume`, report nothing."""


def _status_code(event: dict[str, Any]) -> int:
    obj = event.get("object")
    return int(obj.get("code") or 0) if isinstance(obj, dict) else 0


class Watcher:
    """List-then-watch one resource forever; events go to ``sink`` on the event loop."""

    def __init__(
        self,
        name: str,
        list_fn: Callable[..., Any],
        sink: Callable[[str, list[WatchEvent]], None],
        health: Callable[[str, str | None], None],
        *,
        registry: str = "",
        api_version: str = "",
        kind: str = "",
        timeout_seconds: int = 300,
        backoff_max: float = 30.0,
    ) -> None:
        self.name = name
        self._list_fn = list_fn
        self._sink = sink
        self._health = health
        self.registry = registry
        # Lists of built-in kinds omit each item's apiVersion/kind; parsers want them.
        self.api_version = api_version
        self.kind = kind
        self.timeout_seconds = timeout_seconds
        self.backoff_max = backoff_max
        self.resource_version: str | None = None
        self.synced = False
        self.absent = False  # the API answered 404 (e.g. a CRD not installed)
        self.last_error: str | None = None
        self.lists = 0
        self.relists = 0
        self.bookmarks = 0
        self.reconnects = 0
        self.events = 0
        self._need_list = True
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._resume = threading.Event()
        self._resume.set()
        self._override_rv: str | None = None
        self._response: Any = None
        self._lock = threading.Lock()
        self._wait = tenacity.wait_random_exponential(multiplier=0.25, max=backoff_max)
        self._quick_failures = 0
        self._delivered = False  # the current stream has delivered an event or a bookmark
        self._missing_since: float | None = None

    # -- lifecycle (called from the loop) ----------------------------------------------------
    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._thread = threading.Thread(
            target=self._run, name=f"kube-watch-{self.registry}-{self.name}", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._resume.set()
        self._interrupt()

    async def join(self, timeout: float = 5.0) -> None:
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, timeout)

    def pause(self) -> None:
        """Stop watching (keeping the state) until :meth:`resume`; for operators and tests."""
        self._resume.clear()
        self._interrupt()

    def resume(self, resource_version: str | None = None) -> None:
        """Watch again, from ``resource_version`` when given (an expired one forces a relist)."""
        self._override_rv = resource_version
        self._resume.set()

    def _interrupt(self) -> None:
        with self._lock:
            response = self._response
        if response is not None:
            # Wakes a thread blocked in recv(); close() alone would not.
            with contextlib.suppress(Exception):
                response.shutdown()

    def describe(self) -> dict[str, Any]:
        return {
            "resourceVersion": self.resource_version,
            "synced": self.synced,
            "absent": self.absent,
            "lists": self.lists,
            "relists": self.relists,
            "bookmarks": self.bookmarks,
            "reconnects": self.reconnects,
            "events": self.events,
            "error": self.last_error,
        }

    # -- the worker thread ------------------------------------------------------------------
    def _emit(self, events: list[WatchEvent]) -> None:
        if self._loop is not None and not self._stop.is_set():
            with contextlib.suppress(RuntimeError):  # the loop closed while we were reading
                self._loop.call_soon_threadsafe(self._sink, self.name, events)

    def _report(self, error: str | None) -> None:
        if error != self.last_error:
            self.last_error = error
            if self._loop is not None and not self._stop.is_set():
                with contextlib.suppress(RuntimeError):
                    self._loop.call_soon_threadsafe(self._health, self.name, error)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._resume.wait()
            if self._stop.is_set():
                break
            try:
                stream = self._connect()
            except _Paused:
                continue
            except (_Stopped, tenacity.RetryError):
                break
            opened = time.monotonic()
            self._delivered = False
            try:
                self._consume(stream)
            except Expired:
                self._start_relist("expired")
            except _Stopped:
                break
            except Exception as exc:  # an outage mid-stream: reconnect (with backoff if it fails)
                if self._stop.is_set() or not self._resume.is_set():
                    continue
                self.reconnects += 1
                metrics.RECONNECTS.labels(self.registry, self.name).inc()
                log.warning("watch %s dropped (%s); reconnecting", self.name, _describe(exc))
                self._pause_after_quick_failure(opened)
            finally:
                self._close(stream)

    def _pause_after_quick_failure(self, opened: float) -> None:
        """Back off when streams open fine but fail at once (no hot loop against a server that
        accepts the watch and then errors); a stream that worked for a while resets it."""
        if self._delivered or time.monotonic() - opened > 30:
            self._quick_failures = 0
            return
        self._quick_failures += 1
        state = tenacity.RetryCallState(None, None, (), {})  # type: ignore[arg-type]
        state.attempt_number = self._quick_failures
        self._stop.wait(self._wait(state))

    def _start_relist(self, reason: str) -> None:
        self.relists += 1
        metrics.RELISTS.labels(self.registry, self.name, reason).inc()
        log.info(
            "watch %s: resource version %s %s; relisting", self.name, self.resource_version, reason
        )
        self._need_list = True

    def _connect(self) -> Any:
        """List when needed, then open the watch; retried with jittered backoff until it works."""
        retrying = tenacity.Retrying(
            wait=tenacity.wait_random_exponential(multiplier=0.25, max=self.backoff_max),
            retry=tenacity.retry_if_not_exception_type((_Stopped, _Paused)),
            stop=tenacity.stop_when_event_set(self._stop),
            sleep=self._sleep,
            before_sleep=self._before_sleep,
        )
        for attempt in retrying:
            with attempt:
                if self._stop.is_set():
                    raise _Stopped
                if not self._resume.is_set():
                    raise _Paused
                if self._override_rv is not None:
                    self.resource_version, self._override_rv = self._override_rv, None
                    self._need_list = False
                if self._need_list:
                    self._list()
                if self.absent:
                    # No such API: wait (with backoff) and list again; the view stays empty.
                    self._need_list = True
                    raise LookupError(f"{self.name}: the API server does not serve this resource")
                try:
                    stream = self._open_watch()
                except ApiException as exc:
                    if exc.status == 410:
                        self._start_relist("expired")
                    elif exc.status == 404:
                        self._need_list = True  # the list decides whether the kind is gone
                    raise
                self._report(None)
                return stream
        raise _Stopped

    def _sleep(self, seconds: float) -> None:
        self._stop.wait(seconds)

    def _before_sleep(self, state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, LookupError) and self.absent:
            return  # not an outage: the kind is simply not installed
        message = _describe(exc)
        if self.last_error != message:
            log.warning("watch %s: %s; retrying with backoff", self.name, message)
        metrics.ERRORS.labels(self.registry, self.name).inc()
        self._report(message)

    def _call(self, **kwargs: Any) -> Any:
        return self._list_fn(_preload_content=False, **kwargs)

    def _list(self) -> None:
        items: list[dict[str, Any]] = []
        token: str | None = None
        version = ""
        started = time.perf_counter()
        while True:
            kwargs: dict[str, Any] = {
                "limit": LIST_PAGE,
                "_request_timeout": (CONNECT_TIMEOUT_S, 60),
            }
            if token:
                kwargs["_continue"] = token
            try:
                response = self._call(**kwargs)
            except ApiException as exc:
                if exc.status == 404:
                    if self.lists and not self.absent:
                        now = time.monotonic()
                        self._missing_since = self._missing_since or now
                        if now - self._missing_since < ABSENT_GRACE_S:
                            raise LookupError(
                                f"{self.name} answered 404 after being served; keeping its "
                                "objects while the API server may be restarting"
                            ) from exc
                    self._missing_since = None
                    if not self.absent:
                        log.info("watch %s: not served (404); treated as empty", self.name)
                    self.absent = True
                    self.resource_version = None
                    self._deliver_sync([])
                    return
                if exc.status == 410 and token:
                    token, items = None, []  # the continue token expired: list from scratch
                    continue
                raise
            body = json.loads(response.data)
            self.absent = False
            self._missing_since = None
            for item in body.get("items") or []:
                if self.kind and "kind" not in item:
                    item["apiVersion"], item["kind"] = self.api_version, self.kind
                items.append(item)
            page_meta = body.get("metadata") or {}
            version = page_meta.get("resourceVersion") or version
            token = page_meta.get("continue") or None
            if not token:
                break
        self.lists += 1
        self.resource_version = version
        metrics.LIST_SECONDS.labels(self.registry, self.name).observe(time.perf_counter() - started)
        self._deliver_sync(items)
        log.debug("watch %s: listed %d objects at %s", self.name, len(items), version)

    def _deliver_sync(self, items: list[dict[str, Any]]) -> None:
        self._need_list = False
        self.synced = True
        metrics.OBJECTS.labels(self.registry, self.name).set(len(items))
        self._emit([WatchEvent("SYNC", objects=tuple(items))])

    def _open_watch(self) -> Any:
        # Randomised like client-go (5-10 min by default), so watchers do not reconnect together.
        timeout = int(self.timeout_seconds * (1 + random.random()))
        response = self._call(
            watch=True,
            resource_version=self.resource_version,
            allow_watch_bookmarks=True,
            timeout_seconds=timeout,
            # The read timeout notices a dead server that never closed the connection; bookmarks
            # arrive about once a minute, so silence far beyond that is a broken connection.
            _request_timeout=(CONNECT_TIMEOUT_S, timeout + 60),
        )
        with self._lock:
            self._response = response
        if self._stop.is_set() or not self._resume.is_set():
            self._close(response)
            raise _Stopped if self._stop.is_set() else _Paused
        return response

    def _close(self, response: Any) -> None:
        with self._lock:
            if self._response is response:
                self._response = None
        with contextlib.suppress(Exception):
            response.release_conn()
        with contextlib.suppress(Exception):
            response.close()

    def _lines(self, response: Any) -> Iterator[str]:
        yield from iter_resp_lines(response)

    def _consume(self, response: Any) -> None:
        for line in self._lines(response):
            if self._stop.is_set():
                raise _Stopped
            if not line:
                continue
            event = json.loads(line)
            etype = event.get("type")
            obj = event.get("object")
            if etype == "ERROR":
                if _status_code(event) == 410:
                    raise Expired
                raise RuntimeError(f"watch error event: {obj}")
            if not isinstance(obj, dict):
                continue
            version = (obj.get("metadata") or {}).get("resourceVersion")
            self._delivered = True
            if etype == "BOOKMARK":
                self.bookmarks += 1
                metrics.BOOKMARKS.labels(self.registry, self.name).inc()
                if version:
                    self.resource_version = version
                continue
            if self.kind and "kind" not in obj:
                obj["apiVersion"], obj["kind"] = self.api_version, self.kind
            self.events += 1
            metrics.EVENTS.labels(self.registry, self.name, etype).inc()
            self._emit([WatchEvent(str(etype), obj=obj)])
            if version:
                self.resource_version = version


def _describe(exc: BaseException | None) -> str:
    """A short, stable description (it becomes the member's degraded reason)."""
    if exc is None:
        return "unknown error"
    if isinstance(exc, ApiException):
        return f"API server answered {exc.status} {exc.reason}"
    # urllib3 wraps the cause (MaxRetryError -> NewConnectionError -> the OSError text).
    inner = getattr(exc, "reason", None)
    if isinstance(inner, BaseException):
        exc = inner
    text = str(exc) or type(exc).__name__
    if "): " in text and text.startswith(("HTTPConnection(", "HTTPSConnection(")):
        text = text.split("): ", 1)[1]
    return text if len(text) < 200 else text[:200] + "..."
