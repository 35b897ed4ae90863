"""E-mail without the dispatcher: a workspace's SMTP settings, the message of an ``email``
delivery, sending it with :mod:`smtplib` (blocking: the dispatcher calls :func:`send` on a
worker thread) and what a failure means (retry, or dead).

A delivery row of channel ``email`` goes to destination ``smtp`` (the workspace's
``smtp`` settings); its payload is ``{"to", "subject", "text", "html"?, ...}``, already
rendered. Its ``Message-ID`` is ``<{delivery id}@worldflow>``, the same at every attempt.

With ``starttls`` or ``tls`` the server's certificate is verified (its chain and its host
name) against the system's CAs, or against ``ca_pem`` alone when set: nothing is sent over a
connection that does not verify, and no setting turns verification off. A server that does
not offer STARTTLS when it is asked gets no credentials and no message in clear.
"""

from __future__ import annotations

import base64
import email.utils
import json
import re
import smtplib
import ssl
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from worldflow.actions.webhooks import _HOSTNAME, Attempt, ip_literal

MASK: Final = "********"
SMTP_DESTINATION: Final = "smtp"
_ADDRESS = re.compile(r"^[^@\s<>()\[\],;:\"]+@[^@\s<>()\[\],;:\"]+$")


class SmtpSettings(BaseModel):
    """A workspace's outgoing mail server (``smtp`` in ``PUT /v1/settings``)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    host: str = Field(min_length=1, max_length=253, description="the SMTP server's host name")
    port: int = Field(default=587, ge=1, le=65535)
    username: str | None = Field(default=None, max_length=512, description="to log in (AUTH)")
    password: str | None = Field(
        default=None,
        max_length=512,
        description=(
            f"stored in clear (the dispatcher logs in with it); GET answers {MASK!r} in its "
            f"place. A PUT that omits it, or sends {MASK!r} back, keeps the stored one; "
            "an empty string removes it"
        ),
    )
    security: Literal["starttls", "tls", "none"] = Field(
        default="starttls",
        description="starttls (upgrade after connecting, port 587), tls (implicit TLS, port "
        "465) or none (clear text: refused with credentials unless the host is loopback)",
    )
    from_: str = Field(
        alias="from", max_length=320, description="the From address: a@b.c or 'Name <a@b.c>'"
    )
    timeout_ms: int = Field(
        default=10_000, ge=100, le=120_000, description="bounds each network operation"
    )
    ca_pem: str | None = Field(
        default=None,
        max_length=100_000,
        description="PEM text of the CA certificate(s) the server's certificate must chain to "
        "(a private CA), in place of the system's CAs; with starttls or tls only. The host name "
        "is verified all the same. No private key: this is shown by GET",
    )

    @field_validator("host")
    @classmethod
    def _host(cls, value: str) -> str:
        if ip_literal(value) is None and not _HOSTNAME.match(value.lower().rstrip(".")):
            raise ValueError(f"{value!r} is not a host name or an IP address")
        return value

    @field_validator("from_")
    @classmethod
    def _from(cls, value: str) -> str:
        if address(value) is None:
            raise ValueError(f"{value!r} is not an e-mail address (a@b.c or 'Name <a@b.c>')")
        return value

    @field_validator("ca_pem")
    @classmethod
    def _ca_pem(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        if "PRIVATE KEY" in value:
            raise ValueError("contains a private key: only the CA's certificate belongs here "
                             "(settings are stored and shown in clear)")  # fmt: skip
        try:
            certificates = trust(value).cert_store_stats()["x509"]
        except ssl.SSLError as exc:
            said = re.sub(r"\s*\(_ssl\.c:\d+\)$", "", str(exc.reason or exc))
            raise ValueError("is not PEM text of certificates (-----BEGIN CERTIFICATE-----"
                             f"...): {said}") from None  # fmt: skip
        if not certificates:
            raise ValueError("holds no certificate")
        return value

    def problem(self) -> tuple[str, str] | None:
        """What the fields allow one by one but not together: (field, message)."""
        credentials = bool(self.username or self.password)
        if self.security == "none" and credentials and not loopback(self.host):
            return ("security", "'none' sends the username and password in clear; use "
                    "starttls or tls (clear text is allowed to a loopback host only)")  # fmt: skip
        if self.password and not self.username:
            return ("username", "is required with a password")
        if self.ca_pem and self.security == "none":
            return ("ca_pem", "verifies the server's certificate, and security 'none' has no "
                    "TLS: use starttls or tls")  # fmt: skip
        return None

    def stored(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True, by_alias=True)

    def shown(self) -> dict[str, Any]:
        """As the API shows it: the password masked."""
        out = self.stored()
        if out.get("password"):
            out["password"] = MASK
        else:
            out.pop("password", None)
        return out


def address(value: str) -> str | None:
    """The address of ``a@b.c`` or ``Name <a@b.c>`` (one line); None when it is not one."""
    if not isinstance(value, str) or "\r" in value or "\n" in value:
        return None
    _name, addr = email.utils.parseaddr(value)
    return addr if addr and _ADDRESS.match(addr) else None


def trust(ca_pem: str | None) -> ssl.SSLContext:
    """The TLS context of a connection: certificates and host names verified, against the
    system's CAs or against ``ca_pem`` alone."""
    return ssl.create_default_context(cadata=ca_pem) if ca_pem else ssl.create_default_context()


