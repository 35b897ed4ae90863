"""The same server on PostgreSQL: ingest with a real client, restart, deduplicate, quarantine,
and the processor's profiles."""

from __future__ import annotations

import signal
from pathlib import Path

from segment.analytics.client import Client

from tests.conftest import ServerProcess, _reset_postgres


def test_server_on_postgresql(tmp_path: Path, pg_database: str) -> None:
    _reset_postgres(pg_database)
    server = ServerProcess(tmp_path / "data", store=pg_database).start()
    try:
        client = Client(server.write_key, host=server.url, gzip=True)
        for i in range(300):
            client.track(f"u{i % 9}", "zone.entered", {"zone_id": f"z{i % 4}"},
                         message_id=f"pg-{i}")  # fmt: skip
        client.track("u1", "zone.entered", {"zone_id": 5}, message_id="pg-bad")
        client.flush()
        client.shutdown()
        server.stop(signal.SIGKILL)
        server.start()
        again = Client(server.write_key, host=server.url)
        for i in range(0, 300, 10):  # a retry after the crash: all duplicates
            again.track(f"u{i % 9}", "zone.entered", {"zone_id": f"z{i % 4}"},
                        message_id=f"pg-{i}")  # fmt: skip
        again.flush()
        again.shutdown()
        ids = [e["event"]["message_id"] for e in server.log_events()]
        assert sorted(ids) == sorted(f"pg-{i}" for i in range(300))
        assert [q["message_id"] for q in server.quarantine()] == ["pg-bad"]
        server.wait_processed()
        with server.admin() as admin:
            profiles = [admin.get(f"/v1/profiles/by/user_id/u{i}").json() for i in range(9)]
        assert sum(p["stats"]["counters"]["events"] for p in profiles) == 300
    finally:
        server.stop()
