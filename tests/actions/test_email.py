"""E-mail deliveries: the dispatcher sends rows of channel ``email`` to a real SMTP server
(aiosmtpd on 127.0.0.1, in this process) with the workspace's SMTP settings; the settings API
checks them and never shows the password."""

from __future__ import annotations

import email
import email.policy
import json
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiosmtpd.controller import Controller

from tests.actions.receiver import add, dispatching, row, wait_for
from tests.conftest import ServerProcess, free_port
from worldflow.actions.smtp import MASK
from worldflow.actions.webhooks import RetryPolicy
from worldflow.metrics import Metrics
from worldflow.store.deliveries import SqlDeliveryStore
from worldflow.store.sql import SqlStore

FAST = RetryPolicy(base_s=0.02, cap_s=0.05, window_s=60)


@dataclass(frozen=True)
class Mail:
    sender: str
    recipients: list[str]
    message: EmailMessage


class Handler:
    """Answers each DATA with the next reply of ``script`` (then 250); RCPT to an address
    in ``unknown`` gets 550."""

    def __init__(self, script: tuple[str, ...] = (), unknown: frozenset[str] = frozenset()):
        self.script = list(script)
        self.unknown = unknown
        self.received: list[Mail] = []
        self.tries = 0
        self._lock = threading.Lock()

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,
                          options: list[str]) -> str:  # fmt: skip
        if address in self.unknown:
            return f"550 5.1.1 <{address}>: mailbox unavailable"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self._lock:
            self.tries += 1
            if self.script:
                return self.script.pop(0)
            parsed = email.message_from_bytes(envelope.content, policy=email.policy.default)
            assert isinstance(parsed, EmailMessage)
            self.received.append(Mail(envelope.mail_from, list(envelope.rcpt_tos), parsed))
        return "250 Message accepted for delivery"


@pytest.fixture
def smtpd() -> Iterator[Callable[..., tuple[Handler, int]]]:
    """``smtpd(script, unknown)``: a started SMTP server on 127.0.0.1; its handler and port."""
    started: list[Controller] = []

    def start(*script: str, unknown: frozenset[str] = frozenset()) -> tuple[Handler, int]:
        handler = Handler(script, unknown)
        port = free_port()
        controller = Controller(handler, hostname="127.0.0.1", port=port)
        controller.start()
        started.append(controller)
        return handler, port

    yield start
    for controller in started:
        controller.stop()


def configure(sql: SqlStore, port: int, **extra: Any) -> None:
    sql.set_settings("default", {"smtp": {"host": "127.0.0.1", "port": port, "security": "none",
                                          "from": "Worldflow <journeys@example.com>",
                                          "timeout_ms": 2000, **extra}})  # fmt: skip


def mail(ident: str, **payload: Any) -> dict[str, Any]:
    """An e-mail delivery row as the journeys write it."""
    now = time.time_ns() // 1_000_000
    body = {"to": "ada@example.com", "subject": "Welcome, Ada", "text": "Hello Ada,\nwelcome.",
            "journey": "welcome", "version": 1, "step": "mail", "profile": {"id": "p_1"},
            **payload}  # fmt: skip
    return {"id": ident, "workspace_id": "default", "channel": "email",
            "destination_id": "smtp", "event_type": "journey.email",
            "payload": json.dumps({k: v for k, v in body.items() if v is not None}),
            "created_ms": now, "next_attempt_ms": now}  # fmt: skip


def ended(store: SqlDeliveryStore, ident: str) -> dict[str, Any] | None:
    found = row(store, ident)
    return found if found["state"] != "pending" else None


