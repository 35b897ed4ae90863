"""Property tests of every ingest edge against one real ``worldflow serve`` per module.

Bodies are random bytes, arbitrary JSON, and almost valid Segment calls and CloudEvents (see
``tests/strategies.py``). Whatever arrives, the server must answer without a 5xx, in JSON, with
either a success or a ``{"code", "message"}`` error; every event it reports as accepted must be
in the log afterwards (and nothing else), and every message it reports as rejected must be in
the quarantine with the same code and reasons. After each request the test reads what the
request added to the log and the quarantine through the admin API.
"""

from __future__ import annotations

import base64
import gzip
import json
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from tests import strategies as s
from tests.conftest import ServerProcess

# Derandomized: the same examples every run, so a failure is a bug and never a flake. One bug
# per test is shrunk (a real server makes shrinking slow); no explain phase for the same reason.
FUZZ = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    database=None,
    report_multiple_bugs=False,
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink],
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.filter_too_much,
        HealthCheck.large_base_example,
    ],
)

ERROR_STATUSES = {400, 401, 413, 415}
BATCH_PATHS = ("/v1/batch", "/v1/import", "/v1/b")
SINGLE_PATHS = {
    "/v1/track": "track", "/v1/t": "track", "/v1/identify": "identify", "/v1/i": "identify",
    "/v1/page": "page", "/v1/p": "page", "/v1/screen": "screen", "/v1/s": "screen",
    "/v1/group": "group", "/v1/g": "group", "/v1/alias": "alias", "/v1/a": "alias",
}  # fmt: skip
CE_STRUCTURED = "application/cloudevents+json"
CE_BATCH = "application/cloudevents-batch+json"
Sent = tuple[Any, bytes]  # (the document as generated, or None for random bytes; the body)


