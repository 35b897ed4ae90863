"""End to end: an accepted event → visible in the profile API, under a steady load.

    python -m bench.e2e [--rate 10000] [--seconds 20]

A load generator in its own process sends a steady ``--rate`` events/s (Segment batches of
100 events from 5,000 visitors) to a fresh ``worldflow serve``. Meanwhile this process sends
a probe every 50 ms: a single track call for a new user, then polls
``GET /v1/profiles/by/user_id/{id}`` every 2 ms until the profile answers. The figure is
p50/p99 of acknowledged → visible; the baseline, from the same probes, is the time to the
acknowledgement itself (the event durable in the log).
"""

from __future__ import annotations

import argparse
import base64
import json
import statistics
import sys
import threading
import time
import urllib.error
import urllib.request

from bench.common import ADMIN_TOKEN, WRITE_KEY, loadgen, peak_rss_mib, worldflow_server


def _post(url: str, body: bytes) -> None:
    auth = base64.b64encode(f"{WRITE_KEY}:".encode()).decode()
    request = urllib.request.Request(url, data=body, headers={
        "Authorization": f"Basic {auth}", "Content-Type": "application/json"})  # fmt: skip
    with urllib.request.urlopen(request, timeout=10) as resp:
        assert resp.status == 200


def _visible(url: str) -> bool:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status == 200
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return False
        raise


def probe(port: int, seconds: float, every: float = 0.05) -> tuple[list[float], list[float]]:
    base = f"http://127.0.0.1:{port}"
    acks, visible = [], []
    deadline = time.monotonic() + seconds
    n = 0
    while time.monotonic() < deadline:
        user = f"probe-{time.time_ns()}-{n}"
        n += 1
        body = json.dumps({"userId": user, "event": "zone.entered",
                           "properties": {"zone_id": "lobby"}}).encode()  # fmt: skip
        start = time.perf_counter()
        _post(f"{base}/v1/track", body)
        acked = time.perf_counter()
        while not _visible(f"{base}/v1/profiles/by/user_id/{user}"):
            time.sleep(0.002)
        done = time.perf_counter()
        acks.append(acked - start)
        visible.append(done - start)
        time.sleep(max(0.0, every - (done - start)))
    return acks, visible


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return 1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rate", type=float, default=10_000, help="background events/s")
    parser.add_argument("--seconds", type=float, default=20)
    args = parser.parse_args()
    with worldflow_server() as (port, pid):
        load: dict[str, float] = {}
        command = [
            "rate",
            "--port",
            str(port),
            "--seconds",
            str(args.seconds + 2),
            "--rate",
            str(args.rate / 100),
            "--per-request",
            "100",
            "--connections",
            "8",
        ]
        thread = threading.Thread(target=lambda: load.update(loadgen(*command)))
        thread.start()
        time.sleep(2)  # let the load settle
        acks, visible = probe(port, args.seconds)
        thread.join()
        rss = peak_rss_mib(pid)
        with urllib.request.urlopen(urllib.request.Request(
                f"http://127.0.0.1:{port}/v1/processor",
                headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})) as resp:  # fmt: skip
            status = json.loads(resp.read())
    achieved = load["achieved_rate"] * 100
    print(f"background load: {achieved:,.0f} events/s achieved of {args.rate:,.0f} "
          f"({load['errors']:.0f} errors), batch ack p99 {load['p99_ms']:.1f} ms")  # fmt: skip
    print(f"probes: {len(visible)}; processor lag at the end: "
          f"{status['partitions']['0']['lag']} entries")  # fmt: skip
    print(f"accepted → visible in the profile API: p50 {pct(visible, 0.5):.1f} ms, "
          f"p99 {pct(visible, 0.99):.1f} ms")  # fmt: skip
    print(f"baseline, accepted (durable in the log): p50 {pct(acks, 0.5):.1f} ms, "
          f"p99 {pct(acks, 0.99):.1f} ms")  # fmt: skip
    print(f"ratio visible/accepted p50: {statistics.median(visible) / statistics.median(acks):.1f}")
    print(f"peak RSS of the server's processes: {rss:.0f} MiB")


if __name__ == "__main__":
    sys.exit(main())