def test_an_email_is_delivered_with_its_headers_and_parts(
    sql: SqlStore, sqlite_url: str, smtpd: Callable[..., tuple[Handler, int]]
) -> None:
    handler, port = smtpd()
    configure(sql, port)
    store = SqlDeliveryStore(sql.engine)
    injected = "Hi\r\nBcc: eve@example.com"
    add(store, mail("em_0123abcd", html="<p>Hello <b>Ada</b></p>"),
        mail("em_plain", to="Bob <bob@example.com>", subject=injected))  # fmt: skip
    metrics = Metrics()
    with dispatching(sqlite_url, policy=FAST, metrics=metrics):
        done = wait_for(lambda: ended(store, "em_0123abcd") and ended(store, "em_plain"))
    assert done
    stored = row(store, "em_0123abcd")
    assert (stored["state"], stored["attempts"], stored["last_status"]) == ("delivered", 1, 250)
    by_id = {m.message["Message-ID"]: m for m in handler.received}
    assert set(by_id) == {"<em_0123abcd@worldflow>", "<em_plain@worldflow>"}
    first = by_id["<em_0123abcd@worldflow>"]
    assert first.sender == "journeys@example.com" and first.recipients == ["ada@example.com"]
    msg = first.message
    assert (msg["From"], msg["To"], msg["Subject"]) == (
        "Worldflow <journeys@example.com>", "ada@example.com", "Welcome, Ada")  # fmt: skip
    assert msg["Date"]
    assert msg.get_content_type() == "multipart/alternative"
    text, html = msg.get_body(("plain",)), msg.get_body(("html",))
    assert text is not None and html is not None
    assert text.get_content().replace("\r\n", "\n") == "Hello Ada,\nwelcome.\n"  # CRLF on the wire
    assert html.get_content().strip() == "<p>Hello <b>Ada</b></p>"
    plain = by_id["<em_plain@worldflow>"]
    assert plain.recipients == ["bob@example.com"]
    assert plain.message["Subject"] == "Hi Bcc: eve@example.com"  # one line: no header added
    assert plain.message["Bcc"] is None and plain.message.get_content_type() == "text/plain"
    assert row(store, "em_plain")["state"] == "delivered"
    assert metrics.deliveries_delivered.labels("email")._value.get() == 2


def test_a_451_is_retried_then_delivered_with_the_same_message_id(
    sql: SqlStore, sqlite_url: str, smtpd: Callable[..., tuple[Handler, int]]
) -> None:
    handler, port = smtpd("451 4.3.0 try again later")
    configure(sql, port)
    store = SqlDeliveryStore(sql.engine)
    add(store, mail("em_retry"))
    with dispatching(sqlite_url, policy=FAST, rng=random.Random(3)):
        done = wait_for(lambda: ended(store, "em_retry"))
    assert done["state"] == "delivered" and done["attempts"] == 2
    assert handler.tries == 2
    (received,) = handler.received
    assert received.message["Message-ID"] == "<em_retry@worldflow>"


def test_a_550_is_dead_at_once_with_the_reply(
    sql: SqlStore, sqlite_url: str, smtpd: Callable[..., tuple[Handler, int]]
) -> None:
    handler, port = smtpd(unknown=frozenset({"nobody@example.com"}))
    configure(sql, port)
    store = SqlDeliveryStore(sql.engine)
    add(store, mail("em_nobody", to="nobody@example.com"), mail("em_no_to", to=None))
    with dispatching(sqlite_url, policy=FAST):
        dead = wait_for(lambda: ended(store, "em_nobody"))
        no_to = wait_for(lambda: ended(store, "em_no_to"))
        time.sleep(0.2)  # nothing more is tried
    assert dead["state"] == "dead" and dead["attempts"] == 1
    assert dead["last_error"].startswith("SMTP 550 5.1.1")
    assert "mailbox unavailable" in dead["last_error"]
    assert (no_to["state"], no_to["last_error"]) == ("dead", "payload: no 'to' address")
    assert handler.received == [] and row(store, "em_nobody")["attempts"] == 1


def test_without_smtp_settings_emails_are_dead_saying_so(sql: SqlStore, sqlite_url: str) -> None:
    store = SqlDeliveryStore(sql.engine)
    add(store, mail("em_nowhere"))
    with dispatching(sqlite_url, policy=FAST):
        dead = wait_for(lambda: ended(store, "em_nowhere"))
    assert dead["state"] == "dead"
    assert dead["last_error"].startswith("no SMTP settings for workspace 'default'")


def test_an_unreachable_server_is_retried(sql: SqlStore, sqlite_url: str) -> None:
    configure(sql, free_port())  # nobody listens there
    store = SqlDeliveryStore(sql.engine)
    add(store, mail("em_later"))
    with dispatching(sqlite_url, policy=FAST):
        wait_for(lambda: row(store, "em_later")["attempts"] >= 2)
    found = row(store, "em_later")
    assert found["state"] == "pending" and found["last_error"].startswith("SMTP: ")


# -- the settings API ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    data: Path = tmp_path_factory.mktemp("email") / "data"
    srv = ServerProcess(data, env={"WORLDFLOW_DELIVER": "false"}).start()
    yield srv
    srv.stop()


SMTP = {"host": "smtp.example.com", "from": "journeys@example.com"}
CA = trustme.CA()
CA_PEM = CA.cert_pem.bytes().decode()


