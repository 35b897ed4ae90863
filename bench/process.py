"""Processing throughput: the event log into profiles, with realistic identity churn.

    python -m bench.process [--visitors 20000] [--repeat 3] [--store URL]

A log of a day of visitors is written once (each visitor on one to three devices or worlds,
each with its own anonymous id; two in five log in mid-visit, which merges their devices'
profiles; some link a wallet or a platform account; consent changes; sessions with and
without an explicit end). Then the processor rebuilds every profile from offset 0, as
``worldflow replay`` does, in one process on one core: its figure is events/s and CPU-µs per
event (the SQL store's work included). The baseline, measured in the same run, is the floor
of any consumer of this log: reading the same entries in the same batches and decoding each
canonical event, nothing else.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
import sqlalchemy as sa

from worldflow.events.catalogue import Catalogue
from worldflow.events.model import Event, decode_event, encode_event
from worldflow.events.segment import SegmentTranslator
from worldflow.log.sql import read_entries
from worldflow.processing import replay
from worldflow.store.schema import event_log
from worldflow.store.sql import SqlStore

WORLDS = ["paris-showroom", "neo-tokyo-store", "concert-hall"]
ZONES = ["lobby", "sneakers", "jackets", "bags", "checkout", "stage"]
SKUS = [f"SKU-{i:03d}" for i in range(60)]
START = datetime(2026, 11, 2, 0, 0, tzinfo=UTC)


def visitor(rng: random.Random, n: int) -> Iterator[tuple[datetime, dict[str, Any]]]:
    """One person's day: (time, Segment message) pairs."""
    devices = [f"anon-{n}-{d}" for d in range(rng.choice([1, 1, 2, 2, 3]))]
    user = f"user-{n}" if rng.random() < 0.4 else None
    at = START + timedelta(seconds=rng.uniform(0, 86_000))
    for d, anon in enumerate(devices):
        world = WORLDS[(n + d) % len(WORLDS)]
        for _ in range(rng.choice([1, 1, 2, 3])):
            session = str(uuid.UUID(int=rng.getrandbits(128)))
            ctx = {
                "world": {"id": world, "scene": "main"},
                "session_id": session,
                "platform": "webxr",
                "device": {"id": f"dev-{n}-{d}"},
            }

            def track(
                name: str,
                props: dict[str, Any],
                when: datetime,
                ctx: dict[str, Any] = ctx,
                anon: str = anon,
            ) -> tuple[datetime, dict[str, Any]]:
                return when, {
                    "type": "track",
                    "event": name,
                    "anonymousId": anon,
                    "properties": props,
                    "context": ctx,
                }

            yield track("session.started", {"entry_point": "direct"}, at)
            if rng.random() < 0.3:
                yield track(
                    "consent.updated",
                    {
                        "scopes": {
                            "analytics": True,
                            "gaze": rng.random() < 0.3,
                            "marketing_contact": rng.random() < 0.5,
                        }
                    },
                    at,
                )
            for zone in rng.sample(ZONES, rng.randint(1, 4)):
                at += timedelta(seconds=rng.uniform(5, 60))
                yield track("zone.entered", {"zone_id": zone, "zone_type": "showroom"}, at)
                for sku in rng.sample(SKUS, rng.randint(1, 4)):
                    obj = {"object_id": f"{world}/{zone}/{sku}", "product": {"sku": sku}}
                    at += timedelta(seconds=rng.uniform(2, 20))
                    yield track(
                        "object.viewed", {"obj": obj, "view_ms": rng.randint(500, 9000)}, at
                    )
                    if rng.random() < 0.5:
                        source = "eye" if rng.random() < 0.2 else "head"
                        yield track(
                            "object.gaze_dwell",
                            {"obj": obj, "source": source, "dwell_ms": rng.randint(300, 5000)},
                            at,
                        )
                    if rng.random() < 0.15:
                        yield track("product.tried_on", {"obj": obj, "slot": "feet"}, at)
                    if rng.random() < 0.05:
                        money = {"amount": "89.00", "currency": "EUR"}
                        yield track("cart.item_added", {"obj": obj, "qty": 1, "money": money}, at)
                        if rng.random() < 0.5:
                            yield track(
                                "order.completed",
                                {
                                    "order_id": f"o-{n}-{at.timestamp()}",
                                    "total": money,
                                    "items": [{"sku": sku, "qty": 1}],
                                },
                                at,
                            )
                yield track(
                    "zone.exited", {"zone_id": zone, "dwell_ms": rng.randint(5000, 90000)}, at
                )
            if user is not None and rng.random() < 0.7:
                yield (
                    at,
                    {
                        "type": "identify",
                        "anonymousId": anon,
                        "userId": user,
                        "traits": {
                            "email": f"{user}@example.com",
                            "plan": rng.choice(["free", "vip"]),
                        },
                        "context": ctx,
                    },
                )
            if rng.random() < 0.1:
                yield track("wallet.connected", {"chain_id": "1", "address_hash": f"w{n}"}, at)
            if rng.random() < 0.7:
                yield track("session.ended", {"reason": "quit"}, at)
            at += timedelta(minutes=rng.uniform(40, 600))


