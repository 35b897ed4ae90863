"""Decisions at a steady rate: server latency of ``POST /v1/decide`` with 1,000 segments and
100 eligible offers per placement.

    python -m bench.decide [--rate 5000] [--seconds 10] [--people 5000]

A fresh ``worldflow serve`` gets 1,000 segments on traits and behaviour, a placement with
100 offers (each eligible through one of the segments, all of which hold for everybody, so
that every decision chooses among 100), and ``--people`` profiles. A load generator in its
own process then asks for decisions at ``--rate`` per second, open loop, for those people.
The figures are the server's own latency histogram for the route (p50/p99) and the client's;
the baseline is the same load on a placement with no offers (the same request, profile read
and answer, nothing to choose), measured in the same run.
"""

from __future__ import annotations

import argparse
import base64
import json
import time
import urllib.request
from typing import Any

from bench.common import WRITE_KEY, admin, loadgen, worldflow_server
from worldflow.metrics import latency_quantiles

SEGMENTS = 1000
OFFERS = 100


def metrics(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return str(response.read().decode())


def segment(i: int) -> dict[str, Any]:
    """Half always true (a level of at least 0), half on behaviour in a window."""
    if i % 2 == 0:
        return {"condition": {">=": [{"var": "traits.level"}, 0]}}
    return {"condition": {">=": [{"count": {"event": "zone.entered", "within": "7d"}}, i % 5]}}


def setup(port: int, people: int) -> None:
    for i in range(SEGMENTS):
        admin(port, "PUT", f"/v1/segments/seg-{i}", segment(i))
    for key in ("lobby-billboard", "empty-billboard"):
        admin(port, "PUT", f"/v1/placements/{key}", {"type": "billboard", "strategy": "bandit",
              "fallback": {"type": "text", "text": "Welcome"}})  # fmt: skip
    for i in range(OFFERS):
        admin(
            port,
            "PUT",
            f"/v1/offers/offer-{i}",
            {
                "placements": ["lobby-billboard"],
                "eligible": {"in_segment": f"seg-{2 * i}"},
                "content": {"type": "image", "image_url": f"https://cdn.example/{i}.png"},
            },
        )
    batch = []
    for u in range(people):
        batch.append({"type": "identify", "userId": f"user-{u}",
                      "traits": {"level": u % 10, "plan": "free"}})  # fmt: skip
    auth = {"Authorization": "Basic " + base64.b64encode(f"{WRITE_KEY}:".encode()).decode()}
    for start in range(0, len(batch), 500):
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/batch", method="POST",
            data=json.dumps({"batch": batch[start:start + 500]}).encode(),
            headers={"Content-Type": "application/json", **auth})  # fmt: skip
        with urllib.request.urlopen(request, timeout=60) as response:
            response.read()
    while True:  # the processor has applied everything
        status = admin(port, "GET", "/v1/processor")
        if status["partitions"]["0"]["lag"] == 0:
            break
        time.sleep(0.5)


def run(port: int, placement: str, args: argparse.Namespace) -> dict[str, Any]:
    before = metrics(port)
    client = loadgen("rate", "--port", str(port), "--seconds", str(args.seconds), "--rate",
                     str(args.rate), "--connections", "32", "--decide", placement,
                     "--people", str(args.people))  # fmt: skip
    p50, p99 = latency_quantiles(metrics(port), "/v1/decide", since=before)
    return {"client": client, "p50": p50, "p99": p99}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rate", type=float, default=5000)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--people", type=int, default=5000)
    args = parser.parse_args()
    with worldflow_server() as (port, _pid):
        began = time.perf_counter()
        setup(port, args.people)
        print(f"set up: {SEGMENTS} segments, {OFFERS} offers, {args.people:,} people in "
              f"{time.perf_counter() - began:.0f} s")  # fmt: skip
        run(port, "lobby-billboard", argparse.Namespace(**{**vars(args), "seconds": 2}))
        base = run(port, "empty-billboard", args)
        ours = run(port, "lobby-billboard", args)
    for name, r in (("100 eligible offers", ours), ("baseline, no offer", base)):
        c = r["client"]
        print(f"{name}: {c['achieved_rate']:,.0f} decisions/s of {args.rate:,.0f} "
              f"({c['errors']:.0f} errors); server p50 {r['p50']:.2f} ms, p99 {r['p99']:.2f} ms; "
              f"client p50 {c['p50_ms']:.2f} ms, p99 {c['p99_ms']:.2f} ms")  # fmt: skip
    print(f"target: server p99 ≤ 5 ms; ratio p99 100 offers / no offer: "
          f"{ours['p99'] / base['p99']:.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