def loopback(host: str) -> bool:
    literal = ip_literal(host)
    if literal is not None:
        return literal.is_loopback
    return host.lower().rstrip(".") in {"localhost", "localhost.localdomain"}


@dataclass(frozen=True, slots=True)
class Server:
    """The settings the dispatcher sends with (from :class:`SmtpSettings`)."""

    host: str
    port: int
    username: str | None
    password: str | None
    security: str
    sender: str
    timeout_s: float
    ca_pem: str | None = None

    @classmethod
    def of(cls, settings: SmtpSettings) -> Server:
        return cls(settings.host, settings.port, settings.username, settings.password or None,
                   settings.security, settings.from_, settings.timeout_ms / 1000,
                   settings.ca_pem)  # fmt: skip


class MessageError(ValueError):
    """A payload no attempt can send: the delivery is dead with this reason."""


def message(delivery_id: str, created_ms: int, payload_json: str, sender: str) -> EmailMessage:
    """The message of an ``email`` delivery, the same at every attempt (Message-ID and Date
    come from the delivery, not from the attempt)."""
    try:
        payload = json.loads(payload_json)
    except ValueError:
        raise MessageError("payload: not JSON") from None
    if not isinstance(payload, dict):
        raise MessageError("payload: not a JSON object")
    to = payload.get("to")
    if not to:
        raise MessageError("payload: no 'to' address")
    if not isinstance(to, str) or address(to) is None:
        raise MessageError(f"payload.to: {to!r} is not an e-mail address")
    fields = {key: payload.get(key) for key in ("subject", "text", "html")}
    for key, value in fields.items():
        if value is not None and not isinstance(value, str):
            raise MessageError(f"payload.{key}: must be a string")
    msg = EmailMessage()
    msg["Message-ID"] = f"<{delivery_id}@worldflow>"
    msg["Date"] = email.utils.formatdate(created_ms / 1000, usegmt=True)
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = " ".join((fields["subject"] or "").split())  # one line
    msg.set_content(fields["text"] or "")
    if fields["html"]:
        msg.add_alternative(fields["html"], subtype="html")
    return msg


def send(server: Server, msg: EmailMessage) -> None:
    """Send one message on a connection of its own (blocking). Raises what smtplib raises;
    :func:`outcome` tells what it means."""
    context = trust(server.ca_pem)
    client: smtplib.SMTP
    if server.security == "tls":
        client = smtplib.SMTP_SSL(server.host, server.port, timeout=server.timeout_s,
                                  context=context)  # fmt: skip
    else:
        client = smtplib.SMTP(server.host, server.port, timeout=server.timeout_s)
    try:
        client.ehlo()
        if server.security == "starttls":
            if not client.has_extn("starttls"):  # and so nothing goes in clear
                raise smtplib.SMTPNotSupportedError("the server does not offer STARTTLS")
            client.starttls(context=context)
            client.ehlo()
        if server.username:
            _login(client, server.username, server.password or "")
        sender, to = str(msg["From"]), str(msg["To"])  # checked by the settings and message()
        client.send_message(msg, from_addr=address(sender) or sender,
                            to_addrs=[address(to) or to])  # fmt: skip
    except BaseException:
        client.close()
        raise
    try:
        client.quit()  # sent already: a failure to say goodbye changes nothing
    except (smtplib.SMTPException, OSError):
        client.close()


