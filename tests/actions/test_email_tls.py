"""E-mail over TLS, against a real SMTP server (aiosmtpd on 127.0.0.1, in this process) with a
throwaway CA made for the test (trustme): STARTTLS and implicit TLS with AUTH, a wrong
password, a certificate the client does not trust, and a server that does not offer STARTTLS.
The client trusts the test CA through the workspace's ``smtp.ca_pem``, as an operator with a
private CA does."""

from __future__ import annotations

import random
import ssl
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from tests.actions.receiver import add, dispatching, row, wait_for
from tests.actions.test_email import FAST, Handler, configure, ended, mail
from tests.conftest import free_port
from worldflow.actions.webhooks import RetryPolicy
from worldflow.store.deliveries import SqlDeliveryStore
from worldflow.store.sql import SqlStore

USER, PASSWORD = "journeys", "s3cret-Pässword"  # not ASCII: sent in UTF-8

# aiosmtpd warns of AUTH required without STARTTLS: with implicit TLS the connection is TLS
pytestmark = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")


@dataclass(frozen=True)
class Seen:
    """What the server knew of the connection a message came on."""

    tls: bool
    login: bytes | None


class Guarded(Handler):
    """:class:`Handler`, also keeping the logins tried (mechanism, user, password), the MAIL
    commands received, and whether each message came over TLS and logged in."""

    def __init__(self) -> None:
        super().__init__()
        self.logins: list[tuple[str, bytes, bytes]] = []
        self.mail_from: list[str] = []
        self.seen: list[Seen] = []

    def authenticator(self, server: Any, session: Any, envelope: Any, mechanism: str,
                      auth_data: Any) -> AuthResult:  # fmt: skip
        assert isinstance(auth_data, LoginPassword)
        self.logins.append((mechanism, auth_data.login, auth_data.password))
        ok = (auth_data.login, auth_data.password) == (USER.encode(), PASSWORD.encode())
        # handled=False: aiosmtpd answers a failure itself (535)
        return AuthResult(success=ok, handled=False, auth_data=auth_data if ok else None)

    async def handle_MAIL(self, server: Any, session: Any, envelope: Any, address: str,
                          options: list[str]) -> str:  # fmt: skip
        self.mail_from.append(address)
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        tls = server.transport.get_extra_info("ssl_object") is not None
        self.seen.append(Seen(tls, session.login_data))
        return await super().handle_DATA(server, session, envelope)


