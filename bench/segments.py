"""Segments and scores in the processor: 1,000 active definitions, evaluation alone, backfill.

    python -m bench.segments [--visitors 500] [--segments 1000] [--repeat 3] [--people 300000]

1. **Throughput.** 1,000 segments of realistic variety and 3 score models, generated
   deterministically from the vocabulary of ``bench.process``'s log (its worlds, zones, object
   ids and SKUs, plus a product category per SKU, which this log adds to ``obj.product``):
   trait conditions, windowed counts and sums of events with property conditions, sequences,
   dwell in zones, attention to objects, products and categories, consent, scores, segments of
   other segments, a few on per-world statistics and on the current session. Their
   activations are the first entries of the log, then a day of visitors as in
   ``bench.process``. The processor rebuilds everything from offset 0 as ``worldflow replay``
   does, on one core: events/s per core (CPU time) and CPU-µs per event, against the same
   replay of the same log without the definitions, measured in the same run. Activating the
   definitions (the same replay of a log holding only them) is reported, and subtracted too.
2. **Evaluation alone.** The same events fed to ``Definitions.on_event`` on in-memory profiles
   (no store, no identity resolution beyond user and anonymous ids), each call timed: p50/p99.
3. **The boolean cores.** Each rule with its profile operators (count, attention, consent,
   score, in_segment…) replaced by the values they take on a profile, evaluated by
   ``worldflow.segments.logic`` (compiled) and by the reference ``panzi-json-logic`` on the
   same documents (profiles of step 2); the results are checked to agree with each other and
   with the full condition.
4. **Backfill.** 300,000 profiles by default (``--people 1000000`` for a million), from
   ``bench.profiles``'s log (one visit each), then one new segment that needs their history (a
   windowed count of ``zone.entered`` in the lobby, which everybody has): the processor's step
   loop in a child process until it is done, elapsed time, profiles/s and peak RSS (with,
   beside it, the WAL checkpoints the log writer makes for a server's processor). The baseline
   is the same step loop for a segment that needs no history and has the same members (a trait
   condition every profile satisfies), on a copy of the same store: the difference is reading
   the log back and folding it in. The time spent paging through the profile ids and reading
   the history is reported apart.
"""

from __future__ import annotations

import argparse
import heapq
import json
import os
import random
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import msgspec
import sqlalchemy as sa
from json_logic import jsonLogic  # type: ignore[import-untyped]

from bench import process, profiles
from bench.common import ADMIN_TOKEN, WRITE_KEY, peak_rss_mib
from worldflow.engine import TICK_WORKSPACE
from worldflow.events.catalogue import Catalogue
from worldflow.events.model import Event, LoggedEvent, decode_logged, encode_event
from worldflow.events.segment import SegmentTranslator
from worldflow.identity.types import identities_of
from worldflow.log import LogEntry
from worldflow.log.sql import read_entries
from worldflow.privacy import gate
from worldflow.processing import build, replay, settle_gc, tune_gc
from worldflow.profiles import model
from worldflow.profiles.model import Profile, Session
from worldflow.segments import backfill as backfill_module
from worldflow.segments.definition import compile_condition, compile_definition, validate
from worldflow.segments.incremental import Definitions
from worldflow.segments.logic import Evaluator, compile_logic, truthy
from worldflow.store.definitions import SqlDefinitionStore, definition_record
from worldflow.store.schema import event_log, segment_members, segment_sizes
from worldflow.store.sql import SqlStore, create_store_engine

WORLDS, ZONES, SKUS = process.WORLDS, process.ZONES, process.SKUS
CATEGORIES = ["sneakers", "jackets", "bags", "hats", "watches", "eyewear"]
WINDOWS = ["10m", "30m", "1h", "6h", "1d"]


def category(sku: str) -> str:
    return CATEGORIES[int(sku.removeprefix("SKU-")) % len(CATEGORIES)]


# --- definitions ------------------------------------------------------------------------------

