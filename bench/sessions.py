"""Concurrent world sessions: 20,000 WebSockets on the push channel, each sending one event a
second, and what they cost the server in memory and latency.

    python -m bench.sessions [--sessions 20000] [--seconds 30] [--ramp 60] [--clients 2]

A fresh ``worldflow serve`` with a world's key, a segment (entered the stage in the last hour)
and a journey entered on it that pushes an in-world action. Client processes (asyncio, the
``websockets`` library, ``--clients`` of them sharing the sessions) open ``--sessions``
connections to ``/v1/push`` in ``--steps`` steps over ``--ramp`` seconds; each says hello (an
anonymous visitor in the hall), sends its ``session.started`` and then ``--rate`` events a
second (``session.heartbeat``, a frame each, spread evenly over the second), reads the
acknowledgements and acknowledges any action. Once every client has opened its sessions (or
given up on those not open ``--ramp-timeout`` seconds after the ramp) they hold for
``--seconds``; meanwhile ``--probes`` sessions a second, each once, send a ``zone.entered`` of
the stage, enter the segment and the journey, and time the action frame that comes back.

Figures: the server's memory (its process and its children: log writer, processor,
dispatcher), idle, during the ramp and with all the sessions, and per session; events
acknowledged per second against those offered; sent → acknowledged and stage entry sent →
action received, p50/p99; the CPU of the server's processes and of the clients. The
baseline, in the same run and on the same server, is ``--few`` sessions doing the same.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
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

from bench.common import admin, process_tree, worldflow_server

SEGMENT = {"condition": {">=": [{"count": {"event": "zone.entered", "within": "1h",
                                           "where": {"==": [{"var": "zone_id"}, "stage"]}}},
                                1]}}  # fmt: skip
ACTION = {"placement": "stage-screen", "content": {"text": "Welcome on stage"}}
JOURNEY = {"status": "active", "entry": {"segment": "on-stage"},
           "steps": [{"action": {"inworld": ACTION}}]}  # fmt: skip

HELLO = '{"type":"hello","anonymousId":"%s","zone":"hall"}'
HEARTBEAT = ('{"id":%d,"batch":[{"type":"track","event":"session.heartbeat","anonymousId":"%s",'
             '"messageId":"%s-%d","properties":{"active_ms":1000,"idle_ms":0}}]}')  # fmt: skip
STARTED = ('{"id":%d,"batch":[{"type":"track","event":"session.started","anonymousId":"%s",'
           '"messageId":"%s-%d","properties":{"entry_point":"direct"}}]}')  # fmt: skip
STAGE = ('{"id":%d,"batch":[{"type":"track","event":"zone.entered","anonymousId":"%s",'
         '"messageId":"%s-%d","properties":{"zone_id":"stage","zone_type":"stage"}}]}')  # fmt: skip
ACK = '{"type":"ack","id":"%s"}'
SLOTS = 100  # a second is cut in this many slots: each session sends in its own
FD_MARGIN = 512  # descriptors of a process besides its sessions (store, log, pipes, …)


# -- latencies -----------------------------------------------------------------------------


class Hist:
    """Latencies in bins (0.1 ms up to 100 ms, coarser above): merged exactly across client
    processes, small to send."""

    def __init__(self, bins: dict[int, int] | None = None) -> None:
        self.bins: Counter[int] = Counter(bins or {})

    def add(self, seconds: float) -> None:
        tenths = int(seconds * 10_000)  # 0.1 ms below 100 ms, then 1 ms, then 10 ms
        self.bins[tenths if tenths < 1_000 else tenths // 10 * 10 if tenths < 10_000
                  else tenths // 100 * 100] += 1  # fmt: skip

    def merge(self, other: Hist) -> None:
        self.bins.update(other.bins)

    @property
    def count(self) -> int:
        return sum(self.bins.values())

    def pct(self, q: float) -> float:
        """The q quantile in milliseconds, its bin's lower bound (nan without samples)."""
        total = self.count
        if not total:
            return float("nan")
        seen = 0
        for key in sorted(self.bins):
            seen += self.bins[key]
            if seen >= q * total:
                return key / 10
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
    probe_sent: float = 0.0  # when it entered the stage (0: not yet, or its action came)
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
    unexpected: int = 0  # actions beyond the first of a stage entry: sent again
    ack: Hist = field(default_factory=Hist)
    lag: Hist = field(default_factory=Hist)  # the client's own delay: sent − scheduled
    connect: Hist = field(default_factory=Hist)
    push: list[tuple[float, float]] = field(default_factory=list)  # (sent in the hold, took)


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
                    st.push.append((s.probe_sent - hold.start, now - s.probe_sent))
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


