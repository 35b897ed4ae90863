"""The webhook API of `worldflow serve`: destinations, the dead letters and their replay, with
the dispatcher delivering from the server's store to a receiver."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.actions.receiver import Received, Receiver, action, add, dispatching, wait_for
from tests.conftest import ServerProcess
from worldflow.actions.webhooks import BreakerPolicy, RetryPolicy
from worldflow.store.deliveries import SqlDeliveryStore
from worldflow.store.sql import create_store_engine


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    data = tmp_path_factory.mktemp("webhooks") / "data"
    # The tests run their own dispatcher (with short retry windows): not the server's.
    env = {"WORLDFLOW_WEBHOOK_ALLOW": "127.0.0.1", "WORLDFLOW_DELIVER": "false"}
    srv = ServerProcess(data, env=env).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def store_url(server: ServerProcess) -> str:
    return f"sqlite:///{server.data_dir / 'worldflow.db'}"


@pytest.fixture(scope="module")
def store(store_url: str) -> Iterator[SqlDeliveryStore]:
    engine = create_store_engine(store_url)
    yield SqlDeliveryStore(engine)
    engine.dispose()


@pytest.mark.parametrize(
    ("body", "field", "says"),
    [
        ({"url": "ftp://hooks.example/in"}, "url", "scheme 'ftp' is not allowed"),
        ({"url": "http://10.0.0.1/in"}, "url", "10.0.0.1 is a private address"),
        ({"url": "http://169.254.169.254/latest"}, "url", "169.254.169.254 is a link-local"),
        ({"url": "http://[::1]:9/in"}, "url", "::1 is a loopback address"),
        ({"url": "https://user:pw@hooks.example/"}, "url", "must not hold credentials"),
        ({"url": "http://127.0.0.1/x", "secret": "s3cret"}, "secret", "must start with 'whsec_'"),
        ({"url": "http://127.0.0.1/x", "headers": {"webhook-signature": "x"}},
         "headers.webhook-signature", "is set by Worldflow"),
        ({"url": "http://127.0.0.1/x", "timeout_ms": 10}, "timeout_ms", "greater than or equal"),
        ({"url": "http://127.0.0.1/x", "rate_per_s": 0}, "rate_per_s", "greater than 0"),
        ({"url": "http://127.0.0.1/x", "max_in_flight": 0}, "max_in_flight",
         "greater than or equal to 1"),
        ({"url": "http://127.0.0.1/x", "max_in_flight": 257}, "max_in_flight",
         "less than or equal to 256"),
        ({"url": "http://127.0.0.1/x", "max_in_flight": "32"}, "max_in_flight",
         "valid integer"),
        ({"url": "http://127.0.0.1/x", "max_in_flight": 2.5}, "max_in_flight",
         "valid integer"),
        ({"url": "http://127.0.0.1/x", "colour": "red"}, "colour", "Extra inputs"),
        ({}, "url", "Field required"),
    ],
)  # fmt: skip
def test_invalid_destinations_are_refused_naming_the_field(
    server: ServerProcess, body: dict[str, Any], field: str, says: str
) -> None:
    with server.admin() as admin:
        answer = admin.put("/v1/destinations/crm", json=body)
    assert answer.status_code == 400, answer.text
    assert answer.json()["code"] == "invalid_field"
    assert answer.json()["message"].startswith(f"{field}: ")
    assert says in answer.json()["message"]


def test_malformed_requests(server: ServerProcess) -> None:
    with server.admin() as admin:
        bad_id = admin.put("/v1/destinations/Not Valid", json={"url": "http://127.0.0.1/"})
        assert bad_id.status_code == 400 and bad_id.json()["message"].startswith("id: ")
        not_json = admin.put("/v1/destinations/crm", content=b"{nope",
                             headers={"Content-Type": "application/json"})  # fmt: skip
        assert (not_json.status_code, not_json.json()["code"]) == (400, "invalid_body")
        state = admin.get("/v1/deliveries", params={"state": "lost"})
        assert state.status_code == 422 and "state" in state.json()["message"]
        for body in ({}, {"ids": ["a"], "destination_id": "crm"}):
            replay = admin.post("/v1/deliveries/replay", json=body)
            assert replay.status_code == 400
            assert replay.json()["message"].startswith("ids or destination_id: give exactly one")
        assert admin.get("/v1/destinations/none").status_code == 404
        assert admin.delete("/v1/destinations/none").status_code == 404
    anonymous = server.admin()
    anonymous.headers.pop("Authorization")
    with anonymous:
        assert anonymous.get("/v1/destinations").status_code == 401


def dead_letters(admin: httpx.Client, n: int) -> list[dict[str, Any]]:
    page: list[dict[str, Any]] = admin.get("/v1/deliveries", params={"state": "dead"}).json()[
        "deliveries"
    ]
    return page if len(page) == n else []


def test_the_secret_is_shown_once_and_deliveries_fail_replay_and_arrive(
    server: ServerProcess, store_url: str, store: SqlDeliveryStore
) -> None:
    healthy = threading.Event()

    def answer(_n: int, _request: Received) -> tuple[int, dict[str, str], bytes]:
        return (200, {}, b"") if healthy.is_set() else (500, {}, b"database is down")

    receiver = Receiver("", answer)
    admin = server.admin()
    with receiver, admin:
        body = {"url": receiver.url, "headers": {"X-Team": "crm"}, "timeout_ms": 2000}
        created = admin.put("/v1/destinations/crm", json=body)
        assert created.status_code == 201, created.text
        receiver.secret = secret = created.json()["secret"]
        assert secret.startswith("whsec_")
        shown = [admin.get("/v1/destinations/crm"), admin.get("/v1/destinations"),
                 admin.put("/v1/destinations/crm", json={**body, "timeout_ms": 3000})]  # fmt: skip
        assert [a.status_code for a in shown] == [200, 200, 200]
        assert all(secret not in a.text and "secret" not in a.json() for a in shown)
        view = shown[0].json()
        assert view["circuit"]["state"] == "closed" and view["headers"] == {"X-Team": "crm"}
        assert view["max_in_flight"] == 32  # the default
        wider = admin.put("/v1/destinations/crm", json={**body, "max_in_flight": 100})
        assert wider.status_code == 200 and wider.json()["max_in_flight"] == 100
        assert admin.get("/v1/destinations/crm").json()["max_in_flight"] == 100
        assert shown[1].json()["destinations"][0]["id"] == "crm"

        # The journeys write these in the processor's transaction.
        add(store, action("wh_a"), action("wh_b"), action("wh_c"))
        policy = RetryPolicy(base_s=0.02, cap_s=0.05, window_s=0.2)
        breaker = BreakerPolicy(threshold=1000)  # circuits are test_deliver's
        with dispatching(store_url, allow=("127.0.0.1",), policy=policy, breaker=breaker):
            item = wait_for(lambda: dead_letters(admin, 3))[0]
            assert item["last_status"] == 500 and item["attempts"] >= 2
            assert "retry window" in item["last_error"]
            assert "database is down" in item["last_error"]
            assert item["payload"]["journey"] == "welcome"
            page = admin.get("/v1/deliveries", params={"state": "dead", "limit": 2}).json()
            after = {"state": "dead", "before": page["next_before"]}
            rest = admin.get("/v1/deliveries", params=after).json()
            assert len(page["deliveries"]) + len(rest["deliveries"]) == 3
            counts = admin.get("/v1/destinations/crm").json()["deliveries"]
            assert counts == {"pending": 0, "delivered": 0, "dead": 3}

            healthy.set()
            one = admin.post("/v1/deliveries/replay", json={"ids": ["wh_a"]})
            assert one.json() == {"replayed": 1}
            wait_for(lambda: admin.get("/v1/deliveries/wh_a").json()["state"] == "delivered")
            others = admin.post("/v1/deliveries/replay", json={"destination_id": "crm"})
            assert others.json() == {"replayed": 2}
            wait_for(lambda: admin.get("/v1/destinations/crm").json()["deliveries"] == {
                "pending": 0, "delivered": 3, "dead": 0})  # fmt: skip
            replayed = admin.get("/v1/deliveries/wh_b").json()
            assert replayed["attempts"] == 1 and replayed["replayed_at"] is not None
    verified = [r for r in receiver.received if r.verified]
    assert {r.id for r in verified} == {"wh_a", "wh_b", "wh_c"}
    assert all(r.headers["x-team"] == "crm" for r in verified)


def test_deleting_a_destination_ends_its_pending_deliveries(
    server: ServerProcess, store: SqlDeliveryStore
) -> None:
    with server.admin() as admin:
        assert admin.put("/v1/destinations/erp", json={"url": "http://127.0.0.1:9/in"}
                         ).status_code == 201  # fmt: skip
        add(store, action("wh_erp", "erp"))
        assert admin.delete("/v1/destinations/erp").status_code == 204
        assert admin.get("/v1/destinations/erp").status_code == 404
        gone = admin.get("/v1/deliveries/wh_erp").json()
        assert gone["state"] == "dead" and "was deleted" in gone["last_error"]


def test_the_api_is_documented(server: ServerProcess) -> None:
    with server.admin() as admin:
        paths = admin.get("/openapi.json").json()["paths"]
    assert {"/v1/destinations", "/v1/destinations/{destination_id}", "/v1/deliveries",
            "/v1/deliveries/replay"} <= set(paths)  # fmt: skip
    schema = paths["/v1/destinations/{destination_id}"]["put"]["requestBody"]["content"]
    assert "url" in schema["application/json"]["schema"]["properties"]
