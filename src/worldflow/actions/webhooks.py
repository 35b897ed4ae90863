"""Webhooks without the network: signing, the retry policy, the circuit breaker, the address
guard and the checks of a destination's settings. The dispatcher (``actions/deliver.py``)
puts them together; each is a function of its inputs, so tests drive them with explicit
times and a seeded ``random.Random``.

Signing follows the Standard Webhooks specification, so receivers verify with its public
libraries: ``webhook-id``, ``webhook-timestamp`` (Unix seconds) and ``webhook-signature:
v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`` keyed with the base64-decoded part
of the secret after ``whsec_``.
"""

from __future__ import annotations

import base64
import binascii
import email.utils
import hashlib
import hmac
import ipaddress
import json
import math
import random
import re
import secrets
import socket
import urllib.parse
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Final

SECRET_PREFIX: Final = "whsec_"  # noqa: S105 (the format, not a secret)
SECRET_BYTES: Final = 32  # Standard Webhooks asks for 24 to 64
MAX_URL_CHARS: Final = 2048
MAX_HEADERS: Final = 32
MIN_TIMEOUT_MS: Final = 100
MAX_TIMEOUT_MS: Final = 60_000
MAX_RATE_PER_S: Final = 10_000.0
MAX_IN_FLIGHT: Final = 256  # requests at once to one destination
EXCERPT_CHARS: Final = 200  # of an answer's body, in last_error

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class DestinationError(ValueError):
    """A destination's setting cannot be used; the message starts with the field's name."""

    def __init__(self, field_name: str, problem: str) -> None:
        super().__init__(f"{field_name}: {problem}")
        self.field = field_name
        self.problem = problem


# --- signing -----------------------------------------------------------------------------


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def secret_key(secret: str) -> bytes:
    """The HMAC key of a ``whsec_<base64>`` secret; DestinationError when it is not one."""
    if not secret.startswith(SECRET_PREFIX):
        raise DestinationError("secret", f"must start with {SECRET_PREFIX!r} (whsec_<base64>)")
    encoded = secret[len(SECRET_PREFIX) :]
    try:
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise DestinationError("secret", "the part after 'whsec_' is not base64") from None
    if not 24 <= len(key) <= 64:
        raise DestinationError(
            "secret", f"decodes to {len(key)} bytes; Standard Webhooks needs 24 to 64"
        )
    return key


def signature(key: bytes, msg_id: str, timestamp_s: int, body: bytes) -> str:
    mac = hmac.new(key, f"{msg_id}.{timestamp_s}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def signed_headers(key: bytes, msg_id: str, timestamp_s: int, body: bytes) -> dict[str, str]:
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp_s),
        "webhook-signature": signature(key, msg_id, timestamp_s, body),
    }


def envelope(event_type: str, created_ms: int, payload_json: str) -> bytes:
    """The body sent: the Standard Webhooks envelope ``{"type", "timestamp", "data"}``. The
    stored payload goes in as it is, so every attempt sends the same bytes."""
    at = datetime.fromtimestamp(created_ms / 1000, UTC).isoformat(timespec="milliseconds")
    return (
        f'{{"type":{json.dumps(event_type)},"timestamp":"{at.replace("+00:00", "Z")}",'
        f'"data":{payload_json}}}'
    ).encode()


# --- retries -----------------------------------------------------------------------------

PENDING: Final = "pending"
DELIVERED: Final = "delivered"
DEAD: Final = "dead"
RETRYABLE_STATUSES: Final = frozenset({408, 429})
RETRY_AFTER_STATUSES: Final = frozenset({429, 503})


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with full jitter (a delay drawn between 0 and ``base · 2ⁿ⁻¹``,
    capped), so that many deliveries failing together do not come back together; retried for
    ``window_s`` from the delivery's creation (or its latest replay), then dead."""

    base_s: float = 1.0
    cap_s: float = 600.0
    window_s: float = 24 * 3600.0

    def backoff_s(self, attempts: int, rng: random.Random) -> float:
        ceiling = min(self.cap_s, self.base_s * 2.0 ** min(max(attempts - 1, 0), 62))
        return rng.uniform(0.0, ceiling)