@pytest.mark.parametrize(
    ("smtp", "field", "says"),
    [
        ({"host": "smtp.example.com"}, "smtp.from", "Field required"),
        ({**SMTP, "from": "not an address"}, "smtp.from", "is not an e-mail address"),
        ({**SMTP, "from": "a@b.c\r\nBcc: x@y.z"}, "smtp.from", "is not an e-mail address"),
        ({"from": "journeys@example.com"}, "smtp.host", "Field required"),
        ({**SMTP, "host": "smtp example"}, "smtp.host", "not a host name"),
        ({**SMTP, "port": 0}, "smtp.port", "greater than or equal to 1"),
        ({**SMTP, "security": "ssl"}, "smtp.security", "'starttls', 'tls' or 'none'"),
        ({**SMTP, "timeout_ms": 5}, "smtp.timeout_ms", "greater than or equal to 100"),
        ({**SMTP, "user": "ada"}, "smtp.user", "Extra inputs"),
        ({**SMTP, "security": "none", "username": "u", "password": "p"}, "smtp.security",
         "in clear"),
        ({**SMTP, "password": "p"}, "smtp.username", "required with a password"),
        ({**SMTP, "password": MASK, "username": "u"}, "smtp.password", "none is stored"),
        ({**SMTP, "ca_pem": "my CA"}, "smtp.ca_pem", "is not PEM text of certificates"),
        ({**SMTP, "ca_pem": CA_PEM.replace("MII", "mii", 1)}, "smtp.ca_pem", "is not PEM text"),
        ({**SMTP, "ca_pem": CA_PEM + CA.private_key_pem.bytes().decode()}, "smtp.ca_pem",
         "contains a private key"),
        ({**SMTP, "ca_pem": CA_PEM, "security": "none"}, "smtp.ca_pem",
         "security 'none' has no TLS"),
    ],
)  # fmt: skip
def test_invalid_smtp_settings_name_the_field(
    server: ServerProcess, smtp: dict[str, Any], field: str, says: str
) -> None:
    with server.admin() as admin:
        answer = admin.put("/v1/settings", json={"smtp": smtp})
    assert answer.status_code == 422, answer.text
    body = answer.json()
    assert body["code"] == "invalid_field"
    assert field in body["message"] and says in body["message"], body["message"]


def test_the_smtp_password_is_never_shown_and_kept_when_sent_back(
    server: ServerProcess,
) -> None:
    sql = SqlStore(f"sqlite:///{server.data_dir / 'worldflow.db'}")
    try:
        with server.admin() as admin:
            local = {"host": "127.0.0.1", "port": 2525, "security": "none", "username": "ada",
                     "password": "s3cret", "from": "Journeys <journeys@example.com>"}  # fmt: skip
            put = admin.put("/v1/settings", json={"smtp": local})
            assert put.status_code == 200, put.text
            shown = {**local, "password": MASK, "timeout_ms": 10000}
            assert put.json()["smtp"] == shown
            assert admin.get("/v1/settings").json()["smtp"] == shown
            assert sql.settings("default")["smtp"]["password"] == "s3cret"

            again = admin.put("/v1/settings", json={"smtp": {**shown, "port": 25}})
            assert again.status_code == 200 and again.json()["smtp"]["password"] == MASK
            stored = sql.settings("default")["smtp"]
            assert (stored["password"], stored["port"]) == ("s3cret", 25)
            omitted = {k: v for k, v in shown.items() if k != "password"}
            assert admin.put("/v1/settings", json={"smtp": omitted}).status_code == 200
            assert sql.settings("default")["smtp"]["password"] == "s3cret"
            # a new password replaces it; an empty one removes it
            admin.put("/v1/settings", json={"smtp": {**shown, "password": "n3w"}})
            assert sql.settings("default")["smtp"]["password"] == "n3w"
            cleared = admin.put("/v1/settings", json={"smtp": {**shown, "password": ""}})
            assert "password" not in cleared.json()["smtp"]
            assert "password" not in sql.settings("default")["smtp"]
            # the defaults, and no smtp at all
            plain = admin.put("/v1/settings", json={"smtp": SMTP}).json()["smtp"]
            assert (plain["port"], plain["security"], plain["timeout_ms"]) == (
                587, "starttls", 10000)  # fmt: skip
            assert admin.put("/v1/settings", json={}).json() == {
                "raw_telemetry": False, "identity_types": {}}  # fmt: skip
            assert "smtp" not in admin.get("/v1/settings").json()
    finally:
        sql.close()


def test_a_private_ca_is_stored_and_shown(server: ServerProcess) -> None:
    with server.admin() as admin:
        put = admin.put("/v1/settings", json={"smtp": {**SMTP, "ca_pem": CA_PEM}})
        assert put.status_code == 200, put.text
        assert admin.get("/v1/settings").json()["smtp"]["ca_pem"] == CA_PEM
        blank = admin.put("/v1/settings", json={"smtp": {**SMTP, "ca_pem": " "}}).json()
        assert "ca_pem" not in blank["smtp"]  # blank: the system's CAs
