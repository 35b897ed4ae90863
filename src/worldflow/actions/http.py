"""The HTTP client the dispatcher shares, whose every connection checks where it goes.

The address guard runs when a connection is opened, on the addresses it is about to use, and
the connection is made to the address that was checked: a host name that resolves to a public
address when a destination is saved and to a private one later (DNS rebinding) is refused
then. TLS still verifies the certificate against the host name. Proxies from the
environment are ignored and redirects are not followed: either would send the request
somewhere the guard did not look.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterable
from typing import Any

import httpcore
import httpx

from worldflow import __version__
from worldflow.actions.webhooks import AllowList, blocked, ip_literal, unique_addresses

USER_AGENT = f"Worldflow-Webhooks/{__version__}"


class BlockedAddressError(Exception):
    """The destination's address is not one requests may go to; the message names it."""


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """Resolves, checks, then connects to a checked address."""

    def __init__(self, allow: AllowList, inner: httpcore.AsyncNetworkBackend | None = None):
        self.allow = allow
        self.inner = inner or httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        literal = ip_literal(host)
        if literal is not None:
            addresses = [literal]
        else:
            loop = asyncio.get_running_loop()
            try:
                async with asyncio.timeout(timeout):
                    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            except TimeoutError:
                raise httpcore.ConnectTimeout(f"{host}: name resolution timed out") from None
            except OSError as exc:
                raise httpcore.ConnectError(f"{host}: does not resolve ({exc})") from None
            addresses = unique_addresses(info[4][0] for info in infos)
        problem = blocked(host, addresses, self.allow)
        if problem is not None:
            raise BlockedAddressError(problem)
        if not addresses:
            raise httpcore.ConnectError(f"{host}: resolves to no address")
        error: Exception | None = None
        for address in addresses:  # in the resolver's order of preference
            try:
                return await self.inner.connect_tcp(
                    str(address), port, timeout=timeout, local_address=local_address,
                    socket_options=socket_options,
                )  # fmt: skip
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                error = exc
        assert error is not None
        raise error

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.AsyncNetworkStream:
        raise BlockedAddressError("url: Unix sockets are not destinations")

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


class _OriginTransport(httpx.AsyncHTTPTransport):
    def __init__(self, allow: AllowList, limits: httpx.Limits) -> None:
        super().__init__(limits=limits, trust_env=False)
        # httpx offers no way to hand its connection pool a network backend: build the pool
        # as it does, with the guarded backend.
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(trust_env=False),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=GuardedBackend(allow),
        )


class GuardedTransport(httpx.AsyncBaseTransport):
    """A connection pool per origin (scheme, host, port). httpcore's pool looks at each of its
    connections for every request, so one pool shared by all destinations costs more the more
    destinations there are; one per origin costs what that origin's connections cost, and a
    slow origin's connections are never in another's way."""

    def __init__(self, allow: AllowList, max_connections: int, idle_s: float = 120) -> None:
        self.allow = allow
        self.limits = httpx.Limits(
            max_connections=max_connections,
            max_keepalive_connections=max_connections,
            keepalive_expiry=30,
        )
        self.idle_s = idle_s
        self._origins: dict[tuple[bytes, bytes, int | None], tuple[_OriginTransport, float]] = {}
        self._swept = time.monotonic()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        now = time.monotonic()
        origin = (request.url.raw_scheme, request.url.raw_host, request.url.port)
        found = self._origins.get(origin)
        transport = found[0] if found else _OriginTransport(self.allow, self.limits)
        self._origins[origin] = (transport, now)
        if now - self._swept > self.idle_s:
            await self._close_idle(now)
        return await transport.handle_async_request(request)

    async def _close_idle(self, now: float) -> None:
        """Pools of origins not asked for longer than any request lasts (a destination
        deleted, or moved elsewhere)."""
        self._swept = now
        for origin, (transport, used) in list(self._origins.items()):
            if now - used > self.idle_s:
                del self._origins[origin]
                await transport.aclose()

    async def aclose(self) -> None:
        origins, self._origins = self._origins, {}
        for transport, _ in origins.values():
            await transport.aclose()


def guarded_client(allow: AllowList, max_connections: int) -> httpx.AsyncClient:
    """One client for all deliveries (``max_connections`` at most to one origin: the
    dispatcher's own limits bound what is in flight)."""
    return httpx.AsyncClient(
        transport=GuardedTransport(allow, max_connections),
        trust_env=False,
        follow_redirects=False,
        headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity"},
    )
