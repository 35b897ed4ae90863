"""Every way a request can be wrong, against a real ``worldflow serve``: the status, the JSON
``{"code", "message"}`` and that the message names the problem; what is stored and what is
quarantined when part of a batch is wrong; overload; CloudEvents; the WebSocket stream.

Each request uses a new connection: after a failed request the server may close the
connection, and the next test must not inherit that.
"""

from __future__ import annotations

import base64
import gzip
import json
import threading
import uuid
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from tests.conftest import ServerProcess

CE_STRUCTURED = "application/cloudevents+json"
CE_BATCH = "application/cloudevents-batch+json"


# --- helpers -------------------------------------------------------------------------------


def basic(key: str) -> str:
    return "Basic " + base64.b64encode(f"{key}:".encode()).decode()


def post(
    srv: ServerProcess,
    path: str,
    content: bytes | Iterator[bytes] | Any,
    *,
    auth: str | None = "",
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    """POST ``content`` (bytes, a generator for chunked bodies, or a JSON value); ``auth`` is an
    Authorization header, "" for the server's write key as Basic, None for none."""
    all_headers = {} if auth is None else {"Authorization": auth or basic(srv.write_key)}
    all_headers.update(headers or {})
    if not isinstance(content, bytes | Iterator):
        content = json.dumps(content).encode()
    return httpx.post(srv.url + path, content=content, headers=all_headers, timeout=30)


def assert_error(resp: httpx.Response, status: int, code: str, *mentions: str) -> dict[str, Any]:
    """The answer is ``status`` with JSON ``{"code": code, "message": ...}`` mentioning each of
    ``mentions`` (case-insensitive)."""
    shown = f"{resp.status_code} {resp.headers.get('content-type')} {resp.text[:500]!r}"
    assert resp.status_code == status, shown
    assert resp.headers["content-type"].startswith("application/json"), shown
    body: dict[str, Any] = resp.json()
    assert body["code"] == code, shown
    assert isinstance(body["message"], str), shown
    for mention in mentions:
        assert mention.lower() in body["message"].lower(), f"{mention!r} not named in {shown}"
    return body


def uid(tag: str) -> str:
    return f"{tag}-{uuid.uuid4().hex[:12]}"


def track(message_id: str, **extra: Any) -> dict[str, Any]:
    return {"type": "track", "event": "zone.entered", "userId": "u1", "messageId": message_id,
            "properties": {"zone_id": "lobby"}, **extra}  # fmt: skip


def cloudevent(**attributes: Any) -> dict[str, Any]:
    event = {
        "specversion": "1.0",
        "id": uid("ce"),
        "source": "/worlds/paris",
        "type": "io.worldflow.zone.entered",
        "userid": "u1",
        "data": {"zone_id": "lobby"},
    }
    event.update(attributes)
    return {k: v for k, v in event.items() if v is not None}


def logged(srv: ServerProcess) -> dict[str, dict[str, Any]]:
    return {e["event"]["message_id"]: e["event"] for e in srv.log_events()}


def quarantined(srv: ServerProcess) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    after = 0
    with srv.admin() as client:
        while True:
            page = client.get("/v1/quarantine", params={"after": after, "limit": 1000}).json()
            items += page["items"]
            if not page["items"]:
                return items
            after = page["next_after"]


def metric(srv: ServerProcess, name: str, **labels: str) -> float:
    """The value of one sample of /metrics (0 when absent)."""
    text = httpx.get(f"{srv.url}/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


def ws_url(srv: ServerProcess, query: str = "") -> str:
    return srv.url.replace("http://", "ws://") + "/v1/stream" + query


def stream(srv: ServerProcess) -> ClientConnection:
    return connect(ws_url(srv), additional_headers={"Authorization": basic(srv.write_key)},
                   open_timeout=10)  # fmt: skip


def exchange(ws: ClientConnection, frame: str | bytes | dict[str, Any]) -> dict[str, Any]:
    ws.send(json.dumps(frame) if isinstance(frame, dict) else frame)
    reply: dict[str, Any] = json.loads(ws.recv(timeout=30))
    return reply


def deep(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = ServerProcess(tmp_path_factory.mktemp("errors") / "data").start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server that takes requests (and frames) of at most 4 KB."""
    server = ServerProcess(
        tmp_path_factory.mktemp("small") / "data", env={"WORLDFLOW_MAX_REQUEST_BYTES": "4096"}
    ).start()
    yield server
    server.stop()


# --- the body as a whole -------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/v1/batch", "/v1/import", "/v1/b"])
def test_malformed_json_batch(srv: ServerProcess, path: str) -> None:
    assert_error(post(srv, path, b'{"batch": [}'), 400, "invalid_json", "not valid JSON")


def test_malformed_json_single_call(srv: ServerProcess) -> None:
    body = assert_error(post(srv, "/v1/track", b"{nope"), 400, "invalid_json", "body", "JSON")
    assert body["rejected"][0]["code"] == "invalid_json"
    assert body["rejected"][0]["errors"][0]["field"] == "body"


def test_empty_body(srv: ServerProcess) -> None:
    assert_error(post(srv, "/v1/batch", b""), 400, "invalid_json", "JSON")


@pytest.mark.parametrize(
    ("content", "mentions"),
    [
        (b"[]", ("body", "object", "array")),
        (b'"batch"', ("body", "object")),
        (b"{}", ("batch", "missing")),
        (b'{"batch": {}}', ("batch", "array")),
        (b'{"batch": "x"}', ("batch", "array")),
        (b'{"batch": [], "sentAt": 5}', ("sentAt",)),
        (b'{"batch": [], "writeKey": 5}', ("writeKey",)),
    ],
    ids=["array", "string", "no-batch", "batch-object", "batch-string", "sentAt", "writeKey"],
)
def test_body_not_a_batch(srv: ServerProcess, content: bytes, mentions: tuple[str, ...]) -> None:
    assert_error(post(srv, "/v1/batch", content), 400, "invalid_batch", *mentions)


def test_single_call_body_not_an_object(srv: ServerProcess) -> None:
    body = assert_error(post(srv, "/v1/identify", b"[1, 2]"), 400, "invalid_field", "body")
    assert body["rejected"][0]["errors"] == [
        {"field": "body", "message": body["rejected"][0]["errors"][0]["message"]}
    ]


def test_unparseable_body_is_quarantined(srv: ServerProcess) -> None:
    """An authenticated body that is not even a batch is kept, with its reason."""
    marker = uid("garbage").encode()
    assert_error(post(srv, "/v1/batch", b"{" + marker), 400, "invalid_json")
    [item] = [q for q in quarantined(srv) if marker.decode() in q["payload"]]
    assert (item["code"], item["channel"], item["message_id"]) == ("invalid_json", "segment", None)
    assert item["errors"][0]["field"] == "body"
    # Without a write key nothing is kept (anyone could fill the quarantine).
    marker = uid("anonymous").encode()
    assert_error(post(srv, "/v1/batch", b"{" + marker, auth=None), 400, "invalid_json")
    assert not [q for q in quarantined(srv) if marker.decode() in q["payload"]]


# --- authentication ------------------------------------------------------------------------


KEY_PLACES = [
    ("basic", "/v1/batch"), ("bearer", "/v1/batch"), ("body", "/v1/batch"),
    ("query", "/v1/batch"), ("basic", "/v1/track"), ("body", "/v1/track"),
    ("query", "/v1/track"), ("basic", "/v1/cloudevents"), ("bearer", "/v1/cloudevents"),
]  # fmt: skip


def send_with_key(srv: ServerProcess, where: str, path: str, key: str | None) -> httpx.Response:
    """One valid event to ``path`` with ``key`` in the given place (None: no key at all)."""
    body: dict[str, Any]
    headers: dict[str, str] = {}
    if path == "/v1/cloudevents":
        body, headers = cloudevent(), {"Content-Type": CE_STRUCTURED}
    elif path == "/v1/track":
        body = track(uid("wk"))
    else:
        body = {"batch": [track(uid("wk"))]}
    auth: str | None = None
    if key is not None and where == "basic":
        auth = basic(key)
    elif key is not None and where == "bearer":
        auth = f"Bearer {key}"
    elif key is not None and where == "body":
        body["writeKey"] = key
    elif key is not None and where == "query":
        path += f"?writeKey={key}"
    return post(srv, path, body, auth=auth, headers=headers)


@pytest.mark.parametrize(("where", "path"), KEY_PLACES)
def test_right_write_key(srv: ServerProcess, where: str, path: str) -> None:
    """The control for the two tests below: each way of sending the key works."""
    resp = send_with_key(srv, where, path, srv.write_key)
    assert resp.status_code == 200, resp.text
    assert resp.json()["accepted"] == 1


@pytest.mark.parametrize(("where", "path"), KEY_PLACES)
def test_wrong_write_key(srv: ServerProcess, where: str, path: str) -> None:
    resp = send_with_key(srv, where, path, "wk_not_a_key")
    assert_error(resp, 401, "invalid_write_key", "write key")
    assert resp.headers["www-authenticate"].startswith("Basic")


@pytest.mark.parametrize("path", ["/v1/batch", "/v1/track", "/v1/cloudevents"])
def test_missing_write_key(srv: ServerProcess, path: str) -> None:
    resp = send_with_key(srv, "basic", path, None)
    assert_error(resp, 401, "missing_write_key", "write key", "Authorization")


def test_empty_basic_user_is_a_missing_key(srv: ServerProcess) -> None:
    resp = post(srv, "/v1/batch", {"batch": []}, auth=basic(""))
    assert_error(resp, 401, "missing_write_key", "write key")


@pytest.mark.parametrize("credentials", ["!!!not-base64", "d2tfdGVzdF9rZXk6=extra", "/w=="])
def test_bad_basic_credentials(srv: ServerProcess, credentials: str) -> None:
    resp = post(srv, "/v1/batch", {"batch": []}, auth=f"Basic {credentials}")
    assert_error(resp, 401, "invalid_authorization", "Basic", "base64")


@pytest.mark.parametrize("scheme", ["Digest", "Token", "wk_test_key"])
def test_unsupported_authorization_scheme(srv: ServerProcess, scheme: str) -> None:
    resp = post(srv, "/v1/batch", {"batch": []}, auth=f"{scheme} abc")
    assert_error(resp, 401, "invalid_authorization", repr(scheme), "Basic", "Bearer")


@pytest.mark.parametrize(
    ("headers", "code"),
    [({}, "missing_token"), ({"Authorization": "Bearer wat_wrong"}, "invalid_token")],
)
@pytest.mark.parametrize("path", ["/v1/quarantine", "/v1/log"])
def test_admin_api_needs_a_token(
    srv: ServerProcess, path: str, headers: dict[str, str], code: str
) -> None:
    resp = httpx.get(srv.url + path, headers=headers, timeout=10)
    assert_error(resp, 401, code, "token")


def test_write_key_is_not_an_admin_token(srv: ServerProcess) -> None:
    resp = httpx.get(f"{srv.url}/v1/log", headers={"Authorization": f"Bearer {srv.write_key}"})
    assert_error(resp, 401, "invalid_token", "token")


# --- size and encoding ---------------------------------------------------------------------


def test_oversize_request_by_content_length(small: ServerProcess) -> None:
    batch = {"batch": [track(uid("big"), properties={"zone_id": "x" * 5000})]}
    resp = post(small, "/v1/batch", batch)
    assert_error(resp, 413, "payload_too_large", "4096", "smaller batches")


def test_oversize_chunked_request(small: ServerProcess) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"batch": [{"type": "track", "event": "e", "userId": "u", "properties": {"p": "'
        for _ in range(10):
            yield b"x" * 1000
        yield b'"}}]}'

    resp = post(small, "/v1/batch", chunks())
    assert "content-length" not in resp.request.headers
    assert_error(resp, 413, "payload_too_large", "4096")


@pytest.mark.parametrize(
    ("encoding", "compress"),
    [("gzip", gzip.compress), ("x-gzip", gzip.compress), ("deflate", zlib.compress),
     (None, gzip.compress)],
    ids=["gzip", "x-gzip", "deflate", "gzip-unlabelled"],
)  # fmt: skip
def test_decompression_bomb(srv: ServerProcess, encoding: str | None, compress: Any) -> None:
    """A small compressed body that inflates past the 4 MB limit is refused, not inflated."""
    bomb = compress(b'{"batch": [' + b" " * (5 * 1024 * 1024) + b"]}")
    assert len(bomb) < 64 * 1024
    headers = {"Content-Encoding": encoding} if encoding else {}
    resp = post(srv, "/v1/batch", bomb, headers=headers)
    assert_error(resp, 413, "payload_too_large", "after decompression")


def test_gzip_bomb_small_server(small: ServerProcess) -> None:
    bomb = gzip.compress(b'{"batch": [' + b" " * 10_000 + b"]}")
    assert len(bomb) < 4096
    resp = post(small, "/v1/batch", bomb, headers={"Content-Encoding": "gzip"})
    assert_error(resp, 413, "payload_too_large", "4096", "after decompression")


def test_gzip_within_the_limit_is_accepted(srv: ServerProcess) -> None:
    message_id = uid("gz")
    body = gzip.compress(json.dumps({"batch": [track(message_id)]}).encode())
    resp = post(srv, "/v1/batch", body, headers={"Content-Encoding": "gzip"})
    assert resp.json() == {"success": True, "accepted": 1, "duplicates": 0}
    assert message_id in logged(srv)


@pytest.mark.parametrize("encoding", ["br", "zstd", "compress", "gzip, br"])
def test_unsupported_content_encoding(srv: ServerProcess, encoding: str) -> None:
    resp = post(srv, "/v1/batch", b"\x00\x01", headers={"Content-Encoding": encoding})
    assert_error(resp, 415, "unsupported_encoding", repr(encoding), "gzip")


def test_truncated_gzip(srv: ServerProcess) -> None:
    body = gzip.compress(json.dumps({"batch": [track(uid("trunc"))]}).encode())
    resp = post(srv, "/v1/batch", body[: len(body) // 2], headers={"Content-Encoding": "gzip"})
    assert_error(resp, 400, "invalid_encoding", "truncated")


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_invalid_compressed_data(srv: ServerProcess, encoding: str) -> None:
    resp = post(srv, "/v1/batch", b"this is not compressed", headers={"Content-Encoding": encoding})
    assert_error(resp, 400, "invalid_encoding", "decompressed")


def test_corrupt_gzip_without_a_content_encoding(srv: ServerProcess) -> None:
    """A body that starts with the gzip magic number is treated as gzip."""
    resp = post(srv, "/v1/batch", b"\x1f\x8b" + b"garbage" * 10)
    assert_error(resp, 400, "invalid_encoding", "decompressed")


# --- routing -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/v1/batch"), ("GET", "/v1/track"), ("PUT", "/v1/batch"), ("DELETE", "/v1/t"),
     ("GET", "/v1/cloudevents"), ("POST", "/v1/log")],
)  # fmt: skip
def test_wrong_method(srv: ServerProcess, method: str, path: str) -> None:
    resp = httpx.request(method, srv.url + path, timeout=10)
    assert_error(resp, 405, "method_not_allowed", method, path)
    assert resp.headers.get("allow"), "a 405 names the allowed methods"


@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "/v1/nope"), ("GET", "/nope"), ("POST", "/v2/batch"), ("POST", "/v1/stream")],
)
def test_unknown_path(srv: ServerProcess, method: str, path: str) -> None:
    resp = httpx.request(method, srv.url + path, timeout=10)
    assert_error(resp, 404, "not_found", path)


# --- per-message problems ------------------------------------------------------------------

MESSAGE_PROBLEMS = [
    # (id, message without messageId, code, field, words of the message)
    ("no-identity", {"type": "track", "event": "e"}, "invalid_message", "userId",
     ("userId", "anonymousId")),
    ("track-no-event", {"type": "track", "userId": "u"}, "invalid_message", "event",
     ("required",)),
    ("track-empty-event", {"type": "track", "userId": "u", "event": ""}, "invalid_message",
     "event", ("required",)),
    ("alias-no-previousId", {"type": "alias", "userId": "u"}, "invalid_message", "previousId",
     ("required",)),
    ("alias-no-userId", {"type": "alias", "previousId": "a"}, "invalid_message", "userId",
     ("required",)),
    ("group-no-groupId", {"type": "group", "userId": "u"}, "invalid_message", "groupId",
     ("required",)),
    ("unknown-type", {"type": "login", "userId": "u"}, "invalid_message", "type",
     ("'login'", "not a call type", "track")),
    ("no-type", {"userId": "u", "event": "e"}, "invalid_message", "type", ("required",)),
    ("long-userId", {"type": "identify", "userId": "u" * 201}, "invalid_message", "userId",
     ("200",)),
    ("long-anonymousId", {"type": "page", "anonymousId": "a" * 201}, "invalid_message",
     "anonymousId", ("200",)),
    ("long-groupId", {"type": "group", "userId": "u", "groupId": "g" * 201}, "invalid_message",
     "groupId", ("200",)),
    ("userId-bool", {"type": "identify", "userId": True}, "invalid_field", "userId",
     ("bool",)),
    ("properties-list", {"type": "track", "userId": "u", "event": "e", "properties": [1]},
     "invalid_field", "properties", ("object",)),
    ("bad-timestamp", {"type": "track", "userId": "u", "event": "e", "timestamp": "yesterday"},
     "invalid_field", "timestamp", ("RFC",)),
    ("zone_id-number", {"type": "track", "userId": "u", "event": "zone.entered",
                        "properties": {"zone_id": 42}}, "invalid_properties",
     "properties.zone_id", ("expected string", "42")),
    ("zone_id-missing", {"type": "track", "userId": "u", "event": "zone.entered",
                         "properties": {"zone_type": "lobby"}}, "invalid_properties",
     "properties.zone_id", ("required",)),
    ("zone_type-enum", {"type": "track", "userId": "u", "event": "zone.entered",
                        "properties": {"zone_id": "z", "zone_type": "garden"}},
     "invalid_properties", "properties.zone_type", ("'garden'", "lobby")),
]  # fmt: skip


@pytest.mark.parametrize(
    ("message", "code", "field", "words"),
    [case[1:] for case in MESSAGE_PROBLEMS],
    ids=[case[0] for case in MESSAGE_PROBLEMS],
)
def test_message_problem_in_a_batch(
    srv: ServerProcess, message: dict[str, Any], code: str, field: str, words: tuple[str, ...]
) -> None:
    """The bad message (index 1) is rejected with the path of the field; its neighbour is kept."""
    good, bad = uid("good"), uid("bad")
    resp = post(srv, "/v1/batch", {"batch": [track(good), {**message, "messageId": bad}]})
    assert resp.status_code == 200, resp.text
    answer = resp.json()
    assert (answer["success"], answer["accepted"], answer["duplicates"]) == (True, 1, 0)
    [rejected] = answer["rejected"]
    # Even a message whose fields have the wrong types is reported with its id.
    message_id = bad
    assert (rejected["index"], rejected["messageId"], rejected["code"]) == (1, message_id, code)
    fields = [e["field"] for e in rejected["errors"]]
    assert f"batch[1].{field}" in fields, rejected
    problem = next(e["message"] for e in rejected["errors"] if e["field"] == f"batch[1].{field}")
    for word in words:
        assert word.lower() in problem.lower(), rejected
    assert f"batch[1].{field}" in rejected["reason"]
    assert good in logged(srv)
    [item] = [q for q in quarantined(srv) if bad in q["payload"]]
    assert (item["message_id"], item["code"], item["errors"]) == (
        message_id, code, rejected["errors"],
    )  # fmt: skip


def test_long_message_id(srv: ServerProcess) -> None:
    long_id = "m" * 201
    resp = post(srv, "/v1/batch", {"batch": [track(long_id)]})
    [rejected] = resp.json()["rejected"]
    assert rejected["code"] == "invalid_message"
    assert rejected["errors"] == [
        {"field": "batch[0].messageId", "message": "longer than 200 characters"}
    ]
    assert long_id not in logged(srv)


def test_message_over_32_kb(srv: ServerProcess) -> None:
    big = uid("big")
    message = track(big, properties={"zone_id": "z", "blob": "x" * (33 * 1024)})
    resp = post(srv, "/v1/batch", {"batch": [track(uid("small")), message]})
    answer = resp.json()
    assert answer["accepted"] == 1, answer
    [rejected] = answer["rejected"]
    assert (rejected["index"], rejected["code"]) == (1, "message_too_large")
    assert rejected["errors"][0]["field"] == "batch[1]"
    assert "32768" in rejected["errors"][0]["message"]
    assert big not in logged(srv)


def test_message_at_the_limit_is_accepted(srv: ServerProcess) -> None:
    message_id = uid("limit")
    message = track(message_id, properties={"zone_id": "z", "blob": ""})
    message["properties"]["blob"] = "x" * (32 * 1024 - len(json.dumps(message)))
    assert len(json.dumps(message)) == 32 * 1024
    assert post(srv, "/v1/batch", {"batch": [message]}).json()["accepted"] == 1


@pytest.mark.parametrize(
    ("path", "message", "code", "field"),
    [("/v1/track", {"userId": "u"}, "invalid_message", "event"),
     ("/v1/t", {"userId": "u", "event": "zone.entered", "properties": {"zone_id": 1}},
      "invalid_properties", "properties.zone_id"),
     ("/v1/alias", {"userId": "u"}, "invalid_message", "previousId"),
     ("/v1/identify", {"traits": {}}, "invalid_message", "userId"),
     ("/v1/g", {"userId": "u"}, "invalid_message", "groupId"),
     ("/v1/page", {"userId": "u", "messageId": "p" * 201}, "invalid_message", "messageId")],
)  # fmt: skip
def test_single_call_problem(
    srv: ServerProcess, path: str, message: dict[str, Any], code: str, field: str
) -> None:
    """A single call that is wrong is a 400 naming the field (no batch prefix), quarantined."""
    body = assert_error(post(srv, path, message), 400, code, field)
    assert body["success"] is False
    assert (body["accepted"], body["duplicates"]) == (0, 0)
    [rejected] = body["rejected"]
    assert rejected["index"] == 0
    assert field in [e["field"] for e in rejected["errors"]]


def test_single_call_ignores_the_type_in_the_body(srv: ServerProcess) -> None:
    message_id = uid("forced")
    message = {"type": "alias", "userId": "u", "event": "zone.entered", "messageId": message_id,
               "properties": {"zone_id": "z"}}  # fmt: skip
    assert post(srv, "/v1/track", message).json()["accepted"] == 1
    assert logged(srv)[message_id]["type"] == "track"


# --- a partial batch -----------------------------------------------------------------------


def test_partial_batch(srv: ServerProcess) -> None:
    ids = [uid(f"part{i}") for i in range(5)]
    batch = [
        track(ids[0]),
        {"type": "track", "userId": "u1", "messageId": ids[1]},  # no event
        {"type": "identify", "userId": "u1", "messageId": ids[2], "traits": {"plan": "gold"}},
        track(ids[3], properties={"zone_id": 7}),  # wrong type of a catalogue field
        {"type": "page", "anonymousId": "a1", "messageId": ids[4], "name": "Home"},
    ]
    labels = {"workspace": "default", "channel": "segment"}
    before = {
        code: metric(srv, "worldflow_events_quarantined_total", code=code, **labels)
        for code in ("invalid_message", "invalid_properties")
    }
    accepted_before = metric(srv, "worldflow_events_accepted_total", **labels)

    resp = post(srv, "/v1/batch", {"batch": batch, "sentAt": "2025-05-01T12:00:00Z"})
    assert resp.status_code == 200
    answer = resp.json()
    assert (answer["success"], answer["accepted"], answer["duplicates"]) == (True, 3, 0)
    assert [(r["index"], r["messageId"], r["code"]) for r in answer["rejected"]] == [
        (1, ids[1], "invalid_message"),
        (3, ids[3], "invalid_properties"),
    ]
    assert answer["rejected"][0]["reason"] == "batch[1].event: required field is missing"
    assert answer["rejected"][1]["errors"] == [
        {"field": "batch[3].properties.zone_id", "message": "expected string, got integer 7"}
    ]

    events = logged(srv)
    assert {ids[0], ids[2], ids[4]} <= set(events)
    assert not {ids[1], ids[3]} & set(events)
    assert events[ids[2]]["traits"] == {"plan": "gold"}

    items = {q["message_id"]: q for q in quarantined(srv) if q["message_id"] in ids}
    assert set(items) == {ids[1], ids[3]}
    assert items[ids[1]]["code"] == "invalid_message"
    assert items[ids[1]]["errors"] == answer["rejected"][0]["errors"]
    assert items[ids[3]]["errors"] == answer["rejected"][1]["errors"]
    assert json.loads(items[ids[3]]["payload"]) == batch[3]  # the message as it was sent
    assert items[ids[3]]["channel"] == "segment"

    after = {
        code: metric(srv, "worldflow_events_quarantined_total", code=code, **labels)
        for code in before
    }
    assert after == {"invalid_message": before["invalid_message"] + 1,
                     "invalid_properties": before["invalid_properties"] + 1}  # fmt: skip
    assert metric(srv, "worldflow_events_accepted_total", **labels) == accepted_before + 3

    # The client retries the whole batch: the valid ones are duplicates, the others refused again.
    again = post(srv, "/v1/batch", {"batch": batch}).json()
    assert (again["accepted"], again["duplicates"], len(again["rejected"])) == (0, 3, 2)
    assert sum(1 for e in srv.log_events() if e["event"]["message_id"] == ids[0]) == 1


def test_quarantine_listing_pages(srv: ServerProcess) -> None:
    batch = [{"type": "track", "userId": "u", "messageId": uid("page")} for _ in range(3)]
    post(srv, "/v1/batch", {"batch": batch})
    with srv.admin() as client:
        first = client.get("/v1/quarantine", params={"limit": 1}).json()
        assert len(first["items"]) == 1
        assert first["total"] >= 3
        second = client.get("/v1/quarantine", params={"after": first["next_after"], "limit": 1})
        assert second.json()["items"][0]["id"] > first["items"][0]["id"]
        assert_error(client.get("/v1/quarantine", params={"limit": 0}), 422, "invalid_field",
                     "limit")  # fmt: skip


# --- overload ------------------------------------------------------------------------------


def test_overload_answers_429_with_retry_after(tmp_path_factory: pytest.TempPathFactory) -> None:
    """With room for one pending event, concurrent batches overflow the log writer's queue: the
    refused ones get 429 with Retry-After, and nothing of a refused batch is stored."""
    server = ServerProcess(
        tmp_path_factory.mktemp("overload") / "data", env={"WORLDFLOW_MAX_PENDING_EVENTS": "1"}
    ).start()
    try:
        stop = threading.Event()
        answers: list[tuple[httpx.Response, list[str]]] = []
        lock = threading.Lock()

        def flood(worker: int) -> None:
            with httpx.Client(base_url=server.url, auth=(server.write_key, ""), timeout=30) as c:
                for n in range(100):
                    if stop.is_set():
                        return
                    ids = [f"flood-{worker}-{n}-{i}" for i in range(50)]
                    resp = c.post("/v1/batch", json={"batch": [track(i) for i in ids]})
                    with lock:
                        answers.append((resp, ids))
                    if resp.status_code == 429:
                        stop.set()

        with ThreadPoolExecutor(16) as pool:
            list(pool.map(flood, range(16)))
        statuses = [resp.status_code for resp, _ in answers]
        assert set(statuses) <= {200, 429}, statuses
        refused = [(resp, ids) for resp, ids in answers if resp.status_code == 429]
        assert refused, f"no 429 in {len(answers)} concurrent batches"
        for resp, _ids in refused:
            assert_error(resp, 429, "overloaded", "retry")
            assert int(resp.headers["retry-after"]) >= 1

        stored = {e["event"]["message_id"] for e in server.log_events()}
        for resp, ids in answers:
            if resp.status_code == 200:
                assert resp.json()["accepted"] == 50
                assert set(ids) <= stored
            else:
                assert not set(ids) & stored, "a refused batch was partly stored"
        # Once the queue drains the server accepts again.
        ok = post(server, "/v1/batch", {"batch": [track(uid("after"))]})
        assert ok.status_code == 200, ok.text
    finally:
        server.stop()


# --- timestamps and nesting at the extremes ------------------------------------------------

_SKEW_FIELDS = ("sentAt", "originalTimestamp", "timestamp")
EXTREME_TIMESTAMPS = [
    ("offset-at-year-1", {"timestamp": "0001-01-01T00:00:00+01:00"}, ("timestamp",)),
    ("offset-at-year-9999", {"timestamp": "9999-12-31T23:59:59-01:00"}, ("timestamp",)),
    ("originalTimestamp-at-year-1", {"originalTimestamp": "0001-01-01T00:00:00+01:00"},
     ("originalTimestamp",)),
    ("sentAt-at-year-9999", {"sentAt": "9999-12-31T23:59:59-01:00"}, ("sentAt",)),
    ("skew-correction-past-year-1",
     {"originalTimestamp": "1000-01-01T00:00:00Z", "sentAt": "3100-01-01T00:00:00Z"},
     _SKEW_FIELDS),
    ("skew-correction-past-year-9999",
     {"originalTimestamp": "9999-01-01T00:00:00Z", "sentAt": "0001-01-01T00:00:00Z"},
     _SKEW_FIELDS),
]  # fmt: skip


@pytest.mark.parametrize(
    ("fields", "named"),
    [case[1:] for case in EXTREME_TIMESTAMPS],
    ids=[case[0] for case in EXTREME_TIMESTAMPS],
)
@pytest.mark.parametrize("path", ["/v1/track", "/v1/batch"])
def test_calendar_edge_timestamps_are_answered(
    srv: ServerProcess, path: str, fields: dict[str, str], named: tuple[str, ...]
) -> None:
    """RFC 3339 timestamps that parse, but leave the calendar once converted to UTC or corrected
    for clock skew: the call is accepted (time clamped) or refused naming the field, never 500."""
    message_id = uid("edge")
    message = {"type": "track", "userId": "u", "event": "zone.entered", "messageId": message_id,
               "properties": {"zone_id": "z"}, **fields}  # fmt: skip
    resp = post(srv, path, message if path == "/v1/track" else {"batch": [message]})
    assert resp.status_code < 500, f"{resp.status_code} {resp.text!r}\n{srv.output()}"
    answer = resp.json()
    if answer.get("accepted"):
        assert message_id in logged(srv)
        return
    [rejected] = answer["rejected"]
    assert any(name in rejected["reason"] for name in named), rejected


def test_calendar_edge_batch_sent_at(srv: ServerProcess) -> None:
    resp = post(srv, "/v1/batch",
                {"batch": [track(uid("edge"))], "sentAt": "0001-01-01T00:00:00+01:00"})  # fmt: skip
    assert resp.status_code < 500, f"{resp.status_code} {resp.text!r}\n{srv.output()}"
    if resp.status_code != 200:
        assert_error(resp, 400, resp.json()["code"], "sentAt")


def test_calendar_edge_cloudevent_time(srv: ServerProcess) -> None:
    event = cloudevent(time="0001-01-01T00:00:00+01:00")
    resp = post(srv, "/v1/cloudevents", event, headers={"Content-Type": CE_STRUCTURED})
    assert resp.status_code < 500, f"{resp.status_code} {resp.text!r}\n{srv.output()}"
    if resp.status_code != 200:
        assert_error(resp, 400, resp.json()["code"], "time")


def test_calendar_edge_timestamp_on_the_stream(srv: ServerProcess) -> None:
    """A frame with such a timestamp is answered, and the connection stays open."""
    bad = track(uid("edge"), timestamp="0001-01-01T00:00:00+01:00")
    with stream(srv) as ws:
        ws.send(json.dumps({"id": 1, "batch": [bad]}))
        try:
            reply = json.loads(ws.recv(timeout=30))
        except ConnectionClosed as exc:
            pytest.fail(f"the server dropped the connection ({exc})\n{srv.output()}")
        assert reply["ack"] == 1
        assert exchange(ws, {"id": 2, "batch": []})["ack"] == 2


@pytest.mark.parametrize(
    ("path", "content_type", "body"),
    [("/v1/batch", None, '{"batch": [{"type": "track", "properties": {"x": %s}}]}'),
     ("/v1/batch", None, '{"batch": %s}'),
     ("/v1/track", None, '{"userId": "u", "event": "e", "properties": {"x": %s}}'),
     ("/v1/cloudevents", CE_STRUCTURED, '{"specversion": "1.0", "id": "deep", "data": %s}'),
     ("/v1/cloudevents", CE_BATCH, "[%s]")],
    ids=["batch-property", "batch", "track", "cloudevent", "cloudevents-batch"],
)  # fmt: skip
def test_deeply_nested_json_is_refused(
    srv: ServerProcess, path: str, content_type: str | None, body: str
) -> None:
    """5000 levels of nesting in a 10 KB body: a 400 (or a rejected message), never a 500."""
    headers = {"Content-Type": content_type} if content_type else {}
    resp = post(srv, path, (body % deep(5000)).encode(), headers=headers)
    assert resp.status_code < 500, f"{resp.status_code} {resp.text!r}\n{srv.output()}"
    assert resp.headers["content-type"].startswith("application/json")
    answer = resp.json()
    assert answer.get("rejected") or resp.status_code == 400, answer


def test_deeply_nested_frame_is_refused(srv: ServerProcess) -> None:
    with stream(srv) as ws:
        ws.send('{"id": "deep", "batch": [' + deep(5000) + "]}")
        try:
            reply = json.loads(ws.recv(timeout=30))
        except ConnectionClosed as exc:
            pytest.fail(f"the server dropped the connection ({exc})\n{srv.output()}")
        assert reply.get("error") or reply.get("rejected"), reply
        assert exchange(ws, {"id": "next", "batch": []})["ack"] == "next"


def test_accepted_nested_event_can_be_read_from_the_log(server: ServerProcess) -> None:
    """An event the server accepts must be readable through GET /v1/log (its own server: if
    not, it would make the log unreadable for the other tests)."""
    message_id = uid("nested")
    message = track(message_id, properties={"zone_id": "z", "tree": json.loads(deep(300))})
    answer = post(server, "/v1/batch", {"batch": [message]}).json()
    if answer["accepted"] == 1:
        with server.admin() as client:
            resp = client.get("/v1/log", params={"limit": 1000})
        assert resp.status_code == 200, f"{resp.status_code} {resp.text!r}\n{server.output()}"
        assert message_id in {e["event"]["message_id"] for e in resp.json()["events"]}
    else:
        assert answer["rejected"][0]["errors"][0]["field"].startswith("batch[0]")


# --- CloudEvents ---------------------------------------------------------------------------


@pytest.mark.parametrize("attribute", ["id", "source", "type", "specversion"])
def test_cloudevent_missing_required_attribute(srv: ServerProcess, attribute: str) -> None:
    event = cloudevent(**{attribute: None})
    resp = post(srv, "/v1/cloudevents", event, headers={"Content-Type": CE_STRUCTURED})
    body = assert_error(resp, 400, "invalid_event", f"{attribute}: required attribute is missing")
    assert {"field": attribute, "message": "required attribute is missing"} in body["rejected"][0][
        "errors"
    ]


@pytest.mark.parametrize(
    ("attributes", "field", "words"),
    [({"id": ""}, "id", ("non-empty string",)),
     ({"source": 5}, "source", ("non-empty string",)),
     ({"specversion": "0.3"}, "specversion", ("'0.3'", "not supported", "1.0")),
     ({"specversion": 1.0}, "specversion", ("string",)),
     ({"Bad_Ext": "x"}, "Bad_Ext", ("lowercase letters and digits",)),
     ({"averyveryverylongextension": "x"}, "averyveryverylongextension", ("20 characters",)),
     ({"userid": None}, "userid", ("userid", "anonymousid")),
     ({"userid": 5}, "userid", ("must be a string",)),
     ({"time": "yesterday"}, "time", ("RFC 3339",)),
     ({"data": {"zone_id": 5}}, "data.zone_id", ("expected string",))],
    ids=["empty-id", "source-number", "specversion-0.3", "specversion-number", "extension-name",
         "extension-too-long", "no-identity", "userid-number", "time", "catalogue-field"],
)  # fmt: skip
def test_cloudevent_invalid_attribute(
    srv: ServerProcess, attributes: dict[str, Any], field: str, words: tuple[str, ...]
) -> None:
    event = cloudevent(**attributes)
    if attributes.get("userid", "") is None:
        event.pop("userid", None)
    resp = post(srv, "/v1/cloudevents", event, headers={"Content-Type": CE_STRUCTURED})
    assert resp.status_code == 400, resp.text
    body = resp.json()
    assert body["code"] in ("invalid_event", "invalid_properties"), body
    assert f"{field}:" in body["message"], body
    [rejected] = body["rejected"]
    problem = next(e["message"] for e in rejected["errors"] if e["field"] == field)
    for word in words:
        assert word.lower() in problem.lower(), rejected


def test_cloudevent_rejected_is_quarantined(srv: ServerProcess) -> None:
    event = cloudevent(specversion="0.3")
    post(srv, "/v1/cloudevents", event, headers={"Content-Type": CE_STRUCTURED})
    [item] = [q for q in quarantined(srv) if q["message_id"] == f"{event['source']}#{event['id']}"]
    assert (item["code"], item["channel"]) == ("invalid_event", "cloudevents")
    assert json.loads(item["payload"]) == event


@pytest.mark.parametrize(
    ("content", "words"),
    [(b'{"specversion": "1.0"}', ("JSON array",)), (b'"x"', ("JSON array",)),
     (b"[{", ("not valid JSON",))],
    ids=["object", "string", "malformed"],
)  # fmt: skip
def test_cloudevents_batch_not_an_array(
    srv: ServerProcess, content: bytes, words: tuple[str, ...]
) -> None:
    resp = post(srv, "/v1/cloudevents", content, headers={"Content-Type": CE_BATCH})
    assert_error(resp, 400, "invalid_json", *words)


def test_cloudevent_structured_not_an_object(srv: ServerProcess) -> None:
    resp = post(srv, "/v1/cloudevents", b"[1]", headers={"Content-Type": CE_STRUCTURED})
    assert_error(resp, 400, "invalid_event", "JSON object")


def test_cloudevents_batch_partly_invalid(srv: ServerProcess) -> None:
    good, bad = cloudevent(), cloudevent(id=None)
    resp = post(srv, "/v1/cloudevents", [good, bad, "x"], headers={"Content-Type": CE_BATCH})
    assert resp.status_code == 200, resp.text
    answer = resp.json()
    assert answer["accepted"] == 1
    assert [(r["index"], r["code"]) for r in answer["rejected"]] == [
        (1, "invalid_event"), (2, "invalid_event"),
    ]  # fmt: skip
    assert "[1].id" in [e["field"] for e in answer["rejected"][0]["errors"]]
    assert answer["rejected"][1]["errors"][0]["field"] == "[2]"


def test_cloudevent_binary_mode_errors(srv: ServerProcess) -> None:
    headers = {
        "ce-specversion": "0.3",
        "ce-id": uid("bin"),
        "ce-source": "/s",
        "ce-type": "zone.entered",
        "ce-userid": "u",
        "Content-Type": "application/json",
    }
    resp = post(srv, "/v1/cloudevents", b'{"zone_id": "z"}', headers=headers)
    assert_error(resp, 400, "invalid_event", "specversion", "'0.3'")
    headers["ce-specversion"] = "1.0"
    resp = post(srv, "/v1/cloudevents", b"{not json", headers=headers)
    assert_error(resp, 400, "invalid_json", "data", "JSON")


def test_cloudevent_structured(srv: ServerProcess) -> None:
    event = cloudevent(time="2025-05-01T12:00:00+02:00", worldid="paris", sessionid="s1",
                       subject="booth-3")  # fmt: skip
    resp = post(srv, "/v1/cloudevents", event, headers={"Content-Type": CE_STRUCTURED})
    assert resp.json() == {"success": True, "accepted": 1, "duplicates": 0}
    stored = logged(srv)[f"/worlds/paris#{event['id']}"]
    assert (stored["name"], stored["channel"], stored["type"]) == (
        "zone.entered", "cloudevents", "track",
    )  # fmt: skip
    assert stored["properties"] == {"zone_id": "lobby"}
    assert stored["user_id"] == "u1"
    assert stored["timestamp"].startswith("2025-05-01T10:00:00")
    assert stored["context"]["world"] == {"id": "paris"}
    assert stored["context"]["session_id"] == "s1"
    assert stored["context"]["cloudevents"]["subject"] == "booth-3"


def test_cloudevents_batch(srv: ServerProcess) -> None:
    events = [cloudevent(), cloudevent(type="custom.thing", data=[1, 2], anonymousid="a1")]
    resp = post(srv, "/v1/cloudevents", events, headers={"Content-Type": CE_BATCH})
    assert resp.json() == {"success": True, "accepted": 2, "duplicates": 0}
    stored = logged(srv)
    custom = stored[f"/worlds/paris#{events[1]['id']}"]
    assert (custom["name"], custom["custom"], custom["properties"]) == (
        "custom.thing", True, {"data": [1, 2]},
    )  # fmt: skip


def test_cloudevent_binary_mode(srv: ServerProcess) -> None:
    event_id = uid("bin")
    headers = {"ce-specversion": "1.0", "ce-id": event_id, "ce-source": "/worlds/rome",
               "ce-type": "io.worldflow.zone.entered", "ce-anonymousid": "a9",
               "ce-worldid": "rome", "Content-Type": "application/json; charset=utf-8"}  # fmt: skip
    resp = post(srv, "/v1/cloudevents", b'{"zone_id": "forum"}', headers=headers)
    assert resp.json() == {"success": True, "accepted": 1, "duplicates": 0}
    stored = logged(srv)[f"/worlds/rome#{event_id}"]
    assert stored["properties"] == {"zone_id": "forum"}
    assert stored["anonymous_id"] == "a9"
    assert stored["context"]["world"] == {"id": "rome"}


def test_cloudevents_dedupe_on_source_and_id(srv: ServerProcess) -> None:
    event = cloudevent()
    first = post(srv, "/v1/cloudevents", event, headers={"Content-Type": CE_STRUCTURED})
    again = post(srv, "/v1/cloudevents", event, headers={"Content-Type": CE_STRUCTURED})
    assert first.json()["accepted"] == 1
    assert again.json() == {"success": True, "accepted": 0, "duplicates": 1}
    in_batch = post(srv, "/v1/cloudevents", [event, event], headers={"Content-Type": CE_BATCH})
    assert in_batch.json() == {"success": True, "accepted": 0, "duplicates": 2}
    binary = {f"ce-{k}": v for k, v in event.items() if k != "data"}
    binary["Content-Type"] = "application/json"
    as_binary = post(srv, "/v1/cloudevents", json.dumps(event["data"]).encode(), headers=binary)
    assert as_binary.json()["duplicates"] == 1
    # The same id from another source is another event.
    other = post(srv, "/v1/cloudevents", {**event, "source": "/worlds/other"},
                 headers={"Content-Type": CE_STRUCTURED})  # fmt: skip
    assert other.json()["accepted"] == 1
    ids = [e["event"]["message_id"] for e in srv.log_events()]
    assert ids.count(f"/worlds/paris#{event['id']}") == 1
    assert ids.count(f"/worlds/other#{event['id']}") == 1


# --- the WebSocket stream ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "headers", "code"),
    [("?writeKey=wk_not_a_key", {}, "invalid_write_key"),
     ("", {"Authorization": basic("wk_not_a_key")}, "invalid_write_key"),
     ("", {}, "missing_write_key"),
     ("", {"Authorization": "Digest abc"}, "invalid_authorization")],
    ids=["query", "basic", "missing", "scheme"],
)  # fmt: skip
def test_stream_auth_failure_closes_with_policy_violation(
    srv: ServerProcess, query: str, headers: dict[str, str], code: str
) -> None:
    try:
        ws = connect(ws_url(srv, query), additional_headers=headers, open_timeout=10)
    except InvalidStatus as exc:
        response = exc.response
        pytest.fail(
            f"the handshake was refused with HTTP {response.status_code} and body "
            f"{bytes(response.body or b'')!r}: the client never sees the close code 1008 "
            f"(policy violation) nor a reason naming {code}"
        )
    with ws, pytest.raises(ConnectionClosed) as closed:
        ws.recv(timeout=10)
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 1008
    assert code in closed.value.rcvd.reason


def test_stream_write_key_in_query(srv: ServerProcess) -> None:
    message_id = uid("query")
    with connect(ws_url(srv, f"?writeKey={srv.write_key}"), open_timeout=10) as ws:
        assert exchange(ws, {"id": 1, "batch": [track(message_id)]})["accepted"] == [message_id]


@pytest.mark.parametrize(
    "frame",
    ["{nope", "[1, 2]", '"text"', b"\xff\xfe\x00", '{"id": [1], "batch": []}',
     '{"id": 1, "batch": {}}'],
    ids=["malformed", "array", "string", "binary", "id-list", "batch-object"],
)  # fmt: skip
def test_stream_malformed_frame_keeps_the_connection(
    srv: ServerProcess, frame: str | bytes
) -> None:
    message_id = uid("after-bad")
    with stream(srv) as ws:
        reply = exchange(ws, frame)
        assert reply["ack"] is None
        assert reply["error"]["code"] == "invalid_json", reply
        assert "JSON" in reply["error"]["message"]
        reply = exchange(ws, {"id": "next", "batch": [track(message_id)]})
        assert (reply["ack"], reply["accepted"]) == ("next", [message_id])


def test_stream_batch_is_acked_with_message_ids(srv: ServerProcess) -> None:
    ids = [uid("ws") for _ in range(3)]
    frame = {"id": "f-1", "batch": [track(i) for i in ids]}
    with stream(srv) as ws:
        reply = exchange(ws, frame)
        assert reply == {"ack": "f-1", "accepted": ids, "duplicates": [], "rejected": []}
        # The client did not hear the ack and sends the frame again.
        retried = exchange(ws, frame)
        assert retried == {"ack": "f-1", "accepted": [], "duplicates": ids, "rejected": []}
        # A single message as a frame.
        single = uid("ws-single")
        assert exchange(ws, track(single)) == {
            "ack": None, "accepted": [single], "duplicates": [], "rejected": [],
        }  # fmt: skip
    stored = logged(srv)
    assert all(stored[i]["channel"] == "stream" for i in [*ids, single])
    assert sum(1 for e in srv.log_events() if e["event"]["message_id"] == ids[0]) == 1


def test_stream_retry_on_a_new_connection_reports_duplicates(srv: ServerProcess) -> None:
    ids = [uid("ws-re") for _ in range(2)]
    frame = {"id": 9, "batch": [track(i) for i in ids]}
    with stream(srv) as ws:
        assert exchange(ws, frame)["accepted"] == ids
    with stream(srv) as ws:
        assert exchange(ws, frame) == {"ack": 9, "accepted": [], "duplicates": ids, "rejected": []}


def test_stream_rejected_message(srv: ServerProcess) -> None:
    good, bad = uid("ws-good"), uid("ws-bad")
    with stream(srv) as ws:
        reply = exchange(ws, {"id": 3, "batch": [track(good), {"type": "track", "userId": "u",
                                                              "messageId": bad}]})  # fmt: skip
    assert reply["accepted"] == [good]
    [rejected] = reply["rejected"]
    assert (rejected["index"], rejected["messageId"], rejected["code"]) == (
        1, bad, "invalid_message",
    )  # fmt: skip
    assert rejected["errors"] == [
        {"field": "batch[1].event", "message": "required field is missing"}
    ]
    [item] = [q for q in quarantined(srv) if q["message_id"] == bad]
    assert item["channel"] == "stream"


def test_stream_oversize_frame(small: ServerProcess) -> None:
    with stream(small) as ws:
        reply = exchange(ws, {"id": "big", "batch": [track("x", blob="y" * 5000)]})
        assert reply["error"]["code"] == "payload_too_large", reply
        assert "4096" in reply["error"]["message"]
        message_id = uid("small")
        assert exchange(ws, {"id": 2, "batch": [track(message_id)]})["accepted"] == [message_id]


def test_stream_batch_sent_at_corrects_clock_skew(srv: ServerProcess) -> None:
    """A frame is read like a Segment batch: its sentAt corrects the device's clock."""
    message_id = uid("skew")
    message = track(message_id, originalTimestamp="2020-01-01T00:00:00Z")
    with stream(srv) as ws:
        reply = exchange(ws, {"id": "s", "batch": [message], "sentAt": "2020-01-01T00:00:10Z"})
    assert reply["accepted"] == [message_id], reply
    event = logged(srv)[message_id]
    received = datetime.fromisoformat(event["received_at"])
    corrected = datetime.fromisoformat(event["timestamp"])
    assert timedelta(seconds=9) <= received - corrected <= timedelta(seconds=11)
    assert event["sent_at"].startswith("2020-01-01T00:00:10")