@dataclass(frozen=True, slots=True)
class Attempt:
    """What one attempt came to: an answer (``status``), no answer (``error``), or not sent
    and never to be (``refused``: the address guard, an unusable URL or secret, a permanent
    SMTP reply). An e-mail the server accepted has ``status`` 250."""

    status: int | None = None
    error: str | None = None
    refused: str | None = None
    retry_after_s: float | None = None
    body: str = ""  # the start of the answer's body
    location: str | None = None  # of a redirect
    timeout: bool = False  # no answer in time
    code: int | None = None  # an SMTP reply code (e-mail deliveries), for the metrics


@dataclass(frozen=True, slots=True)
class Outcome:
    state: str  # delivered | pending (to retry at next_attempt_ms) | dead
    next_attempt_ms: int
    last_status: int | None
    last_error: str | None
    failure: bool  # counts against the destination's circuit


def parse_retry_after(value: str | None, now_s: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delay-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(int(value))
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - now_s)


def excerpt(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= EXCERPT_CHARS else flat[: EXCERPT_CHARS - 1] + "…"


def describe(attempt: Attempt) -> str:
    if attempt.refused is not None:
        return attempt.refused
    if attempt.status is None:
        return attempt.error or "no answer"
    text = f"HTTP {attempt.status}"
    return f"{text}: {excerpt(attempt.body)}" if attempt.body.strip() else text


def duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds * 1000:.0f}ms" if seconds < 1 else f"{seconds:g}s"


def decide(
    attempt: Attempt,
    attempts: int,
    window_start_ms: int,
    now_ms: int,
    policy: RetryPolicy,
    rng: random.Random,
) -> Outcome:
    """What becomes of a delivery after its ``attempts``-th attempt."""
    if attempt.refused is not None:
        return Outcome(DEAD, now_ms, None, attempt.refused, False)
    status = attempt.status
    if status is not None and 200 <= status < 300:
        return Outcome(DELIVERED, now_ms, status, None, False)
    if status is not None and status < 500 and status not in RETRYABLE_STATUSES:
        reason = describe(attempt)
        if 300 <= status < 400:
            where = attempt.location or "no Location header"
            reason = (f"HTTP {status}: redirects are not followed; set the destination's url "
                      f"to where it points ({where})")  # fmt: skip
        return Outcome(DEAD, now_ms, status, reason, False)
    if status in RETRY_AFTER_STATUSES and attempt.retry_after_s is not None:
        delay_s = attempt.retry_after_s
    else:
        delay_s = policy.backoff_s(attempts, rng)
    return postpone(Outcome(PENDING, now_ms + math.ceil(delay_s * 1000), status,
                            describe(attempt), True),
                    now_ms, now_ms, attempts, window_start_ms, policy)  # fmt: skip


def postpone(
    outcome: Outcome,
    until_ms: int,
    now_ms: int,
    attempts: int,
    window_start_ms: int,
    policy: RetryPolicy,
) -> Outcome:
    """A pending ``outcome`` retried no sooner than ``until_ms`` (an open circuit's reopening),
    or dead when that next attempt would fall beyond the retry window."""
    if outcome.state != PENDING:
        return outcome
    next_ms = max(outcome.next_attempt_ms, until_ms)
    if next_ms > window_start_ms + policy.window_s * 1000:
        reason = (f"gave up after {attempts} attempt(s): the retry window of "
                  f"{duration(policy.window_s)} ended; last: {outcome.last_error}")  # fmt: skip
        return replace(outcome, state=DEAD, next_attempt_ms=now_ms, last_error=reason)
    return replace(outcome, next_attempt_ms=next_ms)


# --- the circuit breaker -----------------------------------------------------------------

CLOSED: Final = "closed"
OPEN: Final = "open"
HALF_OPEN: Final = "half_open"
Change = tuple[str, str]  # (old state, new state)
# Each change is also an event of the destination's workspace, appended by the dispatcher; it
# names no person.
CIRCUIT_CHANGED: Final = "destination.circuit_changed"
DISPATCHER_SOURCE: Final = "_dispatcher"  # the source of the events the dispatcher appends


@dataclass(frozen=True, slots=True)
class BreakerPolicy:
    """Open after ``threshold`` consecutive failures; stay open ``cooldown_s``, doubled at each
    re-open up to ``max_cooldown_s``; then let one probe through."""

    threshold: int = 5
    cooldown_s: float = 30.0
    max_cooldown_s: float = 600.0