async def _send(s: Session, st: Stats, hold: Window, due: float, template: str = HEARTBEAT) -> None:
    s.seq += 1
    frame = template % (s.seq, s.anonymous_id, s.anonymous_id, s.seq)
    now = time.monotonic()
    if template is STAGE:
        s.probe_sent = now
        st.probes += 1
    s.sent[s.seq] = now
    if now in hold:
        st.sent += 1
        if template is not STAGE:  # probes go at the next tick: their delay is not the client's
            st.lag.add(now - due)
    try:
        await s.ws.send(frame)
    except ConnectionClosed:
        s.alive = False


async def client(args: argparse.Namespace) -> dict[str, Any]:
    """Open this process's sessions in steps (sending as they open), say so on stdout, hold
    from the instant read on stdin while probing; the figures."""
    t0 = time.monotonic() + (args.start_at - time.time())
    hold = Window(float("inf"), float("inf"))
    held = asyncio.Event()
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
        await _send(s, st, hold, time.monotonic(), STARTED)  # as an SDK does on connecting

    async def ramp() -> None:
        steps = max(1, args.steps)
        deadline = t0 + args.ramp + args.ramp_timeout
        for k in range(steps):
            await asyncio.sleep(max(0.0, t0 + k * args.ramp / steps - time.monotonic()))
            first = args.first + k * args.count // steps
            last = args.first + (k + 1) * args.count // steps
            try:
                await asyncio.wait_for(asyncio.gather(*(open_one(i) for i in range(first, last))),
                                       max(0.0, deadline - time.monotonic()))  # fmt: skip
            except TimeoutError:
                break
        if (late := args.count - st.opened - st.failed.total()) > 0:
            st.failed["not open by the ramp's deadline"] += late
        print("ramped", flush=True)  # the parent answers with the hold's start, once all are
        line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        hold.start = t0 + float(line) - args.start_at
        hold.end = hold.start + args.seconds
        held.set()

    async def send() -> None:
        tick = 1.0 / args.rate / SLOTS
        probe_every = 1.0 / args.probes if args.probes > 0 else float("inf")
        next_probe, candidates = float("inf"), iter(opened)
        n = 0
        while (due := t0 + n * tick) < hold.end:
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            if due >= hold.start and not st.open_at_hold:
                st.open_at_hold = sum(s.alive for s in opened)
                next_probe = hold.start
            while next_probe <= due and next_probe < hold.end - 2.0:  # answered in the hold
                s = next(candidates, None)
                if s is None:
                    break
                if s.alive:  # a frame of its own, beside the session's steady ones
                    await _send(s, st, hold, next_probe, STAGE)
                    next_probe += probe_every
            for s in slots[n % SLOTS]:
                if s.alive:
                    await _send(s, st, hold, due)
            n += 1

    ramping = asyncio.create_task(ramp())
    sending = asyncio.create_task(send())
    await held.wait()
    await asyncio.sleep(max(0.0, hold.start - time.monotonic()))
    usage0 = resource.getrusage(resource.RUSAGE_SELF)
    await asyncio.gather(ramping, sending)
    usage1 = resource.getrusage(resource.RUSAGE_SELF)
    # the acks and actions of the hold's last frames
    deadline = time.monotonic() + args.drain
    while time.monotonic() < deadline and any(
        s.alive and (s.probe_sent or any(t in hold for t in s.sent.values())) for s in opened
    ):
        await asyncio.sleep(0.2)
    missing = sum(1 for s in opened if s.probe_sent)
    unanswered = sum(1 for s in opened for t in s.sent.values() if t in hold)
    for s in opened:
        s.alive = False
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.gather(*(s.ws.close() for s in opened),
                                              return_exceptions=True), 30)  # fmt: skip
    for task in list(readers):
        task.cancel()
    cpu = usage1.ru_utime + usage1.ru_stime - usage0.ru_utime - usage0.ru_stime
    return {
        "opened": st.opened, "failed": dict(st.failed), "closed": dict(st.closed),
        "open_at_hold": st.open_at_hold, "sent": st.sent, "acked": st.acked,
        "errors": dict(st.errors), "unanswered": unanswered, "rejected": st.rejected,
        "probes": st.probes, "actions": st.actions, "unexpected": st.unexpected,
        "missing": missing, "ack": st.ack.json(), "lag": st.lag.json(),
        "connect": st.connect.json(), "push": st.push, "cpu_cores": cpu / args.seconds,
        "max_rss_mib": usage1.ru_maxrss / 1024,
    }  # fmt: skip


