"""Concurrent world sessions: 20,000 WebSockets on the push channel, each sending one event a
second, and what they cost the server in memory and latency.

    python -m bench.sessions [--sessions 20000] [--seconds 30] [--ramp 60] [--clients 2]

A fresh ``worldflow serve`` with a world's key, a segment (entered the stage in the last hour)
and a journey entered on it that pushes an in-world action. Client processes (asyncio, the
``websockets`` library, ``--clients`` of them sharing the sessions) open ``--sessions``
connections to ``/v1/push`` in ``--steps`` steps over ``--ramp`` seconds; each says hello
(an anonymous visitor in the hall) and then sends one event a second (``session.heartbeat``,
its own frame), spread evenly over the second, reading the acknowledgements. Once all are open
they hold for ``--seconds``; meanwhile ``--probes`` sessions a second, each once, send their
``zone.entered`` of the stage instead, enter the segment and the journey, and time the action
frame that comes back (and acknowledge it).

Figures: the server's memory (its process and its children: log writer, processor,
dispatcher), idle, with a few sessions and with all of them, and per session; events
acknowledged per second against those offered; sent → acknowledged and sent → action
received, p50/p99. The baseline, in the same run and on the same server, is ``--few``
sessions doing the same (with as many probes as sessions).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from bench.common import worldflow_server
from bench.push import admin

SEGMENT = {"condition": {">=": [{"count": {"event": "zone.entered", "within": "1h",
                                           "where": {"==": [{"var": "zone_id"}, "stage"]}}},
                                1]}}  # fmt: skip
ACTION = {"placement": "stage-screen", "content": {"text": "Welcome on stage"}}
JOURNEY = {"status": "active", "entry": {"segment": "on-stage"},
           "steps": [{"action": {"inworld": ACTION}}]}  # fmt: skip

HELLO = '{"type":"hello","anonymousId":"%s","zone":"hall"}'
HEARTBEAT = ('{"id":%d,"batch":[{"type":"track","event":"session.heartbeat","anonymousId":"%s",'
             '"messageId":"%s-%d","properties":{"active_ms":1000,"idle_ms":0}}]}')  # fmt: skip
STAGE = ('{"id":%d,"batch":[{"type":"track","event":"zone.entered","anonymousId":"%s",'
         '"messageId":"%s-%d","properties":{"zone_id":"stage","zone_type":"stage"}}]}')  # fmt: skip
ACK = '{"type":"ack","id":"%s"}'
SLOTS = 100  # a second is cut in this many slots: each session sends in its own
FD_MARGIN = 512  # descriptors of a process besides its sessions (store, log, pipes, …)


# -- latencies -----------------------------------------------------------------------------


class Hist:
    """Latencies in 0.1 ms bins: merged exactly across client processes, small to send."""

    def __init__(self, bins: dict[int, int] | None = None) -> None:
        self.bins: Counter[int] = Counter(bins or {})

    def add(self, seconds: float) -> None:
        self.bins[int(seconds * 10_000)] += 1

    def merge(self, other: Hist) -> None:
        self.bins.update(other.bins)

    @property
    def count(self) -> int:
        return sum(self.bins.values())

    def pct(self, q: float) -> float:
        """The q quantile in milliseconds (nan without samples)."""
        total = self.count
        if not total:
            return float("nan")
        seen = 0
        for key in sorted(self.bins):
            seen += self.bins[key]
            if seen >= q * total:
                return (key + 0.5) / 10
        return max(self.bins) / 10

    def json(self) -> dict[str, int]:
        return {str(k): v for k, v in self.bins.items()}

    @classmethod
    def of(cls, data: dict[str, int]) -> Hist:
        return cls({int(k): v for k, v in data.items()})


# -- one client process --------------------------------------------------------------------


class _Reply(msgspec.Struct):
    ack: int | None = None
    error: dict[str, Any] | None = None
    rejected: list[Any] = msgspec.field(default_factory=list)
    type: str | None = None
    id: str | None = None


_decode_reply = msgspec.json.Decoder(_Reply)


@dataclass(eq=False, slots=True)
class Session:
    anonymous_id: str
    ws: ClientConnection
    seq: int = 0
    sent: dict[int, float] = field(default_factory=dict)  # frame id → when it was sent
    probe: bool = False  # its next frame enters the stage
    probe_sent: float = 0.0  # when it did (0: not yet, or its action came)
    alive: bool = True


@dataclass
class Window:
    start: float  # monotonic: the hold, when every session should be open
    end: float

    def __contains__(self, t: float) -> bool:
        return self.start <= t < self.end


@dataclass
class Stats:
    opened: int = 0
    failed: Counter[str] = field(default_factory=Counter)
    closed: Counter[str] = field(default_factory=Counter)  # by the server, during the run
    open_at_hold: int = 0
    sent: int = 0  # frames sent during the hold
    acked: int = 0  # of those, acknowledged
    errors: Counter[str] = field(default_factory=Counter)  # of those, answered with an error
    rejected: int = 0  # events refused (any time): the bench's events are wrong
    probes: int = 0
    actions: int = 0
    unexpected: int = 0  # actions on a session that sent no stage entry
    ack: Hist = field(default_factory=Hist)
    lag: Hist = field(default_factory=Hist)  # the client's own delay: sent − scheduled
    connect: Hist = field(default_factory=Hist)
    push: list[float] = field(default_factory=list)


async def _read(s: Session, st: Stats, hold: Window) -> None:
    try:
        async for raw in s.ws:
            now = time.monotonic()
            reply = _decode_reply.decode(raw)
            if reply.ack is not None:
                sent = s.sent.pop(reply.ack, None)
                if reply.rejected:
                    st.rejected += len(reply.rejected)
                if sent is not None and sent in hold:
                    if reply.error is not None:
                        st.errors[str(reply.error.get("code"))] += 1
                    else:
                        st.acked += 1
                        st.ack.add(now - sent)
            elif reply.type == "action":
                st.actions += 1
                if s.probe_sent:
                    st.push.append(now - s.probe_sent)
                    s.probe_sent = 0.0
                else:
                    st.unexpected += 1
                await s.ws.send(ACK % reply.id)
    except ConnectionClosed as exc:
        if s.alive:
            st.closed[f"{exc.rcvd.code if exc.rcvd else 'no close frame'}"] += 1
    finally:
        s.alive = False


async def _open(url: str, anonymous_id: str, compression: str | None, gate: asyncio.Semaphore,
                st: Stats) -> Session | None:  # fmt: skip
    async with gate:
        start = time.monotonic()
        try:
            ws = await connect(url, open_timeout=60, ping_interval=None, close_timeout=2,
                               compression=compression, max_queue=64)  # fmt: skip
            await ws.send(HELLO % anonymous_id)
            await asyncio.wait_for(ws.recv(), 60)  # welcome
        except Exception as exc:  # counted by kind: refused, timed out, fds exhausted, …
            errno = f" {exc.errno}" if isinstance(exc, OSError) else ""
            st.failed[type(exc).__name__ + errno] += 1
            return None
        st.connect.add(time.monotonic() - start)
        return Session(anonymous_id, ws)


async def _send(s: Session, st: Stats, hold: Window, due: float) -> None:
    s.seq += 1
    template = HEARTBEAT
    if s.probe:
        template, s.probe = STAGE, False
    frame = template % (s.seq, s.anonymous_id, s.anonymous_id, s.seq)
    now = time.monotonic()
    if template is STAGE:
        s.probe_sent = now
        st.probes += 1
    s.sent[s.seq] = now
    if now in hold:
        st.sent += 1
        st.lag.add(now - due)
    try:
        await s.ws.send(frame)
    except ConnectionClosed:
        s.alive = False


async def client(args: argparse.Namespace) -> dict[str, Any]:
    """Open this process's sessions in steps, send, probe, hold; the figures."""
    t0 = time.monotonic() + (args.start_at - time.time())
    hold = Window(t0 + args.ramp + args.settle, t0 + args.ramp + args.settle + args.seconds)
    st = Stats()
    slots: list[list[Session]] = [[] for _ in range(SLOTS)]
    opened: list[Session] = []
    readers: set[asyncio.Task[None]] = set()
    gate = asyncio.Semaphore(args.concurrency)
    compression = None if args.compression == "none" else args.compression

    async def open_one(index: int) -> None:
        s = await _open(args.url, f"{args.tag}-{index}", compression, gate, st)
        if s is None:
            return
        st.opened += 1
        opened.append(s)
        slots[index % SLOTS].append(s)
        task = asyncio.create_task(_read(s, st, hold))
        readers.add(task)
        task.add_done_callback(readers.discard)

    async def ramp() -> None:
        steps = max(1, args.steps)
        for k in range(steps):
            await asyncio.sleep(max(0.0, t0 + k * args.ramp / steps - time.monotonic()))
            first = args.first + k * args.count // steps
            last = args.first + (k + 1) * args.count // steps
            await asyncio.gather(*(open_one(i) for i in range(first, last)))

    async def send() -> None:
        tick = 1.0 / args.rate / SLOTS
        probe_every = 1.0 / args.probes if args.probes > 0 else float("inf")
        next_probe, candidates = hold.start, iter(opened)
        n = 0
        while (due := t0 + n * tick) < hold.end:
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            if not st.open_at_hold and due >= hold.start:
                st.open_at_hold = sum(s.alive for s in opened)
            while next_probe <= due and next_probe < hold.end - 2.0:  # answered in the hold
                s = next(candidates, None)
                if s is None:
                    break
                if s.alive:
                    s.probe = True
                    next_probe += probe_every
            for s in slots[n % SLOTS]:
                if s.alive:
                    await _send(s, st, hold, due)
            n += 1

    usage0: resource.struct_rusage | None = None

    async def measure_cpu() -> None:
        nonlocal usage0
        await asyncio.sleep(max(0.0, hold.start - time.monotonic()))
        usage0 = resource.getrusage(resource.RUSAGE_SELF)

    cpu_task = asyncio.create_task(measure_cpu())
    await asyncio.gather(ramp(), send())
    await cpu_task
    usage1 = resource.getrusage(resource.RUSAGE_SELF)
    # the acks and actions of the hold's last frames
    deadline = time.monotonic() + args.drain
    while time.monotonic() < deadline and any(
        s.alive and (s.probe_sent or any(t in hold for t in s.sent.values())) for s in opened
    ):
        await asyncio.sleep(0.2)
    missing = sum(1 for s in opened if s.probe_sent)
    for s in opened:
        s.alive = False
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.gather(*(s.ws.close() for s in opened),
                                              return_exceptions=True), 20)  # fmt: skip
    for task in list(readers):
        task.cancel()
    cpu = 0.0
    if usage0 is not None:
        cpu = (usage1.ru_utime + usage1.ru_stime - usage0.ru_utime - usage0.ru_stime) / args.seconds
    return {
        "opened": st.opened, "failed": dict(st.failed), "closed": dict(st.closed),
        "open_at_hold": st.open_at_hold, "sent": st.sent, "acked": st.acked,
        "errors": dict(st.errors), "rejected": st.rejected, "probes": st.probes,
        "actions": st.actions, "unexpected": st.unexpected, "missing": missing,
        "ack": st.ack.json(), "lag": st.lag.json(), "connect": st.connect.json(),
        "push": st.push, "cpu_cores": cpu, "max_rss_mib": usage1.ru_maxrss / 1024,
    }  # fmt: skip


