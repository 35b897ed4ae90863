"""The HTTP client the dispatcher shares, whose every connection checks where it goes.

The address guard runs when a connection is opened, on the addresses it is about to use, and
the connection is made to the address that was checked: a host name that resolves to a public
address when a destination is saved and to a private one later (DNS rebinding) is refused
then. TLS still verifies the certificate against the host name. Proxies from the
environment are ignored and redirects are not followed: either would send the request
somewhere the guard did not look.

It does what webhooks need and nothing else: a POST with a body, over HTTP/1.1 with
keep-alive, its answer parsed by httptools (llhttp, in C), on the event loop's own transports.
Connections are kept per origin (scheme, host, port) and reused most recently used first;
one is reused only if its last answer said it may be and the peer has not closed it (a flag
the loop keeps, no system call). Each request is one write. A general-purpose client costs
several times as much per request (a pool that looks at every connection for every request,
cookies, redirects, auth hooks), and a webhook dispatcher spends its time there.
"""

from __future__ import annotations

import asyncio
import functools
import socket
import ssl
import time
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final, cast

import httptools
import httpx

from worldflow import __version__
from worldflow.actions.webhooks import AllowList, blocked, ip_literal, unique_addresses

USER_AGENT = f"Worldflow-Webhooks/{__version__}"
READ_BODY_BYTES: Final = 64 * 1024  # of an answer: a longer one is cut, its connection closed
_PATH_SAFE: Final = "/%:@!$&'()*+,;=-._~?"


class BlockedAddressError(Exception):
    """The destination's address is not one requests may go to; the message names it."""


class RequestError(Exception):
    """No answer: the host does not resolve, the connection failed or was closed before the
    answer ended, or what came back is not HTTP/1.x. The message says which."""


class InvalidURLError(Exception):
    """The URL cannot be requested (its form; ``check_url`` explains it better)."""


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    headers: dict[str, str]  # lower-case names; a repeated header keeps its last value
    body: bytes  # at most READ_BODY_BYTES of it


@dataclass(frozen=True, slots=True)
class _Target:
    origin: tuple[str, str, int]  # scheme, host (ASCII), port
    head: bytes  # the request line and the headers every request to it has