@dataclass
class Pki:
    ca: trustme.CA
    other: trustme.CA  # a CA nobody was told to trust

    @property
    def ca_pem(self) -> str:
        return self.ca.cert_pem.bytes().decode()

    def context(self, ca: trustme.CA | None = None, *names: str) -> ssl.SSLContext:
        """A server's TLS context, its certificate issued by ``ca`` for ``names``."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        (ca or self.ca).issue_cert(*(names or ("127.0.0.1", "localhost"))).configure_cert(context)
        return context


@pytest.fixture(scope="module")
def pki() -> Pki:
    return Pki(trustme.CA(), trustme.CA())


Start = Callable[..., tuple[Guarded, int]]


@pytest.fixture
def smtpd() -> Iterator[Start]:
    """``smtpd(**options)``: a started aiosmtpd server on 127.0.0.1 (``ssl_context``: implicit
    TLS; other options go to aiosmtpd's SMTP); its handler and port."""
    started: list[Controller] = []

    def start(ssl_context: ssl.SSLContext | None = None, **options: Any) -> tuple[Guarded, int]:
        handler = Guarded()
        port = free_port()
        controller = Controller(handler, hostname="127.0.0.1", port=port,
                                ssl_context=ssl_context, authenticator=handler.authenticator,
                                **options)  # fmt: skip
        controller.start()
        started.append(controller)
        return handler, port

    yield start
    for controller in started:
        controller.stop()


def deliver(sql: SqlStore, sqlite_url: str, ident: str, **options: Any) -> dict[str, Any]:
    """Dispatch one e-mail until it is delivered or dead: its row."""
    store = SqlDeliveryStore(sql.engine)
    add(store, mail(ident))
    with dispatching(sqlite_url, **{"policy": FAST, **options}):
        found: dict[str, Any] = wait_for(lambda: ended(store, ident))
    return found


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_starttls_then_auth_when_the_server_requires_both(
    sql: SqlStore, sqlite_url: str, smtpd: Start, pki: Pki, mechanism: str
) -> None:
    other = {"PLAIN": "LOGIN", "LOGIN": "PLAIN"}[mechanism]
    handler, port = smtpd(tls_context=pki.context(), require_starttls=True, auth_required=True,
                          auth_exclude_mechanism=[other])  # fmt: skip
    configure(sql, port, security="starttls", ca_pem=pki.ca_pem, username=USER,
              password=PASSWORD)  # fmt: skip
    done = deliver(sql, sqlite_url, "em_starttls")
    assert (done["state"], done["attempts"], done["last_status"]) == ("delivered", 1, 250)
    assert handler.logins == [(mechanism, USER.encode(), PASSWORD.encode())]
    assert handler.seen == [Seen(tls=True, login=USER.encode())]
    (received,) = handler.received
    assert received.message["Message-ID"] == "<em_starttls@worldflow>"
    assert received.recipients == ["ada@example.com"]


def test_implicit_tls_with_auth(sql: SqlStore, sqlite_url: str, smtpd: Start, pki: Pki) -> None:
    # the whole connection is TLS (port 465 in production): AUTH needs no STARTTLS first
    handler, port = smtpd(ssl_context=pki.context(), auth_required=True, auth_require_tls=False)
    configure(sql, port, security="tls", ca_pem=pki.ca_pem, username=USER, password=PASSWORD)
    done = deliver(sql, sqlite_url, "em_tls")
    assert (done["state"], done["attempts"]) == ("delivered", 1)
    assert [login[1:] for login in handler.logins] == [(USER.encode(), PASSWORD.encode())]
    assert handler.seen == [Seen(tls=True, login=USER.encode())]


@pytest.mark.parametrize("security", ["starttls", "tls"])
def test_a_wrong_password_is_dead_at_once_naming_the_login(
    sql: SqlStore, sqlite_url: str, smtpd: Start, pki: Pki, security: str
) -> None:
    if security == "tls":
        handler, port = smtpd(ssl_context=pki.context(), auth_required=True,
                              auth_require_tls=False)  # fmt: skip
    else:
        handler, port = smtpd(tls_context=pki.context(), require_starttls=True,
                              auth_required=True)  # fmt: skip
    configure(sql, port, security=security, ca_pem=pki.ca_pem, username=USER,
              password="wrong")  # fmt: skip
    dead = deliver(sql, sqlite_url, "em_wrong")
    assert (dead["state"], dead["attempts"]) == ("dead", 1)
    error = dead["last_error"]
    assert error.startswith("SMTP 535 5.7.8 Authentication credentials invalid"), error
    assert "the login failed: check smtp.username and smtp.password" in error
    assert "wrong" not in error  # the password is not repeated
    assert handler.logins and all(login[2] == b"wrong" for login in handler.logins)
    assert handler.mail_from == [] and handler.received == []


def test_a_server_without_auth_gets_no_message_when_a_username_is_set(
    sql: SqlStore, sqlite_url: str, smtpd: Start, pki: Pki
) -> None:
    handler, port = smtpd(tls_context=pki.context(), auth_exclude_mechanism=["LOGIN", "PLAIN"])
    configure(sql, port, security="starttls", ca_pem=pki.ca_pem, username=USER,
              password=PASSWORD)  # fmt: skip
    dead = deliver(sql, sqlite_url, "em_no_auth")
    assert (dead["state"], dead["attempts"]) == ("dead", 1)
    assert dead["last_error"].startswith("SMTP: the server offers no AUTH mechanism Worldflow "
                                         "uses (PLAIN, LOGIN; it offers none); nothing was "
                                         "sent"), dead["last_error"]  # fmt: skip
    assert handler.mail_from == []


UNTRUSTED = [
    # (security, whose certificate, for which names, what the error says)
    ("starttls", "other", (), "(unable to get local issuer certificate)"),
    ("tls", "other", (), "(unable to get local issuer certificate)"),
    # a trusted CA, another host's name
    (
        "starttls",
        "ca",
        ("mail.example.com",),
        "(IP address mismatch, certificate is not valid for '127.0.0.1'.)",
    ),
    ("tls", "system", (), "(unable to get local issuer certificate)"),  # no ca_pem
]


@pytest.mark.parametrize(("security", "issuer", "names", "says"), UNTRUSTED)
def test_a_certificate_that_does_not_verify_sends_nothing_and_is_retried(
    sql: SqlStore, sqlite_url: str, smtpd: Start, pki: Pki, security: str, issuer: str,
    names: tuple[str, ...], says: str,
) -> None:  # fmt: skip
    ca = pki.other if issuer == "other" else pki.ca
    context = pki.context(ca, *names)
    if security == "tls":
        handler, port = smtpd(ssl_context=context, auth_required=True, auth_require_tls=False)
    else:
        handler, port = smtpd(tls_context=context, require_starttls=True, auth_required=True)
    trusted = {} if issuer == "system" else {"ca_pem": pki.ca_pem}
    configure(sql, port, security=security, username=USER, password=PASSWORD, **trusted)
    store = SqlDeliveryStore(sql.engine)
    add(store, mail("em_untrusted"))
    with dispatching(sqlite_url, policy=FAST, rng=random.Random(5)):
        wait_for(lambda: row(store, "em_untrusted")["attempts"] >= 2)
    found = row(store, "em_untrusted")
    assert found["state"] == "pending" and found["last_status"] is None
    error = found["last_error"]
    assert error.startswith("SMTP: the server's certificate does not verify ("), error
    assert says in error and "nothing was sent" in error and "smtp.ca_pem" in error
    assert handler.logins == [] and handler.mail_from == [] and handler.received == []


def test_an_untrusted_certificate_is_dead_at_the_end_of_the_window(
    sql: SqlStore, sqlite_url: str, smtpd: Start, pki: Pki
) -> None:
    handler, port = smtpd(tls_context=pki.context(pki.other), require_starttls=True)
    configure(sql, port, security="starttls", ca_pem=pki.ca_pem)
    short = RetryPolicy(base_s=0.02, cap_s=0.05, window_s=0.5)
    dead = deliver(sql, sqlite_url, "em_window", policy=short)
    assert dead["state"] == "dead" and dead["attempts"] >= 2
    assert (
        "the retry window of 500ms ended; last: SMTP: the server's certificate does not "
        "verify (unable to get local issuer certificate)" in dead["last_error"]
    )
    assert handler.mail_from == []


def test_once_the_ca_is_trusted_the_pending_email_goes(
    sql: SqlStore, sqlite_url: str, smtpd: Start, pki: Pki
) -> None:
    handler, port = smtpd(tls_context=pki.context(), require_starttls=True)
    configure(sql, port, security="starttls")  # the system's CAs do not know the test CA
    store = SqlDeliveryStore(sql.engine)
    add(store, mail("em_later"))
    with dispatching(sqlite_url, policy=FAST, settings_s=0.05):
        wait_for(lambda: row(store, "em_later")["attempts"] >= 1)
        assert handler.mail_from == []
        configure(sql, port, security="starttls", ca_pem=pki.ca_pem)
        done = wait_for(lambda: ended(store, "em_later"))
    assert done["state"] == "delivered" and done["attempts"] >= 2
    assert handler.seen == [Seen(tls=True, login=None)]


@pytest.mark.parametrize("auth_in_clear", [False, True])
def test_a_server_without_starttls_gets_nothing_in_clear(
    sql: SqlStore, sqlite_url: str, smtpd: Start, auth_in_clear: bool
) -> None:
    # no tls_context: the server offers no STARTTLS; with auth_require_tls off it offers AUTH
    # in clear, as a server downgraded by a man in the middle would
    handler, port = smtpd(auth_require_tls=not auth_in_clear)
    configure(sql, port, security="starttls", username=USER, password=PASSWORD)
    dead = deliver(sql, sqlite_url, "em_clear")
    assert (dead["state"], dead["attempts"]) == ("dead", 1)
    assert dead["last_error"] == ("SMTP: the server does not offer STARTTLS; nothing was sent: "
                                  "check smtp.security and smtp.username in the workspace "
                                  "settings")  # fmt: skip
    assert handler.logins == [] and handler.mail_from == [] and handler.received == []


def test_tls_to_a_clear_text_port_is_a_handshake_failure(
    sql: SqlStore, sqlite_url: str, smtpd: Start, pki: Pki
) -> None:
    handler, port = smtpd()  # clear text: implicit TLS cannot start
    configure(sql, port, security="tls", ca_pem=pki.ca_pem, username=USER, password=PASSWORD)
    store = SqlDeliveryStore(sql.engine)
    add(store, mail("em_port"))
    with dispatching(sqlite_url, policy=FAST):
        wait_for(lambda: row(store, "em_port")["attempts"] >= 1)
    found = row(store, "em_port")
    assert found["state"] == "pending"
    assert found["last_error"].startswith("SMTP: the TLS handshake failed ("), found
    assert "check smtp.security and smtp.port" in found["last_error"]
    assert handler.logins == [] and handler.mail_from == []


def test_clear_text_credentials_stored_without_the_api_are_refused(
    sql: SqlStore, sqlite_url: str
) -> None:
    # the API refuses these settings; the dispatcher checks them again before connecting
    sql.set_settings("default", {"smtp": {"host": "smtp.example.com", "security": "none",
                                          "username": USER, "password": PASSWORD,
                                          "from": "journeys@example.com"}})  # fmt: skip
    dead = deliver(sql, sqlite_url, "em_in_clear")
    assert dead["state"] == "dead" and dead["attempts"] == 1
    assert dead["last_error"].startswith("the workspace's SMTP settings are invalid: "
                                         "smtp.security: 'none' sends the username")  # fmt: skip
