"""Durable ingest over HTTP: throughput with batches of 100, latency of single events, memory.

    python -m bench.ingest [--seconds 10] [--workers 1 2]

For each worker count, Worldflow and a bare ASGI endpoint that reads and discards the same
bodies (the limit of the HTTP stack here) run with that many processes, and the load generator
runs in its own process on the same machine. Prints figures and the ratio.
"""

from __future__ import annotations

import argparse
import json

from bench.common import baseline_server, loadgen, peak_rss_mib, worldflow_server


def run(workers: int, seconds: float, connections: int, rate: float) -> dict[str, object]:
    secs = str(seconds)
    batch = ["--seconds", secs, "--connections", str(connections)]
    with baseline_server(workers) as (port, _pid):
        loadgen("batch", "--port", str(port), "--seconds", "2")  # warm-up
        base = loadgen("batch", "--port", str(port), *batch)
    with worldflow_server(workers) as (port, pid):
        loadgen("batch", "--port", str(port), "--seconds", "2")
        wf = loadgen("batch", "--port", str(port), *batch)
        rss = peak_rss_mib(pid)
    # A fresh server, so the checkpoints of the batch run's writes do not colour the latencies.
    with worldflow_server(workers) as (port, _pid):
        loadgen("rate", "--port", str(port), "--seconds", "2", "--rate", str(rate))
        single = loadgen("rate", "--port", str(port), "--seconds", secs, "--rate", str(rate),
                         "--connections", "32")  # fmt: skip
    ratio = wf["events_per_s"] / base["events_per_s"]
    print(f"== {workers} worker process(es) ==")
    print(f"bare ASGI (read+discard): {base['events_per_s']:>10,.0f} events/s "
          f"(batch p50 {base['p50_ms']:.1f} ms, p99 {base['p99_ms']:.1f} ms)")  # fmt: skip
    print(f"worldflow (durable):      {wf['events_per_s']:>10,.0f} events/s "
          f"(batch p50 {wf['p50_ms']:.1f} ms, p99 {wf['p99_ms']:.1f} ms), "
          f"errors {wf['errors']:.0f}")  # fmt: skip
    print(f"ratio worldflow / bare ASGI: {ratio:.2f}")
    print(f"single events at {rate:,.0f} req/s: achieved {single['achieved_rate']:,.0f} req/s, "
          f"p50 {single['p50_ms']:.2f} ms, p99 {single['p99_ms']:.2f} ms, "
          f"max {single['max_ms']:.1f} ms, errors {single['errors']:.0f}")  # fmt: skip
    print(f"server peak RSS (all processes): {rss:.0f} MiB")
    return {"workers": workers, "baseline": base, "worldflow": wf, "single": single,
            "ratio": ratio, "peak_rss_mib": rss}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rate", type=float, default=2000)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    print("durable ingest over HTTP, batches of 100 events; load generator on the same machine")
    results = [run(w, args.seconds, args.connections, args.rate) for w in args.workers]
    print(json.dumps(results))


if __name__ == "__main__":
    main()