def client_main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.sessions client")
    parser.add_argument("--url", required=True)
    parser.add_argument("--tag", required=True)
    parser.add_argument("--first", type=int, default=0)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--start-at", type=float, required=True, help="epoch seconds")
    parser.add_argument("--ramp", type=float, default=0)
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--settle", type=float, default=2)
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--rate", type=float, default=1.0, help="events/s per session")
    parser.add_argument("--probes", type=float, default=0, help="stage entries/s")
    parser.add_argument("--drain", type=float, default=10)
    parser.add_argument("--concurrency", type=int, default=100, help="handshakes at once")
    parser.add_argument("--compression", default="deflate", choices=["deflate", "none"])
    args = parser.parse_args(argv)
    raise_fd_limit(args.count + FD_MARGIN)
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    print(json.dumps(asyncio.run(client(args))), flush=True)


# -- the server: its processes, their memory and CPU ------------------------------------------


def raise_fd_limit(wanted: int) -> int:
    """Open-file limit of this process (and the processes it starts) raised to ``wanted`` where
    allowed: the soft limit up to the hard one, the hard one too with the privilege; the limit
    in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= wanted:
        return soft
    if hard != resource.RLIM_INFINITY and hard < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, wanted))
            return wanted
        except (ValueError, OSError):
            wanted = hard
    resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    return wanted


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


@dataclass
class Memory:
    rss: float = 0.0  # MiB, summed over the processes
    pss: float = 0.0  # the same without counting shared pages twice
    hwm: float = 0.0  # peak RSS, summed (each process's own peak)
    cpu: float = 0.0  # CPU seconds used so far
    each: dict[int, float] = field(default_factory=dict)  # pid → RSS MiB


_TICK = os.sysconf("SC_CLK_TCK")


def memory(pid: int) -> Memory:
    m = Memory()
    for p in process_tree(pid):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    m.each[p] = int(line.split()[1]) / 1024
                    m.rss += m.each[p]
                elif line.startswith("VmHWM:"):
                    m.hwm += int(line.split()[1]) / 1024
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    m.pss += int(line.split()[1]) / 1024
            stat = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            m.cpu += (int(stat[11]) + int(stat[12])) / _TICK
    return m


def scrape(port: int) -> dict[str, float]:
    """The few server metrics this bench reads: open push connections, the log's end and the
    processor's offset."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    wanted = {"worldflow_push_connections": "connections", "worldflow_log_end_offset": "log",
              "worldflow_processor_offset": "processed"}  # fmt: skip
    found: dict[str, float] = {}
    for line in text.splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in wanted:
            found[wanted[name]] = found.get(wanted[name], 0.0) + float(line.rsplit(" ", 1)[1])
    return found


