"""worldflow.client against a scripted stub server (batching, retries, errors) and the real one."""

from __future__ import annotations

import base64
import gzip
import json
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

import pytest

import worldflow
from tests.conftest import WRITE_KEY, ServerProcess, free_port
from tests.httpd import LocalServer, QuietHandler
from worldflow.client import Client, DeliveryError

Reply = tuple[int, dict[str, str], dict[str, Any]]


@dataclass
class Received:
    at: float
    headers: dict[str, str]
    body: dict[str, Any]

    @property
    def ids(self) -> list[str]:
        return [m["messageId"] for m in self.body["batch"]]


@dataclass
class Stub:
    """A Segment-like endpoint: answers from ``replies`` in order, then with success."""

    replies: list[Reply] = field(default_factory=list)
    received: list[Received] = field(default_factory=list)
    gate: threading.Event | None = None  # when set up, requests wait for it
    arrived: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def handler(self) -> type[BaseHTTPRequestHandler]:
        stub = self

        class Handler(QuietHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as the client expects
            disable_nagle_algorithm = True  # headers and body go in two writes

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers["Content-Length"]))
                if self.headers.get("Content-Encoding") == "gzip":
                    raw = gzip.decompress(raw)
                body = json.loads(raw)
                with stub.lock:
                    stub.received.append(Received(time.monotonic(), dict(self.headers), body))
                    reply = stub.replies.pop(0) if stub.replies else None
                stub.arrived.set()
                if stub.gate is not None:
                    stub.gate.wait(10)
                status, headers, answer = reply or (
                    200, {}, {"success": True, "accepted": len(body["batch"]), "duplicates": 0},
                )  # fmt: skip
                data = json.dumps(answer).encode()
                self.send_response(status)
                for name, value in {**headers, "Content-Type": "application/json"}.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        return Handler

    def ids(self) -> list[str]:
        return [i for r in self.received for i in r.ids]


@pytest.fixture
def stub() -> Iterator[tuple[Stub, str]]:
    s = Stub()
    with LocalServer(s.handler()) as server:
        yield s, server.url


Errors = list[tuple[DeliveryError, list[dict[str, Any]]]]


def make_client(url: str, errors: Errors | None = None, **kw: Any) -> Client:
    kw.setdefault("backoff_base", 0.01)
    on_error: Callable[[DeliveryError, list[dict[str, Any]]], None] | None = None
    if errors is not None:
        on_error = lambda e, batch: errors.append((e, batch))  # noqa: E731
    return Client(url, "wk_stub", on_error=on_error, **kw)


def wait_until(check: Callable[[], bool], timeout: float = 5) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.01)
    return check()


# --- Batching and the wire format ----------------------------------------------------------


def test_batches_by_count_without_waiting_for_the_interval(stub: tuple[Stub, str]) -> None:
    s, url = stub
    with make_client(url, max_batch=10, flush_interval=30) as client:
        for i in range(25):
            client.track("zone.entered", {"zone_id": f"z{i}"}, anonymous_id="a1")
        assert wait_until(lambda: len(s.received) == 2)
        time.sleep(0.2)
        assert [len(r.ids) for r in s.received] == [10, 10]  # the last 5 wait for the interval
        assert client.flush(5)
        assert [len(r.ids) for r in s.received] == [10, 10, 5]
        assert client.stats()["sent"] == 25