def client_main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.sessions client")
    parser.add_argument("--url", required=True)
    parser.add_argument("--tag", required=True)
    parser.add_argument("--first", type=int, default=0)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--start-at", type=float, required=True, help="epoch seconds")
    parser.add_argument("--ramp", type=float, default=0)
    parser.add_argument("--ramp-timeout", type=float, default=120)
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--rate", type=float, default=1.0, help="events/s per session")
    parser.add_argument("--probes", type=float, default=0, help="stage entries/s")
    parser.add_argument("--drain", type=float, default=10)
    parser.add_argument("--concurrency", type=int, default=100, help="handshakes at once")
    parser.add_argument("--compression", default="deflate", choices=["deflate", "none"])
    parser.add_argument("--out", required=True, help="where the figures are written (JSON)")
    args = parser.parse_args(argv)
    raise_fd_limit(args.count + FD_MARGIN)
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    Path(args.out).write_text(json.dumps(asyncio.run(client(args))))


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


@dataclass
class Memory:
    rss: float = 0.0  # MiB, summed over the processes
    pss: float = 0.0  # the same without counting shared pages twice
    hwm: float = 0.0  # peak RSS, summed (each process's own peak)
    cpu: float = 0.0  # CPU seconds used so far
    cpu_each: dict[int, float] = field(default_factory=dict)
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
            m.cpu_each[p] = (int(stat[11]) + int(stat[12])) / _TICK
            m.cpu += m.cpu_each[p]
    return m


def roles(pid: int) -> dict[int, str]:
    """What each process of the server is, from the lock files its children hold (the log
    writer's, a processor's partition, the dispatcher's)."""
    found = {pid: "server"}
    for child in process_tree(pid)[1:]:
        role = "worker"
        with contextlib.suppress(OSError):
            if b"resource_tracker" in Path(f"/proc/{child}/cmdline").read_bytes():
                role = "resource tracker"
            for fd in Path(f"/proc/{child}/fd").iterdir():
                with contextlib.suppress(OSError):
                    target = os.readlink(fd)
                    if target.endswith("-writer.lock"):
                        role = "log writer"
                    elif target.endswith("deliver.lock"):
                        role = "dispatcher"
                    elif target.endswith(".lock") and ".p" in target.rsplit("/", 1)[-1]:
                        role = "processor"
        found[child] = role
    return found


def _by_role(values: dict[int, float], role: dict[int, str], fmt: str) -> str:
    return ", ".join(f"{role.get(pid, pid)} {format(value, fmt)}"
                     for pid, value in sorted(values.items()))  # fmt: skip