SCORE_MODELS: list[dict[str, Any]] = [
    {"kind": "score", "key": "engagement", "half_life": "1d", "decay_step": "1h", "rules": [
        {"event": "object.viewed", "points": 1, "cap": {"points": 30, "per": "day"}},
        {"event": "object.gaze_dwell", "where": {">=": [{"var": "dwell_ms"}, 2000]}, "points": 2,
         "cap": {"points": 20, "per": "day"}},
        {"event": "product.tried_on", "points": 5},
        {"event": "cart.item_added", "points": 10},
        {"event": "order.completed", "points": 50}]},
    {"kind": "score", "key": "shopper", "half_life": "7d", "decay_step": "1d", "rules": [
        {"event": "product.tried_on", "where": {"in": [{"var": "obj.product.category"},
                                                       ["sneakers", "jackets"]]}, "points": 10},
        {"event": "cart.item_added", "points": 20},
        {"event": "order.completed", "points": 50}]},
    {"kind": "score", "key": "explorer", "rules": [
        {"event": "zone.entered", "points": 1, "cap": {"points": 10, "per": "day"}},
        {"event": "session.started", "world": "concert-hall", "points": 5}]},
]  # fmt: skip
SCORE_THRESHOLDS = {"engagement": (5, 60), "shopper": (10, 80), "explorer": (3, 15)}


def _where(path: str, value: Any) -> dict[str, Any]:
    return {"==": [{"var": path}, value]}


def _sku_views(rng: random.Random) -> Any:
    behaviour = {"event": "object.viewed", "where": _where("obj.product.sku", rng.choice(SKUS)),
                 "within": rng.choice(WINDOWS)}  # fmt: skip
    return {">=": [{"count": behaviour}, rng.choice([1, 1, 2])]}


def _category_attention(rng: random.Random) -> Any:
    signal, low, high = rng.choice([("gaze_ms", 1000, 8000), ("views", 2, 6),
                                    ("view_ms", 5000, 30000), ("try_ons", 1, 2),
                                    ("cart_adds", 1, 1)])  # fmt: skip
    threshold = rng.randint(low, high)
    arg: dict[str, Any] = {"category": rng.choice(CATEGORIES), "signal": signal,
                           "within": rng.choice(WINDOWS[1:])}  # fmt: skip
    if rng.random() < 0.3:
        arg["world"] = rng.choice(WORLDS)
    return {">=": [{"attention": arg}, threshold]}


def _object_attention(rng: random.Random) -> Any:
    world, zone, sku = rng.choice(WORLDS), rng.choice(ZONES), rng.choice(SKUS)
    arg = {"object": f"{world}/{zone}/{sku}", "signal": rng.choice(["views", "view_ms"]),
           "within": "1d"}  # fmt: skip
    return {">=": [{"attention": arg}, 1 if arg["signal"] == "views" else 3000]}


def _product_attention(rng: random.Random) -> Any:
    signal, low, high = rng.choice([("gaze_ms", 500, 3000), ("view_ms", 1000, 8000),
                                    ("try_ons", 1, 1)])  # fmt: skip
    arg = {"product": rng.choice(SKUS), "signal": signal, "within": rng.choice(WINDOWS[1:])}
    return {">=": [{"attention": arg}, rng.randint(low, high)]}


def _dwell(rng: random.Random) -> Any:
    arg: dict[str, Any] = {"zone": rng.choice(ZONES), "within": rng.choice(["1h", "6h", "1d"])}
    if rng.random() < 0.5:
        arg["world"] = rng.choice(WORLDS)
    return {">=": [{"dwell": arg}, rng.randrange(20_000, 200_000, 5_000)]}


def _sequence(rng: random.Random) -> Any:
    cat, zone = rng.choice(CATEGORIES), rng.choice(ZONES)
    viewed = {"event": "object.viewed", "where": _where("obj.product.category", cat)}
    steps = rng.choice([
        [viewed, {"event": "product.tried_on", "where": _where("obj.product.category", cat)}],
        [viewed, {"event": "cart.item_added"}],
        [{"event": "zone.entered", "where": _where("zone_id", zone)},
         {"event": "object.gaze_dwell", "where": _where("obj.product.category", cat)}],
        [viewed, {"event": "cart.item_added"}, {"event": "order.completed"}],
    ])  # fmt: skip
    arg: dict[str, Any] = {"steps": steps, "within": rng.choice(["5m", "10m", "30m", "1h", "2h"])}
    if rng.random() < 0.5:
        arg["window"] = rng.choice(["1d", "7d"])
    return {"sequence": arg}


