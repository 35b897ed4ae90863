"""A small Python client for Worldflow's Segment-compatible HTTP API.

Calls are queued and a background thread posts them to ``/v1/batch`` in batches, by count
(``max_batch``) or after ``flush_interval`` seconds, whichever comes first. Network errors,
429 (honouring ``Retry-After``) and 5xx answers are retried with exponential backoff and
jitter; any other 4xx is final and reported to ``on_error``. ``flush()`` blocks until what was
queued before it is delivered or given up on; ``close()`` flushes and stops the thread, and
runs by itself when the interpreter exits.

Only the standard library is used, so the client can ship inside a world server or a tool
without pulling in an HTTP stack.

    with Client("http://127.0.0.1:8080", "wk_...") as client:
        client.track("zone.entered", {"zone_id": "lobby"}, anonymous_id="device-1")
"""

from __future__ import annotations

import atexit
import base64
import gzip as gzip_codec
import http.client
import json
import logging
import random
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

from worldflow import __version__

__all__ = ["Client", "DeliveryError", "iso_timestamp"]

log = logging.getLogger(__name__)

LIBRARY = {"name": "worldflow-python", "version": __version__}
# Segment's own batch limit; the server takes up to 4 MB, but smaller requests retry cheaper.
MAX_BATCH_BYTES = 500 * 1024
# Atexit must not hold the interpreter hostage to an unreachable server.
EXIT_TIMEOUT_S = 30.0


class DeliveryError(Exception):
    """Messages could not be delivered: the server refused them, or retries ran out.

    ``status`` is the HTTP status (None for network errors and local refusals), ``code`` the
    server's error code (``invalid_write_key``...) or a local one (``queue_full``, ``closed``,
    ``network``, ``retries_exhausted``).
    """

    def __init__(self, status: int | None, code: str, message: str) -> None:
        prefix = f"HTTP {status} " if status is not None else ""
        super().__init__(f"{prefix}{code}: {message}")
        self.status = status
        self.code = code
        self.message = message


ErrorHandler = Callable[[DeliveryError, list[dict[str, Any]]], None]


def iso_timestamp(value: datetime | str | None = None) -> str:
    """ISO 8601 in UTC with a ``Z`` and milliseconds; naive datetimes are taken as UTC."""
    if isinstance(value, str):
        return value
    moment = value or datetime.now(UTC)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (delta seconds or an HTTP date)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


class _Pending:
    """A queued message, encoded once when queued (so bad values fail in the caller)."""

    __slots__ = ("encoded", "message")

    def __init__(self, message: dict[str, Any]) -> None:
        self.message = message
        self.encoded = json.dumps(message, separators=(",", ":"), ensure_ascii=False)