@functools.lru_cache(maxsize=4096)
def _target(url: str) -> _Target:
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
        host = (parts.hostname or "").encode("idna").decode("ascii")
    except (ValueError, UnicodeError) as exc:
        raise InvalidURLError(f"url: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in {"http", "https"} or not host:
        raise InvalidURLError("url: needs http:// or https:// and a host")
    default = 443 if scheme == "https" else 80
    port = port or default
    path = urllib.parse.quote(parts.path or "/", safe=_PATH_SAFE)
    if parts.query:
        path += "?" + urllib.parse.quote(parts.query, safe=_PATH_SAFE)
    authority = f"[{host}]" if ":" in host else host
    if port != default:
        authority += f":{port}"
    head = f"POST {path} HTTP/1.1\r\nHost: {authority}\r\nAccept-Encoding: identity\r\n"
    return _Target((scheme, host, port), head.encode("ascii"))


class _Connection(asyncio.Protocol):
    """One keep-alive connection: sends a request, parses its answer as it arrives."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False  # by the peer, or lost
        self.reusable = False
        self.idle_since = 0.0
        self._parser = httptools.HttpResponseParser(self)
        self._answer: asyncio.Future[Answer] | None = None
        self._status = 0
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []
        self._size = 0
        self._started = False  # the answer's headers are complete

    # -- the event loop's callbacks ---------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses

    def data_received(self, data: bytes) -> None:
        if self._answer is None or self._answer.done():
            self.close()  # nothing was asked: this connection is not in a state to reuse
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(RequestError(f"the answer is not HTTP/1.1 ({exc})"))
            self.close()

    def eof_received(self) -> bool:
        self._ended(None)
        return False  # the transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        self._ended(exc)

    # -- httptools' callbacks ---------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self._status = self._parser.get_status_code()
        self._started = True

    def on_body(self, body: bytes) -> None:
        if self._size < READ_BODY_BYTES:
            self._body.append(body)
            self._size += len(body)
            if self._size >= READ_BODY_BYTES:  # enough of it: the rest is not read
                self._resolve(reusable=False)

    def on_message_complete(self) -> None:
        if 100 <= self._status < 200:  # informational: the answer follows
            self._reset()
            return
        self._resolve(reusable=self._parser.should_keep_alive())

    # -- requests ---------------------------------------------------------------------------

    async def request(self, data: bytes) -> Answer:
        if self.closed or self.transport is None or self.transport.is_closing():
            raise RequestError("the connection is closed")
        self._reset()
        self.reusable = False
        answer: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        self._answer = answer
        self.transport.write(data)
        return await answer

    def close(self) -> None:
        self.reusable = False
        if self.transport is not None:
            self.transport.close()

    def _reset(self) -> None:
        self._status = 0
        self._headers = {}
        self._body = []
        self._size = 0
        self._started = False

    def _resolve(self, reusable: bool) -> None:
        answer = self._answer
        if answer is not None and not answer.done():
            self.reusable = reusable and not self.closed
            body = b"".join(self._body)[:READ_BODY_BYTES]
            answer.set_result(Answer(self._status, self._headers, body))

    def _fail(self, exc: Exception) -> None:
        if self._answer is not None and not self._answer.done():
            self._answer.set_exception(exc)

    def _ended(self, exc: Exception | None) -> None:
        self.closed = True
        self.reusable = False
        if self._started:  # an answer without a length ends with its connection
            self._resolve(reusable=False)
        reason = f" ({exc})" if exc is not None else ""
        self._fail(RequestError(f"the connection was closed before the answer{reason}"))


@dataclass(slots=True)
class _Origin:
    idle: list[_Connection] = field(default_factory=list)  # most recently used last
    used: float = 0.0


class WebhookClient:
    """One client for all deliveries: at most ``max_idle`` idle connections kept per origin
    (the dispatcher's own limits bound what is in flight), each for ``keepalive_s``."""

    def __init__(self, allow: AllowList, max_idle: int, *, keepalive_s: float = 30.0,
                 idle_s: float = 120.0) -> None:  # fmt: skip
        self.allow = allow
        self.max_idle = max_idle
        self.keepalive_s = keepalive_s
        self.idle_s = idle_s
        self._origins: dict[tuple[str, str, int], _Origin] = {}
        self._swept = time.monotonic()
        self._ssl: ssl.SSLContext | None = None

    async def __aenter__(self) -> WebhookClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> Answer:
        """POST ``body`` with ``headers`` (and Host, User-Agent unless given, Content-Length,
        ``Accept-Encoding: identity``). Raises BlockedAddressError, InvalidURLError or
        RequestError; the caller bounds the time (a cancelled request closes its
        connection)."""
        target = _target(url)
        now = time.monotonic()
        origin = self._origins.get(target.origin)
        if origin is None:
            origin = self._origins[target.origin] = _Origin()
        origin.used = now
        if now - self._swept > self.idle_s:
            self._sweep(now)
        lines = [target.head]
        agent = True
        for name, value in headers.items():
            lines.append(f"{name}: {value}\r\n".encode())
            if agent and name.lower() == "user-agent":
                agent = False
        if agent:
            lines.append(b"User-Agent: " + USER_AGENT.encode() + b"\r\n")
        lines += (b"Content-Length: %d\r\n\r\n" % len(body), body)
        connection = self._idle(origin, now) or await self._connect(target)
        try:
            answer = await connection.request(b"".join(lines))
        except BaseException:
            connection.close()
            raise
        if connection.reusable and len(origin.idle) < self.max_idle:
            connection.idle_since = time.monotonic()
            origin.idle.append(connection)
        else:
            connection.close()
        return answer

    def _idle(self, origin: _Origin, now: float) -> _Connection | None:
        idle = origin.idle
        while idle:
            connection = idle.pop()
            if not connection.closed and now - connection.idle_since < self.keepalive_s:
                return connection
            connection.close()
        return None

    async def _connect(self, target: _Target) -> _Connection:
        scheme, host, port = target.origin
        loop = asyncio.get_running_loop()
        literal = ip_literal(host)
        if literal is not None:
            addresses = [literal]
        else:
            try:
                infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            except OSError as exc:
                raise RequestError(f"{host}: does not resolve ({exc})") from None
            addresses = unique_addresses(info[4][0] for info in infos)
        problem = blocked(host, addresses, self.allow)
        if problem is not None:
            raise BlockedAddressError(problem)
        if not addresses:
            raise RequestError(f"{host}: resolves to no address")
        context = None
        if scheme == "https":
            if self._ssl is None:
                self._ssl = httpx.create_ssl_context(trust_env=False)
            context = self._ssl
        error: OSError | None = None
        for address in addresses:  # in the resolver's order of preference
            try:
                _, connection = await loop.create_connection(
                    _Connection, str(address), port, ssl=context,
                    server_hostname=host if context is not None else None,
                )  # fmt: skip
            except OSError as exc:  # ssl.SSLError included: a certificate that does not verify
                error = exc
                continue
            return connection
        assert error is not None
        raise RequestError(f"{host}:{port}: {error.strerror or error}")

    def _sweep(self, now: float) -> None:
        """Forget origins not asked for in ``idle_s`` (a destination deleted or moved), and
        close idle connections past their keep-alive."""
        self._swept = now
        for key, origin in list(self._origins.items()):
            keep = [c for c in origin.idle
                    if not c.closed and now - c.idle_since < self.keepalive_s]  # fmt: skip
            for connection in origin.idle:
                if connection not in keep:
                    connection.close()
            origin.idle = keep
            if not keep and now - origin.used > self.idle_s:
                del self._origins[key]

    async def aclose(self) -> None:
        origins, self._origins = self._origins, {}
        for origin in origins.values():
            for connection in origin.idle:
                connection.close()
        await asyncio.sleep(0)  # let the transports close


def guarded_client(allow: AllowList, max_connections: int) -> WebhookClient:
    """The client of one dispatcher (``max_connections``: idle ones kept per origin)."""
    return WebhookClient(allow, max_connections)
