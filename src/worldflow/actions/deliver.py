"""The delivery dispatcher: sends the ``deliveries`` rows journeys write as signed webhooks
(channel ``webhook``) and e-mails (channel ``email``), in a process of its own, so that a slow
destination never holds up the processor.

Semantics, for whoever writes a producer or a receiver:

- **At least once, with an idempotency key.** A producer writes a delivery in the same
  transaction as the state change that decided it, with an id derived from what caused it
  (``store.deliveries.delivery_id``); writing it again inserts nothing. The id is the
  ``webhook-id`` header of every attempt. A delivery is marked delivered only after a 2xx
  answer; if the dispatcher dies mid-request, or before it recorded the answer, the delivery
  is sent again with the same ``webhook-id``: receivers deduplicate on it.
- **Signed.** Standard Webhooks (``webhook-id``, ``webhook-timestamp``, ``webhook-signature``)
  with the destination's ``whsec_`` secret; the body is ``{"type", "timestamp", "data"}`` and is
  the same bytes at every attempt (the timestamp header is the attempt's).
- **Retries.** Connection errors, timeouts (the destination's ``timeout_ms`` bounds the whole
  exchange), 5xx, 408 and 429 are retried with exponential backoff and full jitter (1 s
  doubling, at most 10 min apart); ``Retry-After`` is obeyed on 429 and 503. Retries go on for
  a window (24 h from creation, or from the latest replay), then the delivery is dead. Other
  answers (4xx, and 3xx: redirects are not followed) are permanent: dead at once, with the
  status and the start of the answer in ``last_error``.
- **Dead letters.** Dead deliveries stay in the table; the admin API lists them and replays
  them (pending again, attempts from zero, a new window). Deliveries to a destination that
  does not exist or is disabled are dead too, saying so.
- **Circuit breaker.** After 5 consecutive failures a destination's circuit opens: nothing is
  sent to it for 30 s (doubling at each re-open up to 10 min) and its pending deliveries wait
  for the reopening without an attempt being counted (those whose window ends before it are
  dead then and there); then one probe goes through (half-open), and its success closes the
  circuit. Each change calls ``on_circuit`` (by default a log line) and, in ``worldflow
  serve``, is appended to the workspace's event log as a ``destination.circuit_changed``
  event (source ``_dispatcher``, no person; ``{destination, from, to, reopen_at}``). The
  append never holds the dispatcher up: changes wait in a queue of at most 1,000 (beyond
  that the oldest is dropped, counted and logged) and each turn sends what waits in one
  append on a task of its own; one that fails or has no answer within 5 s is tried again
  after a pause (1 s doubling up to a minute) with the same message ids, which the log
  deduplicates. What is still queued when the dispatcher stops (after ``drain_s``) is lost,
  and logged: the destination's row keeps the circuit's state. ``worldflow deliver`` alone
  only logs the changes.
- **Throughput and fairness.** Each destination has at most its ``max_in_flight`` requests
  under way (32 unless set, at most 256), all destinations together at most
  ``concurrency`` (256). Connections are kept alive and reused per origin (at most
  ``concurrency`` idle ones each), on uvloop where it is installed, and a turn of the loop
  records every outcome since the last one and the circuits in one transaction, then reads
  the due rows of up to 50 destinations per query (one indexed range each, so a
  destination's backlog costs the others nothing). An optional rate limit (token bucket) applies per
  destination: a destination that times out holds only its own slots.
- **Where requests may go.** http and https only. Every connection resolves the host and
  refuses it if any address is private, loopback, link-local, multicast, reserved or
  unspecified, unless the host or the address is on the allow-list (``webhook_allow``,
  ``--allow``); the connection is made to the address that was checked (no DNS rebinding).
  A refusal is permanent and names the address.
- **E-mail.** Rows of channel ``email`` go to destination ``smtp``: the workspace's ``smtp``
  settings (``PUT /v1/settings``, read again every ``settings_s``, 5 s). The payload is
  ``{"to", "subject", "text", "html"?, ...}``, already rendered; each attempt is one SMTP
  connection (``smtplib`` on a worker thread; ``timeout_ms`` bounds each network operation)
  sending one message with ``Message-ID: <{delivery id}@worldflow>`` and the ``Date`` of the
  delivery's creation, so a message sent again after a crash is recognisable. The same
  retries, window and dead letters as webhooks: 4xx replies, connection errors and timeouts
  are retried; 5xx replies (550 mailbox unavailable…), a payload without a valid ``to``, a
  server without STARTTLS when ``starttls`` is asked, and a workspace without SMTP settings
  are dead at once, the reply or the reason in ``last_error``. A delivered e-mail's
  ``last_status`` is 250. At most ``mail_per_workspace`` (8) at once per workspace;
  no circuit breaker and no address guard (an admin set the host).
- **One dispatcher per store**: a file lock beside an SQLite store, an advisory lock on
  PostgreSQL, as the processors' partitions are held.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import hashlib
import inspect
import logging
import random
import threading
import time
import warnings
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Final, Protocol, TypeVar

import pydantic
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from worldflow.actions import smtp
from worldflow.actions.http import (
    BlockedAddressError,
    InvalidURLError,
    RequestError,
    WebhookClient,
    guarded_client,
)
from worldflow.actions.webhooks import (
    CIRCUIT_CHANGED,
    CLOSED,
    DEAD,
    DELIVERED,
    DISPATCHER_SOURCE,
    HALF_OPEN,
    OPEN,
    AllowList,
    Attempt,
    BreakerPolicy,
    Change,
    Circuit,
    DestinationError,
    RetryPolicy,
    blocked,
    check_url,
    decide,
    duration,
    envelope,
    ip_literal,
    parse_retry_after,
    postpone,
    secret_key,
    signed_headers,
)
from worldflow.children import child_stop, spawn_child, stop_child
from worldflow.events.model import Event, encode_event
from worldflow.log import LogError, LogRecord
from worldflow.log.sql import SqlEventLog
from worldflow.metrics import Metrics
from worldflow.store.deliveries import (
    DEFAULT_MAX_IN_FLIGHT,
    EMAIL,
    WEBHOOK,
    CircuitRow,
    Deferral,
    DueDelivery,
    Result,
    SqlDeliveryStore,
    Want,
)
from worldflow.store.sql import create_store_engine, now_ms

log = logging.getLogger(__name__)

LOCK_KEY: Final = 0x57F2_0001  # PostgreSQL advisory lock (processors hold 0x57F1_0000 + n)
EXCERPT_BYTES: Final = 1024
CONCURRENCY: Final = 256  # requests at once, to all destinations together

_HELD = sa.text(
    "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted"
    f" AND pid = pg_backend_pid() AND classid = 0 AND objid = {LOCK_KEY})"
)

# (workspace_id, destination_id, old state, new state); may return an awaitable, then awaited
CircuitHook = Callable[[str, str, str, str], Awaitable[None] | None]
T = TypeVar("T")


class DelivererBusyError(RuntimeError):
    """Another dispatcher delivers from this store."""


def log_circuit(workspace_id: str, destination_id: str, old: str, new: str) -> None:
    """The default ``on_circuit``: a warning when a circuit opens, a note otherwise."""
    level = logging.WARNING if new == OPEN else logging.INFO
    log.log(level, "destination %s of workspace %s: circuit %s → %s",
            destination_id, workspace_id, old, new)  # fmt: skip


def circuit_event(workspace_id: str, destination_id: str, old: str, new: str,
                  reopen_at_ms: int | None, at_ms: int) -> LogRecord:  # fmt: skip
    """The log record of one circuit change: a ``destination.circuit_changed`` event of the
    destination's workspace, naming no person. Its message id is a hash of the change, so an
    append that is retried after all is deduplicated by the log."""
    key = "\x1f".join((workspace_id, destination_id, old, new, str(at_ms)))
    message_id = "cc_" + hashlib.blake2b(key.encode(), digest_size=16).hexdigest()
    at = datetime.fromtimestamp(at_ms / 1000, UTC)
    reopen_at = None
    if reopen_at_ms is not None:
        reopen_at = datetime.fromtimestamp(reopen_at_ms / 1000, UTC).isoformat(
            timespec="milliseconds").replace("+00:00", "Z")  # fmt: skip
    event = Event(
        message_id=message_id, workspace_id=workspace_id, source_id=DISPATCHER_SOURCE,
        channel="internal", type="track", name=CIRCUIT_CHANGED, schema_version=1, tier=0,
        timestamp=at, received_at=at,
        properties={"destination": destination_id, "from": old, "to": new,
                    "reopen_at": reopen_at},
    )  # fmt: skip
    return LogRecord(workspace_id, message_id, 0, at_ms, encode_event(event))


class _Appender(Protocol):
    """What :class:`CircuitEvents` needs of the log (:class:`SqlEventLog` has it)."""

    @property
    def running(self) -> bool: ...

    async def append(self, records: Sequence[LogRecord]) -> Any: ...

    async def close(self) -> None: ...


class CircuitEvents:
    """Circuit changes appended to their workspace's event log, off the dispatcher's path.

    :meth:`add` only queues (at most ``capacity`` records; beyond that the oldest is dropped,
    counted in ``dropped`` and logged). Each turn of the dispatcher calls :meth:`pump`, which
    sends everything queued in one append, on a task of its own, unless one is under way. An
    append that fails, or has no answer within ``timeout_s``, leaves its records queued and
    is tried again after a pause (1 s, doubling up to a minute) with the same message ids,
    so whatever the log did commit meanwhile is dropped as a duplicate. A slow or stopped log
    therefore costs the dispatcher nothing but the queue's memory. ``connect`` opens the log
    (again, once a connection is lost)."""

    def __init__(self, connect: Callable[[], Awaitable[_Appender]], *, capacity: int = 1000,
                 timeout_s: float = 5.0) -> None:  # fmt: skip
        self.connect = connect
        self.capacity = capacity
        self.timeout_s = timeout_s
        self.appended = 0
        self.dropped = 0
        self._log: _Appender | None = None
        self._queue: deque[tuple[int, LogRecord]] = deque()
        self._seq = 0
        self._task: asyncio.Task[None] | None = None
        self._retry_at = 0.0
        self._failures = 0

    @property
    def queued(self) -> int:
        return len(self._queue)

    def add(self, record: LogRecord) -> None:
        if len(self._queue) >= self.capacity:
            self._queue.popleft()
            self.dropped += 1
            log.warning("circuit changes wait for the event log: the oldest is dropped "
                        "(%d dropped so far)", self.dropped)  # fmt: skip
        self._seq += 1
        self._queue.append((self._seq, record))

    def pump(self) -> None:
        """Send what is queued, unless a send is under way or waits for its retry."""
        if self._task is not None or not self._queue or time.monotonic() < self._retry_at:
            return
        self._task = asyncio.create_task(self._send(list(self._queue)), name="circuit events")

    async def _send(self, batch: list[tuple[int, LogRecord]]) -> None:
        try:
            async with asyncio.timeout(self.timeout_s):
                if self._log is not None and not self._log.running:  # the writer went away
                    lost, self._log = self._log, None
                    await lost.close()
                if self._log is None:
                    self._log = await self.connect()
                await self._log.append([record for _, record in batch])
        except Exception as exc:  # the log is down, behind, or gone: the records stay queued
            self._failures += 1
            pause = min(60.0, 2.0 ** (self._failures - 1))
            self._retry_at = time.monotonic() + pause
            log.warning("%d circuit change(s) not yet in the event log (%s); trying again in "
                        "%g s", len(batch), str(exc) or type(exc).__name__, pause)  # fmt: skip
            return
        finally:
            self._task = None
        self._failures = 0
        last = batch[-1][0]
        while self._queue and self._queue[0][0] <= last:
            self._queue.popleft()
        self.appended += len(batch)

    async def close(self, timeout_s: float) -> None:
        """One last send of what is queued (within ``timeout_s``), then disconnect; what is
        still queued is lost, and logged."""
        self._retry_at = 0.0
        if self._task is None:
            self.pump()
        if self._task is not None:
            await asyncio.wait({self._task}, timeout=timeout_s)
        if self._queue:
            log.warning("%d circuit change(s) were not appended to the event log",
                        len(self._queue))  # fmt: skip
        if self._log is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._log.close(), timeout_s)
            self._log = None


class StoreLock:
    """The store's dispatcher lock: a file lock beside an SQLite database, a session advisory
    lock on PostgreSQL. The latter goes with its connection (a database restart, a network
    cut), so :meth:`check` looks and takes it again if it can."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._conn: sa.Connection | None = None
        self._file: IO[str] | None = None

    def _take(self) -> bool:
        if self.engine.dialect.name != "postgresql":
            if self._file is None:
                db = Path(str(self.engine.url.database))
                self._file = (db.parent / f"{db.name}.deliver.lock").open("w")
            try:
                fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            return True
        if self._conn is None:
            self._conn = self.engine.connect()
        taken = bool(self._conn.execute(sa.text(f"SELECT pg_try_advisory_lock({LOCK_KEY})"))
                     .scalar())  # fmt: skip
        self._conn.commit()  # a session lock: no transaction stays open while it is held
        return taken

    def acquire(self, wait_s: float = 0) -> None:
        """Take it, waiting up to ``wait_s`` for a previous dispatcher to let go."""
        deadline = time.monotonic() + wait_s
        while not self._take():
            if time.monotonic() >= deadline:
                self.release()
                raise DelivererBusyError(
                    f"another dispatcher delivers from this store ({self.engine.url.database})"
                )
            time.sleep(0.1)

    def check(self) -> bool:
        """Whether it is still held, after taking it again if it was lost; False when another
        dispatcher has it now."""
        if self._conn is None:
            return self._file is not None
        try:
            held = self._conn.execute(_HELD).scalar()
            self._conn.commit()
            if held:
                return True
        except sa.exc.DBAPIError:
            log.warning("the dispatcher lock's connection was lost; taking the lock again")
        self._close()
        try:
            return self._take()
        except sa.exc.DBAPIError:
            self._close()
            return False

    def _close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(sa.exc.DBAPIError):
                self._conn.close()
            self._conn = None

    def release(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(sa.exc.DBAPIError):
                self._conn.execute(sa.text(f"SELECT pg_advisory_unlock({LOCK_KEY})"))
                self._conn.commit()
            self._close()
        if self._file is not None:
            self._file.close()  # closing the file releases its lock
            self._file = None


@contextmanager
def exclusive(engine: Engine, wait_s: float = 0) -> Iterator[StoreLock]:
    """Hold the store's dispatcher lock for the block (see :class:`StoreLock`)."""
    lock = StoreLock(engine)
    lock.acquire(wait_s)
    try:
        yield lock
    finally:
        lock.release()


class TokenBucket:
    """At most ``rate`` requests per second on average, with bursts of up to one second's."""

    def __init__(self, rate: float, now: float) -> None:
        self.rate = rate
        self.capacity = max(1.0, rate)
        self.tokens = self.capacity
        self.at = now

    def available(self, now: float) -> int:
        self.tokens = min(self.capacity, self.tokens + (now - self.at) * self.rate)
        self.at = now
        return int(self.tokens)

    def take(self) -> None:
        self.tokens -= 1


@dataclass(slots=True, eq=False)
class _Destination:
    workspace_id: str
    id: str
    circuit: Circuit
    url: str = ""
    updated_at_ms: int = -1
    key: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    timeout_s: float = 5.0
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT
    disabled: bool = False
    refused: str | None = None  # why nothing can be sent to it (its URL or secret)
    bucket: TokenBucket | None = None
    channel: str = WEBHOOK
    server: smtp.Server | None = None  # e-mail: the workspace's SMTP settings
    settings_read: float = float("-inf")  # e-mail: when they were read (time.monotonic())
    running: set[str] = field(default_factory=set)  # ids of requests under way
    unwritten: set[str] = field(default_factory=set)  # ids whose outcome is not yet recorded

    def circuit_row(self) -> CircuitRow:
        c = self.circuit
        return CircuitRow(self.workspace_id, self.id, c.state, c.failures, c.opened_at_ms,
                          c.reopen_at_ms)  # fmt: skip


class Dispatcher:
    """Delivers due webhooks from one store until stopped (see the module's docstring)."""

    def __init__(
        self,
        store: SqlDeliveryStore,
        client: WebhookClient,
        *,
        allow: AllowList | None = None,
        concurrency: int = CONCURRENCY,
        mail_per_workspace: int = 8,
        poll_s: float = 0.05,
        refresh_s: float = 1.0,
        sweep_s: float = 10.0,
        policy: RetryPolicy | None = None,
        breaker: BreakerPolicy | None = None,
        on_circuit: CircuitHook = log_circuit,
        rng: random.Random | None = None,
        metrics: Metrics | None = None,
        drain_s: float = 10.0,
        lock: StoreLock | None = None,
        settings_s: float = 5.0,
        events: CircuitEvents | None = None,
    ) -> None:
        if concurrency < 1 or mail_per_workspace < 1:
            raise ValueError("concurrency and mail_per_workspace must be at least 1")
        self.store = store
        self.client = client
        self.allow = allow or AllowList()
        self.concurrency = concurrency
        self.mail_per_workspace = mail_per_workspace
        self.events = events
        self.poll_s = poll_s
        self.refresh_s = refresh_s
        self.sweep_s = sweep_s
        self.policy = policy or RetryPolicy()
        self.breaker = breaker or BreakerPolicy()
        self.on_circuit = on_circuit
        self.rng = rng or random.Random()
        self.metrics = metrics
        self.drain_s = drain_s
        self.lock = lock
        self.settings_s = settings_s
        self._db = ThreadPoolExecutor(1, thread_name_prefix="worldflow-deliver-db")
        # What is due is read on a thread of its own, so that reading the next rows never
        # waits behind the commit of the last outcomes (SQLite's WAL and PostgreSQL both let
        # a reader go while a writer commits).
        self._reader = ThreadPoolExecutor(1, thread_name_prefix="worldflow-deliver-read")
        self._flushing: asyncio.Task[None] | None = None
        self._flush_error: Exception | None = None
        # smtplib blocks: e-mails are sent on threads of their own, not the loop's default
        # executor (which resolves the webhooks' host names)
        self._mailer: ThreadPoolExecutor | None = None
        self._destinations: dict[tuple[str, str], _Destination] = {}
        self._mail: dict[tuple[str, str], _Destination] = {}  # e-mail, by (workspace, "smtp")
        self._running: set[asyncio.Task[None]] = set()
        self._hooks: set[asyncio.Future[None]] = set()
        self._results: list[Result] = []
        self._settled: list[tuple[_Destination, str]] = []
        self._dirty: dict[tuple[str, str], _Destination] = {}
        self._deferrals: list[Deferral] = []
        self._wake = asyncio.Event()
        self._turn = 0

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        """The store, on one thread of its own: the event loop keeps serving requests."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._db, functools.partial(fn, *args))

    async def run(self, stop: asyncio.Event) -> None:
        next_refresh = next_sweep = 0.0
        failures = 0
        try:
            while not stop.is_set():
                if self.events is not None:  # never waits: its sends run on a task of their own
                    self.events.pump()
                try:
                    now = time.monotonic()
                    if now >= next_refresh:
                        if self.lock is not None and not await self._call(self.lock.check):
                            raise DelivererBusyError("the dispatcher lock went to another "
                                                     "dispatcher; this one stops")  # fmt: skip
                        await self._refresh()
                        next_refresh = now + self.refresh_s
                    if now >= next_sweep:
                        ended = await self._call(self.store.end_orphans)
                        if ended:
                            log.warning("%d deliveries to unknown or disabled destinations "
                                        "are dead", ended)  # fmt: skip
                        next_sweep = now + self.sweep_s
                    self._start_flush()
                    more = await self._launch()
                    failures = 0
                except DelivererBusyError:
                    raise
                except Exception:  # the store failed (a restart, a full disk): try again
                    failures += 1
                    log.exception("delivering failed; retrying")
                    await self._pause(stop, min(30.0, 0.25 * 2**failures))
                    continue
                if not more:
                    await self._pause(stop, self.poll_s)
        finally:
            await self._drain()
            self._db.shutdown(wait=True)
            self._reader.shutdown(wait=True)
            if self._mailer is not None:  # a message cut short is sent again (same Message-ID)
                self._mailer.shutdown(wait=False, cancel_futures=True)

    async def _pause(self, stop: asyncio.Event, seconds: float) -> None:
        """Until a request ends (its slot is free), ``stop`` is set, or ``seconds`` pass."""
        waits = [asyncio.ensure_future(self._wake.wait()), asyncio.ensure_future(stop.wait())]
        try:
            await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiting in waits:
                waiting.cancel()
        self._wake.clear()

    async def _drain(self) -> None:
        """Let requests under way finish (for ``drain_s`` at most) and record them; those cut
        short are sent again by the next dispatcher."""
        if self._running:
            await asyncio.wait(set(self._running), timeout=self.drain_s)
        cut = [task for task in self._running if not task.done()]
        for task in cut:
            task.cancel()
        if cut:
            await asyncio.gather(*cut, return_exceptions=True)
        if self._hooks:
            await asyncio.wait(set(self._hooks), timeout=self.drain_s)
        if self._flushing is not None:
            await asyncio.wait({self._flushing})
        try:
            await self._flush()
        except Exception:
            log.exception("could not record the last outcomes; those deliveries go out again")
        if self.events is not None:
            await self.events.close(self.drain_s)

    # -- destinations ---------------------------------------------------------------------

    async def _refresh(self) -> None:
        rows = await self._call(self.store.dispatch_destinations)
        seen = set()
        for row in rows:
            key = (row["workspace_id"], row["id"])
            seen.add(key)
            destination = self._destinations.get(key)
            if destination is None:
                state = row["circuit_state"]
                circuit = Circuit(state if state in {CLOSED, OPEN, HALF_OPEN} else CLOSED,
                                  row["consecutive_failures"], row["opened_at_ms"],
                                  row["reopen_at_ms"])  # fmt: skip
                destination = self._destinations[key] = _Destination(*key, circuit=circuit)
            if row["updated_at_ms"] != destination.updated_at_ms:
                self._configure(destination, row)
        for key in set(self._destinations) - seen:
            del self._destinations[key]  # deleted: its pending deliveries were ended with it
        await self._refresh_mail()

    async def _refresh_mail(self) -> None:
        """One e-mail destination per workspace with pending e-mails; its SMTP settings are
        read again when older than ``settings_s``."""
        pending = set(await self._call(self.store.pending_destinations, EMAIL))
        for key in set(self._mail) - pending:
            if not (self._mail[key].running or self._mail[key].unwritten):
                del self._mail[key]
        for key in pending - set(self._mail):
            self._mail[key] = _Destination(*key, circuit=Circuit(), channel=EMAIL)
        monotonic = time.monotonic()
        stale = {ws for (ws, _), d in self._mail.items()
                 if monotonic - d.settings_read >= self.settings_s}  # fmt: skip
        if not stale:
            return
        settings = await self._call(self.store.workspace_settings, stale)
        for (workspace_id, _), d in self._mail.items():
            if workspace_id in stale:
                self._configure_mail(d, settings.get(workspace_id), monotonic)

    def _configure_mail(self, d: _Destination, settings: dict[str, Any] | None,
                        monotonic: float) -> None:  # fmt: skip
        d.settings_read = monotonic
        d.server = None
        if d.id != smtp.SMTP_DESTINATION:
            d.refused = (f"e-mail deliveries go to destination {smtp.SMTP_DESTINATION!r} (the "
                         f"workspace's SMTP settings), not {d.id!r}")  # fmt: skip
            return
        raw = (settings or {}).get("smtp")
        if not raw:
            d.refused = (f"no SMTP settings for workspace {d.workspace_id!r}; set smtp with "
                         "PUT /v1/settings, then replay")  # fmt: skip
            return
        try:
            config = smtp.SmtpSettings.model_validate(raw)
        except pydantic.ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in ("smtp", *first["loc"]))
            d.refused = f"the workspace's SMTP settings are invalid: {where}: {first['msg']}"
            return
        problem = config.problem()  # settings stored without the API's checks
        if problem is not None:
            name, says = problem
            d.refused = f"the workspace's SMTP settings are invalid: smtp.{name}: {says}"
            return
        d.refused = None
        d.server = smtp.Server.of(config)
        d.timeout_s = d.server.timeout_s

    def _configure(self, d: _Destination, row: dict[str, Any]) -> None:
        d.url = row["url"]
        d.updated_at_ms = row["updated_at_ms"]
        d.refused = None
        try:
            target = check_url(d.url)
            literal = ip_literal(target.host)
            if literal is not None:  # refused before any connection is tried
                d.refused = blocked(target.host, [literal], self.allow)
            d.key = secret_key(row["secret"])
        except DestinationError as exc:
            d.refused = str(exc)
        d.headers = dict(row["headers"])
        d.timeout_s = max(0.001, row["timeout_ms"] / 1000)
        d.max_in_flight = max(1, row["max_in_flight"])
        d.disabled = row["disabled"]
        rate = row["rate_per_s"]
        if rate is None or rate <= 0:
            d.bucket = None
        elif d.bucket is None or d.bucket.rate != rate:
            d.bucket = TokenBucket(rate, time.monotonic())

    # -- attempts -------------------------------------------------------------------------

    async def _launch(self) -> bool:
        """Start what is due, within the limits; whether more may be due right away."""
        free = self.concurrency - len(self._running)
        candidates = [d for d in self._destinations.values() if not d.disabled]
        candidates += self._mail.values()
        if free <= 0 or not candidates:
            return False
        at = now_ms()
        monotonic = time.monotonic()
        start = self._turn % len(candidates)
        self._turn += 1
        wants: dict[str, list[Want]] = {WEBHOOK: [], EMAIL: []}
        for d in candidates[start:] + candidates[:start]:  # a different first one each turn
            limit = d.max_in_flight if d.channel == WEBHOOK else self.mail_per_workspace
            budget = min(free, limit - len(d.running))
            admitted, change = d.circuit.admit(at)
            if change is not None:
                self._changed(d, change)
            if admitted is not None:
                budget = min(budget, admitted)
            if d.bucket is not None and budget > 0:
                budget = min(budget, d.bucket.available(monotonic))
            if budget > 0:
                wants[d.channel].append(Want(d.workspace_id, d.id, budget,
                                             frozenset(d.running | d.unwritten)))  # fmt: skip
                free -= budget
            if free <= 0:
                break
        if not any(wants.values()):
            return False
        loop = asyncio.get_running_loop()
        due = await loop.run_in_executor(self._reader, self._due, wants, at)
        started: Counter[tuple[str, str, str]] = Counter()
        for channel, row in due:
            owners = self._mail if channel == EMAIL else self._destinations
            owner = owners.get((row.workspace_id, row.destination_id))
            if owner is None or owner.disabled or row.id in owner.running | owner.unwritten:
                continue  # deleted or disabled meanwhile; it is ended with its destination
            owner.running.add(row.id)
            owner.circuit.started()
            if owner.bucket is not None:
                owner.bucket.take()
            task = asyncio.create_task(self._attempt(owner, row), name=f"deliver {row.id}")
            self._running.add(task)
            task.add_done_callback(self._finished)
            started[(channel, row.workspace_id, row.destination_id)] += 1
        full = any(started[(channel, w.workspace_id, w.destination_id)] >= w.limit
                   for channel, some in wants.items() for w in some)  # fmt: skip
        return full and len(self._running) < self.concurrency

    def _due(self, wants: dict[str, list[Want]], at: int) -> list[tuple[str, DueDelivery]]:
        return [(channel, row) for channel, some in wants.items() if some
                for row in self.store.due(some, at, channel)]  # fmt: skip

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        self._wake.set()
        if not task.cancelled() and task.exception() is not None:
            log.error("a delivery task failed", exc_info=task.exception())

    async def _attempt(self, d: _Destination, row: DueDelivery) -> None:
        began = time.perf_counter()
        try:
            attempt = await self._send(d, row)
        except Exception as exc:  # a bug here must not lose the delivery: it is retried
            log.exception("delivery %s failed unexpectedly", row.id)
            attempt = Attempt(error=f"internal error: {type(exc).__name__}: {exc}")
        finally:
            d.running.discard(row.id)
        elapsed = time.perf_counter() - began
        at = now_ms()
        outcome = decide(attempt, row.attempts + 1, row.window_start_ms, at, self.policy,
                         self.rng)  # fmt: skip
        before = d.circuit_row()
        change = None
        if d.channel == WEBHOOK:  # e-mail has no circuit: its backoff alone spaces retries
            change = d.circuit.record(None if attempt.refused is not None else outcome.failure,
                                      at, self.breaker)  # fmt: skip
        if d.circuit.state == OPEN and d.circuit.reopen_at_ms:  # no retry before the reopening
            outcome = postpone(outcome, d.circuit.reopen_at_ms, at, row.attempts + 1,
                               row.window_start_ms, self.policy)  # fmt: skip
        d.unwritten.add(row.id)
        self._results.append(Result(row.id, row.attempts + 1, outcome.state,
                                    outcome.next_attempt_ms,
                                    outcome.last_status, outcome.last_error, at))  # fmt: skip
        self._settled.append((d, row.id))
        if change is not None:
            self._changed(d, change)
        elif d.circuit_row() != before:
            self._dirty[(d.workspace_id, d.id)] = d
        if outcome.state == DEAD:
            log.warning("delivery %s to %s is dead: %s", row.id, d.id, outcome.last_error)
        self._count(d.channel, attempt, outcome.state, elapsed)

    async def _send(self, d: _Destination, row: DueDelivery) -> Attempt:
        if d.refused is not None:
            return Attempt(refused=d.refused)
        if d.channel == EMAIL:
            return await self._send_email(d, row)
        body = envelope(row.event_type, row.created_ms, row.payload)
        headers = {**d.headers, "Content-Type": "application/json",
                   **signed_headers(d.key, row.id, int(time.time()), body)}  # fmt: skip
        timeout_ms = round(d.timeout_s * 1000)
        try:
            async with asyncio.timeout(d.timeout_s):
                answer = await self.client.post(d.url, body, headers)
        except TimeoutError:
            return Attempt(error=f"no answer within {timeout_ms} ms", timeout=True)
        except BlockedAddressError as exc:
            return Attempt(refused=str(exc))
        except InvalidURLError as exc:
            return Attempt(refused=str(exc))
        except (RequestError, OSError) as exc:
            return Attempt(error=f"request failed: {str(exc) or type(exc).__name__}")
        text = answer.body[:EXCERPT_BYTES].decode("utf-8", "replace")
        return Attempt(
            status=answer.status, body=text,
            retry_after_s=parse_retry_after(answer.headers.get("retry-after"), time.time()),
            location=answer.headers.get("location"),
        )  # fmt: skip

    async def _send_email(self, d: _Destination, row: DueDelivery) -> Attempt:
        server = d.server
        if server is None:
            return Attempt(refused="no SMTP settings")
        try:
            message = smtp.message(row.id, row.created_ms, row.payload, server.sender)
        except smtp.MessageError as exc:
            return Attempt(refused=str(exc))
        except ValueError as exc:  # a header the e-mail library refuses
            return Attempt(refused=f"payload: {exc}")
        if self._mailer is None:
            self._mailer = ThreadPoolExecutor(self.concurrency,
                                              thread_name_prefix="worldflow-smtp")  # fmt: skip
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._mailer, smtp.send, server, message)
        except Exception as exc:
            return smtp.outcome(exc)
        return smtp.outcome(None)

    def _changed(self, d: _Destination, change: Change) -> None:
        old, new = change
        self._dirty[(d.workspace_id, d.id)] = d
        if new == OPEN and d.circuit.reopen_at_ms is not None:
            self._deferrals.append(Deferral(
                d.workspace_id, d.id, d.circuit.reopen_at_ms, frozenset(d.running),
                round(self.policy.window_s * 1000), duration(self.policy.window_s)))  # fmt: skip
        if self.metrics is not None:
            self.metrics.circuit_changes.labels(new).inc()
        if self.events is not None:
            opened = d.circuit.opened_at_ms if new == OPEN else None
            at = opened if opened is not None else now_ms()  # when it opened, to the ms
            reopen_at = d.circuit.reopen_at_ms if new == OPEN else None
            self.events.add(circuit_event(d.workspace_id, d.id, old, new, reopen_at, at))
        try:
            pending = self.on_circuit(d.workspace_id, d.id, old, new)
        except Exception:
            log.exception("the circuit hook failed for destination %s", d.id)
            return
        if inspect.isawaitable(pending):
            hook = asyncio.ensure_future(pending)
            self._hooks.add(hook)
            hook.add_done_callback(self._hook_done)

    def _hook_done(self, hook: asyncio.Future[None]) -> None:
        self._hooks.discard(hook)
        if not hook.cancelled() and hook.exception() is not None:
            log.error("the circuit hook failed", exc_info=hook.exception())

    def _start_flush(self) -> None:
        """Record what waits to be, on a task of its own, unless a record is under way: the
        next requests start meanwhile, and what ends during a commit goes in the next one.
        Raises what the last record raised (its outcomes wait for the next)."""
        if self._flush_error is not None:
            error, self._flush_error = self._flush_error, None
            raise error
        if self._flushing is None and (self._results or self._dirty or self._deferrals):
            self._flushing = asyncio.create_task(self._flush_task(), name="record outcomes")

    async def _flush_task(self) -> None:
        try:
            await self._flush()
        except Exception as exc:
            self._flush_error = exc
        finally:
            self._flushing = None
            self._wake.set()

    async def _flush(self) -> None:
        """Record outcomes, circuits and deferrals in one transaction; kept for the next turn
        if the store fails (meanwhile those deliveries are not fetched again)."""
        if not (self._results or self._dirty or self._deferrals):
            return
        results, self._results = self._results, []
        settled, self._settled = self._settled, []
        dirty, self._dirty = self._dirty, {}
        deferrals, self._deferrals = self._deferrals, []
        circuits = [d.circuit_row() for d in dirty.values()]
        try:
            await self._call(self.store.record, results, circuits, deferrals)
        except BaseException:
            self._results[:0] = results
            self._settled[:0] = settled
            self._dirty = dirty | self._dirty
            self._deferrals[:0] = deferrals
            raise
        for d, delivery_id in settled:
            d.unwritten.discard(delivery_id)

    def _count(self, channel: str, attempt: Attempt, state: str, elapsed: float) -> None:
        m = self.metrics
        if m is None:
            return
        if attempt.refused is None or attempt.code is not None:
            m.delivery_latency.labels(channel).observe(elapsed)
        if state == DELIVERED:
            m.deliveries_delivered.labels(channel).inc()
        elif state == DEAD:
            m.deliveries_dead.labels(channel).inc()
        else:
            reason = ("timeout" if attempt.timeout else
                      f"smtp_{attempt.code}" if attempt.code else
                      f"http_{attempt.status}" if attempt.status else "connection")  # fmt: skip
            m.delivery_attempts_failed.labels(channel, reason).inc()


def quiet_http_logs() -> None:
    """httpx logs every request at INFO, should anything in the process use it: the
    dispatcher's outcomes are in the store."""
    logging.getLogger("httpx").setLevel(logging.WARNING)


async def deliver_forever(
    store_url: str,
    stop: asyncio.Event,
    *,
    allow: Iterable[str] | AllowList = (),
    concurrency: int = CONCURRENCY,
    mail_per_workspace: int = 8,
    poll_s: float = 0.05,
    refresh_s: float = 1.0,
    sweep_s: float = 10.0,
    policy: RetryPolicy | None = None,
    breaker: BreakerPolicy | None = None,
    on_circuit: CircuitHook = log_circuit,
    rng: random.Random | None = None,
    metrics: Metrics | None = None,
    drain_s: float = 10.0,
    wait_s: float = 30.0,
    on_ready: Callable[[], None] | None = None,
    settings_s: float = 5.0,
    log_address: str | None = None,
) -> None:
    """Deliver from the store at ``store_url`` until ``stop`` is set, holding its dispatcher
    lock (waiting up to ``wait_s`` for a previous dispatcher); ``on_ready`` once it is held.
    ``allow``: hosts, addresses and CIDR ranges the address guard lets through;
    ``settings_s``: how long the workspaces' SMTP settings are cached; ``log_address``: the
    log writer's, to append circuit changes to the log (:class:`CircuitEvents`)."""
    allow_list = allow if isinstance(allow, AllowList) else AllowList.parse(allow)
    engine = create_store_engine(store_url)
    events = None
    if log_address:
        address = log_address

        async def connect() -> SqlEventLog:
            appender = SqlEventLog(engine, address)
            # A writer that is not there leaves start()'s socket to be freed with the error's
            # traceback, which happens here: that is not a leak worth a warning per attempt.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ResourceWarning)
                try:
                    await appender.start()
                except OSError as exc:
                    problem = f"the log writer is not reachable ({exc.strerror or exc})"
                else:
                    return appender
            raise LogError(problem)

        events = CircuitEvents(connect)
    try:
        with ExitStack() as stack:
            lock = await asyncio.to_thread(stack.enter_context, exclusive(engine, wait_s))
            if on_ready is not None:
                on_ready()
            async with guarded_client(allow_list, concurrency) as client:
                dispatcher = Dispatcher(
                    SqlDeliveryStore(engine), client, allow=allow_list,
                    concurrency=concurrency, mail_per_workspace=mail_per_workspace,
                    poll_s=poll_s, refresh_s=refresh_s, sweep_s=sweep_s, policy=policy,
                    breaker=breaker, on_circuit=on_circuit, rng=rng, metrics=metrics,
                    drain_s=drain_s, lock=lock, settings_s=settings_s, events=events,
                )  # fmt: skip
                await dispatcher.run(stop)
    finally:
        engine.dispose()


def run(store_url: str, stop: threading.Event | None = None, **options: Any) -> None:
    """:func:`deliver_forever` on an event loop of its own, until ``stop`` is set (from any
    thread, a signal handler's for instance)."""

    async def main() -> None:
        event = asyncio.Event()
        watcher = None
        if stop is not None:

            async def watch() -> None:
                while not stop.is_set():
                    await asyncio.sleep(0.05)
                event.set()

            watcher = asyncio.create_task(watch())
        try:
            await deliver_forever(store_url, event, **options)
        finally:
            if watcher is not None:
                watcher.cancel()

    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        runner.run(main())


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop where it is installed: its transports cost the dispatcher less per request."""
    try:
        import uvloop
    except ImportError:
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def _deliver_main(store_url: str, options: dict[str, Any], ready: Any, parent_pid: int) -> None:
    stop = child_stop(parent_pid)
    quiet_http_logs()
    told = False

    def on_ready() -> None:
        nonlocal told
        ready.send("")
        ready.close()
        told = True

    try:
        run(store_url, stop, on_ready=on_ready, **{"metrics": Metrics(), **options})
    except Exception as exc:
        if not told:  # the server reports it and does not start
            ready.send(str(exc))
            ready.close()
            return
        log.exception("the dispatcher stopped")
        raise


@dataclass
class DelivererProcess:
    """The dispatcher in a process of its own beside the server's. ``options`` are
    :func:`deliver_forever`'s keyword arguments (picklable), for instance
    ``{"allow": settings.webhook_allow}``."""

    store_url: str
    options: dict[str, Any] = field(default_factory=dict)
    _process: Any = None

    def start(self) -> None:
        self._process = spawn_child(_deliver_main, (self.store_url, self.options), "dispatcher")

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM: requests under way finish (up to ``drain_s``), outcomes are recorded."""
        if self._process is not None:
            stop_child(self._process, timeout)
            self._process = None
