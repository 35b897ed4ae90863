"""The processor inside `worldflow serve`: real clients in, profiles out through the API."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx
import psutil
import pytest
from segment.analytics.client import Client as SegmentClient

from tests.collect.test_crash import Sender
from tests.conftest import ServerProcess


def test_one_profile_across_worlds_through_the_api(server: ServerProcess) -> None:
    client = SegmentClient(server.write_key, host=server.url, sync_mode=True)
    quest = {"world": {"id": "paris-showroom"}, "session_id": "q1", "device": {"id": "quest-7"}}
    roblox = {"world": {"id": "neo-tokyo"}, "session_id": "r1"}
    shoe = {"object_id": "paris/sneakers/runner", "product": {"sku": "SNK-RUN"}}
    client.track(anonymous_id="quest-anon", event="object.viewed", context=quest,
                 properties={"obj": shoe, "view_ms": 2400})  # fmt: skip
    client.track(anonymous_id="roblox-anon", event="zone.entered", context=roblox,
                 properties={"zone_id": "arena"})  # fmt: skip
    client.identify(user_id="ada", anonymous_id="quest-anon",
                    traits={"email": "ada@example.com", "plan": "vip"})  # fmt: skip
    client.identify(user_id="ada", anonymous_id="roblox-anon")
    client.flush()
    server.wait_processed()
    with server.admin() as admin:
        profile = admin.get("/v1/profiles/by/user_id/ada").json()
        assert set(profile["stats"]["worlds"]) >= {"paris-showroom", "neo-tokyo"}
        paris = profile["stats"]["worlds"]["paris-showroom"]
        assert paris["products"]["SNK-RUN"]["views"] == 1
        assert profile["traits"] == {"email": "ada@example.com", "plan": "vip"}
        assert len(profile["merged_from"]) == 1
        for path in ("/v1/profiles/by/anonymous_id/roblox-anon",
                     "/v1/profiles/by/email/ADA@example.com",
                     "/v1/profiles/by/device_id/quest-7",
                     f"/v1/profiles/{profile['merged_from'][0]}"):  # fmt: skip
            assert admin.get(path).json()["id"] == profile["id"], path
        found = admin.get("/v1/profiles", params={"trait": "plan", "value": "vip"}).json()
        assert [p["id"] for p in found["profiles"]] == [profile["id"]]
        missing = admin.get("/v1/profiles/by/user_id/nobody")
        assert missing.status_code == 404
        assert missing.json()["code"] == "profile_not_found"
        bad = admin.get("/v1/profiles/by/shoe_size/42")
        assert bad.status_code == 400
        assert "identity_type" in bad.json()["message"]
        bad = admin.get("/v1/profiles", params={"trait": "a b", "value": "x"})
        assert bad.status_code == 400
        assert "trait" in bad.json()["message"]
    # Reads need a token with the read scope.
    assert httpx.get(f"{server.url}/v1/profiles/by/user_id/ada").status_code == 401
    spec = httpx.get(f"{server.url}/openapi.json").json()
    assert "/v1/profiles/by/{identity_type}/{value}" in spec["paths"]


def test_sigkill_mid_traffic_then_every_event_is_applied_once(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data").start()
    sender = Sender(server, batch_size=50)
    sender.start()
    time.sleep(1.5)
    # Kill every process of the server at once: workers, log writer, processor, mid-batch.
    assert server.proc is not None
    family = [server.proc.pid, *(c.pid for c in psutil.Process(server.proc.pid).children(True))]
    assert len(family) >= 3
    for pid in family[1:]:
        os.kill(pid, signal.SIGKILL)
    server.stop(signal.SIGKILL)
    time.sleep(0.3)
    server.start()
    time.sleep(1.0)
    sender.stop.set()
    sender.join(10)
    try:
        server.wait_processed()
        logged = [e for e in server.log_events() if e["event"]["message_id"].startswith("crash-")]
        assert len(logged) >= len(sender.acked) > 0
        with server.admin() as admin:
            profiles = [admin.get(f"/v1/profiles/by/user_id/u{i}").json() for i in range(7)]
            status = admin.get("/v1/processor").json()
        applied = sum(p["stats"]["counters"]["events"] for p in profiles)
        assert applied == len(logged)  # not one lost, not one applied twice
        assert status["partitions"]["0"]["counters"]["events"] == len(logged)
    finally:
        server.stop()


def test_workspace_settings_change_identity_rules(server: ServerProcess) -> None:
    with server.admin() as admin:
        assert admin.get("/v1/settings").json() == {"raw_telemetry": False, "identity_types": {}}
        bad = admin.put("/v1/settings", json={"identity_types": {"shoe_size": {"merge": True}}})
        assert bad.status_code == 422
        assert "identity_types" in bad.json()["message"]
        bad = admin.put("/v1/settings", json={"raw_telemetry": "sometimes"})
        assert bad.status_code == 422
        assert "raw_telemetry" in bad.json()["message"]
        # A kiosk brand whose devices are personal after all: device ids may merge.
        changed = {"raw_telemetry": True, "identity_types": {"device_id": {"merge": True}}}
        assert admin.put("/v1/settings", json=changed).json() == changed
    client = SegmentClient(server.write_key, host=server.url, sync_mode=True)
    for anon in ("app-a", "app-b"):
        client.track(anonymous_id=anon, event="zone.entered", properties={"zone_id": "z"},
                     context={"device": {"id": "phone-1"}})  # fmt: skip
    client.track(anonymous_id="app-a", event="telemetry.pose_batch",
                 properties={"interval_ms": 100, "samples": [{"t": 0}]})  # fmt: skip
    client.flush()
    status = server.wait_processed()
    with server.admin() as admin:
        a = admin.get("/v1/profiles/by/anonymous_id/app-a").json()
        assert admin.get("/v1/profiles/by/anonymous_id/app-b").json()["id"] == a["id"]
    assert status["partitions"]["0"]["counters"]["raw_telemetry_not_joined"] == 1


def test_replay_refuses_while_a_server_owns_the_partition(server: ServerProcess) -> None:
    from worldflow.processing import PartitionBusyError, replay

    with pytest.raises(PartitionBusyError, match="partition 0"):
        replay(f"sqlite:///{server.data_dir / 'worldflow.db'}")