def scrape(port: int) -> dict[str, Any]:
    """The server metrics this bench reads: open push connections, the log's end, the
    processor's offset and the push latency histogram (decision → sent)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    wanted = {"worldflow_push_connections": "connections", "worldflow_log_end_offset": "log",
              "worldflow_processor_offset": "processed"}  # fmt: skip
    found: dict[str, Any] = {"push_le": {}}
    for line in text.splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in wanted:
            found[wanted[name]] = found.get(wanted[name], 0.0) + float(line.rsplit(" ", 1)[1])
        elif name == "worldflow_push_latency_seconds_bucket":
            le = float(line.split('le="')[1].split('"')[0])
            found["push_le"][le] = float(line.rsplit(" ", 1)[1])
    return found


def bucket_quantile(before: dict[float, float], after: dict[float, float], q: float) -> float:
    """The upper bound (ms) of the histogram bucket holding the q quantile of what was observed
    between two scrapes (nan without observations)."""
    buckets = sorted((le, n - before.get(le, 0.0)) for le, n in after.items())
    total = buckets[-1][1] if buckets else 0.0
    for le, count in buckets:
        if total and count >= q * total:
            return le * 1000
    return float("nan")


@dataclass
class Sample:
    t: float  # monotonic
    value: Any


class Sampler:
    """The server's memory and CPU, and its metrics, every second (in two threads: a scrape
    may be slow when the server is busy) until stopped."""

    def __init__(self, port: int, pid: int) -> None:
        self.port, self.pid = port, pid
        self.memory: list[Sample] = []
        self.metrics: list[Sample] = []
        self.halt = threading.Event()
        self.threads = [
            threading.Thread(target=self._loop, args=(self.memory, self._memory)),
            threading.Thread(target=self._loop, args=(self.metrics, self._scrape)),
        ]

    def _memory(self) -> Memory:
        return memory(self.pid)

    def _scrape(self) -> dict[str, Any]:
        return scrape(self.port)

    def _loop(self, into: list[Sample], take: Any) -> None:
        while not self.halt.is_set():
            with contextlib.suppress(OSError):
                into.append(Sample(time.monotonic(), take()))
            self.halt.wait(1.0)

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def stop(self) -> None:
        self.halt.set()
        for thread in self.threads:
            thread.join()

    def between(self, samples: list[Sample], start: float, end: float) -> list[Sample]:
        return [s for s in samples if start <= s.t <= end]


# -- the run ---------------------------------------------------------------------------------


@dataclass
class Run:
    sessions: int
    rate: float  # events/s per session
    start: float  # monotonic, the clients' t0
    ramped: float  # every client had opened its sessions (or given up)
    hold: Window
    results: list[dict[str, Any]]
    roles: dict[int, str] = field(default_factory=dict)  # the server's processes

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
            for _at, seconds in r["push"]:
                found.add(seconds)
        return found

    def push_max(self, every: float) -> list[float]:
        """The slowest push of each ``every`` seconds of the hold, ms (the push loop stalls
        now and then: when, for how long)."""
        slowest: dict[int, float] = {}
        for r in self.results:
            for at, seconds in r["push"]:
                slot = int(at // every)
                slowest[slot] = max(slowest.get(slot, 0.0), seconds * 1000)
        return [slowest.get(k, float("nan")) for k in range(max(slowest, default=-1) + 1)]


def run_clients(port: int, key: str, args: argparse.Namespace, *, tag: str, sessions: int,
                processes: int, ramp: float, steps: int, seconds: float,
                probes: float) -> Run:  # fmt: skip
    """``sessions`` over ``processes`` client processes: they open them together; once all
    have, the hold starts ``--settle`` seconds later, for ``seconds``."""
    start_at = time.time() + 3.0  # the clients' imports
    start = time.monotonic() + 3.0
    out = Path(tempfile.mkdtemp(prefix="wf-sessions-"))
    procs = []
    for k in range(processes):
        first, last = k * sessions // processes, (k + 1) * sessions // processes
        command = [sys.executable, "-m", "bench.sessions", "client",
                   "--url", f"ws://127.0.0.1:{port}/v1/push?key={key}", "--tag", tag,
                   "--first", str(first), "--count", str(last - first),
                   "--start-at", repr(start_at), "--ramp", str(ramp), "--steps", str(steps),
                   "--ramp-timeout", str(args.ramp_timeout), "--seconds", str(seconds),
                   "--rate", str(args.rate), "--probes", str(probes / processes),
                   "--compression", args.compression, "--concurrency", str(args.concurrency),
                   "--out", str(out / f"{k}.json")]  # fmt: skip
        procs.append(subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      text=True))  # fmt: skip
    try:
        for proc in procs:
            assert proc.stdout is not None
            if proc.stdout.readline().strip() != "ramped":
                raise RuntimeError(f"a client process failed with {proc.wait()}")
        ramped = time.monotonic()
        hold_at = time.time() + args.settle
        hold = Window(ramped + args.settle, ramped + args.settle + seconds)
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write(f"{hold_at!r}\n")
            proc.stdin.close()
        results = []
        for k, proc in enumerate(procs):
            if proc.wait() != 0:
                raise RuntimeError(f"a client process failed with {proc.returncode}")
            results.append(json.loads((out / f"{k}.json").read_text()))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        shutil.rmtree(out)
    return Run(sessions, args.rate, start, ramped, hold, results)


def _ms(h: Hist) -> str:
    return f"p50 {h.pct(0.5):,.1f} ms, p99 {h.pct(0.99):,.1f} ms"


def _ramp(sampler: Sampler, run: Run, steps: int) -> Iterator[str]:
    """The server's memory as the connections it counts reach each step."""
    conns = [s for s in sampler.metrics if s.t >= run.start and "connections" in s.value]
    for k in range(1, steps + 1):
        target = run.sessions * k / steps
        reached = next((s for s in conns if s.value["connections"] >= 0.99 * target), None)
        if reached is None:
            yield f"  {target:>8,.0f}: not reached"
            continue
        mem = min(sampler.memory, key=lambda m: abs(m.t - reached.t)).value
        yield (f"  {reached.value['connections']:>8,.0f} open after {reached.t - run.start:5.1f} s:"
               f" RSS {mem.rss:7.1f} MiB, PSS {mem.pss:7.1f} MiB")  # fmt: skip


