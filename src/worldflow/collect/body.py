"""Reading request bodies within limits: size before and after decompression, encodings."""

from __future__ import annotations

import zlib

from starlette.requests import Request

from worldflow.collect.errors import ApiError

_WBITS = {"gzip": 31, "x-gzip": 31, "deflate": 15}


def too_large(size_hint: str, limit: int) -> ApiError:
    return ApiError(
        413,
        "payload_too_large",
        f"request body {size_hint} exceeds the limit of {limit} bytes "
        f"({limit // 1024} KB); send smaller batches",
    )


async def read_body(request: Request, limit: int) -> bytes:
    """The decoded body; 413 past ``limit`` bytes (compressed or not), 415 for unknown encodings."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise too_large(f"of {length} bytes", limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large("", limit)
        chunks.append(chunk)
    body = b"".join(chunks)
    encoding = request.headers.get("content-encoding", "").strip().lower()
    if encoding in ("", "identity"):
        # Some clients gzip without saying so; the magic number tells.
        if body[:2] == b"\x1f\x8b":
            return _inflate(body, 31, limit)
        return body
    wbits = _WBITS.get(encoding)
    if wbits is None:
        raise ApiError(
            415,
            "unsupported_encoding",
            f"Content-Encoding {encoding!r} is not supported; use gzip, deflate or none",
        )
    return _inflate(body, wbits, limit)


def _inflate(body: bytes, wbits: int, limit: int) -> bytes:
    """Decompress within ``limit``; gzip bodies may hold several members, one after another."""
    parts: list[bytes] = []
    size = 0
    rest = body
    while True:
        inflater = zlib.decompressobj(wbits)
        try:
            out = inflater.decompress(rest, limit + 1 - size)
        except zlib.error as exc:
            raise ApiError(
                400, "invalid_encoding", f"body could not be decompressed: {exc}"
            ) from exc
        size += len(out)
        if size > limit or inflater.unconsumed_tail:
            raise too_large("after decompression", limit)
        if not inflater.eof:
            raise ApiError(400, "invalid_encoding", "compressed body is truncated")
        parts.append(out)
        rest = inflater.unused_data
        if not rest or wbits != 31:
            return b"".join(parts)
