"""The dispatcher's HTTP client against scripted peers on 127.0.0.1: keep-alive and when a
connection is not reused, answers of every framing, and failures."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from worldflow.actions.http import (
    READ_BODY_BYTES,
    USER_AGENT,
    BlockedAddressError,
    RequestError,
    WebhookClient,
)
from worldflow.actions.webhooks import AllowList

LOCAL = AllowList.parse(["127.0.0.1"])
Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]


async def _request(reader: asyncio.StreamReader) -> tuple[bytes, bytes] | None:
    """One request (head, body) read off a connection; None at its end."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))  # fmt: skip
    return head, await reader.readexactly(length)


def serve(script: Script, peer: Callable[[WebhookClient, str, list[Any]], Awaitable[None]]) -> Any:
    """Run ``peer(client, url, seen)`` against a server whose every connection runs
    ``script(reader, writer, n)`` (n: the connection's number, from 1); ``seen`` collects
    what the server read."""

    async def main() -> list[Any]:
        seen: list[Any] = []
        connections = 0

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal connections
            connections += 1
            seen.append(("connection", connections))
            try:
                await script(reader, writer, connections)
            finally:
                writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            async with WebhookClient(LOCAL, 8) as client:
                await asyncio.wait_for(peer(client, f"http://127.0.0.1:{port}/in?a=1", seen), 10)
        finally:
            server.close()
        return seen

    return asyncio.run(main())


def keep_alive(answer: bytes) -> Script:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _n: int) -> None:
        while await _request(reader) is not None:
            writer.write(answer)
            await writer.drain()

    return script


def test_requests_share_one_kept_alive_connection_and_say_who_sends_them() -> None:
    heads: list[bytes] = []

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _n: int) -> None:
        while (request := await _request(reader)) is not None:
            heads.append(request[0] + request[1])
            writer.write(b"HTTP/1.1 202 Accepted\r\nContent-Length: 2\r\nX-Seen: yes\r\n\r\nok")
            await writer.drain()

    async def peer(client: WebhookClient, url: str, seen: list[Any]) -> None:
        for n in range(3):
            answer = await client.post(url, b'{"n":%d}' % n, {"Content-Type": "application/json"})
            assert (answer.status, answer.body, answer.headers["x-seen"]) == (202, b"ok", "yes")

    seen = serve(script, peer)
    assert seen == [("connection", 1)]
    first = heads[0].decode()
    assert first.startswith("POST /in?a=1 HTTP/1.1\r\nHost: 127.0.0.1:")
    assert f"User-Agent: {USER_AGENT}\r\n" in first and "Accept-Encoding: identity\r\n" in first
    assert "Content-Type: application/json\r\n" in first
    assert first.endswith('Content-Length: 7\r\n\r\n{"n":0}')


def test_a_destination_may_name_its_own_user_agent() -> None:
    heads: list[bytes] = []

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _n: int) -> None:
        request = await _request(reader)
        assert request is not None
        heads.append(request[0])
        writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")

    async def peer(client: WebhookClient, url: str, seen: list[Any]) -> None:
        assert (await client.post(url, b"{}", {"user-agent": "crm-hooks"})).status == 204

    serve(script, peer)
    assert heads[0].count(b"ser-agent") == 1 and b"user-agent: crm-hooks\r\n" in heads[0]


@pytest.mark.parametrize(
    ("answer", "body"),
    [
        (b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 4\r\n\r\ndone", b"done"),
        (b"HTTP/1.0 200 OK\r\nContent-Length: 4\r\n\r\ndone", b"done"),
        (b"HTTP/1.1 200 OK\r\n\r\nuntil the end", b"until the end"),  # no length: ends with EOF
    ],
)  # fmt: skip
def test_a_connection_the_answer_does_not_keep_is_not_reused(answer: bytes, body: bytes) -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _n: int) -> None:
        await _request(reader)
        writer.write(answer)
        await writer.drain()

    async def peer(client: WebhookClient, url: str, seen: list[Any]) -> None:
        for _ in range(2):
            got = await client.post(url, b"{}", {})
            assert (got.status, got.body) == (200, body)

    assert serve(script, peer) == [("connection", 1), ("connection", 2)]


def test_chunked_and_informational_answers() -> None:
    answer = (b"HTTP/1.1 100 Continue\r\n\r\n"
              b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 7\r\nTransfer-Encoding: chunked"
              b"\r\n\r\n5\r\nslow \r\n4\r\ndown\r\n0\r\n\r\n")  # fmt: skip

    async def peer(client: WebhookClient, url: str, seen: list[Any]) -> None:
        for _ in range(2):
            got = await client.post(url, b"{}", {})
            assert (got.status, got.headers["retry-after"], got.body) == (429, "7", b"slow down")

    assert serve(keep_alive(answer), peer) == [("connection", 1)]


def test_a_long_answer_is_cut_and_its_connection_closed() -> None:
    size = READ_BODY_BYTES * 4
    answer = b"HTTP/1.1 500 Oops\r\nContent-Length: %d\r\n\r\n" % size + b"x" * size

    async def peer(client: WebhookClient, url: str, seen: list[Any]) -> None:
        for _ in range(2):
            got = await client.post(url, b"{}", {})
            assert got.status == 500 and len(got.body) == READ_BODY_BYTES

    assert serve(keep_alive(answer), peer) == [("connection", 1), ("connection", 2)]


def test_a_connection_the_peer_closed_while_idle_is_not_reused() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _n: int) -> None:
        await _request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()  # then closes, as a receiver whose keep-alive timeout is short

    async def peer(client: WebhookClient, url: str, seen: list[Any]) -> None:
        assert (await client.post(url, b"{}", {})).status == 200
        await asyncio.sleep(0.1)  # the close reaches the client
        assert (await client.post(url, b"{}", {})).status == 200

    assert serve(script, peer) == [("connection", 1), ("connection", 2)]


@pytest.mark.parametrize(
    ("answer", "says"),
    [
        (b"", "the connection was closed before the answer"),
        (b"HTTP/1.1 200 OK\r\nContent-Len", "the connection was closed before the answer"),
        (b"SMTP ready\r\n\r\n", "the answer is not HTTP/1.1"),
    ],
)  # fmt: skip
def test_no_answer_is_an_error_naming_why(answer: bytes, says: str) -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _n: int) -> None:
        await _request(reader)
        writer.write(answer)
        await writer.drain()

    async def peer(client: WebhookClient, url: str, seen: list[Any]) -> None:
        with pytest.raises(RequestError, match=says):
            await client.post(url, b"{}", {})

    serve(script, peer)


def test_connections_go_only_where_the_guard_lets_them() -> None:
    async def main() -> None:
        async with WebhookClient(AllowList(), 8) as client:
            with pytest.raises(BlockedAddressError, match=r"127\.0\.0\.1 is a loopback address"):
                await client.post("http://127.0.0.1:9/in", b"{}", {})
            with pytest.raises(BlockedAddressError, match=r"localhost \(.*loopback"):
                await client.post("http://localhost:9/in", b"{}", {})
        async with WebhookClient(LOCAL, 8) as client:
            with pytest.raises(RequestError, match=r"127\.0\.0\.1:9: "):  # nobody listens there
                await client.post("http://127.0.0.1:9/in", b"{}", {})

    asyncio.run(main())
