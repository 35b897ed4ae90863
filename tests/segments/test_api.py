"""The segments and scores API and `worldflow apply`, against `worldflow serve` with a real
Segment client sending the traffic."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from segment.analytics.client import Client as SegmentClient

from tests.conftest import ServerProcess

EXAMPLES = Path(__file__).parents[2] / "examples" / "segments"
CTX = {"world": {"id": "paris-showroom"}, "session_id": "s1"}
SHOE = {"object_id": "paris-flagship/sneaker-wall/plinth-01/runner",
        "product": {"sku": "SNK-RUNNER-WHT"}, "tags": ["sneakers", "running"]}  # fmt: skip
FANS_YAML = """
key: sneaker-fans
condition:
  ">=": [{attention: {category: sneakers, signal: gaze_ms, within: 7d}}, 3000]
"""


def wait_for(check: Any, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def gaze(client: SegmentClient, user: str, dwell_ms: int) -> None:
    client.track(user_id=user, event="object.gaze_dwell", context=CTX,
                 properties={"obj": SHOE, "source": "head", "dwell_ms": dwell_ms})  # fmt: skip


def test_definitions_are_validated_versioned_and_fill_with_traffic(server: ServerProcess) -> None:
    yaml_headers = {"Content-Type": "application/yaml"}
    with server.admin() as admin:
        bad_yaml = "condition: {'>=': [{count: {event: a, within: 7 days}}, 1]}"
        bad = admin.put("/v1/segments/sneaker-fans", headers=yaml_headers, content=bad_yaml)
        assert bad.status_code == 422
        assert bad.json() == {"code": "invalid_definition", "message": "condition[\">=\"][0]"
                              ".count.within: '7 days' is not a duration: 90s, 10m, 2h, 7d, "
                              "1h30m…"}  # fmt: skip
        wrong_key = admin.put("/v1/segments/other", json={"key": "sneaker-fans",
                                                          "condition": True})  # fmt: skip
        assert wrong_key.status_code == 422
        assert "key" in wrong_key.json()["message"]
        put = admin.put("/v1/segments/sneaker-fans", content=FANS_YAML, headers=yaml_headers)
        assert put.json() == {"kind": "segment", "key": "sneaker-fans", "version": 1,
                              "changed": True}  # fmt: skip
        again = admin.put("/v1/segments/sneaker-fans", content=FANS_YAML, headers=yaml_headers)
        assert again.json()["changed"] is False
        score = {"half_life": "7d", "rules": [{"event": "object.gaze_dwell", "points": 1}]}
        assert admin.put("/v1/scores/engagement", json=score).json()["version"] == 1
    client = SegmentClient(server.write_key, host=server.url, sync_mode=True)
    gaze(client, "ada", 2000)
    gaze(client, "ada", 2000)
    gaze(client, "bob", 500)
    client.flush()
    with server.admin() as admin:
        segment = wait_for(lambda: (s := admin.get("/v1/segments/sneaker-fans").json())["size"]
                           and s)  # fmt: skip
        assert segment["status"]["state"] == "active"
        assert segment["active_version"] == 1
        assert segment["definition"]["condition"][">="][1] == 3000
        assert segment["size_history"][-1]["size"] == 1
        ada = admin.get("/v1/profiles/by/user_id/ada").json()
        assert set(ada["segments"]) == {"sneaker-fans"}
        assert ada["scores"] == {"engagement": 2.0}
        members = admin.get("/v1/segments/sneaker-fans/members").json()["members"]
        assert [m["profile_id"] for m in members] == [ada["id"]]
        listed = admin.get("/v1/segments").json()["segments"]
        assert [(s["key"], s["size"]) for s in listed] == [("sneaker-fans", 1)]
        # Entering is an event in the log, for journeys.
        entered = wait_for(lambda: [e["event"] for e in server.log_events()
                                    if e["event"]["name"] == "segment.entered"])  # fmt: skip
        assert entered[0]["user_id"] == "ada"
        assert entered[0]["properties"]["segment"] == "sneaker-fans"
        # A preview of a looser definition counts bob too, without activating anything.
        looser = {"key": "sneaker-fans", "condition": {">=": [{"attention": {
            "category": "sneakers", "within": "7d"}}, 500]}}  # fmt: skip
        preview = admin.post("/v1/segments/preview", json=looser).json()
        assert (preview["size"], preview["profiles"]) == (2, 2)
        long_gazes = {"event": "object.gaze_dwell", "where": {">": [{"var": "dwell_ms"}, 600]}}
        views = {"condition": {">=": [{"count": long_gazes}, 1]}}
        assert admin.post("/v1/segments/preview", json=views).json()["sample"] == [ada["id"]]
        assert admin.get("/v1/segments/sneaker-fans").json()["version"] == 1
        # A new version applies to everyone from its place in the log.
        assert admin.put("/v1/segments/sneaker-fans", json=looser).json()["version"] == 2
        changed = wait_for(lambda: (s := admin.get("/v1/segments/sneaker-fans").json())[
            "active_version"] == 2 and s)  # fmt: skip
        assert (changed["size"], changed["status"]["state"]) == (2, "active")


def test_segments_that_read_each_other_in_a_cycle_are_refused(server: ServerProcess) -> None:
    with server.admin() as admin:
        a = {"condition": {"in_segment": "b"}}
        assert admin.put("/v1/segments/a", json=a).status_code == 200
        cycle = admin.put("/v1/segments/b", json={"condition": {"in_segment": "a"}})
        assert cycle.status_code == 422
        assert "a → b → a" in cycle.json()["message"] or "b → a → b" in cycle.json()["message"]


def test_worldflow_apply_sends_the_example_workspace(server: ServerProcess) -> None:
    env = {**os.environ, "WORLDFLOW_ADMIN_TOKEN": server.admin_token}
    done = subprocess.run(
        [sys.executable, "-m", "worldflow", "apply", str(EXAMPLES), "--url", server.url],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "score engagement: version 1"  # score models first: segments read them
    assert "segment sneaker-fans: version 1" in lines
    with server.admin() as admin:
        keys = {s["key"] for s in admin.get("/v1/segments").json()["segments"]}
        assert {"sneaker-fans", "engaged", "multi-world"} <= keys
    broken = subprocess.run(
        [sys.executable, "-m", "worldflow", "apply", str(EXAMPLES / "nowhere"), "--url",
         server.url], env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert broken.returncode == 1
    assert "nowhere" in broken.stderr
