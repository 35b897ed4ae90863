"""Journeys: pending waits firing, and an event's webhook, on this machine.

    python -m bench.journeys [--waits 100000] [--seconds 10] [--rate 100]

1. **Firing waits.** A log holds a journey's activation, then ``--waits`` people starting it
   (``trial.started``, one each, a millisecond apart, each opening a session). The journey
   waits an hour, then decides a webhook. The processor (one core, as ``worldflow replay``
   runs it) applies them, so that every one has a pending wait; then a tick of the log clock
   45 minutes later ends every session by its idle timeout (the baseline: the same timer
   path, the same profiles loaded and written, without journeys), and a tick after the hour
   fires every wait, each deciding its webhook (a ``deliveries`` row). Figures: waits fired
   per second (target ≥ 10,000/s) against session timers per second.
2. **Live, through ``worldflow serve``.** A local receiver verifies every webhook with the
   public ``standardwebhooks`` library. Journey ``now`` sends a webhook on the entry event;
   journey ``later`` waits two seconds first. A steady ``--rate`` of entry events (one
   request each) for ``--seconds``: event → webhook received p50/p99 (baseline: the
   acknowledgement of the same requests), and for ``later`` the firing lag: webhook received
   minus the instant the wait ended (target p99 ≤ 1 s).
"""

from __future__ import annotations

import argparse
import base64
import json
import statistics
import tempfile
import time
import urllib.request
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from bench.common import ADMIN_TOKEN, WRITE_KEY, worldflow_server
from bench.process import START
from worldflow.demo import Receiver
from worldflow.engine import TICK_WORKSPACE, tick_record_body
from worldflow.events.model import Event, encode_event
from worldflow.journeys.definition import validate
from worldflow.processing import build, settle_gc, tune_gc
from worldflow.store.definitions import SqlDefinitionStore, definition_record
from worldflow.store.schema import deliveries, event_log
from worldflow.store.sql import SqlStore, create_store_engine

HOUR_MS = 3_600_000
TRIAL = {"kind": "journey", "key": "trial", "status": "active",
         "entry": {"event": "trial.started"},
         "steps": [{"wait": "1h"}, {"action": {"webhook": "crm", "body": {"n": 1}}}]}  # fmt: skip


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# --- 1. firing waits ----------------------------------------------------------------------------


def _append(store: SqlStore, rows: list[dict[str, Any]]) -> None:
    with store.engine.begin() as conn:
        for start in range(0, len(rows), 20_000):
            conn.execute(sa.insert(event_log), rows[start : start + 20_000])


def firing(tmp: Path, waits: int) -> None:
    url = f"sqlite:///{tmp / 'waits.db'}"
    store = SqlStore(url)
    store.migrate()
    workspace = store.bootstrap(WRITE_KEY, ADMIN_TOKEN).workspace_id
    start_ms = int(START.timestamp() * 1000)
    version, _ = SqlDefinitionStore(store.engine).put(workspace, validate(TRIAL))
    rows = [definition_record(workspace, "journey", "trial", version, 0, start_ms)._asdict()]
    for n in range(waits):
        at = START + timedelta(milliseconds=n + 1)
        event = Event(message_id=f"t-{n}", workspace_id=workspace, source_id="bench",
                      channel="segment", type="track", name="trial.started", custom=True,
                      timestamp=at, received_at=at, user_id=f"u-{n}",
                      context={"session_id": f"s-{n}"})  # fmt: skip
        rows.append(
            {
                "workspace_id": workspace,
                "message_id": event.message_id,
                "partition": 0,
                "received_at_ms": int(at.timestamp() * 1000),
                "body": encode_event(event),
            }
        )
    _append(store, rows)
    engine = create_store_engine(url, derived_only=True)
    processor = build(engine, (0,), batch_size=5000, emit=True)
    tune_gc()
    started = time.process_time()
    while processor.step():
        settle_gc()
    entered = time.process_time() - started

    def tick(at_ms: int) -> float:
        _append(store, [{"workspace_id": TICK_WORKSPACE, "message_id": f"tick-{at_ms}",
                         "partition": 0, "received_at_ms": at_ms,
                         "body": tick_record_body(at_ms)}])  # fmt: skip
        began = time.process_time()
        while processor.step():
            settle_gc()
        return time.process_time() - began

    sessions_s = tick(start_ms + waits + 45 * 60_000)
    waits_s = tick(start_ms + waits + HOUR_MS + 60_000)
    with store.engine.connect() as conn:
        decided = conn.execute(sa.select(sa.func.count()).select_from(deliveries)).scalar()
    counters = processor.counters()
    engine.dispose()
    store.close()
    assert decided == waits, (decided, waits)
    assert counters.get("sessions_synthesised") == waits, counters
    print(f"{waits:,} people entered, each with a pending wait: {waits / entered:,.0f} "
          f"entries/s (CPU)")  # fmt: skip
    print(f"waits fired: {waits / waits_s:,.0f}/s per core ({waits_s:.2f} CPU-s for {waits:,}, "
          f"each deciding a webhook) (target: ≥ 10,000/s)")  # fmt: skip
    print(
        f"baseline, the same profiles' session timers: {waits / sessions_s:,.0f}/s per core "
        f"({sessions_s:.2f} CPU-s); ratio waits/sessions {sessions_s / waits_s:.2f}"
    )