def test_sends_a_partial_batch_after_the_interval(stub: tuple[Stub, str]) -> None:
    s, url = stub
    with make_client(url, max_batch=100, flush_interval=0.2) as client:
        began = time.monotonic()
        for _ in range(3):
            client.track("object.viewed", {"obj": {"object_id": "o"}}, user_id="u1")
        assert wait_until(lambda: len(s.received) == 1), "no flush() call: the interval sends"
        assert 0.15 <= s.received[0].at - began < 2
        assert len(s.received[0].ids) == 3


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gzip"])
def test_wire_format_of_every_call(stub: tuple[Stub, str], compress: bool) -> None:
    s, url = stub
    with make_client(url, gzip=compress) as client:
        ids = [
            client.track("zone.entered", {"zone_id": "lobby"}, anonymous_id="a1",
                         context={"world": {"id": "w"}}, message_id="given-id",
                         timestamp="2025-05-01T10:00:00.000Z"),
            client.identify("u1", {"plan": "vip"}, anonymous_id="a1"),
            client.page("Home", {"path": "/"}, category="shop", anonymous_id="a2"),
            client.screen("Cart", {"items": 2}, user_id="u1"),
            client.group("team-1", {"name": "Acme"}, user_id="u1"),
            client.alias("a1", "u1"),
            client.send({"type": "track", "event": "raw", "userId": 5}),
        ]  # fmt: skip
        assert client.flush(5)
    request = s.received[0]
    assert request.headers["Authorization"] == "Basic " + base64.b64encode(b"wk_stub:").decode()
    assert request.headers.get("Content-Encoding") == ("gzip" if compress else None)
    assert request.body["sentAt"].endswith("Z")
    track, identify, page, screen, group, alias, raw = request.body["batch"]
    assert ids[0] == "given-id" and track["messageId"] == "given-id"
    for message_id in ids[1:-1]:
        assert message_id is not None and uuid.UUID(message_id).version == 4
    assert request.ids == ids
    library = {"name": "worldflow-python", "version": worldflow.__version__}
    assert track == {
        "type": "track", "messageId": "given-id", "timestamp": "2025-05-01T10:00:00.000Z",
        "context": {"world": {"id": "w"}, "library": library},
        "event": "zone.entered", "properties": {"zone_id": "lobby"}, "anonymousId": "a1",
    }  # fmt: skip
    assert identify["timestamp"].endswith("Z") and len(identify["timestamp"]) == 24
    assert (identify["type"], identify["userId"], identify["traits"]) == (
        "identify",
        "u1",
        {"plan": "vip"},
    )
    assert (page["name"], page["category"], page["properties"]) == ("Home", "shop", {"path": "/"})
    assert (screen["type"], screen["name"]) == ("screen", "Cart")
    assert (group["groupId"], group["traits"]) == ("team-1", {"name": "Acme"})
    assert (alias["previousId"], alias["userId"]) == ("a1", "u1")
    # A raw message goes as it is, with only a messageId added.
    assert raw == {"type": "track", "event": "raw", "userId": 5, "messageId": ids[-1]}


def test_unserialisable_properties_fail_in_the_caller(stub: tuple[Stub, str]) -> None:
    _, url = stub
    with make_client(url) as client, pytest.raises(TypeError):
        client.track("x", {"when": object()}, user_id="u")


# --- Retries and errors --------------------------------------------------------------------


def test_retries_5xx_then_delivers_once(stub: tuple[Stub, str]) -> None:
    s, url = stub
    s.replies = [(503, {}, {"code": "log_unavailable", "message": "x"}),
                 (500, {}, {"code": "internal", "message": "x"})]  # fmt: skip
    errors: Errors = []
    with make_client(url, errors, max_batch=5) as client:
        for i in range(5):
            client.track("e", {"i": i}, user_id="u")
        assert client.flush(5)
        stats = client.stats()
    assert len(s.received) == 3
    assert s.received[0].ids == s.received[1].ids == s.received[2].ids  # the same batch again
    assert (stats["sent"], stats["accepted"], stats["failed"], stats["retries"]) == (5, 5, 0, 2)
    assert errors == []


def test_429_honours_retry_after(stub: tuple[Stub, str]) -> None:
    s, url = stub
    s.replies = [(429, {"Retry-After": "1"}, {"code": "overloaded", "message": "busy"})]
    with make_client(url, backoff_base=0.001) as client:
        client.track("e", user_id="u")
        assert client.flush(10)
        assert client.accepted == 1
    first, second = s.received
    assert second.at - first.at >= 0.95  # the backoff alone would have waited ~1 ms


@pytest.mark.parametrize(
    ("status", "code"), [(400, "invalid_json"), (401, "invalid_write_key"), (413, "too_large")]
)
def test_other_4xx_are_reported_not_retried(stub: tuple[Stub, str], status: int, code: str) -> None:
    s, url = stub
    s.replies = [(status, {}, {"code": code, "message": "refused"})] * 3
    errors: Errors = []
    with make_client(url, errors) as client:
        client.track("e", {"n": 1}, user_id="u", message_id="m1")
        client.track("e", {"n": 2}, user_id="u", message_id="m2")
        assert client.flush(5)
        stats = client.stats()
    assert len(s.received) == 1
    assert (stats["sent"], stats["failed"], stats["retries"]) == (0, 2, 0)
    [(error, batch)] = errors
    assert (error.status, error.code, error.message) == (status, code, "refused")
    assert [m["messageId"] for m in batch] == ["m1", "m2"]


