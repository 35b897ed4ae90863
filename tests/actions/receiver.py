"""Test peers of the dispatcher: a webhook receiver on 127.0.0.1 that verifies every request
with the Standard Webhooks reference library, a peer that never answers, and helpers to run
the dispatcher in a thread against a real store."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from tests.httpd import LocalServer, QuietHandler
from worldflow.actions import deliver
from worldflow.store.deliveries import SqlDeliveryStore, insert_deliveries
from worldflow.store.schema import deliveries

Answer = tuple[int, dict[str, str], bytes]


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float  # time.monotonic() on arrival
    verified: bool
    payload: Any

    @property
    def id(self) -> str:
        return self.headers["webhook-id"]


class Receiver:
    """``with Receiver(secret, answer) as r``: ``answer(n, request)`` (n counts from 1) gives
    the status, headers and body; a request whose signature does not verify gets 401."""

    def __init__(self, secret: str, answer: Callable[[int, Received], Answer] | None = None):
        self.secret = secret
        self.answer = answer or (lambda _n, _r: (200, {}, b"ok"))
        self.received: list[Received] = []
        self.release = threading.Event()  # answers that wait for it stop waiting at exit
        self._lock = threading.Lock()
        receiver = self

        class Handler(QuietHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as real receivers do

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                headers = {k.lower(): v for k, v in self.headers.items()}
                try:
                    payload, verified = Webhook(receiver.secret).verify(body, headers), True
                except WebhookVerificationError:
                    payload, verified = None, False
                item = Received(self.path, headers, body, time.monotonic(), verified, payload)
                with receiver._lock:
                    receiver.received.append(item)
                    n = len(receiver.received)
                status, extra, content = (
                    receiver.answer(n, item) if verified else (401, {}, b"bad signature")
                )
                self.send_response(status)
                for name, value in extra.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                self.wfile.write(content)

        self._server = LocalServer(Handler)
        self._server.httpd.socket.listen(128)  # the default backlog of 5 refuses bursts

    @property
    def url(self) -> str:
        return self._server.url + "/hooks"

    def __enter__(self) -> Receiver:
        self._server.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self._server.__exit__(*exc)

    def ids(self) -> list[str]:
        with self._lock:
            return [r.id for r in self.received]


@contextmanager
def black_hole() -> Iterator[str]:
    """A URL whose connections are accepted by the kernel and never answered."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(128)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/never"


@contextmanager
def dispatching(store_url: str, **options: Any) -> Iterator[threading.Thread]:
    """The dispatcher (``deliver.run``) in a thread for the block; failures re-raised."""
    stop = threading.Event()
    errors: list[BaseException] = []
    options = {"poll_s": 0.01, "refresh_s": 0.1, "wait_s": 5, **options}

    def main() -> None:
        try:
            deliver.run(store_url, stop, **options)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=main, daemon=True)
    thread.start()
    try:
        yield thread
    finally:
        stop.set()
        thread.join(30)
        assert not thread.is_alive(), "the dispatcher did not stop"
    if errors:
        raise errors[0]


def wait_for(check: Callable[[], Any], timeout: float = 15, every: float = 0.02) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(every)


def add(store: SqlDeliveryStore, *rows: dict[str, Any]) -> None:
    with store.engine.begin() as conn:
        insert_deliveries(conn, list(rows))


def action(ident: str, destination: str = "crm", workspace: str = "default",
           **extra: Any) -> dict[str, Any]:  # fmt: skip
    """A delivery row as the journeys write it."""
    now = time.time_ns() // 1_000_000
    return {"id": ident, "workspace_id": workspace, "channel": "webhook",
            "destination_id": destination, "event_type": "journey.action",
            "payload": '{"journey":"welcome","step":"hook","data":{"n":1}}',
            "created_ms": now, "state": "pending", "attempts": 0, "next_attempt_ms": now,
            **extra}  # fmt: skip


def rows(store: SqlDeliveryStore) -> dict[str, dict[str, Any]]:
    with store.engine.connect() as conn:
        return {r.id: dict(r._mapping) for r in conn.execute(sa.select(deliveries))}


def row(store: SqlDeliveryStore, ident: str) -> dict[str, Any]:
    return rows(store)[ident]


def put(store: SqlDeliveryStore, destination_id: str, url: str, workspace: str = "default",
        **settings: Any) -> str:  # fmt: skip
    """Save a destination straight in the store (as the API does after its checks); its
    secret."""
    from worldflow.actions.webhooks import new_secret

    options: dict[str, Any] = {"secret": None, "headers": {}, "timeout_ms": 2000,
                               "rate_per_s": None, "disabled": False, **settings}  # fmt: skip
    store.put_destination(workspace, destination_id, url=url,
                          secret_if_new=new_secret(), **options)  # fmt: skip
    found = store.dispatch_destinations()
    return next(d["secret"] for d in found if (d["workspace_id"], d["id"]) ==
                (workspace, destination_id))  # fmt: skip