@dataclass
class Sample:
    t: float  # monotonic
    mem: Memory
    metrics: dict[str, float]


class Sampler(threading.Thread):
    """The server's memory, CPU and connections every second until stopped."""

    def __init__(self, port: int, pid: int) -> None:
        super().__init__(daemon=True)
        self.port, self.pid = port, pid
        self.samples: list[Sample] = []
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            metrics: dict[str, float] = {}
            with contextlib.suppress(OSError):
                metrics = scrape(self.port)
            self.samples.append(Sample(time.monotonic(), memory(self.pid), metrics))
            self.halt.wait(1.0)

    def between(self, start: float, end: float) -> list[Sample]:
        return [s for s in self.samples if start <= s.t <= end]

    def at(self, t: float) -> Sample:
        return min(self.samples, key=lambda s: abs(s.t - t))


# -- the run ---------------------------------------------------------------------------------


@dataclass
class Run:
    sessions: int
    start: float  # monotonic, the clients' t0
    hold: Window
    results: list[dict[str, Any]]

    def total(self, name: str) -> int:
        return sum(int(r[name]) for r in self.results)

    def counts(self, name: str) -> Counter[str]:
        found: Counter[str] = Counter()
        for r in self.results:
            found.update(r[name])
        return found

    def hist(self, name: str) -> Hist:
        merged = Hist()
        for r in self.results:
            merged.merge(Hist.of(r[name]))
        return merged

    @property
    def push(self) -> Hist:
        found = Hist()
        for r in self.results:
            for seconds in r["push"]:
                found.add(seconds)
        return found


