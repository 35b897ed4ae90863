"""In-world actions to the people in a world: each worker's connections to the push channel
(``collect/push.py``), their presence, and the delivery of ``inworld`` rows (docs/PUSH.md).

World servers and clients hold a WebSocket, authenticated with a world's key (a source
created with ``world``: ``?key=`` or an ``Authorization`` header), to send events and receive
the in-world actions journeys decide for the people they speak for.

Frames are JSON text. The client says who it speaks for with ``{"type": "hello",
"anonymousId", "userId", "zone"}`` (again when that changes; a world server speaking for
many people opens one connection per person); the server answers the first one with
``{"type": "welcome", "session", "heartbeat_s"}``. Events go as ``{"id": N, "batch": [...]}``
(answered like ``/v1/stream``, the world filled in where a message names none; a message of
another world is refused). The server sends ``{"type": "action", "id", "placement",
"content", "data", "journey", "expires_at"}``; the client answers ``{"type": "ack", "id"}``
once it applied it. ``{"type": "ping"}`` gets ``{"type": "pong"}``.

Each worker process runs one :class:`Pusher`: it knows its connections and the profile behind
each (resolved from their identities, again until found and now and then for merges), writes
them to ``presence``, and polls the due in-world deliveries. A due one whose person is
connected here is sent (and sent again if not acknowledged in time, after a reconnection
too: clients deduplicate by id); one whose person is connected to another worker is left to
it; one whose person is in no world waits for their next connection, until it expires.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

import msgspec
from fastapi import WebSocket
from starlette.concurrency import run_in_threadpool

from worldflow.metrics import Metrics
from worldflow.segments.definition import DefinitionError, parse_duration
from worldflow.store.presence import InWorld, PresenceStore, Present
from worldflow.store.sql import SourceRef

log = logging.getLogger(__name__)

Decide = Callable[["InWorld", "Connection"], Awaitable[dict[str, Any] | None]]

POLL_S: Final = 0.005  # how often due in-world deliveries are looked for
IDLE_POLL_S: Final = 0.5  # the same, while this worker holds no connection
ACK_TIMEOUT_MS: Final = 10_000  # an action not acknowledged by then is sent again
ELSEWHERE_RECHECK_MS: Final = 1_000  # a person on another worker: this one looks again after
DEFAULT_EXPIRY_MS: Final = 86_400_000  # an action without ``expires`` waits a day at most
RESOLVE_EVERY_S: Final = 0.1  # connections whose profile is not known yet
REFRESH_EVERY_S: Final = 15.0  # presence rows kept fresh; profiles resolved again (merges)
HEARTBEAT_S: Final = 25
MAX_REMEMBERED: Final = 10_000  # rows remembered here: decided frames, rows left to other workers


@dataclass(eq=False)
class Connection:
    websocket: WebSocket
    source: SourceRef
    id: str = field(default_factory=lambda: f"pc_{uuid.uuid4().hex}")
    anonymous_id: str | None = None
    user_id: str | None = None
    zone: str | None = None
    profile_id: str | None = None
    greeted: bool = False
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def world(self) -> str:
        assert self.source.world is not None
        return self.source.world

    def present(self) -> Present:
        return Present(self.id, self.source.workspace_id, self.world, self.profile_id,
                       self.anonymous_id, self.user_id, self.zone)  # fmt: skip

    async def send(self, frame: dict[str, Any]) -> bool:
        try:
            async with self.lock:
                await self.websocket.send_text(msgspec.json.encode(frame).decode())
            return True
        except Exception:  # closed under our feet: the delivery is sent again later
            return False


class Pusher:
    """One worker's push connections and its loop over due in-world deliveries."""

    def __init__(self, store: PresenceStore, metrics: Metrics) -> None:
        self.store = store
        self.metrics = metrics
        # Decides for an action that asks for a decision (``decide: true``), set by the server
        # (collect/push.py): the decision's body, or None when its placement is not active.
        self.decide: Decide | None = None
        self._frames: dict[str, dict[str, Any]] = {}  # decided actions' frames, sent again as is
        self._elsewhere: dict[str, int] = {}  # rows for people on other workers → look again at
        self.connections: dict[str, Connection] = {}
        # (workspace, profile_id | anonymous_id | user_id, value) → connections
        self.index: dict[tuple[str, str, str], set[Connection]] = {}
        self._acks: list[tuple[str, str]] = []
        self._changed: dict[str, Connection] = {}  # presence rows to write
        self._gone: set[str] = set()
        self._wake: set[tuple[str, str]] = set()
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self._nudge = asyncio.Event()  # a first connection: look now

    # -- connections (called from the WebSocket handlers) --------------------------------

    def add(self, conn: Connection) -> None:
        self.connections[conn.id] = conn
        self.metrics.push_connections.inc()
        self._nudge.set()

    def remove(self, conn: Connection) -> None:
        if self.connections.pop(conn.id, None) is None:
            return
        self._unindex(conn)
        self._changed.pop(conn.id, None)
        self._gone.add(conn.id)
        self.metrics.push_connections.dec()

    def hello(self, conn: Connection, anonymous_id: str | None, user_id: str | None,
              zone: str | None) -> None:  # fmt: skip
        self._unindex(conn)
        if (anonymous_id, user_id) != (conn.anonymous_id, conn.user_id):
            conn.profile_id = None  # resolved again
        conn.anonymous_id, conn.user_id, conn.zone = anonymous_id, user_id, zone
        self._index(conn)
        self._changed[conn.id] = conn

    def ack(self, conn: Connection, ident: str) -> None:
        self._acks.append((conn.source.workspace_id, ident))

    def _keys(self, conn: Connection) -> list[tuple[str, str, str]]:
        ws = conn.source.workspace_id
        return [
            (ws, name, value)
            for name, value in (
                ("profile_id", conn.profile_id),
                ("anonymous_id", conn.anonymous_id),
                ("user_id", conn.user_id),
            )
            if value
        ]

    def _index(self, conn: Connection) -> None:
        for key in self._keys(conn):
            self.index.setdefault(key, set()).add(conn)

    def _unindex(self, conn: Connection) -> None:
        for key in self._keys(conn):
            held = self.index.get(key)
            if held is not None:
                held.discard(conn)
                if not held:
                    del self.index[key]

    def _learn(self, conn: Connection, profile_id: str | None) -> None:
        """The profile behind a connection, found (or changed by a merge)."""
        self._unindex(conn)
        conn.profile_id = profile_id
        self._index(conn)
        if profile_id is not None:  # what waited for this person is due now
            self._wake.add((conn.source.workspace_id, profile_id))
        self._changed[conn.id] = conn

    # -- the loop ------------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="push")

    async def stop(self) -> None:
        self._stop.set()
        self._nudge.set()
        if self._task is not None:
            await self._task
        await run_in_threadpool(self.store.forget_worker)

    async def _run(self) -> None:
        await run_in_threadpool(self.store.forget_worker)  # a previous life's rows
        # Looking connections up never holds up sending: it runs beside the push loop.
        refreshing = asyncio.create_task(self._refresh_loop(), name="push lookups")
        while not self._stop.is_set():
            try:
                await self._write_presence()
                await self._push()
            except Exception:  # the store is away: try again, the connections stay
                log.exception("the push loop failed; trying again")
                await asyncio.sleep(1.0)
            await self._pause()
        await refreshing

    async def _refresh_loop(self) -> None:
        """Connections whose profile is not known yet, looked up every `RESOLVE_EVERY_S`;
        every connection again (merges) and the presence rows refreshed every
        `REFRESH_EVERY_S`."""
        refreshed_at = 0.0
        while not self._stop.is_set():
            try:
                if time.monotonic() - refreshed_at >= REFRESH_EVERY_S:
                    refreshed_at = time.monotonic()
                    await self._resolve(list(self.connections.values()))
                    await run_in_threadpool(self.store.refresh, _now_ms())
                else:
                    await self._resolve([c for c in self.connections.values()
                                         if c.profile_id is None and c.greeted])  # fmt: skip
            except Exception:
                log.exception("looking up push connections failed; trying again")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), RESOLVE_EVERY_S)

    async def _pause(self) -> None:
        """Until the next look: `POLL_S`; `IDLE_POLL_S` while no connection is held (due
        actions can then only wait or expire), cut short by a first connection or stop."""
        if self.connections:
            await asyncio.sleep(POLL_S)
            return
        self._nudge.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._nudge.wait(), IDLE_POLL_S)

    async def _resolve(self, conns: list[Connection]) -> None:
        if not conns:
            return
        found = await run_in_threadpool(self.store.resolve_many, [
            (c.source.workspace_id, c.anonymous_id, c.user_id) for c in conns])  # fmt: skip
        for conn, profile_id in zip(conns, found, strict=True):
            if conn.id in self.connections and profile_id != conn.profile_id:
                self._learn(conn, profile_id)

    async def _write_presence(self) -> None:
        if not (self._changed or self._gone or self._wake):
            return
        changed = [c.present() for c in self._changed.values() if c.source.world]
        gone, wake = list(self._gone), list(self._wake)
        self._changed, self._gone, self._wake = {}, set(), set()
        now = _now_ms()

        def write() -> None:
            self.store.remove(gone)
            self.store.upsert(changed, now)
            self.store.wake(wake, now)

        await run_in_threadpool(write)

    async def _push(self) -> None:
        now = _now_ms()
        due = await run_in_threadpool(self.store.due, now)
        acks, self._acks = self._acks, []
        sent: list[tuple[str, int]] = []
        waiting: list[tuple[str, int]] = []
        later: list[tuple[str, int]] = []
        expired: list[str] = []
        absent: list[InWorld] = []
        skip = self._elsewhere
        for row in due:
            if skip.get(row.id, 0) > now:
                continue  # its person is on another worker, which sends it
            expires = _expires_ms(row)
            if expires <= now:
                expired.append(row.id)
                continue
            conns = self._connections_for(row)
            if not conns:
                absent.append(row)
                continue
            frame = await self._frame(row, expires, conns[0])
            if any([await c.send(frame) for c in conns]):
                sent.append((row.id, now + ACK_TIMEOUT_MS))
                if row.attempts == 0:
                    self.metrics.push_latency.observe(max(0, now - row.created_ms) / 1000)
            else:
                later.append((row.id, now + ELSEWHERE_RECHECK_MS))
        if absent:
            keys = {(r.workspace_id, r.profile_id) for r in absent if r.profile_id}
            elsewhere = await run_in_threadpool(self.store.elsewhere, keys, now)
            for row in absent:  # another worker's to send, or waiting for the next visit
                if (row.workspace_id, row.profile_id) in elsewhere:
                    # left as it is for that worker (which may send it now), not looked at here
                    skip[row.id] = now + ELSEWHERE_RECHECK_MS
                else:
                    waiting.append((row.id, _expires_ms(row)))
            if len(skip) > MAX_REMEMBERED:
                self._elsewhere = {i: t for i, t in skip.items() if t > now}
        await run_in_threadpool(self.store.settle, sent, waiting, later, expired, acks, now)
        for ident in (*expired, *(ident for _, ident in acks)):
            self._frames.pop(ident, None)
        m = self.metrics.push_actions
        for outcome, rows in (("sent", sent), ("waiting", waiting), ("expired", expired),
                              ("acknowledged", acks)):  # fmt: skip
            if rows:
                m.labels(outcome).inc(len(rows))

    async def _frame(self, row: InWorld, expires_ms: int, conn: Connection) -> dict[str, Any]:
        """The action's frame; one that asks for a decision is decided when first sent (for
        the person where they are then) and sent again as it was."""
        frame = self._frames.get(row.id)
        if frame is not None:
            return frame
        frame = _frame(row, expires_ms)
        if frame["data"].get("decide") is not True or self.decide is None:
            return frame
        decided = await self.decide(row, conn)
        if decided is not None:
            frame.update(content=decided["content"], decision_id=decided["decision_id"],
                         offer=decided["offer"])  # fmt: skip
        self._frames[row.id] = frame
        if len(self._frames) > MAX_REMEMBERED:  # bounded: the oldest are decided again if resent
            del self._frames[next(iter(self._frames))]
        return frame

    def _connections_for(self, row: InWorld) -> list[Connection]:
        """The connections of the row's person in its world: by profile, else by the ids
        the decision named (a visitor whose profile this worker has not looked up yet)."""
        ws = row.workspace_id
        found = set(self.index.get((ws, "profile_id", row.profile_id or ""), ()))
        if not found:
            person = row.payload.get("profile")
            person = person if isinstance(person, dict) else {}
            for name in ("user_id", "anonymous_id"):
                value = person.get(name)
                if isinstance(value, str):
                    found.update(c for c in self.index.get((ws, name, value), ())
                                 if c.profile_id is None)  # fmt: skip
            for conn in found:
                self._learn(conn, row.profile_id)
        return [c for c in found if row.world in ("*", c.world)]


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _expires_ms(row: InWorld) -> int:
    raw = row.payload.get("expires")
    try:
        span = parse_duration(raw, "expires") if raw else DEFAULT_EXPIRY_MS
    except DefinitionError:
        span = DEFAULT_EXPIRY_MS
    return row.created_ms + span


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat().replace("+00:00", "Z")


def _frame(row: InWorld, expires_ms: int) -> dict[str, Any]:
    action = row.payload.get("action")
    action = action if isinstance(action, dict) else {}
    content = action.get("content")
    if not isinstance(content, dict):
        content = {k: v for k, v in action.items()
                   if k not in ("placement", "content", "decide")}  # fmt: skip
    return {"type": "action", "id": row.id, "placement": action.get("placement"),
            "content": content, "data": action, "journey": row.payload.get("journey"),
            "step": row.payload.get("step"), "expires_at": iso(expires_ms)}  # fmt: skip


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"
