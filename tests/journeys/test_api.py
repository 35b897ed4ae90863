"""The journeys API against `worldflow serve`, with a real Segment client sending the traffic."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from segment.analytics.client import Client as SegmentClient

from tests.conftest import ServerProcess
from tests.segments.test_api import wait_for
from worldflow.demo import Receiver
from worldflow.store.schema import deliveries

CTX = {"world": {"id": "paris-showroom"}, "session_id": "s1"}
JOURNEY_YAML = """
status: active
entry: {event: cart.item_added, where: {">=": [{var: money.amount}, 50]}}
goal: {event: order.completed}
steps:
  - id: ping
    action: {webhook: crm, body: {template: big-cart}}
  - wait: 2s
  - id: check
    branch:
      - if: {">=": [{count: {event: cart.item_added, within: 1h}}, 2]}
        goto: keen
  - id: plain
    exit: not-keen
  - id: keen
    action: {set_traits: {keen: true}}
"""


def test_a_journey_is_validated_applied_run_by_real_traffic_and_counted(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data", env={"WORLDFLOW_WEBHOOK_ALLOW": "127.0.0.1"})
    server.start()
    try:
        run_it(server)
    finally:
        server.stop()


def run_it(server: ServerProcess) -> None:
    crm = Receiver()
    with server.admin() as admin:
        assert admin.put("/v1/destinations/crm", json={"url": crm.url, "secret": crm.secret}
                         ).status_code == 201  # fmt: skip
        bad = admin.put("/v1/journeys/big-cart", json={"entry": {"event": "cart.item_added"},
                        "steps": [{"wait": "soon"}]})  # fmt: skip
        assert bad.status_code == 422
        assert bad.json()["message"] == ("steps[0].wait: 'soon' is not a duration: 90s, 10m, "
                                         "2h, 7d, 1h30m…")  # fmt: skip
        loop = admin.put("/v1/journeys/big-cart", json={"entry": {"api": True},
                         "steps": [{"goto": "nowhere"}]})  # fmt: skip
        assert loop.json()["message"] == ("steps[0].goto: 'nowhere' is not a step id of this "
                                          "journey or exit")  # fmt: skip
        put = admin.put("/v1/journeys/big-cart", content=JOURNEY_YAML,
                        headers={"Content-Type": "application/yaml"})  # fmt: skip
        assert put.json() == {"kind": "journey", "key": "big-cart", "version": 1,
                              "changed": True}  # fmt: skip
        wait_for(lambda: admin.get("/v1/journeys/big-cart").json()["status"]["state"]
                 == "active")  # fmt: skip
    client = SegmentClient(server.write_key, host=server.url, sync_mode=True)
    cart = {"obj": {"object_id": "shoe", "product": {"sku": "SKU-1"}}, "cart_id": "c1"}
    for user, amounts in (("ada", ["80.00", "60.00"]), ("bob", ["90.00"]), ("cyd", ["10.00"])):
        for amount in amounts:
            client.track(
                user_id=user,
                event="cart.item_added",
                context=CTX,
                properties={**cart, "money": {"amount": amount, "currency": "EUR"}},
            )
    client.flush()
    with server.admin() as admin:
        stats = wait_for(lambda: (s := admin.get("/v1/journeys/big-cart/stats").json())[
            "versions"] and s["versions"][0].get("ends", {}).get("completed") and s)  # fmt: skip
        (v1,) = stats["versions"]
        # ada enters on her first cart; her second, within the wait, makes her keen
        assert v1["entered"] == 2 and v1["actions"] == {"webhook": 2, "traits": 1}
        assert v1["branches"]["check"] == {"else": 1, "keen": 1}
        assert v1["ends"] == {"completed": 1, "not-keen": 1}
        ada = admin.get("/v1/profiles/by/user_id/ada").json()
        assert ada["traits"]["keen"] is True
        assert ada["journeys"]["big-cart"]["outcome"] == "completed"
        assert not [k for k in ada["segments"] if k.startswith("~")]  # hidden ones stay inside
        assert [j["key"] for j in admin.get("/v1/journeys").json()["journeys"]] == ["big-cart"]
        refused = admin.post("/v1/journeys/big-cart/entries", json={"user_id": "cyd"})
        assert refused.status_code == 409
        welcome = {"status": "active", "entry": {"api": True},
                   "steps": [{"action": {"set_traits": {"welcomed": True}}}]}  # fmt: skip
        assert admin.put("/v1/journeys/welcome", json=welcome).json()["version"] == 1
        wait_for(lambda: admin.get("/v1/journeys/welcome").json()["status"]["state"]
                 == "active")  # fmt: skip
        assert admin.post("/v1/journeys/welcome/entries", json={}).status_code == 400
        entered = admin.post("/v1/journeys/welcome/entries", json={"user_id": "cyd"})
        assert entered.status_code == 202 and entered.json()["accepted"]
        cyd = wait_for(lambda: (p := admin.get("/v1/profiles/by/user_id/cyd").json())
                       .get("traits", {}).get("welcomed") and p)  # fmt: skip
        assert cyd["journeys"]["welcome"]["outcome"] == "completed"
        assert admin.get("/v1/messaging").status_code == 404
        bad = admin.put("/v1/messaging", json={"caps": {"email": {"per_day": "two"}}})
        assert bad.status_code == 422
        assert bad.json()["message"] == "caps.email.per_day: 'two' is not a whole number >= 0"
        policy = admin.put("/v1/messaging", content="caps: {email: {per_week: 3}}\n",
                           headers={"Content-Type": "application/yaml"})  # fmt: skip
        assert policy.json() == {"kind": "messaging", "key": "default", "version": 1,
                                 "changed": True}  # fmt: skip
        shown = wait_for(lambda: (m := admin.get("/v1/messaging").json())["status"]["state"]
                         == "active" and m)  # fmt: skip
        assert shown["definition"]["caps"] == {"email": {"per_week": 3}}
    # The server's dispatcher signs and sends them; the receiver verifies each signature with
    # the public standardwebhooks library.
    wait_for(lambda: crm.received == 2)
    got = sorted((d["profile"]["user_id"], d["step"], d["data"]) for _, d in crm.arrived.values())
    big = {"template": "big-cart"}
    assert got == [("ada", "ping", big), ("bob", "ping", big)]
    assert crm.rejected == 0
    engine = sa.create_engine(f"sqlite:///{server.data_dir / 'worldflow.db'}")
    with engine.connect() as conn:
        rows = conn.execute(sa.select(deliveries)).all()
    engine.dispose()
    assert {r.id for r in rows} == set(crm.arrived)  # the delivery id is the webhook-id
    assert {r.state for r in rows} == {"delivered"}