def _measures(rng: random.Random) -> Any:
    cat, window = rng.choice(CATEGORIES), rng.choice(WINDOWS[1:])
    order = {"event": "order.completed"}
    return rng.choice([
        {">=": [{"sum": {"event": "object.viewed", "of": "view_ms", "within": window,
                         "where": _where("obj.product.category", cat)}},
                rng.randrange(5_000, 30_000, 1000)]},
        {">=": [{"sum": {"event": "order.completed", "of": "total.amount",
                         "within": rng.choice(["1d", "7d", "30d"])}}, rng.randrange(50, 300, 10)]},
        {">=": [{"count": {"event": "object.gaze_dwell", "within": window, "where": {"and": [
            _where("source", "head"), {">=": [{"var": "dwell_ms"}, rng.choice([1000, 2000])]}]}}},
                rng.choice([2, 3])]},
        {">=": [{"distinct": {"event": "object.viewed", "of": "obj.product.sku",
                              "within": window}}, rng.choice([4, 6, 8])]},
        {">=": [{"max": {"event": "object.viewed", "of": "view_ms", "within": window,
                         "where": _where("obj.product.category", cat)}},
                rng.randrange(4000, 9000, 250)]},
        {"and": [{">=": [{"count": {"event": "cart.item_added", "within": window}}, 1]},
                 {"==": [{"count": {"event": "order.completed", "within": window}}, 0]}]},
        # Lapsed buyers: time passing alone makes people enter.
        {"and": [{"!!": {"last_time": order}}, {">": [{"-": [{"var": "now"},
                 {"last_time": order}]}, rng.randint(1, 12) * 3_600_000]}]},
    ])  # fmt: skip


def _trait(rng: random.Random) -> Any:
    return rng.choice([
        {"==": [{"var": "traits.plan"}, "vip"]},
        {"and": [{"==": [{"var": "traits.plan"}, rng.choice(["vip", "free"])]},
                 _category_attention(rng)]},
        {"and": [{"!!": {"var": "traits.email"}}, _sku_views(rng)]},
    ])  # fmt: skip


def _consent(rng: random.Random) -> Any:
    return rng.choice([
        {"and": [{"consent": "marketing_contact"}, _sku_views(rng)]},
        {"and": [{"consent": "gaze"}, {">=": [{"attention": {
            "category": rng.choice(CATEGORIES), "signal": "gaze_ms",
            "within": rng.choice(WINDOWS)}}, rng.randrange(1000, 6000, 500)]}]},
        {"and": [{"!": {"consent": "marketing_contact"}}, _dwell(rng)]},
    ])  # fmt: skip


def _score(rng: random.Random) -> Any:
    key = rng.choice(list(SCORE_THRESHOLDS))
    low, high = SCORE_THRESHOLDS[key]
    condition = {">=": [{"score": key}, rng.randint(low, high)]}
    return condition if rng.random() < 0.6 else {"and": [condition, _sku_views(rng)]}


def _composite(rng: random.Random, keys: list[str]) -> Any:
    if len(keys) < 2:
        return _sku_views(rng)
    a, b = rng.sample(keys[-200:], 2)
    return rng.choice([
        {"and": [{"in_segment": a}, {"in_segment": b}]},
        {"or": [{"in_segment": a}, {"in_segment": b}]},
        {"and": [{"in_segment": a}, {"!": {"in_segment": b}}]},
        {"and": [{"in_segment": a}, _category_attention(rng)]},
    ])  # fmt: skip


def _activity(rng: random.Random) -> Any:
    return rng.choice([
        {">=": [{"var": [f"worlds.{rng.choice(WORLDS)}.sessions", 0]}, rng.randint(2, 4)]},
        {">=": [{"var": "counters.events"}, rng.randrange(40, 200, 10)]},
        {">=": [{"var": "orders"}, rng.randint(1, 3)]},
    ])  # fmt: skip


def _session(rng: random.Random) -> Any:
    return {">=": [{"count": {"event": "object.viewed", "within": "session"}}, rng.randint(4, 14)]}


KINDS: dict[str, tuple[int, Callable[..., Any]]] = {  # kind → (weight, builder)
    "sku": (14, _sku_views), "category": (12, _category_attention),
    "object": (6, _object_attention), "product": (8, _product_attention), "dwell": (8, _dwell),
    "sequence": (8, _sequence), "measure": (12, _measures), "trait": (6, _trait),
    "consent": (6, _consent), "score": (8, _score), "composite": (8, _composite),
    "activity": (2, _activity), "session": (2, _session),
}  # fmt: skip