def write_log(url: str, visitors: int) -> int:
    store = SqlStore(url)
    store.migrate()
    workspace = store.bootstrap("wk_bench", "wat_bench").workspace_id
    rng = random.Random(11)
    messages = sorted(
        (pair for n in range(visitors) for pair in visitor(rng, n)), key=lambda p: p[0]
    )
    translator = SegmentTranslator(Catalogue.default(), 32 * 1024, 10**9)
    rows = []
    for i, (at, message) in enumerate(messages):
        message["messageId"] = f"m-{i}"
        message["timestamp"] = at.isoformat()
        (event,) = translator.translate(
            [msgspec.json.encode(message)],
            workspace_id=workspace,
            source_id="bench",
            received_at=at,
        )
        assert isinstance(event, Event), event
        rows.append(
            {
                "workspace_id": workspace,
                "message_id": event.message_id,
                "partition": 0,
                "received_at_ms": int(at.timestamp() * 1000),
                "body": encode_event(event),
            }
        )
    with store.engine.begin() as conn:
        for start in range(0, len(rows), 5000):
            conn.execute(sa.insert(event_log), rows[start : start + 5000])
    store.close()
    return len(rows)


def measure(fn: Any) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--visitors", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--store", default="", help="store URL (default: SQLite in a temp dir)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        url = args.store or f"sqlite:///{Path(tmp) / 'bench.db'}"
        started = time.perf_counter()
        events = write_log(url, args.visitors)
        print(
            f"log: {events:,} events from {args.visitors:,} visitors "
            f"(written in {time.perf_counter() - started:.1f} s)"
        )
        engine = SqlStore(url).engine

        def baseline() -> None:
            after = 0
            while entries := read_entries(engine, after, 2000):
                for entry in entries:
                    decode_event(entry.body)
                after = entries[-1].offset

        counters: dict[str, int] = {}

        def process() -> None:
            counters.update(replay(url))

        base, runs = [], []
        for _ in range(args.repeat):
            base.append(measure(baseline))
            runs.append(measure(process))
        wall = statistics.median(r[0] for r in runs)
        cpu = statistics.median(r[1] for r in runs)
        base_wall = statistics.median(b[0] for b in base)
        print(
            f"processed: {counters.get('profiles_created', 0):,} profiles created, "
            f"{counters.get('merges', 0):,} merges, "
            f"{counters.get('sessions_synthesised', 0):,} session ends synthesised, "
            f"{counters.get('minimised', 0):,} events minimised"
        )
        print(
            f"processor: {events / wall:,.0f} events/s (median of {args.repeat}: "
            f"{', '.join(f'{events / r[0]:,.0f}' for r in runs)}), "
            f"{cpu / events * 1e6:.1f} CPU-µs/event"
        )
        print(
            f"baseline (read + decode only): {events / base_wall:,.0f} events/s, "
            f"{base_wall / events * 1e6:.1f} µs/event"
        )
        print(f"ratio processor/baseline throughput: {base_wall / wall:.2f}")
        engine.dispose()


if __name__ == "__main__":
    main()
