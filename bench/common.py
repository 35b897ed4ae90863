"""Shared by the benchmarks: servers in child processes, their memory, the load generator."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from worldflow.metrics import latency_quantiles

WRITE_KEY = "wk_bench"
ADMIN_TOKEN = "wat_bench"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(port: int, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("server did not become ready")


def admin(port: int, method: str, path: str, body: Any = None, timeout: float = 60) -> Any:
    """An admin API call to a bench server (its token); the JSON answer."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {ADMIN_TOKEN}"},
    )  # fmt: skip
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read() or b"null")


def process_tree(pid: int) -> list[int]:
    """The process and its descendants: the children of each of its threads (the server
    starts its log writer, processor and dispatcher from worker threads)."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{current}/task").iterdir():
                with contextlib.suppress(OSError):
                    todo.extend(int(c) for c in (task / "children").read_text().split())
    return found


def peak_rss_mib(pid: int) -> float:
    """Peak resident memory of a process and its descendants (workers, the log writer, the
    processor, the dispatcher), each process's own peak, summed."""
    total = 0.0
    for current in process_tree(pid):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{current}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1]) / 1024
    return total


@contextmanager
def _running(command: list[str], port: int, env: dict[str, str] | None = None) -> Iterator[int]:
    """Run a server command until the block ends; yields its pid once /readyz answers."""
    proc = subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )  # fmt: skip
    try:
        wait_ready(port, proc)
        yield proc.pid
    finally:
        proc.terminate()
        proc.wait(30)


@contextmanager
def worldflow_server(
    workers: int = 1, extra_env: dict[str, str] | None = None
) -> Iterator[tuple[int, int]]:
    """(port, pid) of a fresh ``worldflow serve`` on a temporary data directory."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="wf-bench-") as data:
        env = {**os.environ, "WORLDFLOW_WRITE_KEY": WRITE_KEY, "WORLDFLOW_ADMIN_TOKEN": ADMIN_TOKEN,
               "WORLDFLOW_LOG_LEVEL": "warning", **(extra_env or {})}  # fmt: skip
        command = [sys.executable, "-m", "worldflow", "serve", "--data-dir", data,
                   "--port", str(port), "--workers", str(workers)]  # fmt: skip
        with _running(command, port, env) as pid:
            yield port, pid


def server_latency_ms(port: int, route: str) -> dict[str, float]:
    """p50/p99 of one route from the server's own latency histogram."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    p50, p99 = latency_quantiles(text, route)
    count = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                if line.startswith("worldflow_http_request_duration_seconds_count")
                and f'route="{route}"' in line and 'status="200"' in line)  # fmt: skip
    return {"p50_ms": p50, "p99_ms": p99, "count": count}


@contextmanager
def baseline_server(workers: int = 1) -> Iterator[tuple[int, int]]:
    port = free_port()
    command = [sys.executable, "-m", "bench.baseline_asgi", str(port), str(workers)]
    with _running(command, port) as pid:
        yield port, pid


def _higher_priority() -> None:
    """The load generator runs at a higher priority than the server (where allowed), so that
    its own scheduling delays on a shared machine do not count as server latency."""
    with contextlib.suppress(OSError):
        os.nice(-5)


def loadgen(*args: str) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-m", "bench.loadgen", *args, "--write-key", WRITE_KEY],
        check=True, capture_output=True, text=True, preexec_fn=_higher_priority,
    )  # fmt: skip
    result: dict[str, float] = json.loads(out.stdout)
    return result