def run_clients(port: int, key: str, args: argparse.Namespace, *, tag: str, sessions: int,
                processes: int, ramp: float, steps: int, seconds: float,
                probes: float) -> Run:  # fmt: skip
    """``sessions`` spread over ``processes`` client processes, started together."""
    start_at = time.time() + 3.0  # the clients' imports
    start = time.monotonic() + 3.0
    hold = Window(start + ramp + args.settle, start + ramp + args.settle + seconds)
    procs = []
    for k in range(processes):
        first, last = k * sessions // processes, (k + 1) * sessions // processes
        command = [sys.executable, "-m", "bench.sessions", "client",
                   "--url", f"ws://127.0.0.1:{port}/v1/push?key={key}", "--tag", tag,
                   "--first", str(first), "--count", str(last - first),
                   "--start-at", repr(start_at), "--ramp", str(ramp), "--steps", str(steps),
                   "--settle", str(args.settle), "--seconds", str(seconds),
                   "--probes", str(probes / processes), "--compression", args.compression,
                   "--concurrency", str(args.concurrency)]  # fmt: skip
        procs.append(subprocess.Popen(command, stdout=subprocess.PIPE, text=True))
    results = []
    for proc in procs:
        out, _ = proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"a client process failed with {proc.returncode}")
        results.append(json.loads(out))
    return Run(sessions, start, hold, results)