# --- 2. live ------------------------------------------------------------------------------------


def _call(port: int, method: str, path: str, body: Any, token: str | None = None) -> Any:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method,
                                     data=json.dumps(body).encode(), headers=headers)  # fmt: skip
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read() or b"null")


def live(seconds: float, rate: float) -> None:
    receiver = Receiver()
    secret = receiver.secret
    journeys = {
        "now": {"entry": {"event": "now.started"},
                "steps": [{"action": {"webhook": "crm"}}]},
        "later": {"entry": {"event": "later.started"},
                  "steps": [{"wait": "2s"}, {"action": {"webhook": "crm"}}]},
    }  # fmt: skip
    with worldflow_server(extra_env={"WORLDFLOW_WEBHOOK_ALLOW": "127.0.0.1"}) as (port, _):
        _call(port, "PUT", "/v1/destinations/crm", {"url": receiver.url, "secret": secret},
              ADMIN_TOKEN)  # fmt: skip
        for key, body in journeys.items():
            _call(port, "PUT", f"/v1/journeys/{key}", {**body, "status": "active"}, ADMIN_TOKEN)
        time.sleep(1.0)  # activations reach the processor
        auth = "Basic " + base64.b64encode(f"{WRITE_KEY}:".encode()).decode()
        sent: dict[str, float] = {}
        acks: list[float] = []
        interval, began, n = 1 / rate, time.perf_counter(), 0
        while (elapsed := time.perf_counter() - began) < seconds:
            if elapsed < n * interval:
                time.sleep(n * interval - elapsed)
            user = f"u{n}"
            name = "now.started" if n % 2 == 0 else "later.started"
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}/v1/track", method="POST",
                data=json.dumps({"userId": user, "event": name}).encode(),
                headers={"Content-Type": "application/json", "Authorization": auth},
            )  # fmt: skip
            t0 = time.time()
            with urllib.request.urlopen(request, timeout=10) as response:
                response.read()
            acks.append(time.time() - t0)
            sent[user] = t0
            n += 1
        deadline = time.monotonic() + 30
        while len(receiver.arrived) < n and time.monotonic() < deadline:
            time.sleep(0.1)
    now_ms, lag_ms = [], []
    for arrived, data in receiver.arrived.values():
        user = data["profile"]["user_id"]
        if data["journey"] == "now":
            now_ms.append((arrived - sent[user]) * 1000)
        else:  # "at": when the wait ended, on the log's clock (the server's time)
            lag_ms.append((arrived - datetime.fromisoformat(data["at"]).timestamp()) * 1000)
    ack_ms = [a * 1000 for a in acks]
    print(
        f"live: {n:,} entry events at {rate:,.0f}/s for {seconds:.0f} s; "
        f"{receiver.received:,} webhooks received, {receiver.rejected} with a bad signature"
    )
    print(f"event → webhook received (journey now): p50 {statistics.median(now_ms):.1f} ms, "
          f"p99 {pct(now_ms, 0.99):.1f} ms; baseline, the event's acknowledgement: p50 "
          f"{statistics.median(ack_ms):.1f} ms, p99 {pct(ack_ms, 0.99):.1f} ms; ratio at p50 "
          f"{statistics.median(now_ms) / statistics.median(ack_ms):.1f}")  # fmt: skip
    print(f"wait fired → webhook received (journey later, 2 s wait): p50 "
          f"{statistics.median(lag_ms):.1f} ms, p99 {pct(lag_ms, 0.99):.1f} ms "
          f"(target p99 ≤ 1,000 ms)")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--waits", type=int, default=100_000)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--rate", type=float, default=100)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="wf-bench-") as tmp:
        firing(Path(tmp), args.waits)
    if args.seconds:
        live(args.seconds, args.rate)


if __name__ == "__main__":
    main()