@dataclass(slots=True)
class Circuit:
    """One destination's circuit. While open nothing is sent, so a destination that is down
    costs one probe per cool-down instead of a timeout per delivery."""

    state: str = CLOSED
    failures: int = 0  # consecutive
    opened_at_ms: int | None = None
    reopen_at_ms: int | None = None
    probing: bool = field(default=False, compare=False)

    def admit(self, now_ms: int) -> tuple[int | None, Change | None]:
        """How many requests may start now (None: the circuit sets no limit), and the state
        change that asking caused (an open circuit whose cool-down is over is half-open)."""
        change = None
        if self.state == OPEN and self.reopen_at_ms is not None and now_ms >= self.reopen_at_ms:
            change = (OPEN, HALF_OPEN)
            self.state = HALF_OPEN
        if self.state == OPEN:
            return 0, change
        if self.state == HALF_OPEN:
            return (0 if self.probing else 1), change
        return None, change

    def started(self) -> None:
        if self.state == HALF_OPEN:
            self.probing = True

    def record(self, failure: bool | None, now_ms: int, policy: BreakerPolicy) -> Change | None:
        """An attempt's result: ``failure`` True or False, or None when nothing was sent."""
        if self.state == HALF_OPEN:
            self.probing = False
        if failure is None:
            return None
        if self.state == OPEN:  # an answer to a request sent before it opened
            return None
        if not failure:
            self.failures = 0
            if self.state == HALF_OPEN:
                self.state, self.opened_at_ms, self.reopen_at_ms = CLOSED, None, None
                return (HALF_OPEN, CLOSED)
            return None
        self.failures += 1
        if self.state == HALF_OPEN:
            previous = (self.reopen_at_ms or now_ms) - (self.opened_at_ms or now_ms)
            cooldown_ms = min(policy.max_cooldown_s * 1000, max(previous * 2, 1))
            self._open(now_ms, int(cooldown_ms))
            return (HALF_OPEN, OPEN)
        if self.failures >= policy.threshold:
            self._open(now_ms, int(policy.cooldown_s * 1000))
            return (CLOSED, OPEN)
        return None

    def _open(self, now_ms: int, cooldown_ms: int) -> None:
        self.state, self.opened_at_ms, self.reopen_at_ms = OPEN, now_ms, now_ms + cooldown_ms


# --- the address guard -------------------------------------------------------------------

_HOSTNAME = re.compile(r"^(?=.{1,253}$)[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?"
                       r"(\.[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?)*$")  # fmt: skip
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_CATEGORIES = (
    ("is_unspecified", "an unspecified"),
    ("is_loopback", "a loopback"),
    ("is_link_local", "a link-local"),
    ("is_multicast", "a multicast"),
    ("is_reserved", "a reserved"),
    ("is_private", "a private"),
)


@dataclass(frozen=True, slots=True)
class AllowList:
    """Hosts and addresses the guard lets through although they are not public (a receiver
    on this machine or the private network): host names, IP addresses and CIDR ranges."""

    hosts: frozenset[str] = frozenset()
    networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def parse(cls, entries: Iterable[str] | str) -> AllowList:
        """From entries such as ``["127.0.0.1", "10.1.0.0/16", "hooks.internal"]``; a string is
        split on commas and spaces. ValueError names an entry that is none of these."""
        if isinstance(entries, str):
            entries = [entries]
        hosts: set[str] = set()
        networks: list[IPNetwork] = []
        for entry in (e for item in entries for e in re.split(r"[,\s]+", item) if e):
            try:
                networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
                continue
            except ValueError:
                pass
            host = entry.lower().rstrip(".")
            if not _HOSTNAME.match(host):
                raise ValueError(
                    f"allow: {entry!r} is not a host name, an IP address or a CIDR range"
                )
            hosts.add(host)
        return cls(frozenset(hosts), tuple(networks))

    def allows_host(self, host: str) -> bool:
        return host.lower().rstrip(".") in self.hosts

    def allows_address(self, address: IPAddress) -> bool:
        mapped = address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) else None
        return any(address in net or (mapped is not None and mapped in net)
                   for net in self.networks)  # fmt: skip