def _ms(h: Hist) -> str:
    return f"p50 {h.pct(0.5):.1f} ms, p99 {h.pct(0.99):.1f} ms"


def _steps(sampler: Sampler, run: Run, steps: int, ramp: float) -> Iterator[str]:
    for k in range(1, steps + 1):
        s = sampler.at(run.start + k * ramp / steps - 0.5) if k < steps else sampler.at(
            run.hold.start)  # fmt: skip
        conns = s.metrics.get("connections", float("nan"))
        yield f"  {conns:>8,.0f} open: RSS {s.mem.rss:7.1f} MiB, PSS {s.mem.pss:7.1f} MiB"


def _report_run(label: str, run: Run, sampler: Sampler, seconds: float) -> None:
    h = sampler.between(run.hold.start, run.hold.end)
    first, last = h[0], h[-1]
    span = last.t - first.t
    cores = (last.mem.cpu - first.mem.cpu) / span if span > 0 else float("nan")
    logged = last.metrics.get("log", 0.0) - first.metrics.get("log", 0.0)
    processed = last.metrics.get("processed", 0.0) - first.metrics.get("processed", 0.0)
    lag = last.metrics.get("log", 0.0) - last.metrics.get("processed", 0.0)
    offered = run.sessions * seconds
    sent, acked = run.total("sent"), run.total("acked")
    errors, failed, closed = run.counts("errors"), run.counts("failed"), run.counts("closed")
    push = run.push
    print(f"{label}: {run.total('open_at_hold'):,} of {run.sessions:,} sessions open at the hold"
          f" ({run.total('opened'):,} opened; failed {dict(failed) or 0}; closed by the server "
          f"{dict(closed) or 0})")  # fmt: skip
    print(f"  events: offered {offered / seconds:,.0f}/s, sent {sent / seconds:,.0f}/s, "
          f"acknowledged {acked / seconds:,.0f}/s ({acked / offered:.1%} of offered); errors "
          f"{dict(errors) or 0}, events rejected {run.total('rejected')}")  # fmt: skip
    print(f"  sent → acknowledged: {_ms(run.hist('ack'))}; the clients' own send delay: "
          f"{_ms(run.hist('lag'))}")  # fmt: skip
    print(f"  stage entry sent → action received: {_ms(push)} ({push.count} of "
          f"{run.total('probes')} probes; {run.total('missing')} without an action, "
          f"{run.total('unexpected')} unexpected actions)")  # fmt: skip
    print(f"  handshake + welcome: {_ms(run.hist('connect'))}")
    print(f"  server: {last.mem.rss:,.1f} MiB RSS, {last.mem.pss:,.1f} MiB PSS, "
          f"{cores:.2f} cores; log +{logged / span:,.0f} events/s, processor "
          f"+{processed / span:,.0f} events/s, {lag:,.0f} behind at the end")  # fmt: skip
    client_cpu = sum(float(r["cpu_cores"]) for r in run.results)
    client_rss = sum(float(r["max_rss_mib"]) for r in run.results)
    print(f"  clients: {len(run.results)} processes, {client_cpu:.2f} cores, "
          f"{client_rss:,.0f} MiB peak RSS")  # fmt: skip


