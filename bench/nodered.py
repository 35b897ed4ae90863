"""The same flow on Node-RED 4 and on Worldflow: HTTP event in → branch on the event's name →
wait 1 s → webhook out to a local receiver.

    python -m bench.nodered [--seconds 10] [--connections 8] [--batch 50]

The same load generator (closed loop: ``--connections`` keep-alive connections, each posting
a batch of ``--batch`` events and waiting for the answer) sends the same bodies
(``{"batch": [...]}``, half the events named ``trial.started``, half another name) to each:

- **Node-RED** (``bench/nodered``: ``npm ci`` installs the pinned 4.x): ``http in`` → ``change``
  (the batch) → ``split`` → ``switch`` on ``payload.event`` → ``delay`` 1 s → ``http request``.
  Its waits are timers in memory: a restart loses them.
- **Worldflow** (``worldflow serve``): ``/v1/batch``, a journey entered on ``trial.started``
  that waits 1 s and sends a webhook; the events are durable before the answer, the waits
  and the decisions are committed, the webhooks signed and sent by the dispatcher.

Figures: events accepted per second, request latency p50/p99, webhooks received (and, for
Worldflow, distinct webhook ids: exactly once), how long the last webhook took after the load
stopped; the ratio Worldflow / Node-RED of the event rates (target ≥ 10).
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from bench.common import WRITE_KEY, admin, free_port, worldflow_server

HERE = Path(__file__).parent / "nodered"
TRIAL = {"status": "active", "entry": {"event": "trial.started"},
         "steps": [{"wait": "1s"}, {"action": {"webhook": "crm"}}]}  # fmt: skip


class _Listener(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024  # the default of 5 resets connections opened together


class Counter:
    """A fast local receiver: counts webhooks, and distinct webhook ids."""

    def __init__(self) -> None:
        self.count = 0
        self.ids: set[str] = set()
        self.last = 0.0
        lock, counter = threading.Lock(), self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("content-length", 0)))
                with lock:
                    counter.count += 1
                    counter.last = time.monotonic()
                    if "webhook-id" in self.headers:
                        counter.ids.add(self.headers["webhook-id"])
                self.send_response(204)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = _Listener(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/hooks"


def load(port: int, path: str, headers: dict[str, str], seconds: float, connections: int,
         batch: int) -> dict[str, Any]:  # fmt: skip
    """Closed-loop batches for ``seconds``; accepted events, latencies."""
    latencies: list[float] = []
    sent = [0]
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def worker(w: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        n = 0
        while time.monotonic() < stop:
            events = [{"type": "track", "userId": f"u{w}-{n}-{i}", "messageId": f"{w}-{n}-{i}",
                       "event": "trial.started" if i % 2 == 0 else "page.viewed"}
                      for i in range(batch)]  # fmt: skip
            body = json.dumps({"batch": events}).encode()
            began = time.perf_counter()
            conn.request("POST", path, body, {"Content-Type": "application/json", **headers})
            response = conn.getresponse()
            response.read()
            elapsed = time.perf_counter() - began
            if response.status == 200:
                with lock:
                    latencies.append(elapsed * 1000)
                    sent[0] += batch
            n += 1
        conn.close()

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(connections)]
    began = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - began
    ordered = sorted(latencies)
    return {"events": sent[0], "rate": sent[0] / wall, "p50": statistics.median(ordered),
            "p99": ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]}  # fmt: skip


def settle(counter: Counter, expected: int, timeout: float = 900) -> float:
    """Seconds from the end of the load to the last webhook, once ``expected`` arrived, or
    nothing came for 15 s, or the timeout."""
    began = time.monotonic()
    while counter.count < expected and time.monotonic() - began < timeout:
        if time.monotonic() - max(counter.last, began) > 15:
            break  # nothing for 15 s: what did not arrive will not
        time.sleep(0.1)
    return max(counter.last - began, 0.0)


@contextmanager
def nodered(receiver: str) -> Iterator[int]:
    """Node-RED 4 with the bench flow, on a port of its own."""
    node = shutil.which("node")
    npm = shutil.which("npm")
    if node is None or npm is None:
        raise SystemExit("bench.nodered needs node and npm (Node.js 20)")
    if not (HERE / "node_modules" / "node-red").exists():
        subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=HERE, check=True)
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="wf-nodered-") as user_dir:
        for name in ("flows.json", "settings.js"):
            shutil.copy(HERE / name, Path(user_dir) / name)
        env = {**os.environ, "RECEIVER_URL": receiver, "PORT": str(port)}
        command = [node, str(HERE / "node_modules" / "node-red" / "red.js"), "--userDir",
                   user_dir, "--settings", str(Path(user_dir) / "settings.js")]  # fmt: skip
        proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)  # fmt: skip
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                    conn.request("POST", "/batch", b'{"batch": []}',
                                 {"Content-Type": "application/json"})  # fmt: skip
                    if conn.getresponse().status == 200:
                        break
                except OSError:
                    pass
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("Node-RED did not start")
                time.sleep(0.2)
            yield port
        finally:
            proc.terminate()
            proc.wait(30)


def run(name: str, target: Callable[[Counter], Any], args: argparse.Namespace) -> dict[str, Any]:
    counter = Counter()
    with target(counter) as (port, path, headers):
        result = load(port, path, headers, args.seconds, args.connections, args.batch)
        expected = result["events"] // 2
        result["after_s"] = settle(counter, expected)
    result.update(webhooks=counter.count, distinct=len(counter.ids), expected=expected,
                  delivery_rate=counter.count / (args.seconds + result["after_s"]))  # fmt: skip
    print(f"{name}: {result['events']:,} events in {args.seconds:.0f} s, {result['rate']:,.0f} "
          f"events/s, request p50 {result['p50']:.1f} ms, p99 {result['p99']:.1f} ms; "
          f"webhooks {result['webhooks']:,} of {expected:,}"
          + (f" ({result['distinct']:,} distinct ids)" if result["distinct"] else "")
          + f", the last {result['after_s']:.1f} s after the load stopped "
          f"({result['delivery_rate']:,.0f} webhooks/s)")  # fmt: skip
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--batch", type=int, default=50)
    args = parser.parse_args()

    @contextmanager
    def on_nodered(counter: Counter) -> Iterator[tuple[int, str, dict[str, str]]]:
        with nodered(counter.url) as port:
            yield port, "/batch", {}

    @contextmanager
    def on_worldflow(counter: Counter) -> Iterator[tuple[int, str, dict[str, str]]]:
        env = {"WORLDFLOW_WEBHOOK_ALLOW": "127.0.0.1"}
        with worldflow_server(extra_env=env) as (port, _):
            admin(port, "PUT", "/v1/destinations/crm", {"url": counter.url})
            admin(port, "PUT", "/v1/journeys/trial", TRIAL)
            time.sleep(1.0)  # the activation reaches the processor
            auth = "Basic " + base64.b64encode(f"{WRITE_KEY}:".encode()).decode()
            yield port, "/v1/batch", {"Authorization": auth}

    red = run("Node-RED 4", on_nodered, args)
    ours = run("Worldflow", on_worldflow, args)
    print(f"ratio Worldflow / Node-RED, events accepted per second: "
          f"{ours['rate'] / red['rate']:.2f} (target ≥ 10); webhooks delivered exactly once by "
          f"Worldflow: {ours['distinct'] == ours['expected'] == ours['webhooks']}")  # fmt: skip


if __name__ == "__main__":
    main()