def _report_run(label: str, run: Run, sampler: Sampler, seconds: float) -> None:
    mem = sampler.between(sampler.memory, run.hold.start, run.hold.end)
    cores, each = float("nan"), ""
    if len(mem) > 1:
        first, last, span = mem[0].value, mem[-1].value, mem[-1].t - mem[0].t
        cores = (last.cpu - first.cpu) / span
        each = _by_role({pid: (cpu - first.cpu_each.get(pid, 0.0)) / span
                         for pid, cpu in last.cpu_each.items()}, run.roles, ".2f")  # fmt: skip
    metrics = [s for s in sampler.between(sampler.metrics, run.hold.start - 1, run.hold.end + 1)
               if "log" in s.value]  # fmt: skip
    offered = run.sessions * run.rate * seconds + run.total("probes")  # with the stage entries
    sent, acked = run.total("sent"), run.total("acked")
    push = run.push
    print(f"{label}: {run.total('open_at_hold'):,} of {run.sessions:,} sessions open at the hold"
          f" ({run.total('opened'):,} opened in {run.ramped - run.start:.1f} s; failed "
          f"{dict(run.counts('failed')) or 0}; closed by the server "
          f"{dict(run.counts('closed')) or 0})")  # fmt: skip
    print(f"  events: offered {offered / seconds:,.0f}/s, sent {sent / seconds:,.0f}/s, "
          f"acknowledged {acked / seconds:,.0f}/s ({acked / offered:.1%} of offered); "
          f"errors {dict(run.counts('errors')) or 0}, unanswered {run.total('unanswered'):,}, "
          f"events rejected {run.total('rejected')}")  # fmt: skip
    print(f"  sent → acknowledged: {_ms(run.hist('ack'))}; the clients' own send delay: "
          f"{_ms(run.hist('lag'))}")  # fmt: skip
    print(f"  stage entry sent → action received: {_ms(push)}, max {push.pct(1.0):,.0f} ms "
          f"({push.count} of {run.total('probes')} probes; {run.total('missing')} without an "
          f"action, {run.total('unexpected')} actions sent again)")  # fmt: skip
    print("    slowest of each 5 s of the hold: "
          + ", ".join(f"{ms:,.0f}" for ms in run.push_max(5.0)) + " ms")  # fmt: skip
    if len(metrics) > 1:
        first, last = metrics[0], metrics[-1]
        span = last.t - first.t
        logged = (last.value["log"] - first.value["log"]) / span
        processed = (last.value.get("processed", 0) - first.value.get("processed", 0)) / span
        behind = last.value["log"] - last.value.get("processed", 0)
        before, after = first.value["push_le"], last.value["push_le"]
        print(f"  server: log +{logged:,.0f} events/s, processor +{processed:,.0f} events/s "
              f"({behind:,.0f} behind at the end); decision → sent (its histogram): p50 ≤ "
              f"{bucket_quantile(before, after, 0.5):,.0f} ms, p99 ≤ "
              f"{bucket_quantile(before, after, 0.99):,.0f} ms")  # fmt: skip
    else:
        print("  server: its /metrics did not answer during the hold")
    if mem:
        rss, pss = max(m.value.rss for m in mem), max(m.value.pss for m in mem)
        print(
            f"  server: {rss:,.1f} MiB RSS ({pss:,.1f} MiB PSS) at most, {cores:.2f} cores ({each})"
        )
    client_cpu = sum(float(r["cpu_cores"]) for r in run.results)
    client_rss = sum(float(r["max_rss_mib"]) for r in run.results)
    print(f"  clients: {len(run.results)} process(es), {client_cpu:.2f} cores, "
          f"{client_rss:,.0f} MiB peak RSS; handshake + welcome: "
          f"{_ms(run.hist('connect'))}")  # fmt: skip