def main() -> None:
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=raw)
    parser.add_argument("--sessions", type=int, default=20_000)
    parser.add_argument("--seconds", type=float, default=30, help="hold with all open")
    parser.add_argument("--ramp", type=float, default=60, help="seconds to open them all")
    parser.add_argument("--steps", type=int, default=10, help="ramp steps")
    parser.add_argument("--settle", type=float, default=5, help="after the ramp, before the hold")
    parser.add_argument("--clients", type=int, default=2, help="client processes")
    parser.add_argument("--probes", type=float, default=10, help="stage entries/s")
    parser.add_argument("--few", type=int, default=100, help="sessions of the baseline")
    parser.add_argument("--baseline-seconds", type=float, default=10)
    parser.add_argument("--workers", type=int, default=1, help="server worker processes")
    parser.add_argument("--concurrency", type=int, default=100, help="handshakes at once")
    parser.add_argument("--compression", default="deflate", choices=["deflate", "none"],
                        help="permessage-deflate offered (as browsers do) or not")  # fmt: skip
    if sys.argv[1:2] == ["client"]:
        client_main(sys.argv[2:])
        return
    args = parser.parse_args()
    per_client = -(-args.sessions // args.clients)
    limit = raise_fd_limit(max(args.sessions, per_client) + FD_MARGIN)
    print(f"open-file limit {limit:,} (server and clients; {args.sessions:,} sessions over "
          f"{args.workers} worker(s), {per_client:,} per client process)")  # fmt: skip
    with worldflow_server(workers=args.workers) as (port, pid):
        key = admin(port, "POST", "/v1/sources", {"name": "stage", "world": "arena"})
        admin(port, "PUT", "/v1/segments/on-stage", SEGMENT)
        admin(port, "PUT", "/v1/journeys/greet", JOURNEY)
        sampler = Sampler(port, pid)
        sampler.start()
        time.sleep(3.0)  # the activations reach the processor; the server settles
        idle = memory(pid)
        probes = min(args.probes, args.few / args.baseline_seconds)
        few = run_clients(port, key["write_key"], args, tag="few", sessions=args.few,
                          processes=1, ramp=0, steps=1, seconds=args.baseline_seconds,
                          probes=probes)  # fmt: skip
        many = run_clients(port, key["write_key"], args, tag="s", sessions=args.sessions,
                           processes=args.clients, ramp=args.ramp, steps=args.steps,
                           seconds=args.seconds, probes=args.probes)  # fmt: skip
        peak = memory(pid)
        sampler.halt.set()
        sampler.join()
    print(f"server idle: {idle.rss:,.1f} MiB RSS ({idle.pss:,.1f} MiB PSS) in "
          f"{len(idle.each)} processes: "
          + ", ".join(f"{mib:.0f}" for _, mib in sorted(idle.each.items())))  # fmt: skip
    _report_run(f"baseline, {args.few} sessions", few, sampler, args.baseline_seconds)
    print(f"ramp to {args.sessions:,} sessions in {args.steps} steps over {args.ramp:.0f} s:")
    for line in _steps(sampler, many, args.steps, args.ramp):
        print(line)
    _report_run(f"{args.sessions:,} sessions", many, sampler, args.seconds)
    held = sampler.between(many.hold.start, many.hold.end)
    rss = max(s.mem.rss for s in held)
    pss = max(s.mem.pss for s in held)
    per = (rss - idle.rss) * 1024 / max(1, many.total("open_at_hold"))
    print(f"server memory with {args.sessions:,} sessions: {rss:,.1f} MiB RSS at most in the "
          f"hold ({pss:,.1f} MiB PSS), peak {peak.hwm:,.1f} MiB (the sum of each process's "
          f"VmHWM; target ≤ 1,024 MiB), {per:.1f} KiB per session over idle")  # fmt: skip
    print("  by process (RSS MiB, pid order): "
          + ", ".join(f"{mib:.0f}" for _, mib in sorted(peak.each.items())))  # fmt: skip
    print(f"ratio RSS with {args.sessions:,} sessions / idle: {rss / idle.rss:.2f}")
    few_p99, many_p99 = few.push.pct(0.99), many.push.pct(0.99)
    print(f"ratio push p99 with {args.sessions:,} / with {args.few}: {many_p99 / few_p99:.1f}; "
          f"ack p99: {many.hist('ack').pct(0.99) / few.hist('ack').pct(0.99):.1f}")  # fmt: skip


if __name__ == "__main__":
    main()
