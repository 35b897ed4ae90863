"""Durable ingest over HTTP: throughput with batches of 100, latency of single events, memory.

    python -m bench.ingest [--seconds 10] [--workers 1 2] [--repeat 3]

For each worker count, Worldflow and a bare ASGI endpoint that reads and discards the same
bodies (the limit of the HTTP stack here) run with that many processes; the load generator runs
in its own process on the same machine. Each measurement is repeated and the median reported,
since these machines are noisy.
"""

from __future__ import annotations

import argparse
import json
import statistics
from typing import Any

from bench.common import (
    baseline_server,
    loadgen,
    peak_rss_mib,
    server_latency_ms,
    worldflow_server,
)


def median_of(runs: list[dict[str, Any]], key: str) -> float:
    return float(statistics.median(r[key] for r in runs))


def run(workers: int, seconds: float, connections: int, rate: float, repeat: int) -> dict[str, Any]:
    secs = str(seconds)
    batch = ["--seconds", secs, "--connections", str(connections)]
    base_runs, wf_runs, single_runs, server_side, rss = [], [], [], [], []
    for _ in range(repeat):
        with baseline_server(workers) as (port, _pid):
            loadgen("batch", "--port", str(port), "--seconds", "2")  # warm-up
            base_runs.append(loadgen("batch", "--port", str(port), *batch))
        with worldflow_server(workers) as (port, pid):
            loadgen("batch", "--port", str(port), "--seconds", "2")
            wf_runs.append(loadgen("batch", "--port", str(port), *batch))
            rss.append(peak_rss_mib(pid))
        # A fresh server, so the checkpoints of the batch run's writes do not colour latencies.
        with worldflow_server(workers) as (port, _pid):
            loadgen("rate", "--port", str(port), "--seconds", "2", "--rate", str(rate))
            single_runs.append(loadgen("rate", "--port", str(port), "--seconds", secs,
                                       "--rate", str(rate), "--connections", "32"))  # fmt: skip
            server_side.append(server_latency_ms(port, "/v1/track"))
    base = median_of(base_runs, "events_per_s")
    durable = median_of(wf_runs, "events_per_s")
    ratios = [
        w["events_per_s"] / b["events_per_s"] for w, b in zip(wf_runs, base_runs, strict=True)
    ]
    result = {
        "workers": workers,
        "baseline_events_per_s": base,
        "worldflow_events_per_s": durable,
        "ratio": statistics.median(ratios),
        "batch_p99_ms": median_of(wf_runs, "p99_ms"),
        "single_achieved_rate": median_of(single_runs, "achieved_rate"),
        "single_client_p50_ms": median_of(single_runs, "p50_ms"),
        "single_client_p99_ms": median_of(single_runs, "p99_ms"),
        "single_server_p50_ms": median_of(server_side, "p50_ms"),
        "single_server_p99_ms": median_of(server_side, "p99_ms"),
        "peak_rss_mib": max(rss),
        "runs": {"baseline": base_runs, "worldflow": wf_runs, "single": single_runs},
    }
    print(f"== {workers} worker process(es), median of {repeat} ==")
    print(f"bare ASGI (read+discard): {base:>10,.0f} events/s")
    each = ", ".join(f"{r['events_per_s']:,.0f}" for r in wf_runs)
    print(f"worldflow (durable):      {durable:>10,.0f} events/s (runs: {each}; "
          f"batch p99 {result['batch_p99_ms']:.0f} ms)")  # fmt: skip
    print(f"ratio worldflow / bare ASGI: {result['ratio']:.2f}")
    print(f"single events at {rate:,.0f} req/s: achieved {result['single_achieved_rate']:,.0f}; "
          f"client-observed p50 {result['single_client_p50_ms']:.1f} ms, "
          f"p99 {result['single_client_p99_ms']:.1f} ms; "
          f"server-side p50 {result['single_server_p50_ms']:.1f} ms, "
          f"p99 {result['single_server_p99_ms']:.1f} ms")  # fmt: skip
    print(f"server peak RSS (all processes): {result['peak_rss_mib']:.0f} MiB")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rate", type=float, default=2000)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    print("durable ingest over HTTP, batches of 100 events; load generator on the same machine")
    results = [run(w, args.seconds, args.connections, args.rate, args.repeat)
               for w in args.workers]  # fmt: skip
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1)


if __name__ == "__main__":
    main()
