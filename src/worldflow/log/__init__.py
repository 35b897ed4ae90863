"""The event log port: append durably (group commit), read from an offset.

Adapters: :mod:`worldflow.log.sql` (embedded default on SQLite; also PostgreSQL). A NATS
JetStream adapter implements the same :class:`EventLog` protocol for scale-out; domain code only
sees this module.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol


class LogRecord(NamedTuple):
    workspace_id: str
    message_id: str
    partition: int
    received_at_ms: int
    body: bytes


class QuarantineRecord(NamedTuple):
    workspace_id: str
    source_id: str | None
    received_at_ms: int
    channel: str
    message_id: str | None
    code: str
    errors: str  # JSON list of {"field", "message"}
    payload: bytes


class LogEntry(NamedTuple):
    offset: int
    workspace_id: str
    message_id: str
    partition: int
    received_at_ms: int
    body: bytes


@dataclass(frozen=True, slots=True)
class AppendResult:
    """Which of the appended records were already in the log (by workspace and message id)."""

    duplicates: frozenset[int]


class LogError(Exception):
    """The log could not make records durable; nothing of the call was acknowledged."""


class LogOverloaded(LogError):
    """Too many events are waiting for the writer; the caller should retry later."""

    def __init__(self, retry_after_s: int) -> None:
        super().__init__(f"the event log is behind; retry after {retry_after_s} s")
        self.retry_after_s = retry_after_s


class EventLog(Protocol):
    async def append(
        self, records: Sequence[LogRecord], quarantined: Sequence[QuarantineRecord] = ()
    ) -> AppendResult:
        """Return once every record is durable (or was already there); raise LogError if not."""
        ...

    def read(
        self,
        after_offset: int,
        limit: int,
        partition: int | None = None,
        workspace_id: str | None = None,
    ) -> list[LogEntry]:
        """Entries with offset > after_offset, in offset order."""
        ...

    def end_offset(self) -> int: ...

    @property
    def pending_events(self) -> int: ...

    async def start(self) -> None: ...

    async def close(self) -> None:
        """Write everything already accepted, then stop."""
        ...
