"""Event → in-world action received on the push channel, through a segment entry and a
journey step, under a steady background load.

    python -m bench.push [--rate 2000] [--seconds 20]

A fresh ``worldflow serve`` with a world's key, a segment (entered a lobby in the last hour)
and a journey that enters on it and pushes a billboard to the person. A load generator in
its own process sends a steady ``--rate`` events/s (Segment batches of 100) meanwhile. Every
50 ms a probe — a new visitor already connected to ``/v1/push`` — sends its ``zone.entered``
over the socket and waits for the action frame. The figure is p50/p99 of sent → action
received; the baseline, from the same probes, is sent → the event's acknowledgement on the
same socket (durable in the log).
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time

from websockets.sync.client import connect

from bench.common import admin, loadgen, worldflow_server
from bench.e2e import pct

SEGMENT = {"condition": {">=": [{"count": {"event": "zone.entered", "within": "1h",
                                           "where": {"==": [{"var": "zone_id"}, "lobby"]}}},
                                1]}}  # fmt: skip
JOURNEY = {"status": "active", "entry": {"segment": "in-lobby"},
           "steps": [{"action": {"inworld": {"placement": "lobby-billboard",
                                             "content": {"text": "Welcome"}}}}]}  # fmt: skip


def probe(
    port: int, key: str, seconds: float, every: float = 0.05
) -> tuple[list[float], list[float]]:
    acks, actions = [], []
    deadline = time.monotonic() + seconds
    n = 0
    while time.monotonic() < deadline:
        visitor = f"probe-{time.time_ns()}-{n}"
        n += 1
        with connect(f"ws://127.0.0.1:{port}/v1/push?key={key}", open_timeout=10) as ws:
            ws.send(json.dumps({"type": "hello", "anonymousId": visitor, "zone": "lobby"}))
            json.loads(ws.recv(timeout=10))  # welcome
            event = {"type": "track", "event": "zone.entered", "anonymousId": visitor,
                     "properties": {"zone_id": "lobby", "zone_type": "lobby"}}  # fmt: skip
            start = time.perf_counter()
            ws.send(json.dumps({"id": n, "batch": [event]}))
            acked = got = None
            while got is None:
                frame = json.loads(ws.recv(timeout=10))
                if frame.get("ack") == n:
                    acked = time.perf_counter()
                elif frame.get("type") == "action":
                    got = time.perf_counter()
                    ws.send(json.dumps({"type": "ack", "id": frame["id"]}))
            if acked is None:  # the action came first: the ack is next
                json.loads(ws.recv(timeout=10))
                acked = time.perf_counter()
        acks.append(acked - start)
        actions.append(got - start)
        time.sleep(max(0.0, every - (time.perf_counter() - start)))
    return acks, actions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rate", type=float, default=2_000, help="background events/s")
    parser.add_argument("--seconds", type=float, default=20)
    args = parser.parse_args()
    with worldflow_server() as (port, _pid):
        key = admin(port, "POST", "/v1/sources", {"name": "lobby", "world": "showroom"})
        admin(port, "PUT", "/v1/segments/in-lobby", SEGMENT)
        admin(port, "PUT", "/v1/journeys/greet", JOURNEY)
        time.sleep(1.0)  # the activations reach the processor
        load: dict[str, float] = {}
        command = ["rate", "--port", str(port), "--seconds", str(args.seconds + 2),
                   "--rate", str(args.rate / 100), "--per-request", "100",
                   "--connections", "4"]  # fmt: skip
        thread = threading.Thread(target=lambda: load.update(loadgen(*command)))
        thread.start()
        time.sleep(2)  # let the load settle
        acks, actions = probe(port, key["write_key"], args.seconds)
        thread.join()
    achieved = load["achieved_rate"] * 100
    print(f"background load: {achieved:,.0f} events/s achieved of {args.rate:,.0f} "
          f"({load['errors']:.0f} errors)")  # fmt: skip
    print(f"probes: {len(actions)} new visitors on the push channel")
    print(f"event sent → in-world action received: p50 {pct(actions, 0.5):.1f} ms, "
          f"p99 {pct(actions, 0.99):.1f} ms (target p99 ≤ 50 ms)")  # fmt: skip
    print(f"baseline, event sent → acknowledged (durable): p50 {pct(acks, 0.5):.1f} ms, "
          f"p99 {pct(acks, 0.99):.1f} ms")  # fmt: skip
    print(f"ratio action/ack p50: {statistics.median(actions) / statistics.median(acks):.1f}")


if __name__ == "__main__":
    main()
