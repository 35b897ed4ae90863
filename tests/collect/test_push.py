"""The world push channel against `worldflow serve`: a world's key, hello and presence, events
over the socket, in-world actions from a journey pushed, acknowledged, sent again when not,
waiting for a person's next visit, and expiring."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from tests.conftest import ServerProcess
from tests.segments.test_api import wait_for

WORLD = "paris-showroom"
GREETER = {
    "status": "active", "reentry": "always",
    "entry": {"event": "zone.entered", "where": {"==": [{"var": "zone_id"}, "lobby"]}},
    "steps": [{"id": "greet", "action": {
        "inworld": {"placement": "lobby-billboard", "content": {"text": "Welcome back"}},
        "world": WORLD, "expires": "1h"}}],
}  # fmt: skip
DECIDED = {
    "status": "active", "reentry": "always",
    "entry": {"event": "zone.entered", "where": {"==": [{"var": "zone_id"}, "gallery"]}},
    "steps": [{"action": {"inworld": {"placement": "gallery-screen", "decide": True},
                          "expires": "1h"}}],
}  # fmt: skip
SCREEN = {"type": "screen", "fallback": {"type": "text", "text": "Welcome to the gallery"}}
PARKA = {"placements": ["gallery-screen"], "content": {"type": "text", "text": "Parkas -20 %"},
         "eligible": {">=": [{"count": {"event": "zone.entered", "within": "1d"}}, 1]}}  # fmt: skip
FLEETING = {
    "status": "active", "reentry": "always",
    "entry": {"event": "zone.entered", "where": {"==": [{"var": "zone_id"}, "stage"]}},
    "steps": [{"action": {"inworld": {"placement": "stage-screen"}, "expires": "1s"}}],
}  # fmt: skip


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, str]]:
    srv = ServerProcess(tmp_path_factory.mktemp("push") / "data").start()
    try:
        with srv.admin() as admin:
            made = admin.post("/v1/sources", json={"name": "showroom", "world": WORLD})
            assert made.status_code == 201 and made.json()["world"] == WORLD
            assert admin.put("/v1/placements/gallery-screen", json=SCREEN).status_code == 200
            assert admin.put("/v1/offers/parka", json=PARKA).status_code == 200
            for key, journey in (("greeter", GREETER), ("fleeting", FLEETING),
                                 ("decided", DECIDED)):  # fmt: skip
                assert admin.put(f"/v1/journeys/{key}", json=journey).status_code == 200
                wait_for(lambda k=key: admin.get(f"/v1/journeys/{k}").json()["status"]["state"]
                         == "active")  # fmt: skip
        yield srv, made.json()["write_key"]
    finally:
        srv.stop()


def open_push(srv: ServerProcess, key: str) -> ClientConnection:
    return connect(f"ws://127.0.0.1:{srv.port}/v1/push?key={key}", open_timeout=10)


def ask(ws: ClientConnection, frame: dict[str, Any]) -> dict[str, Any]:
    ws.send(json.dumps(frame))
    return receive(ws)


def receive(ws: ClientConnection, timeout: float = 15) -> dict[str, Any]:
    answer: dict[str, Any] = json.loads(ws.recv(timeout=timeout))
    return answer


def zone(anonymous_id: str, zone_id: str, n: int) -> dict[str, Any]:
    return {
        "id": n,
        "batch": [
            {
                "type": "track",
                "event": "zone.entered",
                "anonymousId": anonymous_id,
                "properties": {"zone_id": zone_id, "zone_type": "lobby"},
            }
        ],
    }


def delivery(srv: ServerProcess, ident: str) -> dict[str, Any]:
    with srv.admin() as admin:
        found: dict[str, Any] = admin.get(f"/v1/deliveries/{ident}").json()
        return found


def test_only_a_worlds_key_opens_the_channel(server: tuple[ServerProcess, str]) -> None:
    srv, _ = server
    with (connect(f"ws://127.0.0.1:{srv.port}/v1/push?key={srv.write_key}",
                  open_timeout=10) as ws, pytest.raises(ConnectionClosed) as exc):  # fmt: skip
        ws.recv(timeout=10)
    assert exc.value.rcvd is not None and exc.value.rcvd.code == 1008
    assert exc.value.rcvd.reason.startswith("not_a_world_key: key: the push channel takes")


def test_an_action_is_pushed_acknowledged_and_delivered(server: tuple[ServerProcess, str]) -> None:
    srv, key = server
    with open_push(srv, key) as ws:
        assert ask(ws, {"type": "hello", "anonymousId": "x"})["type"] == "welcome"
        bad = ask(ws, {"type": "hello", "anonymousId": "x", "world": "tokyo"})
        assert bad == {
            "type": "error",
            "code": "invalid_hello",
            "message": "world: 'tokyo' is not this key's world 'paris-showroom'",
        }
        assert ask(ws, {"type": "ping"}) == {"type": "pong"}
        other = zone("a1", "lobby", 1)
        other["batch"][0]["context"] = {"world": {"id": "tokyo"}}
        refused = ask(ws, other)
        assert refused["error"]["code"] == "wrong_world"
        assert refused["error"]["message"] == ("batch[0].context.world: 'tokyo' is not this "
                                               "key's world 'paris-showroom'")  # fmt: skip
    with open_push(srv, key) as ws:
        assert ask(ws, {"type": "hello", "anonymousId": "a1", "zone": "lobby"})["type"] == (
            "welcome")  # fmt: skip
        answer = ask(ws, zone("a1", "lobby", 2))
        assert answer["ack"] == 2 and len(answer["accepted"]) == 1
        action = receive(ws)
        assert action["type"] == "action" and action["id"].startswith("iw_")
        assert action["placement"] == "lobby-billboard"
        assert action["content"] == {"text": "Welcome back"}
        assert (action["journey"], action["step"]) == ("greeter", "greet")
        ws.send(json.dumps({"type": "ack", "id": action["id"]}))
        done = wait_for(lambda: (d := delivery(srv, action["id"]))["state"] == "delivered" and d)
        assert done["channel"] == "inworld" and done["attempts"] == 1
        with srv.admin() as admin:
            here = admin.get(f"/v1/worlds/{WORLD}/presence").json()
        assert [(p["anonymous_id"], p["zone"]) for p in here["people"]] == [("a1", "lobby")]
        assert here["people"][0]["profile_id"]
    with srv.admin() as admin:  # gone: no longer present
        wait_for(lambda: admin.get(f"/v1/worlds/{WORLD}/presence").json()["count"] == 0)


def test_an_unacknowledged_action_comes_again_after_a_reconnection(
    server: tuple[ServerProcess, str],
) -> None:
    srv, key = server
    with open_push(srv, key) as ws:
        ask(ws, {"type": "hello", "anonymousId": "a2"})
        ask(ws, zone("a2", "lobby", 1))
        first = receive(ws)  # not acknowledged: the client crashed, say
    assert delivery(srv, first["id"])["state"] == "sent"
    with open_push(srv, key) as ws:
        ask(ws, {"type": "hello", "anonymousId": "a2"})
        again = receive(ws)
        assert again["id"] == first["id"]
        ws.send(json.dumps({"type": "ack", "id": again["id"]}))
        wait_for(lambda: delivery(srv, first["id"])["state"] == "delivered")


def test_an_action_for_someone_away_waits_for_their_visit_or_expires(
    server: tuple[ServerProcess, str],
) -> None:
    srv, key = server
    auth = (srv.write_key, "")
    batch = [{"type": "track", "event": "zone.entered", "anonymousId": who,
              "context": {"world": {"id": WORLD}},
              "properties": {"zone_id": place, "zone_type": "lobby"}}
             for who, place in (("a3", "lobby"), ("a4", "stage"))]  # fmt: skip
    assert httpx.post(f"{srv.url}/v1/batch", json={"batch": batch}, auth=auth).status_code == 200

    def inworld(state: str) -> list[dict[str, Any]]:
        with srv.admin() as admin:
            rows = admin.get("/v1/deliveries", params={"state": state}).json()["deliveries"]
        return [r for r in rows if r["channel"] == "inworld"]

    waiting = wait_for(
        lambda: [r for r in inworld("waiting") if r["payload"]["profile"]["anonymous_id"] == "a3"]
    )
    time.sleep(1.5)  # a4's action lives one second
    dead = wait_for(
        lambda: [r for r in inworld("dead") if r["payload"]["profile"]["anonymous_id"] == "a4"]
    )
    assert dead[0]["last_error"] == "expired before its person was in a world to receive it"
    with open_push(srv, key) as ws:
        ask(ws, {"type": "hello", "anonymousId": "a3"})
        action = receive(ws)
        assert action["id"] == waiting[0]["id"] and action["placement"] == "lobby-billboard"


def test_decisions_over_the_channel_and_pushed_by_a_journey(
    server: tuple[ServerProcess, str],
) -> None:
    srv, key = server
    with open_push(srv, key) as ws:
        early = ask(ws, {"type": "decide", "placement": "gallery-screen"})
        assert (early["type"], early["code"]) == ("error", "hello_first")
        ask(ws, {"type": "hello", "anonymousId": "a5", "zone": "gallery"})
        # Someone new is eligible for nothing: the placement's fallback, with a decision id.
        first = ask(ws, {"type": "decide", "placement": "gallery-screen"})
        assert (first["type"], first["offer"], first["fallback"]) == ("decision", None, True)
        assert first["content"] == SCREEN["fallback"] and first["decision_id"].startswith("dc_")
        missing = ask(ws, {"type": "decide", "placement": "nowhere"})
        assert (missing["type"], missing["code"]) == ("error", "placement_not_found")
        assert ask(ws, {"type": "decide"})["code"] == "invalid_decide"
        # Entering the gallery starts the journey, whose action asks for a decision: made for
        # them when it is pushed (now eligible for the parka), logged, acknowledged.
        ask(ws, zone("a5", "gallery", 1))
        action = receive(ws)
        assert action["type"] == "action" and action["journey"] == "decided"
        assert action["offer"] == "parka" and action["decision_id"].startswith("dc_")
        assert action["content"] == {**PARKA["content"], "creative_id": "parka"}
        ws.send(json.dumps({"type": "ack", "id": action["id"]}))
        wait_for(lambda: delivery(srv, action["id"])["state"] == "delivered")

    def served_events() -> dict[str, Any]:
        return {e["event"]["properties"]["decision_id"]: e["event"] for e in srv.log_events()
                if e["event"]["name"] == "decision.served"}  # fmt: skip

    served = wait_for(lambda: (d := served_events()) and action["decision_id"] in d and d)
    assert {first["decision_id"], action["decision_id"]} <= set(served)
    pushed = served[action["decision_id"]]
    assert pushed["anonymous_id"] == "a5" and pushed["properties"]["variant"] == "parka"
    assert pushed["context"]["zone"] == "gallery"