def documents(segments: int, seed: int = 7) -> list[dict[str, Any]]:
    """The score models, then ``segments`` segments (some reading earlier ones), validated."""
    rng = random.Random(seed)
    found = [validate(m) for m in SCORE_MODELS]
    names, weights = list(KINDS), [w for w, _ in KINDS.values()]
    keys: list[str] = []
    for i in range(segments):
        kind = rng.choices(names, weights)[0]
        builder = KINDS[kind][1]
        condition = builder(rng, keys) if kind == "composite" else builder(rng)
        key = f"s{i:04d}-{kind}"
        found.append(validate({"kind": "segment", "key": key, "condition": condition}))
        keys.append(key)
    return found


# --- the log ----------------------------------------------------------------------------------


def messages(visitors: int) -> Iterator[tuple[Any, dict[str, Any]]]:
    """``bench.process``'s visitors (same seed), each product with its category."""
    rng = random.Random(11)
    pairs = sorted((p for n in range(visitors) for p in process.visitor(rng, n)),
                   key=lambda p: p[0])  # fmt: skip
    for at, message in pairs:
        obj = message.get("properties", {}).get("obj")
        if obj is not None:
            product = obj["product"]
            obj["product"] = {**product, "category": category(product["sku"])}
        yield at, message


def write_log(url: str, visitors: int, docs: list[dict[str, Any]]) -> tuple[int, int]:
    """The definitions' activations first, then the visitors' events: (definitions, events)."""
    store = SqlStore(url)
    store.migrate()
    workspace = store.bootstrap(WRITE_KEY, ADMIN_TOKEN).workspace_id
    definitions = SqlDefinitionStore(store.engine)
    before = int((process.START - timedelta(hours=1)).timestamp() * 1000)
    records = []
    for document in docs:
        version, _ = definitions.put(workspace, document)
        records.append(definition_record(workspace, document["kind"], document["key"], version,
                                         0, before)._asdict())  # fmt: skip
    translator = SegmentTranslator(Catalogue.default(), 32 * 1024, 10**9)
    rows = []
    for i, (at, message) in enumerate(messages(visitors)):
        message["messageId"] = f"m-{i}"
        message["timestamp"] = at.isoformat()
        (event,) = translator.translate([msgspec.json.encode(message)], workspace_id=workspace,
                                        source_id="bench", received_at=at)  # fmt: skip
        assert isinstance(event, Event), event
        rows.append({"workspace_id": workspace, "message_id": event.message_id,
                     "partition": 0, "received_at_ms": int(at.timestamp() * 1000),
                     "body": encode_event(event)})  # fmt: skip
    with store.engine.begin() as conn:
        conn.execute(sa.insert(event_log), records)
        for start in range(0, len(rows), 5000):
            conn.execute(sa.insert(event_log), rows[start : start + 5000])
    store.close()
    return len(records), len(rows)


def copy_without(source: Path, target: Path, where: str) -> None:
    """A consistent copy of an SQLite store, less the log entries ``where`` selects."""
    with sqlite3.connect(source) as conn:
        conn.execute("VACUUM INTO ?", (str(target),))
    conn.close()
    with sqlite3.connect(target) as conn:
        conn.execute(f"DELETE FROM event_log WHERE {where}")
    conn.close()


def measure(fn: Callable[[], Any]) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def memberships(url: str) -> tuple[int, int, int, int]:
    """(entries, exits, members now, segments with members now) from the derived tables."""
    engine = create_store_engine(url)
    s, m = segment_sizes.c, segment_members.c
    with engine.connect() as conn:
        entered, exited = conn.execute(sa.select(sa.func.sum(s.entered),
                                                 sa.func.sum(s.exited))).one()  # fmt: skip
        query = sa.select(sa.func.count(), sa.func.count(sa.distinct(m.key)))
        members, keys = conn.execute(query).one()
    engine.dispose()
    return int(entered or 0), int(exited or 0), int(members), int(keys)


