"""Several ingest workers share one log writer: same guarantees, metrics added up."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx
from segment.analytics.client import Client

from tests.conftest import ServerProcess


def test_two_workers_one_log(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data", env={"WORLDFLOW_WORKERS": "2"}).start()
    try:
        clients = [Client(server.write_key, host=server.url, upload_size=50) for _ in range(4)]
        for i in range(2000):
            clients[i % 4].track(f"u{i % 13}", "zone.entered", {"zone_id": "lobby"},
                                 message_id=f"w-{i}")  # fmt: skip
        for client in clients:
            client.flush()
            client.shutdown()
        retry = Client(server.write_key, host=server.url)
        for i in range(0, 2000, 7):
            retry.track(f"u{i % 13}", "zone.entered", {"zone_id": "lobby"}, message_id=f"w-{i}")
        retry.flush()
        retry.shutdown()
        ids = [e["event"]["message_id"] for e in server.log_events()]
        assert sorted(ids) == sorted(f"w-{i}" for i in range(2000))
        # Whichever worker answers, /metrics adds up every worker's counters.
        for _ in range(4):
            text = httpx.get(f"{server.url}/metrics").text
            assert (
                'worldflow_events_accepted_total{channel="segment",workspace="default"} 2000.0'
                in text
            )
            assert (
                'worldflow_events_duplicate_total{channel="segment",workspace="default"} 286.0'
                in text
            )
    finally:
        assert server.stop(signal.SIGTERM) in (0, -signal.SIGTERM)


def test_workers_stop_when_the_supervisor_is_killed(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data", env={"WORLDFLOW_WORKERS": "2"}).start()
    assert server.proc is not None
    supervisor = server.proc.pid
    children = Path(f"/proc/{supervisor}/task/{supervisor}/children").read_text().split()
    server.stop(signal.SIGKILL)
    deadline = time.monotonic() + 30
    alive = [int(c) for c in children]
    while alive and time.monotonic() < deadline:
        alive = [pid for pid in alive if _running(pid)]
        time.sleep(0.1)
    assert not alive, f"processes left behind: {alive}"
    server.start()  # the port and the data directory are free again
    server.stop()


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/status").read_text() if Path(f"/proc/{pid}").exists() else ""
    return "State:\tZ" not in status
