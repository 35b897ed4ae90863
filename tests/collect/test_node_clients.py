"""The official Node libraries of Segment and RudderStack, unchanged, against the server.

The libraries are pinned in ``tests/collect/node/package.json`` (with its lock file) and driven
by ``send-segment.mjs`` and ``send-rudder.mjs``: the test hands them the calls as JSON on
stdin, with fixed message ids, and reads back one JSON summary line (the errors the library
reported). A small recording proxy sits between library and server so the tests can also check
the request shapes they claim to cover (rudder-node's gzip with a form content type).
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ServerProcess
from tests.httpd import LocalServer, QuietHandler
from tests.npm import ensure_packages

pytestmark = pytest.mark.node

NODE_DIR = Path(__file__).parent / "node"
DRIVERS = {"segment": "send-segment.mjs", "rudder": "send-rudder.mjs"}
DRIVER_TIMEOUT_S = 120


def ensure_node_modules() -> Path:
    """``node_modules`` with exactly the pinned libraries; installs them (``npm ci``) if needed.

    Skips locally, fails under CI, when node or npm is missing or too old.
    """
    wanted: dict[str, str] = json.loads((NODE_DIR / "package.json").read_text())["dependencies"]
    return ensure_packages(NODE_DIR, wanted)


@pytest.fixture(scope="session")
def node_modules() -> Path:
    return ensure_node_modules()


class RecordingProxy(LocalServer):
    """Forwards every request to the server and remembers method, path, headers and status."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.requests: list[dict[str, Any]] = []
        proxy = self

        class Handler(QuietHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                skip = {"host", "content-length", "connection", "transfer-encoding"}
                headers = {k: v for k, v in self.headers.items() if k.lower() not in skip}
                answer = httpx.post(
                    proxy.upstream + self.path, content=body, headers=headers, timeout=30
                )
                proxy.requests.append(
                    {"method": "POST", "path": self.path, "status": answer.status_code,
                     "headers": {k.lower(): v for k, v in self.headers.items()}}
                )  # fmt: skip
                self.send_response(answer.status_code)
                for key, value in answer.headers.items():
                    if key.lower() not in {"content-length", "transfer-encoding", "connection",
                                           "content-encoding", "date", "server"}:  # fmt: skip
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(answer.content)))
                self.end_headers()
                self.wfile.write(answer.content)

        super().__init__(Handler)


@pytest.fixture
def proxy(server: ServerProcess) -> Iterator[RecordingProxy]:
    with RecordingProxy(server.url) as p:
        yield p


def run_driver(
    library: str, host: str, write_key: str, calls: list[dict[str, Any]], *args: str
) -> dict[str, Any]:
    """Run a driver; its summary: ``calls``, ``delivered``, ``errors``, ``unfinished``."""
    done = subprocess.run(
        ["node", DRIVERS[library], host, write_key, *args], check=False, cwd=NODE_DIR,
        input=json.dumps(calls), capture_output=True, text=True, timeout=DRIVER_TIMEOUT_S,
    )  # fmt: skip
    lines = done.stdout.strip().splitlines()
    assert done.returncode == 0 and lines, (
        f"{DRIVERS[library]} exited with {done.returncode}\n"
        f"stdout:\n{done.stdout}\nstderr:\n{done.stderr[-4000:]}"
    )
    summary: dict[str, Any] = json.loads(lines[-1])
    summary["stderr"] = done.stderr
    return summary


def every_call(tag: str) -> list[dict[str, Any]]:
    """One call of each type (two tracks), in the shape both libraries take, fixed ids."""
    user = f"user-{tag}"
    return [
        {"method": "identify", "params": {
            "messageId": f"{tag}-i", "userId": user, "anonymousId": f"anon-{tag}",
            "traits": {"email_hash": "h1", "plan": "gold"}}},
        {"method": "track", "params": {
            "messageId": f"{tag}-t", "userId": user, "event": "zone.entered",
            "properties": {"zone_id": "paris-lobby", "zone_type": "lobby"},
            "context": {"ip": "203.0.113.7"}}},
        {"method": "track", "params": {
            "messageId": f"{tag}-pv", "userId": user, "event": "Product Viewed",
            "properties": {"product_id": "sneaker-1", "price": 99.5, "currency": "eur"}}},
        {"method": "page", "params": {
            "messageId": f"{tag}-p", "userId": user, "category": "docs",
            "name": "Getting started", "properties": {"path": "/start"}}},
        {"method": "screen", "params": {
            "messageId": f"{tag}-s", "userId": user, "name": "Cart", "properties": {"items": 2}}},
        {"method": "group", "params": {
            "messageId": f"{tag}-g", "userId": user, "groupId": f"team-{tag}",
            "traits": {"name": "Acme"}}},
        {"method": "alias", "params": {
            "messageId": f"{tag}-a", "userId": user, "previousId": f"anon-{tag}"}},
    ]  # fmt: skip


def by_id(server: ServerProcess) -> dict[str, dict[str, Any]]:
    return {e["event"]["message_id"]: e["event"] for e in server.log_events()}


def parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


LIBRARY_NAME = {"segment": "@segment/analytics-node", "rudder": "analytics-node"}
VARIANTS = {
    # id: (library, driver options, expected Content-Type, expected Content-Encoding)
    "segment": ("segment", (), "application/json", None),
    "rudder-gzip": ("rudder", (), "application/x-www-form-urlencoded", "gzip"),
    "rudder-plain": ("rudder", ("--gzip", "false"), "application/json", None),
}