def address_problem(address: IPAddress) -> str | None:
    """Why a request must not go to ``address`` (None when it is a public address)."""
    inner: IPAddress | None = None
    if isinstance(address, ipaddress.IPv6Address):
        inner = address.ipv4_mapped or address.sixtofour
        if inner is None and address in _NAT64:
            inner = ipaddress.IPv4Address(int(address) & 0xFFFF_FFFF)
    for candidate in (address,) if inner is None else (inner, address):
        for attribute, label in _CATEGORIES:
            if getattr(candidate, attribute):
                return f"{label} address"
        if not candidate.is_global:
            return "not a public address"
    return None


def blocked(host: str, addresses: Iterable[IPAddress], allow: AllowList) -> str | None:
    """Why a request to ``host``, resolving to ``addresses``, is refused; None when it may go.
    Every address must be public or allowed: a host that also resolves to a private address
    could be served from it."""
    if allow.allows_host(host):
        return None
    for address in addresses:
        problem = address_problem(address)
        if problem is not None and not allow.allows_address(address):
            where = str(address) if host.strip("[]") == str(address) else f"{host} ({address})"
            return (f"url: {where} is {problem}; webhooks go to public addresses only "
                    "(to permit it, add it to webhook_allow or to deliver --allow)")  # fmt: skip
    return None


def ip_literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
    except ValueError:
        return None


def resolve(host: str, port: int) -> list[IPAddress]:
    """The addresses of ``host`` (blocking: the API calls it from a worker thread)."""
    literal = ip_literal(host)
    if literal is not None:
        return [literal]
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return unique_addresses(info[4][0] for info in infos)


def unique_addresses(raw: Iterable[object]) -> list[IPAddress]:
    out: list[IPAddress] = []
    for item in raw:
        address = ip_literal(str(item))
        if address is not None and address not in out:
            out.append(address)
    return out


# --- a destination's settings ------------------------------------------------------------

_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]{1,100}$")
RESERVED_HEADERS: Final = frozenset({
    "host", "content-length", "content-type", "content-encoding", "transfer-encoding",
    "connection", "keep-alive", "upgrade", "te", "trailer", "accept-encoding",
    "webhook-id", "webhook-timestamp", "webhook-signature",
})  # fmt: skip


@dataclass(frozen=True, slots=True)
class Target:
    scheme: str
    host: str
    port: int


def check_url(url: str) -> Target:
    """The scheme, host and port of a destination URL; DestinationError naming ``url``."""
    if len(url) > MAX_URL_CHARS:
        raise DestinationError("url", f"is longer than {MAX_URL_CHARS} characters")
    if any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in url):
        raise DestinationError("url", "contains white space or control characters")
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise DestinationError("url", f"is not a valid URL ({exc})") from None
    scheme = parts.scheme.lower()
    if scheme not in {"http", "https"}:
        raise DestinationError(
            "url", f"scheme {parts.scheme or '(none)'!r} is not allowed; use https (or http)"
        )
    host = parts.hostname
    if not host:
        raise DestinationError("url", "has no host; use https://host/path")
    if parts.username is not None or parts.password is not None:
        raise DestinationError(
            "url", "must not hold credentials; send them with the destination's headers"
        )
    if ip_literal(host) is None:
        try:
            ascii_host = host.encode("idna").decode("ascii")
        except UnicodeError:
            ascii_host = ""
        if not _HOSTNAME.match(ascii_host.rstrip(".")):
            raise DestinationError("url", f"host {host!r} is not a valid host name")
    return Target(scheme, host, port or (443 if scheme == "https" else 80))


def check_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """Extra request headers, checked: names are HTTP tokens, values one line, and none of
    the headers the dispatcher sets itself (signature, content, framing)."""
    if len(headers) > MAX_HEADERS:
        raise DestinationError("headers", f"at most {MAX_HEADERS} headers")
    out: dict[str, str] = {}
    for name, value in headers.items():
        if not isinstance(name, str) or not _TOKEN.match(name):
            raise DestinationError(f"headers.{name}", "is not a valid header name")
        if name.lower() in RESERVED_HEADERS:
            raise DestinationError(
                f"headers.{name}", "is set by Worldflow for every delivery; leave it out"
            )
        if (
            not isinstance(value, str)
            or len(value) > 4096
            or any((ord(ch) < 0x20 and ch != "\t") or ord(ch) == 0x7F for ch in value)
        ):
            raise DestinationError(
                f"headers.{name}", "must be a string of at most 4096 characters on one line"
            )
        out[name] = value
    return out