def throughput(url: str, base_url: str, defs_url: str, events: int, repeat: int) -> None:
    counters: dict[str, int] = {}

    def run(on: str) -> Callable[[], None]:
        return lambda: counters.update(replay(on))

    base, runs, activation = [], [], []
    for _ in range(repeat):
        base.append(measure(run(base_url)))
        activation.append(measure(run(defs_url)))
        runs.append(measure(run(url)))
    entered, exited, members, keys = memberships(url)
    print(f"transitions: {counters.get('segment_transitions', 0):,} ({entered:,} entries, "
          f"{exited:,} exits); at the end {members:,} memberships in {keys:,} segments; "
          f"{counters.get('profiles_created', 0):,} profiles, "
          f"{counters.get('merges', 0):,} merges")  # fmt: skip
    wall, cpu = statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)
    base_wall = statistics.median(b[0] for b in base)
    base_cpu = statistics.median(b[1] for b in base)
    act_wall = statistics.median(a[0] for a in activation)
    act_cpu = statistics.median(a[1] for a in activation)
    print(f"replay with the definitions: {events / cpu:,.0f} events/s per core (median of "
          f"{repeat}: {', '.join(f'{events / r[1]:,.0f}' for r in runs)}), "
          f"{cpu / events * 1e6:.1f} CPU-µs/event, {events / wall:,.0f} events/s wall")  # fmt: skip
    print(f"  of which activating them (the same replay of the definitions alone): "
          f"{act_cpu:.1f} CPU-s ({act_wall:.1f} s); without it: "
          f"{events / (cpu - act_cpu):,.0f} events/s per core, "
          f"{(cpu - act_cpu) / events * 1e6:.1f} CPU-µs/event "
          f"(target: ≥ 20,000 events/s)")  # fmt: skip
    print(f"baseline, the same replay without definitions: {events / base_cpu:,.0f} events/s "
          f"per core, {base_cpu / events * 1e6:.1f} CPU-µs/event, {events / base_wall:,.0f} "
          f"events/s wall")  # fmt: skip
    print(f"ratio with/without definitions, CPU per event: {cpu / base_cpu:.2f} "
          f"(activation excluded: {(cpu - act_cpu) / base_cpu:.2f})")  # fmt: skip


# --- evaluation alone -------------------------------------------------------------------------


class Alone:
    """Definitions.on_event on in-memory profiles, as the processor would call it, timed."""

    def __init__(self, definitions: Definitions) -> None:
        self.definitions = definitions
        self.catalogue = Catalogue.default()
        self.profiles: dict[str, Profile] = {}
        self.alias: dict[str, str] = {}  # anonymous id → user id, once identified
        self.timers: list[tuple[int, str]] = []
        self.scheduled: dict[str, int] = {}
        self.now = 0
        self.event_ns: list[int] = []
        self.timer_ns: list[int] = []
        self.transitions = 0

    def schedule(self, key: str, profile: Profile) -> None:
        due = profile.due
        if due and (key not in self.scheduled or due < self.scheduled[key]):
            self.scheduled[key] = due
            heapq.heappush(self.timers, (due, key))

    def fire(self) -> None:
        clock = time.perf_counter_ns
        while self.timers and self.timers[0][0] <= self.now:
            due, key = heapq.heappop(self.timers)
            if self.scheduled.get(key) != due:
                continue
            del self.scheduled[key]
            profile = self.profiles[key]
            if profile.due and profile.due <= self.now:
                start = clock()
                self.transitions += len(self.definitions.on_timer(profile, self.now))
                self.timer_ns.append(clock() - start)
            self.schedule(key, profile)

    def profile(self, event: LoggedEvent, at: int) -> tuple[str, Profile]:
        ids = dict(identities_of(event))
        user, anon = ids.get("user_id"), ids.get("anonymous_id")
        if user and anon:
            self.alias[anon] = user
        key = user or self.alias.get(anon or "", anon or event.message_id)
        found = self.profiles.get(key)
        if found is None:
            found = self.profiles[key] = model.new_profile(key, event.workspace_id, 0, at)
        return key, found

    def feed(self, entry: LogEntry) -> None:
        self.now = max(self.now, entry.received_at_ms)
        if entry.workspace_id == TICK_WORKSPACE:
            return
        self.fire()
        event = decode_logged(entry.body)
        at = int(event.timestamp.timestamp() * 1000)
        key, profile = self.profile(event, at)
        name = event.name if event.type == "track" else None
        spec = self.catalogue.get(name) if name is not None else None
        properties = event.properties
        profile.last_seen = max(profile.last_seen, at)
        profile.counters["events"] = profile.counters.get("events", 0) + 1
        if name == "consent.updated":
            model.set_consent(profile, properties, at)
        if event.tier > 1 or profile.consent:
            verdict = gate.verdict(event.tier, spec, properties, profile, False)
            if verdict is gate.Verdict.SUPPRESS:
                return
            if verdict is not gate.Verdict.KEEP and spec is not None:
                properties = gate.minimise(spec, properties)
        traits: list[str] = []
        if event.type == "identify" and event.traits:
            model.set_traits(profile, event.traits, at)
            traits = [k for k in event.traits if not k.startswith("$")]
        world_id = model.world_id(event.context)
        world = model.world_of(profile, world_id, at)
        world.events += 1
        if name == "order.completed":
            model.order(world, properties)
        session_id = model.session_id(event.context, world_id)
        idle = [s for s in profile.sessions.values()
                if s.last_received + model.SESSION_IDLE_MS <= self.now]  # fmt: skip
        session = profile.sessions.get(session_id)
        if session is None and name != "session.ended":
            session = profile.sessions[session_id] = Session(
                id=session_id, world=world_id, started=at, last=at, last_received=self.now
            )
            world.sessions += 1
        elif session is not None:
            session.last_received = self.now
        clock = time.perf_counter_ns
        start = clock()
        for old in idle:
            del profile.sessions[old.id]
        if idle:
            self.transitions += len(self.definitions.on_session_end(profile, self.now))
        transitions = self.definitions.on_event(
            profile, name, properties, world_id, session_id, at, entry.offset, self.now, traits,
            consent=name == "consent.updated",
        )  # fmt: skip
        if name == "session.ended" and session is not None:
            del profile.sessions[session_id]
            transitions += self.definitions.on_session_end(profile, self.now)
        self.event_ns.append(clock() - start)
        self.transitions += len(transitions)
        self.schedule(key, profile)


