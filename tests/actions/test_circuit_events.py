"""Circuit changes as events of the workspace's log: appended by the dispatcher of a real
`worldflow serve`, and never in the dispatcher's way when the log is slow or down."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from tests.actions.receiver import Receiver, action, add, dispatching, put, wait_for
from tests.conftest import ServerProcess
from worldflow.actions.deliver import CircuitEvents, circuit_event
from worldflow.actions.webhooks import BreakerPolicy, RetryPolicy, new_secret
from worldflow.events.catalogue import Catalogue
from worldflow.log import LogRecord
from worldflow.store.deliveries import SqlDeliveryStore
from worldflow.store.sql import create_store_engine

FAST = RetryPolicy(base_s=0.02, cap_s=0.05, window_s=60)


def test_each_change_of_a_served_destination_is_an_event_of_its_workspace(tmp_path: Path) -> None:
    secret = new_secret()
    with Receiver(secret, lambda _n, _r: (503, {}, b"maintenance")) as receiver:
        server = ServerProcess(tmp_path / "data", env={"WORLDFLOW_WEBHOOK_ALLOW": "127.0.0.1"})
        server.data_dir.mkdir(parents=True)
        server.start()
        engine = create_store_engine(f"sqlite:///{server.data_dir / 'worldflow.db'}")
        try:
            with server.admin() as admin:
                created = admin.put("/v1/destinations/crm", json={"url": receiver.url,
                                                                   "secret": secret})  # fmt: skip
                assert created.status_code == 201, created.text
            add(SqlDeliveryStore(engine), *(action(f"wh_{i}") for i in range(5)))

            def changes() -> list[dict[str, Any]]:
                return [e["event"] for e in server.log_events()
                        if e["event"].get("name") == "destination.circuit_changed"]  # fmt: skip

            (event,) = wait_for(changes, timeout=30)
            with server.admin() as admin:
                destination = admin.get("/v1/destinations/crm").json()
            status = server.wait_processed()
        finally:
            server.stop()
            engine.dispose()
    assert len(receiver.received) == 5  # five failures in a row open the circuit
    assert destination["circuit"]["state"] == "open"
    properties = event["properties"]
    assert properties == {"destination": "crm", "from": "closed", "to": "open",
                          "reopen_at": destination["circuit"]["reopen_at"]}  # fmt: skip
    assert event["source_id"] == "_dispatcher" and event["workspace_id"] == "default"
    assert (event["type"], event["tier"], event.get("custom", False)) == ("track", 0, False)
    assert "user_id" not in event and "anonymous_id" not in event  # about no person
    assert Catalogue.default().validate("destination.circuit_changed", properties) == []
    opened = datetime.fromisoformat(destination["circuit"]["opened_at"])
    assert datetime.fromisoformat(event["timestamp"]) == opened
    assert status["log_end_offset"] > 0  # the processor went past it


class SlowLog:
    """A log that answers when told to, or fails."""

    def __init__(self) -> None:
        self.running = True
        self.answer = asyncio.Event()
        self.fail = False
        self.appended: list[LogRecord] = []
        self.calls = 0

    async def append(self, records: Sequence[LogRecord]) -> None:
        self.calls += 1
        if self.fail:
            raise OSError("the log writer is not there")
        await self.answer.wait()
        self.appended.extend(records)

    async def close(self) -> None:
        self.running = False


def test_a_slow_or_failing_log_leaves_changes_queued_bounded_and_retried() -> None:
    async def main() -> None:
        slow = SlowLog()
        connects = 0

        async def connect() -> SlowLog:
            nonlocal connects
            connects += 1
            return slow

        events = CircuitEvents(connect, capacity=3, timeout_s=0.05)
        records = [circuit_event("default", "crm", "closed", "open", 1000 + n, n)
                   for n in range(5)]  # fmt: skip
        events.add(records[0])
        events.pump()
        await asyncio.sleep(0.1)  # no answer in time: kept, and not tried again at once
        assert (events.queued, slow.appended, slow.calls) == (1, [], 1)
        events.pump()
        await asyncio.sleep(0)
        assert slow.calls == 1
        for record in records[1:]:
            events.add(record)  # the queue holds 3: the oldest goes
        assert (events.queued, events.dropped) == (3, 2)
        slow.answer.set()
        events._retry_at = 0.0  # the pause is over
        events.pump()
        await asyncio.sleep(0.01)
        assert slow.appended == records[2:] and events.queued == 0
        assert (events.appended, connects) == (3, 1)
        slow.fail = True
        events.add(records[0])
        events._retry_at = 0.0
        events.pump()
        await asyncio.sleep(0.01)
        assert events.queued == 1
        await events.close(0.1)  # one last try, then what is left is lost (and logged)
        assert slow.calls == 4 and not slow.running

    asyncio.run(main())


def test_the_record_is_a_canonical_event_with_a_stable_id() -> None:
    record = circuit_event("ws", "crm", "half_open", "closed", None, 1_700_000_000_123)
    again = circuit_event("ws", "crm", "half_open", "closed", None, 1_700_000_000_123)
    assert record == again and record.message_id.startswith("cc_")
    assert (record.workspace_id, record.partition, record.received_at_ms) == (
        "ws", 0, 1_700_000_000_123)  # fmt: skip
    event = json.loads(record.body)
    assert event["timestamp"] == event["received_at"] == "2023-11-14T22:13:20.123000Z"
    assert event["properties"] == {"destination": "crm", "from": "half_open", "to": "closed",
                                   "reopen_at": None}  # fmt: skip


def test_the_dispatcher_goes_on_delivering_when_the_log_is_down(
    lite: SqlDeliveryStore, sqlite_url: str
) -> None:
    secret = new_secret()
    seen: list[tuple[str, ...]] = []
    with Receiver(secret, lambda n, _r: (500, {}, b"") if n <= 2 else (200, {}, b"")) as receiver:
        put(lite, "crm", receiver.url, secret=secret, max_in_flight=1)
        add(lite, *(action(f"wh_{i}") for i in range(4)))
        breaker = BreakerPolicy(threshold=2, cooldown_s=0.3, max_cooldown_s=0.3)
        with dispatching(sqlite_url, allow=["127.0.0.1"], policy=FAST, breaker=breaker,
                         log_address="no-such-writer", drain_s=0.5,
                         on_circuit=lambda *change: seen.append(change)):  # fmt: skip
            wait_for(lambda: sorted(receiver.ids())[-1:] == ["wh_3"] and len(seen) == 3)
            wait_for(lambda: all(r["state"] == "delivered" for r in _rows(lite)))
    assert [change[2:] for change in seen] == [("closed", "open"), ("open", "half_open"),
                                               ("half_open", "closed")]  # fmt: skip


def _rows(store: SqlDeliveryStore) -> list[dict[str, Any]]:
    from tests.actions.receiver import rows

    return list(rows(store).values())