def main() -> None:
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=raw)
    parser.add_argument("--sessions", type=int, default=20_000)
    parser.add_argument("--seconds", type=float, default=30, help="hold with all open")
    parser.add_argument("--ramp", type=float, default=60, help="seconds to open them all")
    parser.add_argument("--steps", type=int, default=10, help="ramp steps")
    parser.add_argument("--ramp-timeout", type=float, default=120,
                        help="sessions not open this long after the ramp are given up")  # fmt: skip
    parser.add_argument("--settle", type=float, default=5, help="after the ramp, before the hold")
    parser.add_argument("--rate", type=float, default=1.0, help="events/s per session")
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
    if limit < -(-args.sessions // args.workers) + 100:
        print(f"  warning: a server process holds at most about {limit - 100:,} connections "
              f"under this limit (its hard limit: raising it needs the privilege); those beyond "
              f"fail, and while it is full it accepts no other connection either")  # fmt: skip
    tree: list[int] = []
    try:
        with worldflow_server(workers=args.workers) as (port, pid):
            key = admin(port, "POST", "/v1/sources", {"name": "stage", "world": "arena"})
            admin(port, "PUT", "/v1/segments/on-stage", SEGMENT)
            admin(port, "PUT", "/v1/journeys/greet", JOURNEY)
            sampler = Sampler(port, pid)
            sampler.start()
            time.sleep(3.0)  # the activations reach the processor; the server settles
            tree, role = process_tree(pid), roles(pid)
            idle = memory(pid)
            probes = min(args.probes, args.few / args.baseline_seconds)
            few = run_clients(port, key["write_key"], args, tag="few", sessions=args.few,
                              processes=1, ramp=0, steps=1, seconds=args.baseline_seconds,
                              probes=probes)  # fmt: skip
            many = run_clients(port, key["write_key"], args, tag="s", sessions=args.sessions,
                               processes=args.clients, ramp=args.ramp, steps=args.steps,
                               seconds=args.seconds, probes=args.probes)  # fmt: skip
            peak = memory(pid)
            sampler.stop()
            few.roles = many.roles = role
            report(args, sampler, idle, peak, few, many)
    except subprocess.TimeoutExpired:  # the server did not stop in time: its processes go
        for pid in tree:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        raise


def report(args: argparse.Namespace, sampler: Sampler, idle: Memory, peak: Memory, few: Run,
           many: Run) -> None:  # fmt: skip
    print(
        f"server idle: {idle.rss:,.1f} MiB RSS ({idle.pss:,.1f} MiB PSS) in "
        f"{len(idle.each)} processes (MiB): {_by_role(idle.each, many.roles, '.0f')}"
    )
    _report_run(f"baseline, {args.few} sessions", few, sampler, args.baseline_seconds)
    print(f"ramp to {args.sessions:,} sessions in {args.steps} steps over {args.ramp:.0f} s "
          f"(as the server counts them):")  # fmt: skip
    for line in _ramp(sampler, many, args.steps):
        print(line)
    _report_run(f"{args.sessions:,} sessions", many, sampler, args.seconds)
    held = sampler.between(sampler.memory, many.hold.start, many.hold.end) or sampler.memory[-1:]
    rss = max(s.value.rss for s in held)
    pss = max(s.value.pss for s in held)
    open_ = max(1, many.total("open_at_hold"))
    print(f"server memory with {open_:,} sessions open: {rss:,.1f} MiB RSS at most in the hold "
          f"({pss:,.1f} MiB PSS); peak {peak.hwm:,.1f} MiB (the sum of each process's VmHWM; "
          f"target ≤ 1,024 MiB); {(rss - idle.rss) * 1024 / open_:.1f} KiB RSS per session "
          f"over idle")  # fmt: skip
    print(f"  by process at the end (RSS MiB): {_by_role(peak.each, many.roles, '.0f')}")
    print(f"ratio RSS with {open_:,} sessions / idle: {rss / idle.rss:.2f}")
    few_push, many_push = few.push.pct(0.99), many.push.pct(0.99)
    few_ack, many_ack = few.hist("ack").pct(0.99), many.hist("ack").pct(0.99)
    print(f"ratio push p99 with {open_:,} sessions / with {args.few}: "
          f"{many_push / few_push:.1f}; ack p99: {many_ack / few_ack:.1f}")  # fmt: skip


if __name__ == "__main__":
    main()
