"""A million profiles: the processor's memory stays bounded, and a lookup stays fast.

    python -m bench.profiles [--profiles 1000000] [--lookups 5000]

A log with one visit per person is written (each person an anonymous id and a device; one in
ten logs in, adding a user id and an e-mail), then ``worldflow replay`` builds the profiles in
a child process whose peak RSS is the figure. The baseline is the same command on an empty
log: the interpreter, the libraries and the catalogue. The processor keeps at most
``max_profiles`` (20,000) profiles and ``max_identities`` (100,000) identities in memory;
colder ones are dropped after each commit (least recently used first) and read back from the
store when they are next needed.

Then ``worldflow serve`` runs on that store and this process looks up random people by
anonymous id (``GET /v1/profiles/by/anonymous_id/…``, keep-alive, one at a time): p50/p99,
against ``GET /healthz`` on the same connection as the floor of the HTTP stack.
"""

from __future__ import annotations

import argparse
import http.client
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import sqlalchemy as sa

from bench.common import ADMIN_TOKEN, WRITE_KEY, free_port, wait_ready
from worldflow.events.model import Event, encode_event
from worldflow.store.schema import event_log
from worldflow.store.sql import SqlStore

START = datetime(2026, 11, 2, tzinfo=UTC)


def write_log(url: str, people: int) -> int:
    store = SqlStore(url)
    store.migrate()
    workspace = store.bootstrap(WRITE_KEY, ADMIN_TOKEN).workspace_id
    rows: list[dict[str, object]] = []
    written = 0

    def add(event: Event) -> None:
        rows.append({"workspace_id": workspace, "message_id": event.message_id, "partition": 0,
                     "received_at_ms": int(event.received_at.timestamp() * 1000),
                     "body": encode_event(event)})  # fmt: skip

    with store.engine.begin() as conn:
        for n in range(people):
            at = START + timedelta(milliseconds=n * 50)
            common = {"workspace_id": workspace, "source_id": "bench", "channel": "segment",
                      "timestamp": at, "received_at": at, "anonymous_id": f"anon-{n}",
                      "context": {"world": {"id": "paris-showroom"}, "session_id": f"s-{n}",
                                  "device": {"id": f"dev-{n}"}}}  # fmt: skip
            add(
                Event(
                    message_id=f"z-{n}",
                    type="track",
                    name="zone.entered",
                    properties={"zone_id": "lobby"},
                    **common,
                )
            )  # type: ignore[arg-type]
            if n % 10 == 0:
                add(
                    Event(
                        message_id=f"i-{n}",
                        type="identify",
                        user_id=f"user-{n}",
                        traits={"email": f"p{n}@example.com", "plan": "vip"},
                        **common,
                    )
                )  # type: ignore[arg-type]
            if len(rows) >= 20_000:
                conn.execute(sa.insert(event_log), rows)
                written += len(rows)
                rows.clear()
        if rows:
            conn.execute(sa.insert(event_log), rows)
            written += len(rows)
    store.close()
    return written


def replay_peak_rss_mib(url: str) -> tuple[float, float]:
    """(peak RSS in MiB, seconds) of `worldflow replay` in a child process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "worldflow", "replay", "--store", url],
                   check=True, capture_output=True)  # fmt: skip
    elapsed = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    # ru_maxrss of children is the largest of any child so far: measure the small run first.
    return max(after, before) / 1024, elapsed


def timed_gets(port: int, paths: list[str]) -> list[float]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    out = []
    for path in paths:
        start = time.perf_counter()
        conn.request("GET", path, headers=headers)
        response = conn.getresponse()
        response.read()
        out.append(time.perf_counter() - start)
        assert response.status == 200, (path, response.status)
    conn.close()
    return out


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return 1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--profiles", type=int, default=1_000_000)
    parser.add_argument("--lookups", type=int, default=5000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="wf-bench-") as tmp:
        empty = f"sqlite:///{Path(tmp) / 'empty.db'}"
        write_log(empty, 0)
        base_rss, _ = replay_peak_rss_mib(empty)
        url = f"sqlite:///{Path(tmp) / 'big.db'}"
        started = time.perf_counter()
        events = write_log(url, args.profiles)
        print(f"log: {events:,} events for {args.profiles:,} people "
              f"(written in {time.perf_counter() - started:.0f} s)")  # fmt: skip
        rss, seconds = replay_peak_rss_mib(url)
        print(f"replay: {events / seconds:,.0f} events/s; peak RSS {rss:,.0f} MiB "
              f"(baseline, the same command on an empty log: {base_rss:,.0f} MiB; "
              f"ratio {rss / base_rss:.1f})")  # fmt: skip
        port = free_port()
        env = {**os.environ, "WORLDFLOW_LOG_LEVEL": "warning"}
        server = subprocess.Popen(
            [sys.executable, "-m", "worldflow", "serve", "--store", url, "--port", str(port),
             "--data-dir", str(Path(tmp) / "data")],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            wait_ready(port, server)
            rng = random.Random(3)
            people = [rng.randrange(args.profiles) for _ in range(args.lookups)]
            timed_gets(port, [f"/v1/profiles/by/anonymous_id/anon-{n}" for n in people[:200]])
            floor = timed_gets(port, ["/healthz"] * args.lookups)
            lookups = timed_gets(port, [f"/v1/profiles/by/anonymous_id/anon-{n}" for n in people])
            common = timed_gets(port, ["/v1/profiles?trait=plan&value=vip&limit=50"] * 5)
            rare = timed_gets(port, ["/v1/profiles?trait=plan&value=nobody&limit=50"] * 3)
        finally:
            server.terminate()
            server.wait(30)
        print(f"profile lookup among {args.profiles:,}: p50 {pct(lookups, 0.5):.2f} ms, "
              f"p99 {pct(lookups, 0.99):.2f} ms ({len(lookups):,} random people)")  # fmt: skip
        print(f"search by trait (no index: scans newest first): 50 of a common value "
              f"{statistics.median(common) * 1000:.0f} ms, a value nobody has "
              f"{statistics.median(rare) * 1000:.0f} ms")  # fmt: skip
        ratio = statistics.median(lookups) / statistics.median(floor)
        print(f"baseline GET /healthz: p50 {pct(floor, 0.5):.2f} ms, "
              f"p99 {pct(floor, 0.99):.2f} ms; ratio p50 {ratio:.1f}")  # fmt: skip


if __name__ == "__main__":
    main()