class Client:
    """Queue Segment calls and deliver them to a Worldflow server from a background thread.

    Thread-safe. Counters (read them after ``flush()``): ``queued`` messages taken into the
    queue, ``sent`` messages in batches the server answered, of which ``accepted``,
    ``duplicates`` and ``rejected`` (quarantined, details in ``rejections``), and ``failed``
    messages given up on (refused batch, retries exhausted, queue full, client closed), and
    ``retries`` (attempts repeated). ``on_error(error, batch)`` hears of every failed message,
    on the delivery thread (on the caller's for a full queue or a closed client).

    With ``block=True`` a full queue makes the caller wait for room instead of dropping the
    message, which suits bulk senders such as the simulator.
    """

    def __init__(
        self,
        host: str,
        write_key: str,
        *,
        max_batch: int = 100,
        flush_interval: float = 0.5,
        max_queue: int = 10_000,
        timeout: float = 10,
        max_retries: int = 8,
        gzip: bool = False,
        on_error: ErrorHandler | None = None,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
        block: bool = False,
    ) -> None:
        if max_batch < 1 or max_queue < 1:
            raise ValueError("max_batch and max_queue must be at least 1")
        parts = urlsplit(host if "://" in host else f"http://{host}")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"host must be an http(s) URL, got {host!r}")
        self.host = host
        self._scheme = parts.scheme
        self._netloc = parts.netloc
        self._path = parts.path.rstrip("/") + "/v1/batch"
        self._auth = "Basic " + base64.b64encode(f"{write_key}:".encode()).decode()
        self.max_batch = max_batch
        self.flush_interval = flush_interval
        self.max_queue = max_queue
        self.timeout = timeout
        self.max_retries = max_retries
        self.gzip = gzip
        self.on_error = on_error
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.block = block

        self.queued = 0
        self.sent = 0
        self.accepted = 0
        self.duplicates = 0
        self.rejected = 0
        self.failed = 0
        self.retries = 0
        self.rejections: deque[dict[str, Any]] = deque(maxlen=10_000)

        self._cond = threading.Condition()
        self._pending: deque[_Pending] = deque()
        self._oldest = 0.0  # monotonic time the current batch started filling
        self._settled = 0  # messages sent or failed, in queue order
        self._flush_target = 0
        self._closing = False
        self._closed = False
        self._discard = False
        self._wake = threading.Event()  # cuts a retry's backoff short on close(discard=True)
        self._conn: http.client.HTTPConnection | None = None
        self._jitter = random.Random()
        self._thread = threading.Thread(target=self._run, name="worldflow-client", daemon=True)
        self._thread.start()
        atexit.register(self._at_exit)

    # --- Calls -------------------------------------------------------------------------------

    def track(
        self,
        event: str,
        properties: Mapping[str, Any] | None = None,
        *,
        user_id: str | None = None,
        anonymous_id: str | None = None,
        context: Mapping[str, Any] | None = None,
        timestamp: datetime | str | None = None,
        message_id: str | None = None,
    ) -> str | None:
        """Queue a track call; returns its messageId, or None if it was dropped."""
        return self._call(
            "track", user_id, anonymous_id, context, timestamp, message_id,
            event=event, properties=dict(properties or {}),
        )  # fmt: skip

    def identify(
        self,
        user_id: str | None = None,
        traits: Mapping[str, Any] | None = None,
        *,
        anonymous_id: str | None = None,
        context: Mapping[str, Any] | None = None,
        timestamp: datetime | str | None = None,
        message_id: str | None = None,
    ) -> str | None:
        return self._call(
            "identify", user_id, anonymous_id, context, timestamp, message_id,
            traits=dict(traits or {}),
        )  # fmt: skip

    def page(
        self,
        name: str | None = None,
        properties: Mapping[str, Any] | None = None,
        *,
        category: str | None = None,
        user_id: str | None = None,
        anonymous_id: str | None = None,
        context: Mapping[str, Any] | None = None,
        timestamp: datetime | str | None = None,
        message_id: str | None = None,
    ) -> str | None:
        fields: dict[str, Any] = {"properties": dict(properties or {})}
        if name is not None:
            fields["name"] = name
        if category is not None:
            fields["category"] = category
        return self._call("page", user_id, anonymous_id, context, timestamp, message_id, **fields)

    def screen(
        self,
        name: str | None = None,
        properties: Mapping[str, Any] | None = None,
        *,
        user_id: str | None = None,
        anonymous_id: str | None = None,
        context: Mapping[str, Any] | None = None,
        timestamp: datetime | str | None = None,
        message_id: str | None = None,
    ) -> str | None:
        fields: dict[str, Any] = {"properties": dict(properties or {})}
        if name is not None:
            fields["name"] = name
        return self._call("screen", user_id, anonymous_id, context, timestamp, message_id, **fields)

    def group(
        self,
        group_id: str,
        traits: Mapping[str, Any] | None = None,
        *,
        user_id: str | None = None,
        anonymous_id: str | None = None,
        context: Mapping[str, Any] | None = None,
        timestamp: datetime | str | None = None,
        message_id: str | None = None,
    ) -> str | None:
        return self._call(
            "group", user_id, anonymous_id, context, timestamp, message_id,
            groupId=group_id, traits=dict(traits or {}),
        )  # fmt: skip

    def alias(
        self,
        previous_id: str,
        user_id: str,
        *,
        context: Mapping[str, Any] | None = None,
        timestamp: datetime | str | None = None,
        message_id: str | None = None,
    ) -> str | None:
        return self._call(
            "alias", user_id, None, context, timestamp, message_id, previousId=previous_id
        )

    def send(self, message: Mapping[str, Any]) -> str | None:
        """Queue a raw Segment message as it is, adding only a messageId when it has none.

        Nothing is checked or filled in: the server is the judge (this is how deliberately
        malformed messages reach the quarantine)."""
        raw = dict(message)
        raw.setdefault("messageId", str(uuid.uuid4()))
        return str(raw["messageId"]) if self._enqueue(raw) else None

    def _call(
        self,
        kind: str,
        user_id: str | None,
        anonymous_id: str | None,
        context: Mapping[str, Any] | None,
        timestamp: datetime | str | None,
        message_id: str | None,
        **fields: Any,
    ) -> str | None:
        message_id = message_id or str(uuid.uuid4())
        message: dict[str, Any] = {
            "type": kind,
            "messageId": message_id,
            "timestamp": iso_timestamp(timestamp),
            "context": {**(context or {}), "library": LIBRARY},
            **fields,
        }
        if user_id is not None:
            message["userId"] = user_id
        if anonymous_id is not None:
            message["anonymousId"] = anonymous_id
        return message_id if self._enqueue(message) else None

    # --- Queue -------------------------------------------------------------------------------

    def _enqueue(self, message: dict[str, Any]) -> bool:
        item = _Pending(message)
        with self._cond:
            if self.block:
                self._cond.wait_for(lambda: len(self._pending) < self.max_queue or self._closing)
            if self._closing or len(self._pending) >= self.max_queue:
                code = "closed" if self._closing else "queue_full"
                reason = "the client is closed" if self._closing else "the queue is full"
                error: DeliveryError | None = DeliveryError(None, code, reason)
                self.failed += 1
            else:
                error = None
                first = not self._pending
                if first:
                    self._oldest = time.monotonic()
                self._pending.append(item)
                self.queued += 1
                # Wake the thread to start the interval's clock, or to send a full batch.
                if first or len(self._pending) >= self.max_batch:
                    self._cond.notify_all()
        if error is not None:
            self._report(error, [item])
            return False
        return True

    def flush(self, timeout: float | None = None) -> bool:
        """Block until every message queued so far is delivered or given up on.

        Returns False if ``timeout`` seconds passed first."""
        with self._cond:
            target = self.queued
            self._flush_target = max(self._flush_target, target)
            self._cond.notify_all()
            return self._cond.wait_for(lambda: self._settled >= target, timeout)

    def close(self, timeout: float | None = None, *, discard: bool = False) -> bool:
        """Deliver what is queued, then stop the thread; later calls are counted as failed.

        ``discard=True`` gives up instead: queued messages and the batch being retried are
        counted as failed and reported (for a server known to be gone). Returns False if the
        thread was still busy after ``timeout`` seconds."""
        dropped: list[_Pending] = []
        with self._cond:
            if self._closed:
                return True
            self._closing = True
            if discard:
                self._discard = True
                dropped = list(self._pending)
                self._pending.clear()
                self.failed += len(dropped)
                self._settled += len(dropped)
            self._cond.notify_all()
        if discard:
            self._wake.set()
            if dropped:
                self._report(DeliveryError(None, "discarded", "the client closed"), dropped)
        self._thread.join(timeout)
        done = not self._thread.is_alive()
        if done:
            self._closed = True
            atexit.unregister(self._at_exit)
        return done

    def ping(self) -> None:
        """Check the host and write key with an empty batch, once, without retrying.

        Raises :class:`DeliveryError` when the server is unreachable or refuses the key."""
        conn = self._new_connection()
        try:
            status, _, answer, error = self._post([], conn)
        finally:
            conn.close()
        if error is not None:
            raise error
        if not 200 <= status < 300:
            raise _http_error(status, answer)

    def _at_exit(self) -> None:
        if not self.close(EXIT_TIMEOUT_S):
            log.warning("worldflow client: %d messages undelivered at exit", len(self._pending))

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def stats(self) -> dict[str, int]:
        """A consistent snapshot of the counters."""
        with self._cond:
            return {
                "queued": self.queued, "sent": self.sent, "accepted": self.accepted,
                "duplicates": self.duplicates, "rejected": self.rejected, "failed": self.failed,
                "retries": self.retries, "pending": len(self._pending),
            }  # fmt: skip

    # --- Delivery (background thread) ----------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                while True:
                    if self._pending and self._due():
                        break
                    if self._closing and not self._pending:
                        self._disconnect()
                        return
                    wait = None
                    if self._pending:
                        wait = max(0.0, self._oldest + self.flush_interval - time.monotonic())
                    self._cond.wait(wait)
                batch = self._take()
            try:
                self._deliver(batch)
            except Exception:  # the thread must survive anything, or flush() would hang
                log.exception("worldflow client: unexpected error delivering a batch")
                self._settle(batch, failed=len(batch))

    def _due(self) -> bool:
        return (
            len(self._pending) >= self.max_batch
            or self._closing
            or self._flush_target > self._settled
            or time.monotonic() >= self._oldest + self.flush_interval
        )

    def _take(self) -> list[_Pending]:
        batch: list[_Pending] = []
        size = 0
        while self._pending and len(batch) < self.max_batch:
            size += len(self._pending[0].encoded)
            if batch and size > MAX_BATCH_BYTES:
                break
            batch.append(self._pending.popleft())
        self._oldest = time.monotonic()
        self._cond.notify_all()  # room in the queue for blocked callers
        return batch

    def _settle(
        self,
        batch: list[_Pending],
        *,
        failed: int = 0,
        answer: Mapping[str, Any] | None = None,
    ) -> None:
        with self._cond:
            if answer is not None:
                rejected = answer.get("rejected") or []
                self.sent += len(batch)
                self.accepted += int(answer.get("accepted", 0))
                self.duplicates += int(answer.get("duplicates", 0))
                self.rejected += len(rejected)
                self.rejections.extend(rejected)
            self.failed += failed
            self._settled += len(batch)
            self._cond.notify_all()

    def _deliver(self, batch: list[_Pending]) -> None:
        attempt = 0
        while True:
            status, headers, answer, error = self._post(batch)
            if error is None and 200 <= status < 300:
                self._settle(batch, answer=answer if isinstance(answer, dict) else {})
                return
            retryable = error is not None or status == 429 or status >= 500
            if not retryable or attempt >= self.max_retries or self._discard:
                final = error or _http_error(status, answer)
                if retryable:
                    reason = f"gave up after {attempt} retries: {final}"
                    final = DeliveryError(final.status, "retries_exhausted", reason)
                self._settle(batch, failed=len(batch))
                self._report(final, batch)
                return
            delay = self._backoff(attempt)
            asked = _retry_after(headers.get("retry-after")) if status in (429, 503) else None
            if asked is not None:  # the server knows when it will have room; capped all the same
                delay = max(delay, min(asked, self.backoff_max))
            attempt += 1
            with self._cond:
                self.retries += 1
            log.debug("worldflow client: retry %d in %.2fs (%s)", attempt, delay, error or status)
            self._wake.wait(delay)

    def _backoff(self, attempt: int) -> float:
        # Full jitter keeps many clients that failed together from retrying together.
        ceiling = min(self.backoff_max, self.backoff_base * (2**attempt))
        return self._jitter.uniform(ceiling / 2, ceiling)

    def _post(
        self, batch: list[_Pending], conn: http.client.HTTPConnection | None = None
    ) -> tuple[int, Mapping[str, str], Any, DeliveryError | None]:
        """POST a batch on ``conn``, or on the delivery thread's kept-alive connection."""
        body = (
            '{"batch":[' + ",".join(p.encoded for p in batch) + f'],"sentAt":"{iso_timestamp()}"}}'
        ).encode()
        headers = {
            "Authorization": self._auth,
            "Content-Type": "application/json",
            "User-Agent": f"{LIBRARY['name']}/{LIBRARY['version']}",
        }
        if self.gzip:
            body = gzip_codec.compress(body)
            headers["Content-Encoding"] = "gzip"
        shared = conn is None
        try:
            conn = conn or self._connection()
            conn.request("POST", self._path, body, headers)
            response = conn.getresponse()
            raw = response.read()
            reply_headers = {k.lower(): v for k, v in response.getheaders()}
            if shared and response.getheader("connection", "").lower() == "close":
                self._disconnect()
        except (OSError, http.client.HTTPException) as exc:
            if shared:
                self._disconnect()
            return 0, {}, None, DeliveryError(None, "network", f"{type(exc).__name__}: {exc}")
        try:
            answer = json.loads(raw) if raw else None
        except ValueError:
            answer = None
        return response.status, reply_headers, answer, None

    def _new_connection(self) -> http.client.HTTPConnection:
        if self._scheme == "https":
            return http.client.HTTPSConnection(self._netloc, timeout=self.timeout)
        return http.client.HTTPConnection(self._netloc, timeout=self.timeout)

    def _connection(self) -> http.client.HTTPConnection:
        # One kept-alive connection, used only by the delivery thread.
        if self._conn is None:
            self._conn = self._new_connection()
        return self._conn

    def _disconnect(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _report(self, error: DeliveryError, batch: list[_Pending]) -> None:
        log.warning("worldflow client: %d messages not delivered: %s", len(batch), error)
        if self.on_error is None:
            return
        try:
            self.on_error(error, [p.message for p in batch])
        except Exception:
            log.exception("worldflow client: on_error raised")


def _http_error(status: int, answer: Any) -> DeliveryError:
    if isinstance(answer, dict):
        code, message = answer.get("code", "http_error"), answer.get("message", "")
        return DeliveryError(status, str(code), str(message))
    return DeliveryError(status, "http_error", "the server refused the batch")