@pytest.mark.usefixtures("node_modules")
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_call_type_lands_in_the_log(
    server: ServerProcess, proxy: RecordingProxy, variant: str
) -> None:
    library, options, content_type, encoding = VARIANTS[variant]
    summary = run_driver(library, proxy.url, server.write_key, every_call("x"), *options)
    assert (summary["errors"], summary["delivered"], summary["unfinished"]) == ([], 7, 0), summary

    # The requests were what the library is known to send (else this test covers less).
    assert proxy.requests, "the library sent nothing"
    for request in proxy.requests:
        assert (request["path"], request["status"]) == ("/v1/batch", 200), request
        assert request["headers"]["content-type"].startswith(content_type), request
        assert request["headers"].get("content-encoding") == encoding, request
        assert request["headers"]["authorization"].startswith("Basic "), request

    events = by_id(server)
    assert {k: v["type"] for k, v in events.items()} == {
        "x-i": "identify", "x-t": "track", "x-pv": "track", "x-p": "page", "x-s": "screen",
        "x-g": "group", "x-a": "alias",
    }  # fmt: skip
    assert server.quarantine() == []

    identify = events["x-i"]
    assert (identify["user_id"], identify["anonymous_id"]) == ("user-x", "anon-x")
    assert identify["traits"] == {"email_hash": "h1", "plan": "gold"}

    zone = events["x-t"]
    assert (zone["name"], zone.get("custom", False)) == ("zone.entered", False)
    assert zone["properties"] == {"zone_id": "paris-lobby", "zone_type": "lobby"}
    assert zone["context"]["ip"] == "203.0.113.7"
    assert zone["context"]["library"]["name"] == LIBRARY_NAME[library]
    assert zone["user_id"] == "user-x"

    viewed = events["x-pv"]
    assert (viewed["name"], viewed["original_name"]) == ("object.viewed", "Product Viewed")
    assert viewed["properties"]["obj"]["product"]["sku"] == "sneaker-1"

    page = events["x-p"]
    assert page["name"] == "Getting started"
    assert page["properties"]["category"] == "docs"
    assert page["properties"]["path"] == "/start"

    screen = events["x-s"]
    assert (screen["name"], screen["properties"]["items"]) == ("Cart", 2)

    group = events["x-g"]
    assert (group["group_id"], group["user_id"], group["traits"]) == (
        "team-x", "user-x", {"name": "Acme"},
    )  # fmt: skip

    alias = events["x-a"]
    assert (alias["previous_id"], alias["user_id"]) == ("anon-x", "user-x")

    for event in events.values():
        assert event["sent_at"] is not None, event
        # Both libraries stamp events at call time: the skew-corrected time is "just now".
        received = parse_time(event["received_at"])
        assert abs(parse_time(event["timestamp"]) - received) < timedelta(minutes=1), event
        if library == "rudder":
            assert event["context"]["channel"] == "server", event


@pytest.mark.usefixtures("node_modules")
@pytest.mark.parametrize("flush_at", [None, 500], ids=["default-flush", "one-batch"])
@pytest.mark.parametrize("library", list(DRIVERS))
def test_a_few_hundred_events(
    server: ServerProcess, proxy: RecordingProxy, library: str, flush_at: int | None
) -> None:
    count = 400
    calls = [
        {"method": "track", "params": {
            "messageId": f"many-{i}", "userId": f"u{i % 37}", "event": "object.gaze_dwell",
            "properties": {"obj": {"object_id": f"o{i % 11}"}, "source": "head", "dwell_ms": i}}}
        for i in range(count)
    ]  # fmt: skip
    options = ("--flush-at", str(flush_at)) if flush_at else ()
    summary = run_driver(library, proxy.url, server.write_key, calls, *options)
    assert (summary["errors"], summary["delivered"], summary["unfinished"]) == ([], count, 0)
    assert all(r["status"] == 200 for r in proxy.requests), proxy.requests
    if flush_at is None:
        # 15 messages a request for segment-node, 20 for rudder-node.
        assert len(proxy.requests) >= count // 20, len(proxy.requests)
    else:
        # One request (rudder-node sends the very first event on its own before it).
        assert len(proxy.requests) <= 2, len(proxy.requests)

    events = server.log_events()
    assert len(events) == count
    stored = {e["event"]["message_id"]: e["event"] for e in events}
    assert set(stored) == {f"many-{i}" for i in range(count)}
    for i in range(count):
        event = stored[f"many-{i}"]
        assert (event["type"], event["name"], event["user_id"]) == (
            "track", "object.gaze_dwell", f"u{i % 37}",
        )  # fmt: skip
        assert event["properties"]["dwell_ms"] == i
        assert event["properties"]["obj"]["object_id"] == f"o{i % 11}"
    assert server.quarantine() == []


@pytest.mark.usefixtures("node_modules")
@pytest.mark.parametrize("library", list(DRIVERS))
def test_wrong_write_key_is_reported_and_nothing_stored(
    server: ServerProcess, proxy: RecordingProxy, library: str
) -> None:
    calls = every_call("bad")[:2]
    summary = run_driver(library, proxy.url, "wk_wrong", calls)
    assert (summary["delivered"], summary["unfinished"]) == (0, 0), summary
    # Every call's callback got the failure, and the library said why.
    for call in calls:
        mid = call["params"]["messageId"]
        assert any(mid in e and "401" in e for e in summary["errors"]), summary["errors"]
    if library == "rudder":
        # rudder-node hands the parsed error body to the errorHandler.
        assert any("invalid_write_key" in e for e in summary["errors"]), summary["errors"]
    # A 401 is final: no retries.
    assert [r["status"] for r in proxy.requests] == [401] * len(proxy.requests)
    assert 1 <= len(proxy.requests) <= 2  # rudder-node sends the very first event on its own
    assert server.log_events() == []
    assert server.quarantine() == []
