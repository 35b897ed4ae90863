"""The dispatcher against real receivers on 127.0.0.1 (each request verified with the
Standard Webhooks library) and a real store."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from typing import Any

import pytest

from tests.actions.receiver import (
    Received,
    Receiver,
    action,
    add,
    black_hole,
    dispatching,
    put,
    row,
    rows,
    wait_for,
)
from worldflow.actions import deliver
from worldflow.actions.deliver import DelivererBusyError, DelivererProcess
from worldflow.actions.webhooks import BreakerPolicy, RetryPolicy, new_secret
from worldflow.store.deliveries import SqlDeliveryStore

FAST = RetryPolicy(base_s=0.02, cap_s=0.05, window_s=60)
LOCAL = ("127.0.0.1",)


def answers(*script: int | tuple[int, dict[str, str], bytes]) -> Any:
    """Answer the n-th request with the n-th entry (a status or a full answer), then 200."""

    def answer(n: int, _request: Received) -> tuple[int, dict[str, str], bytes]:
        entry = script[n - 1] if n <= len(script) else 200
        return (entry, {}, b"") if isinstance(entry, int) else entry

    return answer


def delivered(store: SqlDeliveryStore, *ids: str) -> bool:
    found = rows(store)
    return all(found[i]["state"] == "delivered" for i in ids)


def ended(store: SqlDeliveryStore, ident: str) -> dict[str, Any] | None:
    found = row(store, ident)
    return found if found["state"] != "pending" else None


def test_a_signed_delivery_is_retried_after_a_500_with_the_same_id(
    store_url: str, store: SqlDeliveryStore
) -> None:
    secret = new_secret()
    with Receiver(secret, answers(500)) as receiver:
        put(store, "crm", receiver.url, secret=secret, headers={"X-Team": "crm"})
        add(store, action("wh_first"))
        with dispatching(store_url, allow=LOCAL, policy=FAST, rng=random.Random(5)):
            wait_for(lambda: delivered(store, "wh_first"))
    first, second = receiver.received
    assert first.verified and second.verified
    assert first.id == second.id == "wh_first"  # what receivers deduplicate on
    assert first.body == second.body
    assert first.path == "/hooks" and first.headers["x-team"] == "crm"
    assert first.headers["content-type"] == "application/json"
    assert first.headers["user-agent"].startswith("Worldflow-Webhooks/")
    assert second.payload["type"] == "journey.action"
    assert second.payload["data"] == {"journey": "welcome", "step": "hook", "data": {"n": 1}}
    stored = row(store, "wh_first")
    assert (stored["attempts"], stored["last_status"], stored["last_error"]) == (2, 200, None)
    assert stored["delivered_ms"] is not None


def test_many_deliveries_to_several_destinations_arrive_once_each(
    store_url: str, store: SqlDeliveryStore
) -> None:
    secret = new_secret()
    with Receiver(secret) as a, Receiver(secret) as b:
        put(store, "a", a.url, secret=secret, max_in_flight=4)
        put(store, "b", b.url, secret=secret, max_in_flight=4)
        ids = [f"wh_{i:03}" for i in range(150)]
        add(store, *(action(i, "a" if n % 3 else "b") for n, i in enumerate(ids)))
        with dispatching(store_url, allow=LOCAL, policy=FAST, concurrency=16):
            wait_for(lambda: delivered(store, *ids), timeout=30)
    received = a.ids() + b.ids()
    assert sorted(received) == ids
    assert all(r.verified for r in a.received + b.received)
    assert {r["attempts"] for r in rows(store).values()} == {1}


def test_retry_after_is_honoured(lite: SqlDeliveryStore, sqlite_url: str) -> None:
    secret = new_secret()
    with Receiver(secret, answers((429, {"Retry-After": "1"}, b"slow down"))) as receiver:
        put(lite, "crm", receiver.url, secret=secret)
        add(lite, action("wh_1"))
        with dispatching(sqlite_url, allow=LOCAL, policy=FAST):
            wait_for(lambda: delivered(lite, "wh_1"))
    first, second = receiver.received
    assert second.at - first.at >= 0.99  # not the 20 ms backoff
    assert row(lite, "wh_1")["attempts"] == 2


def test_a_permanent_4xx_is_dead_at_once(lite: SqlDeliveryStore, sqlite_url: str) -> None:
    secret = new_secret()
    with Receiver(secret, lambda _n, _r: (400, {}, b'{"error": "unknown field"}')) as receiver:
        put(lite, "crm", receiver.url, secret=secret)
        add(lite, action("wh_1"))
        with dispatching(sqlite_url, allow=LOCAL, policy=FAST):
            dead = wait_for(lambda: ended(lite, "wh_1"))
            time.sleep(0.2)  # nothing more is sent
    assert dead["state"] == "dead" and dead["attempts"] == 1 and dead["last_status"] == 400
    assert dead["last_error"] == 'HTTP 400: {"error": "unknown field"}'
    assert len(receiver.received) == 1


def test_the_retry_window_running_out_is_dead(lite: SqlDeliveryStore, sqlite_url: str) -> None:
    secret = new_secret()
    with Receiver(secret, lambda _n, _r: (503, {}, b"maintenance")) as receiver:
        put(lite, "crm", receiver.url, secret=secret)
        add(lite, action("wh_1"))
        policy = RetryPolicy(base_s=0.02, cap_s=0.05, window_s=0.3)
        with dispatching(sqlite_url, allow=LOCAL, policy=policy):
            dead = wait_for(lambda: ended(lite, "wh_1"))
    assert dead["state"] == "dead" and dead["attempts"] == len(receiver.received) >= 2
    assert dead["last_error"].startswith(f"gave up after {dead['attempts']} attempt(s): the "
                                         "retry window of 300ms ended; last: HTTP 503")  # fmt: skip


def test_a_circuit_reopening_after_the_window_ends_the_delivery_now(
    lite: SqlDeliveryStore, sqlite_url: str
) -> None:
    secret = new_secret()
    with Receiver(secret, lambda _n, _r: (503, {}, b"maintenance")) as receiver:
        put(lite, "crm", receiver.url, secret=secret)
        add(lite, action("wh_1"))
        policy = RetryPolicy(base_s=0.02, cap_s=0.05, window_s=10)
        breaker = BreakerPolicy(threshold=2, cooldown_s=60, max_cooldown_s=60)
        with dispatching(sqlite_url, allow=LOCAL, policy=policy, breaker=breaker):
            dead = wait_for(lambda: ended(lite, "wh_1"), timeout=5)
    assert dead["state"] == "dead" and dead["attempts"] == len(receiver.received) == 2
    assert dead["last_error"].startswith("gave up after 2 attempt(s): the retry window of 10s "
                                         "ended; last: HTTP 503")  # fmt: skip


def test_the_circuit_opens_skips_probes_and_closes(lite: SqlDeliveryStore, sqlite_url: str) -> None:
    secret = new_secret()
    changes: list[tuple[str, str, str, str]] = []
    ids = [f"wh_{i}" for i in range(6)]
    with Receiver(secret, answers(500, 500, 500, 500)) as receiver:
        put(lite, "crm", receiver.url, secret=secret, max_in_flight=1)
        add(lite, *(action(i) for i in ids))
        breaker = BreakerPolicy(threshold=3, cooldown_s=1.0, max_cooldown_s=2.0)
        with dispatching(sqlite_url, allow=LOCAL, policy=FAST, breaker=breaker,
                         on_circuit=lambda *change: changes.append(change)):  # fmt: skip
            circuit = wait_for(lambda: (d := lite.get_destination("default", "crm"))
                               and d["circuit_state"] == "open" and d)  # fmt: skip
            waiting = rows(lite)
            assert lite.get_destination("default", "crm")["circuit_state"] == "open"  # type: ignore[index]
            assert sum(r["attempts"] for r in waiting.values()) == 3
            for r in waiting.values():  # no attempt counted; none before the reopening
                assert r["next_attempt_ms"] >= circuit["reopen_at_ms"]
                if r["attempts"] == 0:
                    assert r["next_attempt_ms"] == circuit["reopen_at_ms"]
            reopened = wait_for(lambda: (d := lite.get_destination("default", "crm"))
                                and d["opened_at_ms"] != circuit["opened_at_ms"] and d)  # fmt: skip
            assert reopened["reopen_at_ms"] - reopened["opened_at_ms"] == 2000  # doubled
            wait_for(lambda: delivered(lite, *ids))
    assert [c[2:] for c in changes] == [("closed", "open"), ("open", "half_open"),
                                        ("half_open", "open"), ("open", "half_open"),
                                        ("half_open", "closed")]  # fmt: skip
    assert {c[:2] for c in changes} == {("default", "crm")}
    got = receiver.received
    assert all(r.verified for r in got) and len(got) == 4 + len(ids)
    assert got[3].at - got[2].at >= 0.98  # nothing was sent while open: then one probe
    assert got[4].at - got[3].at >= 1.98
    assert sum(r["attempts"] for r in rows(lite).values()) == len(got)
    final = lite.get_destination("default", "crm")
    assert final is not None
    assert (final["circuit_state"], final["consecutive_failures"]) == ("closed", 0)


def test_private_addresses_are_refused_unless_allowed(
    lite: SqlDeliveryStore, sqlite_url: str
) -> None:
    secret = new_secret()
    with Receiver(secret) as receiver:
        port = receiver.url.split(":")[2].split("/")[0]
        put(lite, "local", receiver.url, secret=secret)
        put(lite, "private", "http://10.0.0.1/hooks", secret=secret)
        put(lite, "metadata", "http://169.254.169.254/latest/meta-data/", secret=secret)
        put(lite, "named", f"http://localhost:{port}/hooks", secret=secret)
        add(lite, action("l1", "local"), action("p1", "private"), action("m1", "metadata"),
            action("n1", "named"))  # fmt: skip
        with dispatching(sqlite_url, policy=FAST):
            for ident in ("l1", "p1", "m1", "n1"):
                wait_for(lambda ident=ident: ended(lite, ident))  # type: ignore[misc]
        errors = {i: r["last_error"] for i, r in rows(lite).items()}
        assert {r["state"] for r in rows(lite).values()} == {"dead"}
        assert errors["l1"].startswith("url: 127.0.0.1 is a loopback address")
        assert errors["p1"].startswith("url: 10.0.0.1 is a private address")
        assert errors["m1"].startswith("url: 169.254.169.254 is a link-local address")
        assert errors["n1"].startswith("url: localhost (") and "loopback" in errors["n1"]
        assert "webhook_allow" in errors["l1"]
        assert receiver.received == []
        add(lite, action("l2", "local"), action("p2", "private"))
        with dispatching(sqlite_url, policy=FAST, allow=["127.0.0.1"]):
            wait_for(lambda: delivered(lite, "l2") and ended(lite, "p2"))
    assert receiver.ids() == ["l2"] and receiver.received[0].verified
    assert row(lite, "p2")["state"] == "dead"


def test_a_destination_that_never_answers_does_not_delay_a_healthy_one(
    lite: SqlDeliveryStore, sqlite_url: str
) -> None:
    secret = new_secret()
    with black_hole() as nowhere, Receiver(secret) as healthy:
        put(lite, "slow", nowhere, secret=secret, timeout_ms=3000, max_in_flight=4)
        put(lite, "fast", healthy.url, secret=secret, max_in_flight=4)
        slow = [action(f"slow_{i:02}", "slow") for i in range(16)]  # older: first in line
        add(lite, *slow)
        fast = [f"fast_{i:02}" for i in range(16)]
        add(lite, *(action(i, "fast") for i in fast))
        began = time.monotonic()
        with dispatching(sqlite_url, allow=LOCAL, policy=FAST, concurrency=8, drain_s=0.2):
            wait_for(lambda: delivered(lite, *fast))
            took = time.monotonic() - began
            stuck = [rows(lite)[r["id"]] for r in slow]
    assert took < 2.5  # the slow destination's requests are still waiting for their timeout
    assert {(r["state"], r["attempts"]) for r in stuck} == {("pending", 0)}
    assert sorted(healthy.ids()) == fast


def test_a_rate_limit_spaces_the_requests(lite: SqlDeliveryStore, sqlite_url: str) -> None:
    secret = new_secret()
    with Receiver(secret) as receiver:
        put(lite, "crm", receiver.url, secret=secret, rate_per_s=4.0)
        ids = [f"wh_{i}" for i in range(8)]
        add(lite, *(action(i) for i in ids))
        with dispatching(sqlite_url, allow=LOCAL, policy=FAST):
            wait_for(lambda: delivered(lite, *ids))
    times = sorted(r.at for r in receiver.received)
    assert times[-1] - times[0] >= 0.9  # a burst of 4, then one every 250 ms


def test_deliveries_to_unknown_destinations_are_dead(
    lite: SqlDeliveryStore, sqlite_url: str
) -> None:
    add(lite, action("ghost", "nowhere"))
    with dispatching(sqlite_url, policy=FAST, sweep_s=0.05):
        dead = wait_for(lambda: ended(lite, "ghost"))
    assert dead["state"] == "dead" and "destination 'nowhere' does not exist" in dead["last_error"]


def test_a_crash_mid_request_sends_again_with_the_same_id(
    lite: SqlDeliveryStore, sqlite_url: str
) -> None:
    secret = new_secret()
    holding = threading.Event()

    def answer(n: int, _request: Received) -> tuple[int, dict[str, str], bytes]:
        if n == 1:  # the dispatcher dies while this request waits for its answer
            holding.set()
            receiver.release.wait(10)
        return 200, {}, b""

    with Receiver(secret, answer) as receiver:
        put(lite, "crm", receiver.url, secret=secret, timeout_ms=10_000)
        add(lite, action("wh_1"))
        with dispatching(sqlite_url, allow=LOCAL, policy=FAST, drain_s=0.05):
            holding.wait(10)
        cut = row(lite, "wh_1")
        assert (cut["state"], cut["attempts"]) == ("pending", 0)
        with dispatching(sqlite_url, allow=LOCAL, policy=FAST):
            wait_for(lambda: delivered(lite, "wh_1"))
    assert receiver.ids() == ["wh_1", "wh_1"]


def test_one_dispatcher_per_store(lite: SqlDeliveryStore, sqlite_url: str) -> None:
    with dispatching(sqlite_url):
        time.sleep(0.1)
        with pytest.raises(DelivererBusyError):
            deliver.run(sqlite_url, threading.Event(), wait_s=0)


def test_worldflow_deliver_on_the_command_line(lite: SqlDeliveryStore, sqlite_url: str) -> None:
    secret = new_secret()
    with Receiver(secret) as receiver:
        put(lite, "crm", receiver.url, secret=secret)
        add(lite, action("wh_cli"))
        proc = subprocess.Popen(
            [sys.executable, "-m", "worldflow", "deliver", "--store", sqlite_url,
             "--allow", "127.0.0.1"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ, "CI": ""},
        )  # fmt: skip
        try:
            wait_for(lambda: delivered(lite, "wh_cli"), timeout=30)
        finally:
            proc.send_signal(signal.SIGTERM)
            output = proc.communicate(timeout=30)[0].decode()
    assert proc.returncode == 0, output
    assert receiver.ids() == ["wh_cli"]
    bad = subprocess.run([sys.executable, "-m", "worldflow", "deliver", "--store", sqlite_url,
                          "--allow", "not a host!"], capture_output=True, text=True,
                         timeout=30, check=False)  # fmt: skip
    assert bad.returncode == 2 and "--allow: 'host!' is not a host name" in bad.stderr


def test_the_dispatcher_as_a_child_of_the_server(lite: SqlDeliveryStore, sqlite_url: str) -> None:
    secret = new_secret()
    with Receiver(secret) as receiver:
        put(lite, "crm", receiver.url, secret=secret)
        add(lite, action("wh_child"))
        child = DelivererProcess(sqlite_url, {"allow": LOCAL, "poll_s": 0.01})
        child.start()
        try:
            wait_for(lambda: delivered(lite, "wh_child"), timeout=30)
            second = DelivererProcess(sqlite_url, {"wait_s": 0})
            with pytest.raises(RuntimeError, match="could not start: another dispatcher"):
                second.start()
        finally:
            child.stop()
    assert receiver.ids() == ["wh_child"]
    assert json.loads(receiver.received[0].body)["type"] == "journey.action"


def test_the_circuit_hook_may_be_a_coroutine(lite: SqlDeliveryStore, sqlite_url: str) -> None:
    secret = new_secret()
    seen: list[tuple[str, ...]] = []

    async def hook(*change: str) -> None:
        await asyncio.sleep(0)
        seen.append(change)

    with Receiver(secret, lambda _n, _r: (500, {}, b"")) as receiver:
        put(lite, "crm", receiver.url, secret=secret)
        add(lite, action("wh_1"))
        with dispatching(sqlite_url, allow=LOCAL, policy=FAST, on_circuit=hook,
                         breaker=BreakerPolicy(threshold=1, cooldown_s=60)):  # fmt: skip
            wait_for(lambda: seen)
    assert seen == [("default", "crm", "closed", "open")]
    assert len(receiver.received) == 1


def test_a_destination_has_at_most_its_max_in_flight_on_kept_alive_connections(
    lite: SqlDeliveryStore, sqlite_url: str
) -> None:
    secret = new_secret()
    lock = threading.Lock()
    now = peak = 0
    connections: set[int] = set()  # the receiver serves each connection on a thread of its own

    def answer(_n: int, _request: Received) -> tuple[int, dict[str, str], bytes]:
        nonlocal now, peak
        with lock:
            now += 1
            peak = max(peak, now)
            connections.add(threading.get_ident())
        time.sleep(0.15)
        with lock:
            now -= 1
        return 204, {}, b""

    for limit, count in ((3, 12), (12, 36)):
        with Receiver(secret, answer) as receiver:
            put(lite, "crm", receiver.url, secret=secret, max_in_flight=limit)
            ids = [f"wh_{limit}_{i:02}" for i in range(count)]
            add(lite, *(action(i) for i in ids))
            with dispatching(sqlite_url, allow=LOCAL, policy=FAST):
                wait_for(lambda ids=ids: delivered(lite, *ids))  # type: ignore[misc]
            assert sorted(receiver.ids()) == ids
        assert peak == limit  # and not the 8 it used to be for every destination
        assert len(connections) == limit  # each reused for the next request
        peak = 0
        connections.clear()
