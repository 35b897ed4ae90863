"""A small HTTP/1.1 load generator (keep-alive, raw asyncio streams) for the ingest benchmarks.

Run as its own process so that it does not share a GIL with the server it measures::

    python -m bench.loadgen batch --port 8080 --seconds 10 --connections 8 --batch 100
    python -m bench.loadgen rate --port 8080 --seconds 10 --rate 2000 --connections 32
    python -m bench.loadgen rate --port 8080 --rate 5000 --decide lobby-billboard --people 5000

Prints one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import statistics
import time
import uuid

try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
    uvloop = None  # type: ignore[assignment]

EVENT = (
    '{"type":"track","event":"object.gaze_dwell","userId":"user-%(u)d","messageId":"%(id)s",'
    '"timestamp":"2026-12-03T10:00:00.000Z","properties":{"obj":{"object_id":"sneaker-%(o)d",'
    '"product":{"sku":"SNK-%(o)d"}},"source":"head","dwell_ms":%(d)d},'
    '"context":{"library":{"name":"bench","version":"1"},"world":{"id":"paris-showroom",'
    '"scene":"main","zone":"sneakers"},"session_id":"s-%(u)d","platform":"webxr"}}'
)

DECIDE = ('{"placement":"%(p)s","userId":"user-%(u)d","context":{"world":"paris-showroom",'
          '"zone":"lobby"}}')  # fmt: skip


def batch_body(prefix: str, seq: int, size: int) -> bytes:
    events = ",".join(
        EVENT % {"u": (seq * size + i) % 5000, "id": f"{prefix}-{seq}-{i}", "o": i % 40, "d": i}
        for i in range(size)
    )
    return f'{{"batch":[{events}],"sentAt":"2026-12-03T10:00:00.100Z"}}'.encode()


SEQ = b"#SEQ#SEQ#"  # replaced per request by a 9-digit number: unique ids, cheaply


class Batches:
    """Request bodies from a few precomputed templates, so that the generator spends its CPU on
    sending, not on formatting 100 events per request (it shares the machine with the server)."""

    def __init__(self, prefix: str, size: int, templates: int = 50) -> None:
        self.templates = [batch_body(f"{prefix}-{SEQ.decode()}", k, size)
                          for k in range(templates)]  # fmt: skip

    def body(self, seq: int) -> bytes:
        return self.templates[seq % len(self.templates)].replace(SEQ, b"%09d" % seq)


def request_bytes(path: str, body: bytes, auth: str) -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
        f"Authorization: Basic {auth}\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    if length:
        await reader.readexactly(length)
    return status


async def run_batch(args: argparse.Namespace) -> dict[str, object]:
    """Closed loop: each connection sends the next batch as soon as the last is answered."""
    auth = base64.b64encode(f"{args.write_key}:".encode()).decode()
    prefix = uuid.uuid4().hex[:8]
    stop_at = time.perf_counter() + args.seconds
    counts = {"requests": 0, "events": 0, "errors": 0}
    latencies: list[float] = []

    async def worker(conn: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", args.port)
        batches = Batches(f"{prefix}-{conn}", args.batch)
        seq = 0
        while time.perf_counter() < stop_at:
            body = batches.body(seq)
            seq += 1
            started = time.perf_counter()
            writer.write(request_bytes(args.path, body, auth))
            status = await read_response(reader)
            latencies.append(time.perf_counter() - started)
            counts["requests"] += 1
            if status == 200:
                counts["events"] += args.batch
            else:
                counts["errors"] += 1
        writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker(c) for c in range(args.connections)))
    elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "mode": "batch",
        "seconds": round(elapsed, 3),
        **counts,
        "events_per_s": counts["events"] / elapsed,
        "requests_per_s": counts["requests"] / elapsed,
        "p50_ms": 1000 * latencies[len(latencies) // 2] if latencies else None,
        "p99_ms": 1000 * latencies[int(len(latencies) * 0.99)] if latencies else None,
    }


async def run_rate(args: argparse.Namespace) -> dict[str, object]:
    """Open loop at a fixed request rate; latency is measured from the scheduled send time, so a
    stalled server shows up in the figures instead of slowing the generator down. With
    ``--per-request N`` (N > 1) each request is a Segment batch of N events to /v1/batch."""
    auth = base64.b64encode(f"{args.write_key}:".encode()).decode()
    prefix = uuid.uuid4().hex[:8]
    total = int(args.rate * args.seconds)
    interval = 1.0 / args.rate
    queue: asyncio.Queue[tuple[int, float]] = asyncio.Queue()
    latencies: list[float] = []
    counts = {"requests": 0, "errors": 0}
    batches = Batches(prefix, args.per_request) if args.per_request > 1 else None

    async def worker() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", args.port)
        while True:
            seq, scheduled = await queue.get()
            if seq < 0:
                break
            if args.decide:
                body = DECIDE % {"p": args.decide, "u": seq % args.people}
                writer.write(request_bytes("/v1/decide", body.encode(), auth))
            elif batches is not None:
                writer.write(request_bytes("/v1/batch", batches.body(seq), auth))
            else:
                event = EVENT % {"u": seq % 5000, "id": f"{prefix}-{seq}", "o": seq % 40, "d": seq}
                writer.write(request_bytes("/v1/track", event.encode(), auth))
            status = await read_response(reader)
            latencies.append(time.perf_counter() - scheduled)
            counts["requests"] += 1
            if status != 200:
                counts["errors"] += 1
        writer.close()

    workers = [asyncio.create_task(worker()) for _ in range(args.connections)]
    start = time.perf_counter()
    for seq in range(total):
        scheduled = start + seq * interval
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        queue.put_nowait((seq, scheduled))
    for _ in workers:
        queue.put_nowait((-1, 0.0))
    await asyncio.gather(*workers)
    elapsed = time.perf_counter() - start
    latencies.sort()
    return {
        "mode": "rate",
        "target_rate": args.rate,
        "achieved_rate": counts["requests"] / elapsed,
        **counts,
        "p50_ms": 1000 * statistics.median(latencies),
        "p99_ms": 1000 * latencies[int(len(latencies) * 0.99)],
        "max_ms": 1000 * latencies[-1],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["batch", "rate"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--rate", type=float, default=2000)
    parser.add_argument("--per-request", type=int, default=1, help="rate mode: events per request")
    parser.add_argument("--path", default="/v1/batch")
    parser.add_argument("--decide", default="", help="rate mode: decisions for this placement")
    parser.add_argument("--people", type=int, default=5000, help="--decide: for user-0…N-1")
    parser.add_argument("--write-key", default=os.environ.get("WORLDFLOW_WRITE_KEY", "bench"))
    args = parser.parse_args()
    run = run_batch if args.mode == "batch" else run_rate
    runner = uvloop.run if uvloop is not None else asyncio.run
    print(json.dumps(runner(run(args))))


if __name__ == "__main__":
    main()
