"""Durable ingest over HTTP: throughput with batches of 100, latency of single events, memory.

    python -m bench.ingest [--seconds 10]

Prints the figures and the ratio against a bare ASGI endpoint measured in the same run.
"""

from __future__ import annotations

import argparse
import json

from bench.common import baseline_server, loadgen, peak_rss_mib, worldflow_server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--rate", type=float, default=2000)
    args = parser.parse_args()
    secs = str(args.seconds)

    with baseline_server() as (port, _pid):
        loadgen("batch", "--port", str(port), "--seconds", "2")  # warm-up
        base = loadgen("batch", "--port", str(port), "--seconds", secs,
                       "--connections", str(args.connections))  # fmt: skip
    with worldflow_server() as (port, pid):
        loadgen("batch", "--port", str(port), "--seconds", "2")
        wf = loadgen("batch", "--port", str(port), "--seconds", secs,
                     "--connections", str(args.connections))  # fmt: skip
        single = loadgen("rate", "--port", str(port), "--seconds", secs, "--rate",
                         str(args.rate), "--connections", "32")  # fmt: skip
        rss = peak_rss_mib(pid)

    ratio = wf["events_per_s"] / base["events_per_s"]
    print("== durable ingest, batches of 100 events over HTTP ==")
    print(f"bare ASGI (read+discard): {base['events_per_s']:>10,.0f} events/s "
          f"(p50 {base['p50_ms']:.1f} ms, p99 {base['p99_ms']:.1f} ms per batch)")  # fmt: skip
    print(f"worldflow (durable):      {wf['events_per_s']:>10,.0f} events/s "
          f"(p50 {wf['p50_ms']:.1f} ms, p99 {wf['p99_ms']:.1f} ms per batch), "
          f"errors {wf['errors']:.0f}")  # fmt: skip
    print(f"ratio worldflow / bare ASGI: {ratio:.2f}")
    print(f"== single events at {args.rate:,.0f} requests/s ==")
    print(f"achieved {single['achieved_rate']:,.0f} req/s, p50 {single['p50_ms']:.2f} ms, "
          f"p99 {single['p99_ms']:.2f} ms, max {single['max_ms']:.1f} ms, "
          f"errors {single['errors']:.0f}")  # fmt: skip
    print(f"== server peak RSS: {rss:.0f} MiB ==")
    print(json.dumps({"baseline": base, "worldflow": wf, "single": single, "ratio": ratio,
                      "peak_rss_mib": rss}))  # fmt: skip


if __name__ == "__main__":
    main()
