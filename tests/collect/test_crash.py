"""Durability: acknowledged events survive SIGKILL exactly once; SIGTERM drains and flushes."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

from segment.analytics.request import post

from tests.conftest import ServerProcess


class Sender(threading.Thread):
    """Sends batches with the Segment library's own HTTP call and retries a batch until it is
    acknowledged, as the library's consumer does. Records what was acknowledged."""

    def __init__(self, server: ServerProcess, batch_size: int = 50) -> None:
        super().__init__(daemon=True)
        self.server = server
        self.batch_size = batch_size
        self.acked: list[str] = []
        self.attempts = 0
        self.failures = 0
        self.stop = threading.Event()

    def run(self) -> None:
        seq = 0
        while not self.stop.is_set():
            ids = [f"crash-{seq}-{i}" for i in range(self.batch_size)]
            batch = [
                {"type": "track", "event": "zone.entered", "userId": f"u{i % 7}", "messageId": m,
                 "properties": {"zone_id": f"z{i % 3}"}}
                for i, m in enumerate(ids)
            ]  # fmt: skip
            while True:  # retry the same batch until acknowledged
                self.attempts += 1
                try:
                    post(self.server.write_key, self.server.url, batch=batch, timeout=5)
                except Exception:
                    self.failures += 1
                    if self.stop.is_set():
                        return
                    time.sleep(0.05)
                    continue
                self.acked.extend(ids)
                break
            seq += 1


def test_sigkill_loses_no_acknowledged_event_and_counts_none_twice(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data").start()
    sender = Sender(server)
    sender.start()
    time.sleep(1.5)
    acked_before = len(sender.acked)
    server.stop(signal.SIGKILL)
    time.sleep(0.3)
    server.start()
    deadline = time.monotonic() + 20
    while len(sender.acked) < acked_before + 500 and time.monotonic() < deadline:
        time.sleep(0.1)
    sender.stop.set()
    sender.join(20)
    try:
        assert acked_before > 0, "nothing was acknowledged before the kill"
        assert sender.failures > 0, "the kill did not interrupt the sender"
        ids = [e["event"]["message_id"] for e in server.log_events()]
        assert len(ids) == len(set(ids)), "an event is in the log twice"
        missing = set(sender.acked) - set(ids)
        assert not missing, f"{len(missing)} acknowledged events are not in the log"
        # Whatever was committed but not acknowledged was retried and deduplicated, so the log
        # holds exactly the acknowledged events and at most the batch in flight at the end.
        assert len(ids) - len(sender.acked) <= sender.batch_size
    finally:
        server.stop()


def test_sigterm_drains_requests_and_exits_cleanly(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data").start()
    senders = [Sender(server, batch_size=20) for _ in range(4)]
    for i, s in enumerate(senders):
        s.name = f"sender-{i}"
        s.start()
    time.sleep(1.0)
    code = server.stop(signal.SIGTERM)
    for s in senders:
        s.stop.set()
        s.join(20)
    # Uvicorn exits through the signal it handled once shutdown has completed.
    assert code in (0, -signal.SIGTERM), server.output()
    assert "Application shutdown complete" in server.output()
    server.start()
    try:
        ids = {e["event"]["message_id"] for e in server.log_events()}
        acked = {m for s in senders for m in s.acked}
        assert acked and acked <= ids
    finally:
        server.stop()
