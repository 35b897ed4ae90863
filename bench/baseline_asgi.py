"""The limit of the HTTP stack here: a bare ASGI app that reads each body and discards it.

Served by uvicorn with the same loop and parser as Worldflow, so the ratio against it says how
much of the machine's HTTP capacity ingestion keeps.
"""

from __future__ import annotations

import sys

import uvicorn
from starlette.types import Receive, Scope, Send

OK = b'{"success":true}'


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    if scope["path"] == "/readyz":
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]}
        )
        await send({"type": "http.response.body", "body": b"ok"})
        return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json"), (b"content-length", b"16")],
        }
    )
    await send({"type": "http.response.body", "body": OK})


if __name__ == "__main__":
    workers = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    uvicorn.run(
        "bench.baseline_asgi:app", host="127.0.0.1", port=int(sys.argv[1]), loop="uvloop",
        http="httptools", log_level="warning", access_log=False, workers=workers,
    )  # fmt: skip