def read_log(url: str) -> list[LogEntry]:
    engine = create_store_engine(url)
    entries: list[LogEntry] = []
    while chunk := read_entries(engine, entries[-1].offset if entries else 0, 10_000):
        entries += chunk
    engine.dispose()
    return entries


def pct(values: list[int], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1000


def evaluation_alone(definitions: Definitions, entries: list[LogEntry]) -> Alone:
    alone = Alone(definitions)
    tune_gc()
    for entry in entries:
        alone.feed(entry)
    settle_gc()
    ns = alone.event_ns
    print(f"on_event alone: p50 {pct(ns, 0.5):.1f} µs, p99 {pct(ns, 0.99):.1f} µs, mean "
          f"{sum(ns) / len(ns) / 1000:.1f} µs per event ({len(ns):,} events, "
          f"{len(alone.profiles):,} profiles; target p50 ≤ 50 µs)")  # fmt: skip
    t = alone.timer_ns or [0]
    print(f"on_timer alone: p50 {pct(t, 0.5):.1f} µs, p99 {pct(t, 0.99):.1f} µs "
          f"({len(alone.timer_ns):,} timers fired, {len(alone.timer_ns) / len(ns):.2f} per "
          f"event); all of it, events and timers: {(sum(ns) + sum(t)) / len(ns) / 1000:.0f} µs "
          f"per event; {alone.transitions:,} transitions")  # fmt: skip
    return alone


# --- boolean cores ----------------------------------------------------------------------------

PROFILE_OPERATORS = {"count", "sum", "distinct", "first_time", "last_time", "sequence", "dwell",
                     "attention", "consent", "score", "in_segment"}  # fmt: skip


def boolean_core(rule: Any, slots: list[Any]) -> Any:
    """The rule with each profile operator replaced by ``{"var": "ops.pN"}`` (appended to
    ``slots``): plain JSON Logic."""
    if isinstance(rule, list):
        return [boolean_core(r, slots) for r in rule]
    if isinstance(rule, dict) and len(rule) == 1:
        ((op, arg),) = rule.items()
        behaviour = isinstance(arg, dict) and "event" in arg
        if op in PROFILE_OPERATORS or (op in ("min", "max") and behaviour):
            slots.append(rule)
            return {"var": f"ops.p{len(slots) - 1}"}
        return {op: boolean_core(arg, slots)}
    return rule


def boolean_cores(definitions: Definitions, alone: Alone, docs: int, repeat: int) -> None:
    rng = random.Random(5)
    active = [p for p in alone.profiles.values() if p.aggregates]
    sample = rng.sample(active, min(docs, len(active)))
    rules, slot_lists = [], []
    for segment in definitions.segments.values():
        slots: list[Any] = []
        rules.append(boolean_core(segment.document["condition"], slots))
        slot_lists.append([compile_condition(s)[0] for s in slots])
    compiled = [compile_logic(r) for r in rules]
    datas, full = [], []
    for profile in sample:
        data = definitions.data(profile, alone.now)
        datas.append(({k: v for k, v in data.items() if k != "$"}, data))
    # One document per (rule, profile): the profile's plain data and its operators' values.
    pairs: list[tuple[Any, Evaluator, dict[str, Any]]] = []
    for rule, fn, evaluators in zip(rules, compiled, slot_lists, strict=True):
        for plain, data in datas:
            values = {f"p{i}": evaluate(data) for i, evaluate in enumerate(evaluators)}
            pairs.append((rule, fn, {**plain, "ops": values}))
            full.append(data)
    segments = list(definitions.segments.values())
    expected = [truthy(segments[i // len(datas)].evaluate(full[i])) for i in range(len(pairs))]
    ours, theirs = [], []
    for _ in range(repeat):
        start = time.perf_counter()
        mine = [fn(doc) for _, fn, doc in pairs]
        ours.append((time.perf_counter() - start) / len(pairs) * 1e6)
        start = time.perf_counter()
        reference = [jsonLogic(rule, doc) for rule, _, doc in pairs]
        theirs.append((time.perf_counter() - start) / len(pairs) * 1e6)
    disagree = sum(a != b for a, b in zip(mine, reference, strict=True))
    wrong = sum(truthy(a) != b for a, b in zip(mine, expected, strict=True))
    a, b = statistics.median(ours), statistics.median(theirs)
    print(f"boolean cores of {len(rules):,} rules × {len(datas):,} profiles (profile "
          f"operators precomputed, {sum(map(len, slot_lists)):,} of them), median of {repeat}: "
          f"{sum(map(truthy, mine)):,} of {len(pairs):,} true")  # fmt: skip
    print(f"worldflow.segments.logic (compiled): {a:.2f} µs per evaluation; baseline "
          f"panzi-json-logic: {b:.2f} µs; ratio {b / a:.1f}× faster "
          f"({disagree} disagreements, {wrong} against the full conditions)")  # fmt: skip


# --- backfill ---------------------------------------------------------------------------------

LOBBY = {"event": "zone.entered", "where": _where("zone_id", "lobby"), "within": "7d"}
HISTORY_SEGMENT = {"kind": "segment", "key": "lobby-visitors",
                   "condition": {">=": [{"count": LOBBY}, 1]}}  # fmt: skip
TRAIT_SEGMENT = {"kind": "segment", "key": "everyone", "condition": {
    "!=": [{"var": "traits.plan"}, "nobody"]}}  # fmt: skip


def activate(url: str, document: dict[str, Any]) -> None:
    """Store a definition and append its activation after the last entry of the log."""
    store = SqlStore(url)
    workspace = store.bootstrap(WRITE_KEY, ADMIN_TOKEN).workspace_id
    version, _ = SqlDefinitionStore(store.engine).put(workspace, validate(document))
    with store.engine.begin() as conn:
        last = conn.execute(sa.select(sa.func.max(event_log.c.received_at_ms))).scalar()
        record = definition_record(workspace, "segment", document["key"], version, 0,
                                   int(last or 0) + 1000)  # fmt: skip
        conn.execute(sa.insert(event_log), [record._asdict()])
    store.close()


def backfill_child(url: str) -> None:
    """In a child process: the processor's step loop until the log is done; prints JSON."""
    engine = create_store_engine(url, derived_only=True)
    started_rss = peak_rss_mib(os.getpid())
    processor = build(engine, (0,))
    spent = {"profile_ids": 0.0, "history": 0.0}

    def timed(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[name] += time.perf_counter() - start

        return call

    # Where the time goes: paging through the profiles, and reading the history back.
    processor.store.profile_ids = timed("profile_ids", processor.store.profile_ids)  # type: ignore[method-assign]
    collect = backfill_module.collect
    backfill_module.collect = timed("history", collect)
    tune_gc()
    wall, cpu = time.perf_counter(), time.process_time()
    try:
        while processor.step():
            settle_gc()
    finally:
        backfill_module.collect = collect
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    print(json.dumps({"wall": wall, "cpu": cpu, "rss": peak_rss_mib(os.getpid()),
                      "start_rss": started_rss, "counters": processor.counters(),
                      **spent}))  # fmt: skip
    engine.dispose()


@contextmanager
def checkpointing(path: Path) -> Iterator[None]:
    """What the log writer's thread does beside a server's processor (whose engine leaves the
    WAL alone): copy the WAL into the database every half second, restarting it past ~64 MB."""
    stop = threading.Event()

    def run() -> None:
        conn = sqlite3.connect(path, timeout=30)
        while not stop.wait(0.5):
            _busy, frames, _done = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            if frames > 16_384:
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def run_backfill(path: Path) -> dict[str, Any]:
    code = "import sys; from bench.segments import backfill_child; backfill_child(sys.argv[1])"
    with checkpointing(path):
        out = subprocess.run([sys.executable, "-c", code, f"sqlite:///{path}"], check=True,
                             capture_output=True, text=True,
                             cwd=Path(__file__).resolve().parent.parent)  # fmt: skip
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def backfill(tmp: Path, people: int) -> None:
    built = tmp / "people.db"
    started = time.perf_counter()
    events = profiles.write_log(f"sqlite:///{built}", people)
    written = time.perf_counter() - started
    rss, seconds = profiles.replay_peak_rss_mib(f"sqlite:///{built}")
    print(f"backfill store: {events:,} events for {people:,} people (written in {written:.0f} s; "
          f"replayed in {seconds:.0f} s, peak RSS {rss:,.0f} MiB)")  # fmt: skip
    results = {}
    for name, document in (("trait", TRAIT_SEGMENT), ("history", HISTORY_SEGMENT)):
        copy = tmp / f"{name}.db"
        with sqlite3.connect(built) as conn:
            conn.execute("VACUUM INTO ?", (str(copy),))
        conn.close()
        activate(f"sqlite:///{copy}", document)
        results[name] = run_backfill(copy)
        copy.unlink()
    for name, label in (("history", "a new segment on the log's history (lobby visits, 7d)"),
                        ("trait", "baseline, one that needs no history (a trait)")):  # fmt: skip
        r = results[name]
        c = r["counters"]
        print(f"{label}: {r['wall']:.1f} s ({r['cpu']:.1f} CPU-s), {people / r['wall']:,.0f} "
              f"profiles/s, {c.get('segment_transitions', 0):,} entries; peak RSS "
              f"{r['rss']:,.0f} MiB ({r['start_rss']:,.0f} MiB at start); of the time, paging "
              f"through profile ids {r['profile_ids']:.1f} s, reading the history back "
              f"{r['history']:.1f} s")  # fmt: skip
    h, t = results["history"], results["trait"]
    print(f"ratio history/baseline: time {h['wall'] / t['wall']:.2f}, peak RSS "
          f"{h['rss'] / t['rss']:.2f}")  # fmt: skip


# --- main -------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--visitors", type=int, default=500)
    parser.add_argument("--segments", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--people", type=int, default=300_000)
    parser.add_argument("--profiles", type=int, default=200, help="documents for step 3")
    args = parser.parse_args()
    docs = documents(args.segments)
    kinds: dict[str, int] = {}
    for document in docs[len(SCORE_MODELS) :]:
        kind = document["key"].split("-", 1)[1]
        kinds[kind] = kinds.get(kind, 0) + 1
    definitions = Definitions("default", [compile_definition(d, 1) for d in docs])
    distinct = len({json.dumps(d["condition"], sort_keys=True) for d in docs if "condition" in d})
    print(f"{len(definitions.segments):,} segments ({distinct:,} distinct conditions: "
          f"{', '.join(f'{n} {k}' for k, n in sorted(kinds.items(), key=lambda i: -i[1]))}) "
          f"and {len(definitions.scores)} score models; {len(definitions.behaviours):,} distinct "
          f"behaviours")  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="wf-bench-") as tmp:
        path = Path(tmp) / "segments.db"
        started = time.perf_counter()
        n_defs, events = write_log(f"sqlite:///{path}", args.visitors, docs)
        print(f"log: {n_defs:,} definitions then {events:,} events from {args.visitors:,} "
              f"visitors (written in {time.perf_counter() - started:.1f} s)")  # fmt: skip
        copy_without(path, Path(tmp) / "base.db", f"workspace_id = '{TICK_WORKSPACE}'")
        copy_without(path, Path(tmp) / "defs.db", f"workspace_id != '{TICK_WORKSPACE}'")
        throughput(f"sqlite:///{path}", f"sqlite:///{Path(tmp) / 'base.db'}",
                   f"sqlite:///{Path(tmp) / 'defs.db'}", events, args.repeat)  # fmt: skip
        alone = evaluation_alone(definitions, read_log(f"sqlite:///{path}"))
        boolean_cores(definitions, alone, args.profiles, args.repeat)
        if args.people:
            backfill(Path(tmp), args.people)


if __name__ == "__main__":
    main()