def test_gives_up_after_max_retries(stub: tuple[Stub, str]) -> None:
    s, url = stub
    s.replies = [(502, {}, {"code": "bad_gateway", "message": "x"})] * 10
    errors: Errors = []
    with make_client(url, errors, max_retries=3) as client:
        client.track("e", user_id="u")
        assert client.flush(5)
        assert (client.failed, client.retries) == (1, 3)
    assert len(s.received) == 4
    assert [(e.status, e.code) for e, _ in errors] == [(502, "retries_exhausted")]


def test_network_errors_are_retried_then_reported() -> None:
    errors: Errors = []
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with make_client(url, errors, max_retries=2, timeout=2) as client:
        client.track("e", user_id="u")
        assert client.flush(10)
        assert (client.sent, client.failed, client.retries) == (0, 1, 2)
    [(error, _)] = errors
    assert (error.status, error.code) == (None, "retries_exhausted")
    assert "ConnectionRefusedError" in error.message


# --- Flush, queue, close, threads ----------------------------------------------------------


def test_flush_blocks_until_delivered(stub: tuple[Stub, str]) -> None:
    s, url = stub
    s.gate = threading.Event()
    with make_client(url, flush_interval=30) as client:
        client.track("e", user_id="u")
        assert client.flush(0.3) is False  # the server has not answered yet
        assert client.sent == 0
        threading.Timer(0.2, s.gate.set).start()
        began = time.monotonic()
        assert client.flush(5) is True
        assert time.monotonic() - began >= 0.1
        assert (client.sent, client.accepted) == (1, 1)


def test_full_queue_drops_and_reports(stub: tuple[Stub, str]) -> None:
    s, url = stub
    s.gate = threading.Event()
    errors: Errors = []
    with make_client(url, errors, max_batch=1, max_queue=2) as client:
        assert client.track("e", user_id="u", message_id="in-flight")
        assert s.arrived.wait(5)  # the first message is taken, the server holds it
        assert client.track("e", user_id="u", message_id="q1")
        assert client.track("e", user_id="u", message_id="q2")
        assert client.track("e", user_id="u", message_id="dropped") is None
        s.gate.set()
        assert client.flush(5)
        assert (client.queued, client.sent, client.failed) == (3, 3, 1)
    assert s.ids() == ["in-flight", "q1", "q2"]
    assert [(e.code, [m["messageId"] for m in b]) for e, b in errors] == [
        ("queue_full", ["dropped"])
    ]


def test_blocking_queue_waits_for_room(stub: tuple[Stub, str]) -> None:
    s, url = stub
    with make_client(url, max_batch=2, max_queue=3, block=True) as client:
        for i in range(50):
            assert client.track("e", {"i": i}, user_id="u") is not None
        assert client.flush(5)
        assert (client.sent, client.failed) == (50, 0)
    assert len(s.ids()) == 50


def test_concurrent_callers(stub: tuple[Stub, str]) -> None:
    s, url = stub
    with make_client(url, max_batch=50, max_queue=100_000) as client:

        def work(n: int) -> None:
            for i in range(250):
                client.track("e", {"i": i}, user_id=f"u{n}", message_id=f"{n}-{i}")

        threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert client.flush(10)
        assert client.stats()["sent"] == client.stats()["accepted"] == 2000
    received = s.ids()
    assert len(received) == len(set(received)) == 2000
    for n in range(8):  # each caller's messages stay in its order
        mine = [i for i in received if i.startswith(f"{n}-")]
        assert mine == [f"{n}-{i}" for i in range(250)]


def test_close_delivers_pending_and_refuses_later_calls(stub: tuple[Stub, str]) -> None:
    s, url = stub
    errors: Errors = []
    client = make_client(url, errors, flush_interval=60)
    with client:
        client.track("e", user_id="u", message_id="before")
    assert s.ids() == ["before"]  # close() flushed, without waiting a minute
    assert client.track("e", user_id="u", message_id="after") is None
    assert client.failed == 1 and errors[0][0].code == "closed"
    assert client.close() is True  # closing twice is harmless


def test_close_with_discard_gives_up_at_once(stub: tuple[Stub, str]) -> None:
    s, url = stub
    s.replies = [(503, {}, {"code": "log_unavailable", "message": "down"})] * 10
    errors: Errors = []
    client = make_client(url, errors, max_batch=1, backoff_base=30, max_retries=5)
    for i in range(3):
        client.track("e", user_id="u", message_id=f"m{i}")
    assert s.arrived.wait(5)  # the first batch is failing and waits 15-30 s to retry
    began = time.monotonic()
    assert client.close(discard=True)
    assert time.monotonic() - began < 2
    assert (client.sent, client.failed) == (0, 3)
    reported = sorted(m["messageId"] for _, batch in errors for m in batch)
    assert reported == ["m0", "m1", "m2"]
    assert "discarded" in {e.code for e, _ in errors}