def _login(client: smtplib.SMTP, username: str, password: str) -> None:
    """AUTH PLAIN, else LOGIN, the username and password in UTF-8 (RFC 4616; smtplib's own
    login sends ASCII only, and fails on any other character before a word is sent)."""
    if not client.has_extn("auth"):
        raise smtplib.SMTPNotSupportedError("the server does not offer AUTH, and smtp.username "
                                            "is set")  # fmt: skip
    offered = client.esmtp_features["auth"].upper().split()
    user, secret = username.encode(), password.encode()
    if "PLAIN" in offered:
        code, reply = client.docmd("AUTH", "PLAIN " + _base64(b"\0" + user + b"\0" + secret))
    elif "LOGIN" in offered:
        code, reply = client.docmd("AUTH", "LOGIN")
        if code == 334:
            code, reply = client.docmd(_base64(user))
        if code == 334:
            code, reply = client.docmd(_base64(secret))
    else:
        mechanisms = " ".join(offered) or "none"
        raise smtplib.SMTPNotSupportedError("the server offers no AUTH mechanism Worldflow uses "
                                            f"(PLAIN, LOGIN; it offers {mechanisms})")  # fmt: skip
    if code != 235:
        raise smtplib.SMTPAuthenticationError(code, reply)


def _base64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _reply(code: int, text: bytes | str) -> str:
    said = text.decode("utf-8", "replace") if isinstance(text, bytes) else str(text)
    return f"SMTP {code} {' '.join(said.split())}".strip()


def outcome(exc: BaseException | None) -> Attempt:
    """What an attempt came to (None: the server accepted the message). 5xx replies (535: the
    login was refused) and a server that lacks what the settings ask (STARTTLS, AUTH) are
    permanent (``refused``: dead at once); 4xx replies, connection errors, timeouts and failed
    TLS handshakes, a certificate that does not verify included, are temporary (retried: a
    renewed certificate, or ``ca_pem`` set, lets the pending ones go, within the window)."""
    if exc is None:
        return Attempt(status=250)
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        code, text = next(iter(exc.recipients.values()), (-1, b"recipient refused"))
        exc = smtplib.SMTPResponseException(code, text)
    if isinstance(exc, smtplib.SMTPResponseException):
        said = _reply(exc.smtp_code, exc.smtp_error)
        if isinstance(exc, smtplib.SMTPAuthenticationError) and exc.smtp_code == 535:
            said += " (the login failed: check smtp.username and smtp.password)"
        if 500 <= exc.smtp_code < 600:
            return Attempt(refused=said, code=exc.smtp_code)
        return Attempt(error=said, code=exc.smtp_code if exc.smtp_code > 0 else None)
    if isinstance(exc, smtplib.SMTPNotSupportedError):
        return Attempt(refused=f"SMTP: {exc}; nothing was sent: check smtp.security and "
                       "smtp.username in the workspace settings")  # fmt: skip
    if isinstance(exc, ssl.SSLCertVerificationError):
        return Attempt(error=f"SMTP: the server's certificate does not verify "
                       f"({exc.verify_message or exc}); nothing was sent. A private CA is "
                       "trusted with smtp.ca_pem")  # fmt: skip
    if isinstance(exc, ssl.SSLError):
        return Attempt(error=f"SMTP: the TLS handshake failed ({exc.reason or exc}); nothing "
                       "was sent: check smtp.security and smtp.port")  # fmt: skip
    if isinstance(exc, TimeoutError) or isinstance(exc.__context__, TimeoutError):
        return Attempt(error="SMTP: no answer in time", timeout=True)  # smtplib wraps some
    if isinstance(exc, smtplib.SMTPServerDisconnected):
        return Attempt(error=f"SMTP: the server closed the connection ({exc or 'no reason'})")
    if isinstance(exc, OSError | smtplib.SMTPException):
        return Attempt(error=f"SMTP: {type(exc).__name__}: {exc}")
    raise exc
