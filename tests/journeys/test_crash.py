"""SIGKILL of every server process while runs wait and act: after a restart every run ends,
each action decided exactly once."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import sqlalchemy as sa
from segment.analytics.request import post

from tests.conftest import ServerProcess
from tests.segments.test_api import wait_for
from worldflow.demo import Receiver
from worldflow.store.schema import deliveries

TRIAL = {
    "status": "active",
    "entry": {"event": "trial.started"},
    "steps": [
        {"wait": "1s"},
        {"id": "hello", "action": {"webhook": "crm", "body": {"hello": True}}},
        {"wait": "1s"},
        {"id": "done", "action": {"set_traits": {"trial_done": True}}},
    ],
}


class Starter(threading.Thread):
    """Starts trials for u0, u1, … in batches of 10, each batch retried until acknowledged."""

    def __init__(self, server: ServerProcess) -> None:
        super().__init__(daemon=True)
        self.server = server
        self.acked: list[str] = []
        self.stop = threading.Event()

    def run(self) -> None:
        n = 0
        while not self.stop.is_set() and n < 400:
            users = [f"u{n + i}" for i in range(10)]
            batch = [{"type": "track", "event": "trial.started", "userId": u,
                      "messageId": f"start-{u}"} for u in users]  # fmt: skip
            while not self.stop.is_set():
                try:
                    post(self.server.write_key, self.server.url, batch=batch, timeout=5)
                except Exception:
                    time.sleep(0.05)
                    continue
                self.acked += users
                break
            n += 10
            time.sleep(0.02)


def kill_all(server: ServerProcess) -> None:
    assert server.proc is not None
    family = [server.proc.pid, *(c.pid for c in psutil.Process(server.proc.pid).children(True))]
    for pid in family[1:]:
        os.kill(pid, signal.SIGKILL)
    server.stop(signal.SIGKILL)


def test_sigkill_while_runs_wait_and_webhooks_fly_then_each_is_decided_and_sent_once(
    tmp_path: Path,
) -> None:
    crm = Receiver()
    server = ServerProcess(tmp_path / "data", env={"WORLDFLOW_WEBHOOK_ALLOW": "127.0.0.1"})
    server.start()
    with server.admin() as admin:
        assert admin.put("/v1/destinations/crm", json={"url": crm.url, "secret": crm.secret}
                         ).status_code == 201  # fmt: skip
        assert admin.put("/v1/journeys/trial", json=TRIAL).status_code == 200
    starter = Starter(server)
    starter.start()
    time.sleep(1.5)  # runs are waiting, some have acted
    kill_all(server)
    time.sleep(0.3)
    server.start()
    starter.join(60)
    try:
        users = sorted(set(starter.acked))
        assert len(users) >= 100

        def finished() -> Any:
            with server.admin() as admin:
                stats = admin.get("/v1/journeys/trial/stats").json()["versions"]
            ends = stats[0]["ends"].get("completed", 0) if stats else 0
            return stats if ends >= len(users) else None

        (v1,) = wait_for(finished, timeout=60)
        assert v1["entered"] == len(users) and v1["ends"] == {"completed": len(users)}
        assert v1["actions"] == {"webhook": len(users), "traits": len(users)}
        assert not v1["at"]  # nobody left inside
        engine = sa.create_engine(f"sqlite:///{server.data_dir / 'worldflow.db'}")
        with engine.connect() as conn:
            rows = conn.execute(sa.select(deliveries.c.id, deliveries.c.payload)).all()
        engine.dispose()
        decided = sorted(json.loads(r.payload)["profile"]["user_id"] for r in rows)
        assert decided == sorted(users)  # one each: none lost, none decided twice
        # Every decision arrives, signed, under its delivery id (an attempt cut by the kill is
        # sent again with the same webhook-id: receivers see duplicates only by that id).
        wait_for(lambda: crm.received == len(users), timeout=60)
        assert set(crm.arrived) == {r.id for r in rows} and crm.rejected == 0
        with server.admin() as admin:
            person = admin.get(f"/v1/profiles/by/user_id/{users[-1]}").json()
        assert person["traits"]["trial_done"] is True
    finally:
        server.stop()