def test_interpreter_exit_flushes(stub: tuple[Stub, str]) -> None:
    s, url = stub
    script = textwrap.dedent(f"""
        from worldflow.client import Client
        client = Client({url!r}, "wk_stub", flush_interval=60)
        for i in range(3):
            client.track("e", anonymous_id="a", message_id=f"exit-{{i}}")
        # no flush(), no close(): the atexit hook delivers
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=30, check=False)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert s.ids() == ["exit-0", "exit-1", "exit-2"]


def test_ping_checks_host_and_key_without_retrying(stub: tuple[Stub, str]) -> None:
    s, url = stub
    with make_client(url) as client:
        client.ping()
        assert s.received[0].body["batch"] == []
        s.replies = [(401, {}, {"code": "invalid_write_key", "message": "no"})]
        with pytest.raises(DeliveryError) as refused:
            client.ping()
        assert (refused.value.status, refused.value.code) == (401, "invalid_write_key")
        assert len(s.received) == 2 and client.stats()["queued"] == 0
    with make_client(f"http://127.0.0.1:{free_port()}") as offline:
        began = time.monotonic()
        with pytest.raises(DeliveryError) as unreachable:
            offline.ping()
        assert unreachable.value.code == "network" and time.monotonic() - began < 2


def test_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="http"):
        Client("ftp://example.com", "k")
    with pytest.raises(ValueError, match="max_batch"):
        Client("http://127.0.0.1:1", "k", max_batch=0)


# --- Against the real server ---------------------------------------------------------------


def test_counts_against_the_server(server: ServerProcess) -> None:
    errors: Errors = []

    def report(error: DeliveryError, batch: list[dict[str, Any]]) -> None:
        errors.append((error, batch))

    with Client(server.url, WRITE_KEY, max_batch=4, on_error=report) as client:
        for i in range(6):
            client.track("zone.entered", {"zone_id": f"z{i}", "zone_type": "lobby"},
                         anonymous_id="a1", message_id=f"ok-{i}")  # fmt: skip
        client.identify("u1", {"plan": "vip"}, anonymous_id="a1", message_id="who")
        client.page("Home", {"path": "/"}, anonymous_id="a1", message_id="page")
        client.alias("a1", "u1", message_id="alias")
        client.track("zone.entered", {"zone_id": 42}, anonymous_id="a1", message_id="bad")
        assert client.flush(10)
        stats = client.stats()
        [rejection] = client.rejections
    assert stats == {"queued": 10, "sent": 10, "accepted": 9, "duplicates": 0, "rejected": 1,
                     "failed": 0, "retries": 0, "pending": 0}  # fmt: skip
    assert (rejection["messageId"], rejection["code"]) == ("bad", "invalid_properties")
    assert rejection["errors"][0]["field"].endswith("properties.zone_id")
    # A retried send, gzipped this time: the server recognises the ids.
    with Client(server.url, WRITE_KEY, gzip=True, on_error=report) as again:
        for i in range(3):
            again.track("zone.entered", {"zone_id": f"z{i}"}, anonymous_id="a1",
                        message_id=f"ok-{i}")  # fmt: skip
        again.track("zone.entered", {"zone_id": "z9"}, anonymous_id="a1", message_id="new")
        assert again.flush(10)
        assert (again.sent, again.accepted, again.duplicates, again.rejected) == (4, 1, 3, 0)
    assert errors == []
    logged = {e["event"]["message_id"] for e in server.log_events()}
    assert logged == {f"ok-{i}" for i in range(6)} | {"who", "page", "alias", "new"}
    assert [q["message_id"] for q in server.quarantine()] == ["bad"]


def test_wrong_write_key_fails_without_retry(server: ServerProcess) -> None:
    errors: Errors = []
    with Client(server.url, "wk_wrong", on_error=lambda e, b: errors.append((e, b))) as client:
        client.track("zone.entered", {"zone_id": "z"}, anonymous_id="a1")
        assert client.flush(10)
        assert (client.failed, client.retries) == (1, 0)
    assert [(e.status, e.code) for e, _ in errors] == [(401, "invalid_write_key")]
    assert server.log_events() == []