class Ledger:
    """One server and what the test knows it holds; reads the log and quarantine per request."""

    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        # A new connection per request: one failed request cannot break the next one.
        self.http = httpx.Client(
            base_url=server.url, auth=(server.write_key, ""), timeout=60,
            headers={"Connection": "close"},
        )  # fmt: skip
        self.admin = httpx.Client(
            base_url=server.url, timeout=60,
            headers={"Authorization": f"Bearer {server.admin_token}", "Connection": "close"},
        )  # fmt: skip
        self.stored: set[str] = set()  # message ids seen in the log
        self.gap = False  # some of the log could not be read: `stored` is incomplete
        self.log_after = 0
        self.quarantine_after = 0

    def close(self) -> None:
        self.http.close()
        self.admin.close()

    def fail(self, what: str) -> AssertionError:
        return AssertionError(f"{what}\n--- server output (tail) ---\n{self.server.output()}")

    def _admin_get(self, path: str, **params: int) -> dict[str, Any]:
        resp = self.admin.get(path, params=params)
        if resp.status_code != 200:
            raise self.fail(f"GET {path} {params} -> {resp.status_code} {resp.text[:300]!r}")
        page: dict[str, Any] = resp.json()
        return page

    def begin(self) -> None:
        """Position the cursors at the current end (without reading events: a previous
        example may have left one the admin API cannot serve)."""
        end = int(self._admin_get("/v1/log", after=2**62, limit=1)["end_offset"])
        if end > self.log_after:
            self.gap = True
        self.log_after = end
        self.new_quarantine()

    def new_events(self) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        while True:
            page = self._admin_get("/v1/log", after=self.log_after, limit=1000)
            events += [e["event"] for e in page["events"]]
            if not page["events"]:
                return events
            self.log_after = int(page["next_after"])

    def new_quarantine(self) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        while True:
            page = self._admin_get("/v1/quarantine", after=self.quarantine_after, limit=1000)
            items += page["items"]
            if not page["items"]:
                return items
            self.quarantine_after = int(page["next_after"])

    def post(
        self,
        path: str,
        body: bytes,
        *,
        compress: bool = False,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        headers = dict(headers or {})
        if compress:
            body = gzip.compress(body)
            headers["Content-Encoding"] = "gzip"
        return self.http.post(path, content=body, headers=headers)

    def stream(self) -> AbstractContextManager[ClientConnection]:
        basic = base64.b64encode(f"{self.server.write_key}:".encode()).decode()
        return connect(
            self.server.url.replace("http://", "ws://") + "/v1/stream",
            additional_headers={"Authorization": f"Basic {basic}"},
            max_size=None,
            open_timeout=30,
        )

    def answer(self, resp: httpx.Response) -> dict[str, Any]:
        """The JSON answer, after checking it is a success or a {"code", "message"} error."""
        where = (
            f"POST {resp.request.url.path} ({len(resp.request.content)} bytes: "
            f"{resp.request.content[:300]!r}) -> {resp.status_code} {resp.text[:500]!r}"
        )
        if resp.status_code >= 500:
            raise self.fail(f"server error: {where}")
        assert resp.headers.get("content-type", "").startswith("application/json"), where
        body = resp.json()
        assert isinstance(body, dict), where
        if resp.status_code == 200:
            assert body.get("success") is True, where
            assert isinstance(body.get("accepted"), int), where
            assert isinstance(body.get("duplicates"), int), where
        else:
            assert resp.status_code in ERROR_STATUSES, where
            assert_error_body(body, where)
        for rejected in body.get("rejected", []):
            assert_rejected(rejected, where)
        return body

    def settle(
        self,
        channel: str,
        *,
        accepted: int | list[str] = 0,
        duplicates: int | list[str] = 0,
        refused: list[dict[str, Any]] | None = None,
        must_store: Iterable[str] = (),
    ) -> None:
        """Check what the request added to the log and the quarantine against its answer.

        ``refused`` lists, in order, the ``rejected`` entries of the answers (each must be in
        the quarantine) and the error answers about a whole body (``{"code", "message"}``: the
        body may be in the quarantine, with that code and message)."""
        events = self.new_events()
        ids = [e["message_id"] for e in events]
        if isinstance(accepted, list):
            assert sorted(ids) == sorted(accepted), (
                f"accepted ids {accepted} but the log gained {ids}"
            )
        else:
            assert len(ids) == accepted, f"{accepted} accepted but the log gained {ids}"
        assert all(e["channel"] == channel for e in events), events
        self.stored.update(ids)

        quarantined = self.new_quarantine()
        got = [(q["message_id"], q["code"], q["errors"], q["channel"]) for q in quarantined]
        position = 0
        for entry in refused or []:
            if "index" in entry:
                wanted = (entry["messageId"], entry["code"], entry["errors"], channel)
                required = True
            else:
                body = [{"field": "body", "message": entry["message"]}]
                wanted, required = (None, entry["code"], body, channel), False
            if position < len(got) and got[position] == wanted:
                position += 1
            else:
                assert not required, (
                    f"rejected {entry} is not in the quarantine, which gained {quarantined}"
                )
        assert position == len(got), f"refused {refused} but the quarantine gained {quarantined}"

        if not self.gap:
            for message_id in [*(duplicates if isinstance(duplicates, list) else []), *must_store]:
                assert message_id in self.stored, (
                    f"{message_id!r} was answered as stored (accepted or duplicate) "
                    "but is not in the log"
                )


def refused(answer: dict[str, Any]) -> list[dict[str, Any]]:
    """What an answer refused: its ``rejected`` messages, or the whole body."""
    if "rejected" in answer:
        rejected: list[dict[str, Any]] = answer["rejected"]
        return rejected
    return [answer] if "code" in answer else []


def assert_error_body(body: Any, where: str) -> None:
    assert isinstance(body, dict), where
    assert isinstance(body.get("code"), str), where
    assert body["code"], where
    assert isinstance(body.get("message"), str), where
    assert body["message"], where


def assert_rejected(rejected: Any, where: str) -> None:
    assert isinstance(rejected, dict), where
    assert isinstance(rejected.get("index"), int), where
    assert isinstance(rejected.get("code"), str), where
    assert rejected["code"], where
    assert isinstance(rejected.get("reason"), str), where
    assert rejected["reason"], where
    assert rejected.get("messageId") is None or isinstance(rejected["messageId"], str), where
    assert rejected.get("errors"), where
    for problem in rejected["errors"]:
        assert isinstance(problem.get("field"), str), where  # may be "" for an attribute ""
        assert isinstance(problem.get("message"), str), where
        assert problem["message"], where


def parsed(sent: Sent) -> Any:
    """The body as JSON values, as far as the test can tell (None: not JSON)."""
    doc, body = sent
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        pass
    return s.opened(doc)  # nested deeper than json reads: the document as generated


def stored_ids(messages: list[Any], rejected: list[dict[str, Any]], id_of: Any) -> list[str]:
    """Known message ids of the messages the server did not reject."""
    refused = {r["index"] for r in rejected}
    return [
        mid
        for index, message in enumerate(messages)
        if index not in refused and (mid := id_of(message)) is not None
    ]


@pytest.fixture(scope="module")
def ledger(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ledger]:
    data_dir: Path = tmp_path_factory.mktemp("fuzz") / "data"
    server = ServerProcess(data_dir).start()
    book = Ledger(server)
    yield book
    book.close()
    server.stop()


def _encoded(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Sent]:
    """Documents with their JSON: \\u escapes, or raw UTF-8."""
    return st.tuples(strategy, st.booleans()).map(
        lambda drawn: (drawn[0], s.dumps(drawn[0], ascii_only=drawn[1]))
    )


_random = s.random_bytes.map(lambda body: (None, body))
# Half the bodies are almost valid, a quarter random bytes, a quarter arbitrary JSON.
segment_batch_bodies = s.weighted(
    (1, _random), (1, _encoded(s.json_values)), (2, _encoded(s.segment_batches()))
)
cloudevent_bodies = s.weighted(
    (1, _random), (1, _encoded(s.json_values)), (2, _encoded(s.almost_valid_cloudevents()))
)
cloudevent_batch_bodies = s.weighted(
    (1, _random), (1, _encoded(s.json_values)), (2, _encoded(s.cloudevent_batches))
)


@st.composite
def single_calls(draw: st.DrawFn) -> tuple[str, Sent]:
    path = draw(st.sampled_from(sorted(SINGLE_PATHS)))
    body = draw(
        s.weighted(
            (1, _random),
            (1, _encoded(s.json_values)),
            (3, _encoded(s.almost_valid_segment_messages(SINGLE_PATHS[path]))),
            (1, _encoded(s.almost_valid_segment_messages())),
        )
    )
    return path, body


@FUZZ
@given(sent=segment_batch_bodies, path=st.sampled_from(BATCH_PATHS), compress=st.booleans())
def test_segment_batch(ledger: Ledger, sent: Sent, path: str, compress: bool) -> None:
    ledger.begin()
    answer = ledger.answer(ledger.post(path, sent[1], compress=compress))
    doc = parsed(sent)
    if "success" not in answer:
        assert "rejected" not in answer
        ledger.settle("segment", refused=refused(answer))
        return
    batch = doc.get("batch") if isinstance(doc, dict) else None
    assert isinstance(batch, list), f"200 for a body without a batch list: {sent[1][:300]!r}"
    rejected = answer.get("rejected", [])
    assert answer["accepted"] + answer["duplicates"] + len(rejected) == len(batch), answer
    assert sorted({r["index"] for r in rejected}) == sorted(r["index"] for r in rejected)
    assert all(0 <= r["index"] < len(batch) for r in rejected), answer
    ledger.settle(
        "segment", accepted=answer["accepted"], refused=rejected,
        must_store=stored_ids(batch, rejected, s.segment_message_id),
    )  # fmt: skip


@FUZZ
@given(call=single_calls(), compress=st.booleans())
def test_segment_single_call(ledger: Ledger, call: tuple[str, Sent], compress: bool) -> None:
    path, sent = call
    ledger.begin()
    resp = ledger.post(path, sent[1], compress=compress)
    answer = ledger.answer(resp)
    rejected = answer.get("rejected", [])
    if resp.status_code == 200:
        assert answer["accepted"] + answer["duplicates"] == 1, answer
        assert not rejected, answer
    elif rejected:
        assert resp.status_code == 400, answer
        assert len(rejected) == 1, answer
        assert rejected[0]["index"] == 0, answer
        assert (answer["code"], answer["message"]) == (rejected[0]["code"], rejected[0]["reason"])
    ledger.settle(
        "segment", accepted=answer.get("accepted", 0), refused=refused(answer),
        must_store=stored_ids([parsed(sent)], rejected, s.segment_message_id)
        if resp.status_code == 200 else (),
    )  # fmt: skip


@FUZZ
@given(sent=cloudevent_bodies, content_type=st.sampled_from([CE_STRUCTURED, "application/json"]))
def test_cloudevents_structured(ledger: Ledger, sent: Sent, content_type: str) -> None:
    ledger.begin()
    resp = ledger.post("/v1/cloudevents", sent[1], headers={"Content-Type": content_type})
    answer = ledger.answer(resp)
    rejected = answer.get("rejected", [])
    if resp.status_code == 200:
        assert answer["accepted"] + answer["duplicates"] == 1, answer
        assert not rejected, answer
    elif rejected:
        assert len(rejected) == 1, answer
        assert (answer["code"], answer["message"]) == (rejected[0]["code"], rejected[0]["reason"])
    ledger.settle(
        "cloudevents", accepted=answer.get("accepted", 0), refused=refused(answer),
        must_store=stored_ids([parsed(sent)], rejected, s.cloudevent_message_id)
        if resp.status_code == 200 else (),
    )  # fmt: skip


@FUZZ
@given(sent=cloudevent_batch_bodies)
def test_cloudevents_batch(ledger: Ledger, sent: Sent) -> None:
    ledger.begin()
    resp = ledger.post("/v1/cloudevents", sent[1], headers={"Content-Type": CE_BATCH})
    answer = ledger.answer(resp)
    if "success" not in answer:
        ledger.settle("cloudevents", refused=refused(answer))
        return
    events = parsed(sent)
    assert isinstance(events, list), f"200 for a batch that is not an array: {sent[1][:300]!r}"
    rejected = answer.get("rejected", [])
    assert answer["accepted"] + answer["duplicates"] + len(rejected) == len(events), answer
    ledger.settle(
        "cloudevents", accepted=answer["accepted"], refused=rejected,
        must_store=stored_ids(events, rejected, s.cloudevent_message_id),
    )  # fmt: skip


@FUZZ
@given(request=s.binary_cloudevents())
def test_cloudevents_binary(ledger: Ledger, request: tuple[dict[str, str], bytes]) -> None:
    headers, body = request
    ledger.begin()
    resp = ledger.post("/v1/cloudevents", body, headers=headers)
    answer = ledger.answer(resp)
    rejected = answer.get("rejected", [])
    if resp.status_code == 200:
        assert answer["accepted"] + answer["duplicates"] == 1, answer
    attributes = {k.removeprefix("ce-"): v for k, v in headers.items() if k.startswith("ce-")}
    ledger.settle(
        "cloudevents", accepted=answer.get("accepted", 0), refused=refused(answer),
        must_store=stored_ids([attributes], rejected, s.cloudevent_message_id)
        if resp.status_code == 200 else (),
    )  # fmt: skip


def _frame_messages(sent: tuple[Any, str | bytes]) -> tuple[Any, list[Any] | None]:
    """The frame as JSON and the messages it carries (None when the test cannot tell)."""
    doc = parsed((sent[0], sent[1].encode() if isinstance(sent[1], str) else sent[1]))
    if isinstance(doc, dict) and isinstance(doc.get("batch"), list):
        return doc, doc["batch"]
    if isinstance(doc, dict) and doc.get("batch") is None:
        return doc, [doc]
    return doc, None


@FUZZ
@given(frames=st.lists(s.stream_frames(), min_size=1, max_size=4))
def test_stream(ledger: Ledger, frames: list[tuple[Any, str | bytes]]) -> None:
    ledger.begin()
    accepted: list[str] = []
    duplicates: list[str] = []
    refusals: list[dict[str, Any]] = []
    must_store: list[str] = []
    with ledger.stream() as ws:
        for number, sent in enumerate(frames):
            frame = sent[1]
            shown = f"frame {number} ({len(frame)} chars): {frame[:300]!r}"
            ws.send(frame)
            try:
                raw = ws.recv(timeout=60)
            except ConnectionClosed as exc:
                raise ledger.fail(f"the server dropped the stream ({exc}) on {shown}") from exc
            reply = json.loads(raw)
            assert isinstance(reply, dict), shown
            assert "ack" in reply, (shown, reply)
            if "error" in reply:
                assert_error_body(reply["error"], f"{shown} -> {reply}")
                refusals.append(reply["error"])
                continue
            doc, messages = _frame_messages(sent)
            assert isinstance(doc, dict), f"{shown} was not a JSON object, yet acked: {reply}"
            assert reply["ack"] == doc.get("id"), (shown, reply)
            for rejection in reply["rejected"]:
                assert_rejected(rejection, f"{shown} -> {reply}")
            if messages is not None:
                count = len(reply["accepted"]) + len(reply["duplicates"]) + len(reply["rejected"])
                assert count == len(messages), (shown, reply)
                must_store += stored_ids(messages, reply["rejected"], s.segment_message_id)
            accepted += reply["accepted"]
            duplicates += reply["duplicates"]
            refusals += reply["rejected"]
        ws.send(json.dumps({"id": "last", "batch": []}))  # still open and answering
        assert json.loads(ws.recv(timeout=60))["ack"] == "last"
    ledger.settle(
        "stream", accepted=accepted, duplicates=duplicates, refused=refusals,
        must_store=must_store,
    )  # fmt: skip
