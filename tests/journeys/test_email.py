"""A journey's e-mail, end to end: a real Segment client's events into `worldflow serve`, the
journey decides, the server's dispatcher sends it to a real SMTP server (aiosmtpd)."""

from __future__ import annotations

import ssl
from pathlib import Path

import trustme
from aiosmtpd.controller import Controller
from segment.analytics.client import Client as SegmentClient

from tests.actions.test_email import Handler
from tests.actions.test_email_tls import PASSWORD, USER, Guarded
from tests.conftest import ServerProcess, free_port
from tests.segments.test_api import wait_for

WELCOME = {
    "status": "active",
    "entry": {"event": "signup.completed"},
    "steps": [{"id": "hello", "action": {"email": {
        "subject": "Welcome, {{ traits.name }}",
        "text": "See you in the {{ traits.world }} showroom.",
        "html": "<p>See you in the <b>{{ traits.world }}</b> showroom.</p>"}}}],
}  # fmt: skip


def test_a_journey_mails_a_person_who_agreed_through_the_real_dispatcher(tmp_path: Path) -> None:
    handler = Handler()
    controller = Controller(handler, hostname="127.0.0.1", port=free_port())
    controller.start()
    server = ServerProcess(tmp_path / "data").start()
    try:
        with server.admin() as admin:
            smtp = {"host": "127.0.0.1", "port": controller.port, "security": "none",
                    "from": "Worldflow <journeys@example.com>"}  # fmt: skip
            assert admin.put("/v1/settings", json={"smtp": smtp}).status_code == 200
            assert admin.put("/v1/journeys/welcome", json=WELCOME).status_code == 200
            wait_for(lambda: admin.get("/v1/journeys/welcome").json()["status"]["state"]
                     == "active")  # fmt: skip
        client = SegmentClient(server.write_key, host=server.url, sync_mode=True)
        for user, agreed in (("ada", True), ("bob", False)):
            client.identify(user, {"name": user.title(), "world": "Paris",
                                   "email": f"{user}@example.com"})  # fmt: skip
            client.track(user, "consent.updated", {"scopes": {"marketing_contact": agreed}})
            client.track(user, "signup.completed")
        client.flush()
        (mail,) = wait_for(lambda: handler.received, timeout=30)
        assert mail.recipients == ["ada@example.com"]
        assert mail.message["Subject"] == "Welcome, Ada"
        assert mail.message["From"] == "Worldflow <journeys@example.com>"
        body = mail.message.get_body(("plain",))
        assert body is not None and "Paris showroom" in body.get_content()
        with server.admin() as admin:
            (v1,) = admin.get("/v1/journeys/welcome/stats").json()["versions"]
        assert v1["actions"] == {"email": 1} and v1["ends"]["completed"] == 2
        assert v1["deliveries"] == {"email": {"delivered": 1}}
    finally:
        server.stop()
        controller.stop()


def test_a_journey_mails_over_starttls_to_a_server_of_a_private_ca(tmp_path: Path) -> None:
    """The operator's path: the CA set with the API (``ca_pem``), the server requiring STARTTLS
    and a login, the dispatcher of `worldflow serve` sending."""
    ca = trustme.CA()
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(tls)
    handler = Guarded()
    controller = Controller(handler, hostname="127.0.0.1", port=free_port(), tls_context=tls,
                            require_starttls=True, auth_required=True,
                            authenticator=handler.authenticator)  # fmt: skip
    controller.start()
    server = ServerProcess(tmp_path / "data").start()
    try:
        with server.admin() as admin:
            smtp = {"host": "127.0.0.1", "port": controller.port, "security": "starttls",
                    "username": USER, "password": PASSWORD, "ca_pem": ca.cert_pem.bytes().decode(),
                    "from": "Worldflow <journeys@example.com>"}  # fmt: skip
            put = admin.put("/v1/settings", json={"smtp": smtp})
            assert put.status_code == 200, put.text
            assert admin.put("/v1/journeys/welcome", json=WELCOME).status_code == 200
            wait_for(lambda: admin.get("/v1/journeys/welcome").json()["status"]["state"]
                     == "active")  # fmt: skip
        client = SegmentClient(server.write_key, host=server.url, sync_mode=True)
        client.identify("ada", {"name": "Ada", "world": "Paris", "email": "ada@example.com"})
        client.track("ada", "consent.updated", {"scopes": {"marketing_contact": True}})
        client.track("ada", "signup.completed")
        client.flush()
        (mail,) = wait_for(lambda: handler.received, timeout=30)
        assert mail.recipients == ["ada@example.com"]
        assert mail.message["Subject"] == "Welcome, Ada"
        assert handler.seen[0].tls and handler.seen[0].login == USER.encode()
    finally:
        server.stop()
        controller.stop()
