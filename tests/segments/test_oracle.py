"""Incremental segment membership against a brute-force oracle (semantics: docs/SEGMENTS.md).

Random segment and score documents and a random stream for one profile (events, some late or
from the future, trait and consent changes, and quiet spells in which only time passes) are
driven through ``Definitions`` the way the processor drives it: ``on_timer`` whenever the
profile's timer is due, before anything at a later clock. After every hook, the memberships
and the times of the transitions are compared with a brute force that knows nothing of the
incremental state: at each instant it recomputes every aggregate from the whole history,
following "Windows and time" and "Scores". Between two hooks it evaluates every instant at
which a window passes over an event or a score steps down, so a transition from a timer must
carry exactly that instant.

Conditions compare the clock with event times (``now − last_time(B) > D``, ``now ≤
first_time(B) + D``) and with fixed dates: memberships then change at exact instants too.
Event counters (``counters.events``, ``counters.events.<name>``) are counted by the driver as
the processor counts them and by the oracle from the history. Left out: sessions (every event
belongs to one session that never ends, and no condition uses ``within: session``), world
statistics, ``{"var": "now"}`` read otherwise than in
such comparisons (evaluated "when the profile changes or one of its timers fires", not at
exact instants), score time zones other than UTC, and the bounds of 1,000 events per
behaviour (streams here are shorter). Half-lives divide the decay step, so every decay factor
is a power of two and the oracle's arithmetic is exact.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.strategies import weighted
from worldflow.profiles.model import Consent, Profile, new_profile
from worldflow.segments.definition import compile_definition, validate
from worldflow.segments.incremental import Definitions, Transition
from worldflow.segments.logic import Evaluator, compile_logic, truthy

WS, PID, SESSION = "ws", "p1", "s1"
SECOND, MINUTE, HOUR, DAY = 1000, 60_000, 3_600_000, 86_400_000
# Five minutes before Monday 2024-01-01 00:00 UTC: random streams cross an hour, a day and a
# week boundary early on (score caps), and BASE is a whole number of minutes (decay steps).
BASE = 1_704_067_200_000 - 5 * MINUTE
DURATIONS = {"10s": 10 * SECOND, "30s": 30 * SECOND, "1m": MINUTE, "5m": 5 * MINUTE,
             "12h": 12 * HOUR, "1d": DAY, "7d": 7 * DAY}  # fmt: skip
MEASURES = ("count", "sum", "min", "max", "distinct", "first_time", "last_time")
ZERO = 0.001  # decayed scores below this are 0


# --- the brute force --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Seen:
    """An event as processed: its time clamped to its receipt, its log offset, its receipt."""

    name: str | None
    props: dict[str, Any]
    world: str
    at: int
    offset: int
    received: int


def lookup(props: Any, path: str) -> Any:
    for step in path.split("."):
        if not isinstance(props, dict):
            return None
        props = props.get(step)
    return props


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def walk(node: Any) -> Iterable[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from walk(value)


def numbers(node: Any) -> Iterable[int | float]:
    if is_number(node):
        yield node
    elif isinstance(node, dict | list):
        for value in node.values() if isinstance(node, dict) else node:
            yield from numbers(value)


Test = Callable[[dict[str, Any]], bool]


class Oracle:
    """Memberships at any instant, recomputed from the history of processed events."""

    def __init__(self, documents: list[dict[str, Any]]) -> None:
        self.segments = [d for d in documents if d.get("kind", "segment") == "segment"]
        self.models = {d["key"]: d for d in documents if d.get("kind") == "score"}
        self.history: list[Seen] = []
        self.traits: dict[str, Any] = {}
        self.consent: dict[str, bool] = {}
        self.windows = sorted(
            {
                DURATIONS[node[name]]
                for node in walk(documents)
                for name in ("within", "window")
                if isinstance(node.get(name), str)
            }
        )
        self._rules: dict[str, Evaluator] = {}
        # the durations and dates conditions compare the clock with: a comparison flips when
        # the clock reaches an event's time plus a duration, or a date (or a millisecond after)
        self.offsets = {abs(n) for n in numbers(documents) if abs(n) >= 30 * SECOND}

    # what happened

    def event(
        self, name: str | None, props: dict[str, Any], world: str, at: int, offset: int, now: int
    ) -> None:
        self.history.append(Seen(name, props, world, min(at, now), offset, now))

    # when memberships can change by themselves

    def instants(self, since: int, until: int) -> list[int]:
        """Every instant in (since, until] at which a window passes over an event or a score
        steps down: memberships are constant in between."""
        found = {e.at + w for e in self.history for w in self.windows}
        found.update(e.at + d + tick for e in self.history for d in self.offsets for tick in (0, 1))
        found.update(d + tick for d in self.offsets for tick in (0, 1))
        for model in self.models.values():
            if "half_life" in model:
                step = DURATIONS[model.get("decay_step", "1d")]
                found.update(k * step for k in range(since // step + 1, until // step + 1))
        return sorted(t for t in found if since < t <= until)

    def membership(self, t: int) -> set[str]:
        inside: set[str] = set()
        data = {"traits": dict(self.traits), "now": t}
        for segment in self.segments:
            rule = self.substitute(segment["condition"], t, inside)
            if truthy(compile_logic(rule)(data)):
                inside.add(segment["key"])
        return inside

    # the condition language: profile operators replaced by their values at t

    def substitute(self, node: Any, t: int, inside: set[str]) -> Any:
        if isinstance(node, list):
            return [self.substitute(item, t, inside) for item in node]
        if not isinstance(node, dict) or len(node) != 1:
            return node
        ((op, arg),) = node.items()
        if op in MEASURES and isinstance(arg, dict) and "event" in arg:
            return self.measure(op, arg, t)
        if op == "sequence":
            return self.sequence(arg, t)
        if op == "dwell":
            zone = arg["zone"]
            events = self.matching(
                "zone.exited",
                lambda p: p.get("zone_id") == zone,
                arg.get("world"),
                arg.get("within"),
                t,
            )
            return sum(n for e in events if is_number(n := e.props.get("dwell_ms")))
        if op == "attention":
            return self.attention(arg, t)
        if op == "consent":
            return self.consent.get(arg, False)
        if op == "score":
            return self.score(arg, t)
        if op == "in_segment":
            return arg in inside
        if op == "var":
            path = arg if isinstance(arg, str) else arg[0]
            return self.counter(arg) if path.startswith("counters.events") else node
        return {op: self.substitute(arg, t, inside)}

    def counter(self, arg: Any) -> Any:
        """An event counter, as ``var`` reads it: absent (the default) until counted."""
        path, default = (arg, None) if isinstance(arg, str) else (arg[0], (arg[1:] or [None])[0])
        if path == "counters.events":
            n = len(self.history)
        else:
            name = path.removeprefix("counters.events.")
            n = sum(1 for e in self.history if (e.name or "identify") == name)
        return n or default

    def where(self, rule: Any) -> Test:
        if rule is None:
            return lambda props: True
        text = json.dumps(rule, sort_keys=True)
        if text not in self._rules:
            self._rules[text] = compile_logic(rule)
        evaluate = self._rules[text]
        return lambda props: truthy(evaluate(props))

    def matching(
        self, name: str, test: Test, world: str | None, window: str | None, t: int
    ) -> list[Seen]:
        """The events of a behaviour that count at t, in log order."""
        w = DURATIONS[window] if window is not None else None
        found = []
        for e in self.history:
            if e.name != name or (world is not None and e.world != world):
                continue
            # t − W < time ≤ t; and one that arrived after the window had passed over it
            # never counts in that window (implied by the first for t ≥ its receipt).
            if w is not None and not (t - w < e.at <= t and e.at > e.received - w):
                continue
            if test(e.props):
                found.append(e)
        return found

    def measure(self, what: str, spec: dict[str, Any], t: int) -> Any:
        events = self.matching(
            spec["event"], self.where(spec.get("where")), spec.get("world"), spec.get("within"), t
        )
        return self.measured(what, events, spec.get("of"))

    @staticmethod
    def measured(what: str, events: list[Seen], of: str | None) -> Any:
        if what == "count":
            return len(events)
        if what == "first_time":
            return min((e.at for e in events), default=None)
        if what == "last_time":
            return max((e.at for e in events), default=None)
        assert of is not None
        values = [lookup(e.props, of) for e in events]
        if what == "distinct":
            return len({v for v in values if v is not None})
        numbers = [v for v in values if is_number(v)]
        if what == "sum":
            return sum(numbers)
        return (min if what == "min" else max)(numbers, default=None)

    def attention(self, arg: dict[str, Any], t: int) -> Any:
        signal = arg.get("signal", "gaze_ms")
        name, of = {
            "gaze_ms": ("object.gaze_dwell", "dwell_ms"),
            "views": ("object.viewed", None),
            "view_ms": ("object.viewed", "view_ms"),
        }[signal]
        events = self.matching(name, self.target(arg), arg.get("world"), arg.get("within"), t)
        return self.measured("count" if of is None else "sum", events, of)

    @staticmethod
    def target(arg: dict[str, Any]) -> Test:
        """An attention target: an object id, a SKU, or a category (the product's, or one of
        the object's tags)."""
        if "object" in arg:
            return lambda p: lookup(p, "obj.object_id") == arg["object"]
        if "product" in arg:
            return lambda p: lookup(p, "obj.product.sku") == arg["product"]
        category = arg["category"]

        def test(p: dict[str, Any]) -> bool:
            tags = lookup(p, "obj.tags")
            in_tags = isinstance(tags, list) and category in tags
            return lookup(p, "obj.product.category") == category or in_tags

        return test

    def sequence(self, arg: dict[str, Any], t: int) -> bool:
        """Events matching the steps in (time, offset) order, each in the window at t, the last
        no later than ``within`` after the first: tried exhaustively."""
        lists = [
            self.matching(
                step["event"],
                self.where(step.get("where")),
                step.get("world", arg.get("world")),
                arg.get("window"),
                t,
            )
            for step in arg["steps"]
        ]
        limit = DURATIONS[arg["within"]] if "within" in arg else None
        failed: set[tuple[int, int]] = set()  # (step, event offset) that cannot be continued

        def continues(i: int, previous: Seen, first: int) -> bool:
            if i == len(lists):
                return True
            if (i, previous.offset) in failed:
                return False
            for e in lists[i]:
                after = (e.at, e.offset) > (previous.at, previous.offset)
                soon = limit is None or e.at - first <= limit
                if after and soon and continues(i + 1, e, first):
                    return True
            failed.add((i, previous.offset))
            return False

        for start in lists[0]:
            failed.clear()  # what can follow depends on where the sequence started
            if continues(1, start, start.at):
                return True
        return False

    def score(self, key: str, t: int) -> float:
        """Replay the score: each matching rule adds its points when the event is processed,
        up to its cap in the calendar period of the event's time ("an event late for a period
        before the latest one a capped rule awarded in gets no points from it"); with a
        half-life the value is multiplied by 2^(−s/H) at every multiple of s, and is 0 once
        below 0.001."""
        model = self.models.get(key)
        if model is None:
            return 0.0
        value, since = 0.0, None
        spent: dict[tuple[int, int], float] = {}
        latest: dict[int, int] = {}  # rule → the latest period it awarded capped points in
        for e in self.history:
            for i, rule in enumerate(model["rules"]):
                if e.name != rule["event"] or rule.get("world", e.world) != e.world:
                    continue
                if not self.where(rule.get("where"))(e.props):
                    continue
                points = float(rule["points"])
                if "cap" in rule and points > 0:
                    period = self.period(rule["cap"]["per"], e.at)
                    if period < latest.get(i, period):
                        continue
                    latest[i] = max(period, latest.get(i, period))
                    points = min(points, rule["cap"]["points"] - spent.get((i, period), 0.0))
                    if points <= 0:
                        continue
                    spent[i, period] = spent.get((i, period), 0.0) + points
                value = self.decayed(model, value, since, e.received) + points
                since = e.received
        return self.decayed(model, value, since, t)

    @staticmethod
    def period(per: str, at: int) -> int:
        days = at // DAY  # the models here are in UTC
        return {"hour": at // HOUR, "day": days, "week": (days + 3) // 7}[per]  # 1970-01-01: Thu

    @staticmethod
    def decayed(model: dict[str, Any], value: float, since: int | None, t: int) -> float:
        if since is None or "half_life" not in model:
            return value
        step, half_life = DURATIONS[model.get("decay_step", "1d")], DURATIONS[model["half_life"]]
        for _ in range(since // step, t // step):  # every multiple of the step in (since, t]
            value *= 2.0 ** (-step / half_life)
            if abs(value) < ZERO:
                return 0.0
        return value


# --- the driver -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Step:
    """What reaches the profile at log time ``now``: an event, a trait or consent change, or
    nothing (a tick: time passes)."""

    kind: str  # "event" | "traits" | "consent" | "tick"
    now: int
    name: str | None = None
    props: dict[str, Any] = field(default_factory=dict)
    world: str = "w1"
    at: int = 0  # the event's own time, as sent
    value: Any = None  # traits: the plan (None unsets it); consent: (purpose, granted)

    def __repr__(self) -> str:
        clock = f"+{(self.now - BASE) / 1000:g}s"
        if self.kind == "tick":
            return f"tick({clock})"
        lag = f"at={(self.at - BASE) / 1000:+g}s"
        if self.kind == "event":
            return f"event({clock}, {self.name!r}, {lag}, {self.world}, {self.props})"
        return f"{self.kind}({clock}, {lag}, {self.value!r})"


Change = tuple[int, str, bool]  # (at, segment key, entered)


def changes(transitions: list[Transition]) -> list[Change]:
    assert all(
        t.profile_id == PID and t.workspace_id == WS and t.version == 1 for t in transitions
    ), transitions
    times = [t.at for t in transitions]
    assert times == sorted(times), f"transitions out of time order: {transitions}"
    return sorted((t.at, t.key, t.entered) for t in transitions)


def settle(oracle: Oracle, members: dict[str, int], t: int) -> list[Change]:
    """The brute force's transitions at t (and ``members`` updated)."""
    inside = oracle.membership(t)
    found = []
    for segment in oracle.segments:
        key = segment["key"]
        if (key in inside) != (key in members):
            if key in inside:
                members[key] = t
            else:
                del members[key]
            found.append((t, key, key in inside))
    return found


def drive(documents: list[dict[str, Any]], steps: list[Step]) -> list[Change]:
    """Run the steps through ``Definitions`` and the oracle, comparing after every hook;
    answer every transition."""
    definitions = Definitions(WS, [compile_definition(validate(d), version=1) for d in documents])
    oracle = Oracle(documents)
    profile = new_profile(PID, WS, 0, BASE)
    members: dict[str, int] = {}
    clock = BASE
    history: list[Change] = []

    def compare(what: str, got: list[Transition], want: list[Change]) -> None:
        assert changes(got) == sorted(want), f"{what}: got {changes(got)}, want {sorted(want)}"
        assert profile.segments == members, f"{what}: {profile.segments} != {members}"
        history.extend(sorted(want))

    compare("created", definitions.evaluate_all(profile, clock), settle(oracle, members, clock))
    for offset, step in enumerate(steps, 1):
        now = step.now
        assert now >= clock
        got = definitions.on_timer(profile, now) if profile.due and profile.due <= now else []
        want = [c for t in oracle.instants(clock, now) for c in settle(oracle, members, t)]
        compare(f"time passing to {step!r}", got, want)
        clock = now
        if step.kind == "tick":
            continue
        traits: list[str] = []
        if step.kind == "traits":
            if step.value is None:
                profile.traits.pop("plan", None)
                oracle.traits.pop("plan", None)
            else:
                profile.traits["plan"] = oracle.traits["plan"] = step.value
            traits = ["plan"]
        elif step.kind == "consent":
            purpose, granted = step.value
            profile.consent[purpose] = Consent(granted, min(step.at, now))
            oracle.consent[purpose] = granted
        key = f"events.{step.name or 'identify'}"  # as the processor counts them
        profile.counters["events"] = profile.counters.get("events", 0) + 1
        profile.counters[key] = profile.counters.get(key, 0) + 1
        got = definitions.on_event(
            profile,
            step.name,
            step.props,
            step.world,
            SESSION,
            step.at,
            offset,
            now,
            traits=traits,
            consent=step.kind == "consent",
        )
        oracle.event(step.name, step.props, step.world, step.at, offset, now)
        compare(f"after {step!r}", got, settle(oracle, members, now))
    return history


# --- random definitions -----------------------------------------------------------------------

NAMES = ("a", "b", "c")
WINDOWS = ("10s", "1m", "5m")
WORLDS = ("w1", "w2")
WHERES = (
    {">=": [{"var": "v"}, 2]},
    {"==": [{"var": "k"}, 1]},
    {"!=": [{"var": "k"}, 0]},
)
COMPARISONS = (">=", ">", "<", "<=", "==", "!=")


@st.composite
def behaviours(draw: st.DrawFn, measure: str, names: tuple[str, ...]) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "event": draw(weighted((6, st.sampled_from(names)), (1, st.just("consent.updated"))))
    }
    if draw(st.booleans()):
        spec["where"] = draw(st.sampled_from(WHERES))
    if measure in ("sum", "min", "max", "distinct") or draw(st.integers(0, 4)) == 0:
        spec["of"] = "v"
    if draw(st.integers(0, 3)) == 0:
        spec["world"] = draw(st.sampled_from(WORLDS))
    within = draw(st.sampled_from((*WINDOWS, *WINDOWS, None)))
    if within is not None:
        spec["within"] = within
    return spec


@st.composite
def measured(draw: st.DrawFn, names: tuple[str, ...]) -> dict[str, Any]:
    measure = draw(st.sampled_from(MEASURES))
    operand = {measure: draw(behaviours(measure, names))}
    if measure in ("first_time", "last_time"):
        threshold: Any = BASE + draw(st.integers(0, 40)) * 30 * SECOND
    else:
        threshold = draw(st.integers(0, {"count": 3, "sum": 12, "distinct": 3}.get(measure, 5)))
    if measure in ("min", "max", "first_time", "last_time") and draw(st.integers(0, 3)) == 0:
        threshold = None  # "is there any"
    return {draw(st.sampled_from(COMPARISONS)): [operand, threshold]}


@st.composite
def sequences(draw: st.DrawFn, names: tuple[str, ...]) -> dict[str, Any]:
    steps = []
    for _ in range(draw(st.integers(2, 3))):
        step: dict[str, Any] = {"event": draw(st.sampled_from(names))}
        if draw(st.integers(0, 3)) == 0:
            step["where"] = draw(st.sampled_from(WHERES))
        if draw(st.integers(0, 4)) == 0:
            step["world"] = draw(st.sampled_from(WORLDS))
        steps.append(step)
    spec: dict[str, Any] = {"steps": steps}
    if draw(st.integers(0, 4)):
        spec["within"] = draw(st.sampled_from(WINDOWS))
    if draw(st.booleans()):
        spec["window"] = draw(st.sampled_from(("1m", "5m")))
    return {"sequence": spec}


@st.composite
def places(draw: st.DrawFn) -> dict[str, Any]:
    """dwell in a zone, or attention to an object, a product or a category."""
    if draw(st.booleans()):
        spec: dict[str, Any] = {"zone": draw(st.sampled_from(("z1", "z2")))}
        operand = {"dwell": spec}
        threshold = draw(st.sampled_from((0, 500, 1000, 2500)))
    else:
        target = draw(st.sampled_from(("object", "product", "category", "category")))
        values = {"object": ("o1", "o2"), "product": ("k1", "k3"), "category": ("shoes", "hats")}
        spec = {target: draw(st.sampled_from(values[target]))}
        signal = draw(st.sampled_from(("gaze_ms", "gaze_ms", "views", "view_ms")))
        if signal != "gaze_ms" or draw(st.booleans()):
            spec["signal"] = signal
        operand = {"attention": spec}
        threshold = draw(st.sampled_from((1, 2) if signal == "views" else (0, 500, 1000, 2500)))
    if draw(st.integers(0, 3)) == 0:
        spec["world"] = draw(st.sampled_from(WORLDS))
    within = draw(st.sampled_from((*WINDOWS, None)))
    if within is not None:
        spec["within"] = within
    return {draw(st.sampled_from((">=", ">", "<"))): [operand, threshold]}


@st.composite
def clocks(draw: st.DrawFn, names: tuple[str, ...]) -> dict[str, Any]:
    """The clock compared with the time of an event, or with a date."""
    now = {"var": "now"}
    d = draw(st.sampled_from(("30s", "1m", "5m")))
    ms = DURATIONS[d]
    which = draw(st.sampled_from(("last_time", "first_time")))
    when = {which: draw(behaviours(which, names))}
    date = BASE + draw(st.integers(1, 40)) * 30 * SECOND + draw(st.sampled_from((0, 1, 499)))
    op = draw(st.sampled_from(COMPARISONS))
    return draw(
        st.sampled_from(
            (
                {">": [{"-": [now, when]}, ms]},  # not seen for D
                {"and": [{"!!": [when]}, {op: [{"-": [now, when]}, ms]}]},
                {op: [now, {"+": [when, ms]}]},
                {op: [{"+": [now, -ms]}, when]},
                {op: [now, date]},
                {"<": [date, now, date + ms]},
            )
        )
    )


def atoms(earlier: list[str], scored: bool, names: tuple[str, ...]) -> st.SearchStrategy[Any]:
    options: list[tuple[int, st.SearchStrategy[Any]]] = [
        (6, measured(names)),
        (2, clocks(names)),
        (2, sequences(names)),
        (2, places()),
        (1, st.builds(lambda p: {"consent": p}, st.sampled_from(("ads", "personalisation")))),
        (
            1,
            st.builds(
                lambda op, plan: {op: [{"var": "traits.plan"}, plan]},
                st.sampled_from(("==", "!=")),
                st.sampled_from(("gold", "silver")),
            ),
        ),
    ]
    counted = [{"var": "counters.events"}, {"var": ["counters.events.object.gaze_dwell", 0]},
               *({"var": f"counters.events.{name}"} for name in names)]  # fmt: skip
    options.append((1, st.builds(lambda op, counter, n: {op: [counter, n]},
                                 st.sampled_from(COMPARISONS), st.sampled_from(counted),
                                 st.integers(0, 4))))  # fmt: skip
    if earlier:
        options.append((2, st.builds(lambda k: {"in_segment": k}, st.sampled_from(earlier))))
    if scored:
        options.append(
            (
                3,
                st.builds(
                    lambda op, n: {op: [{"score": "eng"}, n]},
                    st.sampled_from((">=", "<", ">")),
                    st.sampled_from((0, 1, 2, 2.5, 4)),
                ),
            )
        )
    return weighted(*options)


def conditions(
    earlier: list[str], scored: bool, names: tuple[str, ...], depth: int = 2
) -> st.SearchStrategy[Any]:
    atom = atoms(earlier, scored, names)
    if depth == 0:
        return atom
    inner = conditions(earlier, scored, names, depth - 1)
    return weighted(
        (4, atom),
        (
            2,
            st.builds(
                lambda op, items: {op: items},
                st.sampled_from(("and", "or")),
                st.lists(inner, min_size=2, max_size=3),
            ),
        ),
        (1, st.builds(lambda c: {"!": [c]}, inner)),
    )


@st.composite
def score_models(draw: st.DrawFn, names: tuple[str, ...]) -> dict[str, Any]:
    rules = []
    for _ in range(draw(st.integers(1, 3))):
        rule: dict[str, Any] = {
            "event": draw(st.sampled_from((*names, "object.gaze_dwell"))),
            "points": draw(st.sampled_from((1, 2, 3, -1))),
        }
        if draw(st.integers(0, 2)) == 0:
            rule["where"] = draw(st.sampled_from(WHERES))
        if draw(st.integers(0, 3)) == 0:
            rule["world"] = draw(st.sampled_from(WORLDS))
        if draw(st.booleans()):
            rule["cap"] = {
                "points": draw(st.sampled_from((2, 3, 5))),
                "per": draw(st.sampled_from(("hour", "day", "week"))),
            }
        rules.append(rule)
    model: dict[str, Any] = {"kind": "score", "key": "eng", "rules": rules}
    # half-lives divide the step (by default a day): every decay factor is a power of two
    half_life, step = draw(
        st.sampled_from(
            (
                (None, None),
                (None, "1m"),
                ("1m", "1m"),
                ("30s", "30s"),
                ("30s", "1m"),
                ("10s", "30s"),
                ("12h", None),  # the default step, a day: one boundary, at midnight
            )
        )
    )
    if step is not None:
        model["decay_step"] = step
    if half_life is not None:
        model["half_life"] = half_life
    return model


@st.composite
def documents(draw: st.DrawFn, names: tuple[str, ...]) -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    scored = draw(st.integers(0, 2)) == 0
    if scored:
        docs.append(draw(score_models(names)))
    keys: list[str] = []
    for i in range(draw(st.integers(1, 5))):
        condition = draw(conditions(keys, scored, names))
        docs.append({"kind": "segment", "key": f"s{i}", "condition": condition})
        keys.append(f"s{i}")
    return docs


# --- random streams ---------------------------------------------------------------------------

OBJECTS = (
    {"object_id": "o1", "product": {"sku": "k1", "category": "shoes"}},
    {"object_id": "o2", "product": {"sku": "k2", "category": "hats"}},
    {"object_id": "o2", "product": {"sku": "k3", "category": "shoes"}, "tags": ["hats", "new"]},
    {"object_id": "o3", "tags": ["shoes"]},
    {"object_id": "o3"},
)
# how long ago an event happened when it arrives: mostly now, sometimes late (past a window
# or just within it), sometimes from the future (clamped to its arrival)
LAGS = weighted(
    (8, st.just(0)),
    (
        4,
        st.sampled_from((1, 10, 30, 59, 60, 61, 299, 300, 301, -5, -3600)).map(
            lambda s: s * SECOND
        ),
    ),
    (2, st.integers(-10 * SECOND, 6 * MINUTE)),
)
# how far the clock moves before a step: coarse steps make ties with window edges likely
GAPS = weighted(
    (3, st.just(0)),
    (8, st.sampled_from((1, 5, 10, 20, 30, 50, 60, 120, 240, 300)).map(lambda s: s * SECOND)),
    (2, st.integers(1, 6 * MINUTE)),
)


@st.composite
def properties(draw: st.DrawFn, name: str) -> dict[str, Any]:
    if name in NAMES:
        props: dict[str, Any] = {"k": draw(st.integers(0, 2))}
        v = draw(weighted((6, st.integers(0, 5)), (1, st.just("x")), (1, st.none())))
        if v is not None:
            props["v"] = v
        return props
    if name == "zone.exited":
        return {
            "zone_id": draw(st.sampled_from(("z1", "z2"))),
            "dwell_ms": draw(st.sampled_from((0, 500, 1000, 2000))),
        }
    measure = "dwell_ms" if name == "object.gaze_dwell" else "view_ms"
    return {
        "obj": draw(st.sampled_from(OBJECTS)),
        measure: draw(st.sampled_from((0, 500, 1000, 2000))),
    }


@st.composite
def steps(draw: st.DrawFn, names: tuple[str, ...]) -> list[Step]:
    found: list[Step] = []
    now = BASE
    for _ in range(draw(st.integers(0, 60))):
        now += draw(GAPS)
        kind = draw(
            weighted(
                (12, st.just("event")),
                (1, st.just("traits")),
                (1, st.just("consent")),
                (3, st.just("tick")),
            )
        )
        if kind == "tick":
            found.append(Step("tick", now))
            continue
        at = now - draw(LAGS)
        if draw(st.integers(0, 9)) == 0:  # late for the previous hour (and day, and week)
            at = now // HOUR * HOUR - draw(st.sampled_from((1, 10, 60))) * SECOND
        world = draw(st.sampled_from(WORLDS))
        if kind == "traits":
            plan = draw(st.sampled_from(("gold", "silver", None)))
            found.append(Step("traits", now, None, {}, world, at, plan))
        elif kind == "consent":
            purpose = draw(st.sampled_from(("ads", "personalisation")))
            granted = draw(st.booleans())
            props = {"scopes": {purpose: granted}}
            found.append(
                Step("consent", now, "consent.updated", props, world, at, (purpose, granted))
            )
        else:
            name = draw(
                weighted(
                    (9, st.sampled_from(names)),
                    (1, st.sampled_from(("object.gaze_dwell", "object.viewed", "zone.exited"))),
                )
            )
            found.append(Step("event", now, name, draw(properties(name)), world, at))
    return found


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[list[dict[str, Any]], list[Step]]:
    """Definitions and a stream that share a few event names (fewer names: more matches)."""
    names = draw(st.sampled_from((("a",), ("a", "b"), NAMES)))
    return draw(documents(names)), draw(steps(names))


@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_incremental_membership_matches_the_brute_force(
    scenario: tuple[list[dict[str, Any]], list[Step]],
) -> None:
    drive(*scenario)


# --- examples ---------------------------------------------------------------------------------


def segment(key: str, condition: Any) -> dict[str, Any]:
    return {"kind": "segment", "key": key, "condition": condition}


def event(now: int, name: str, at: int | None = None, **props: Any) -> Step:
    return Step("event", now, name, props, "w1", now if at is None else at)


def setup(*docs: dict[str, Any]) -> tuple[Definitions, Profile]:
    compiled = [compile_definition(validate(doc), version=1) for doc in docs]
    return Definitions(WS, compiled), new_profile(PID, WS, 0, BASE)


def apply(definitions: Definitions, profile: Profile, step: Step, offset: int) -> list[Change]:
    due = profile.due and profile.due <= step.now
    transitions = definitions.on_timer(profile, step.now) if due else []
    transitions += definitions.on_event(
        profile, step.name, step.props, step.world, SESSION, step.at, offset, step.now
    )
    return changes(transitions)


def test_three_gazes_within_7_days_enter_at_the_third_and_leave_7_days_after_the_first() -> None:
    gazers = segment(
        "gazers", {">=": [{"count": {"event": "object.gaze_dwell", "within": "7d"}}, 3]}
    )
    definitions, profile = setup(gazers)
    first, second, third = BASE, BASE + 2 * DAY, BASE + 3 * DAY
    assert apply(definitions, profile, event(first, "object.gaze_dwell"), 1) == []
    assert apply(definitions, profile, event(second, "object.gaze_dwell"), 2) == []
    assert apply(definitions, profile, event(third, "object.gaze_dwell"), 3) == [
        (third, "gazers", True)
    ]
    assert profile.segments == {"gazers": third}
    assert profile.due == first + 7 * DAY  # the first gaze's expiry is the profile's timer
    # the timer fires late (the log was idle): the exit still happens at the exact instant
    later = first + 7 * DAY + 5 * HOUR
    assert changes(definitions.on_timer(profile, later)) == [(first + 7 * DAY, "gazers", False)]
    assert profile.segments == {}
    assert profile.due == second + 7 * DAY
    drive(
        [gazers],
        [
            event(first, "object.gaze_dwell"),
            event(second, "object.gaze_dwell"),
            event(third, "object.gaze_dwell"),
            Step("tick", later),
        ],
    )


def test_a_window_holds_events_after_now_minus_w_up_to_now() -> None:
    """``now − W < time ≤ now``: an event at the edge of the window is already out."""
    recent = segment("recent", {">=": [{"count": {"event": "a", "within": "1m"}}, 1]})
    definitions, profile = setup(recent)
    assert apply(definitions, profile, event(BASE, "a"), 1) == [(BASE, "recent", True)]
    assert definitions.on_timer(profile, BASE + MINUTE - 1) == []
    assert changes(definitions.on_timer(profile, BASE + MINUTE)) == [
        (BASE + MINUTE, "recent", False)
    ]
    # another at exactly the instant the first one leaves: out and back in at the same clock
    definitions, profile = setup(recent)
    apply(definitions, profile, event(BASE, "a"), 1)
    assert apply(definitions, profile, event(BASE + MINUTE, "a"), 2) == [
        (BASE + MINUTE, "recent", False),
        (BASE + MINUTE, "recent", True),
    ]
    assert profile.segments == {"recent": BASE + MINUTE}


def test_none_in_the_last_minute_enters_again_when_the_window_passes() -> None:
    quiet = segment("quiet", {"==": [{"count": {"event": "a", "within": "1m"}}, 0]})
    definitions, profile = setup(quiet)
    assert changes(definitions.evaluate_all(profile, BASE)) == [(BASE, "quiet", True)]
    assert apply(definitions, profile, event(BASE + 5 * SECOND, "a"), 1) == [
        (BASE + 5 * SECOND, "quiet", False)
    ]
    assert changes(definitions.on_timer(profile, BASE + 10 * MINUTE)) == [
        (BASE + 65 * SECOND, "quiet", True)
    ]


def test_a_late_event_counts_only_in_the_windows_it_arrived_in_time_for() -> None:
    recent = segment("recent", {">=": [{"count": {"event": "a", "within": "1m"}}, 1]})
    ever = segment("ever", {">=": [{"count": {"event": "a"}}, 1]})
    definitions, profile = setup(recent, ever)
    now = BASE + MINUTE
    # it happened exactly a minute ago: the one-minute window passed over it as it arrived
    assert apply(definitions, profile, event(now, "a", at=BASE), 1) == [(now, "ever", True)]
    # one that happened a minute minus 1 ms ago counts from its arrival, and leaves 1 ms later
    assert apply(definitions, profile, event(now, "a", at=BASE + 1), 2) == [(now, "recent", True)]
    assert changes(definitions.on_timer(profile, now + HOUR)) == [(now + 1, "recent", False)]


def test_an_event_from_the_future_happens_when_it_arrives() -> None:
    recent = segment("recent", {">=": [{"count": {"event": "a", "within": "1m"}}, 1]})
    definitions, profile = setup(recent)
    assert apply(definitions, profile, event(BASE, "a", at=BASE + HOUR), 1) == [
        (BASE, "recent", True)
    ]
    assert changes(definitions.on_timer(profile, BASE + DAY)) == [(BASE + MINUTE, "recent", False)]


def test_sequence_steps_follow_each_other_by_time_then_log_offset() -> None:
    """a then b within 1m: b arrived first, but a happened first ("in time order, ties in log
    order")."""
    a_then_b = segment(
        "a-then-b", {"sequence": {"steps": [{"event": "a"}, {"event": "b"}], "within": "1m"}}
    )
    definitions, profile = setup(a_then_b)
    now = BASE + 30 * SECOND
    assert apply(definitions, profile, event(now, "b", at=BASE + 20 * SECOND), 1) == []
    assert apply(definitions, profile, event(now, "a", at=BASE + 10 * SECOND), 2) == [
        (now, "a-then-b", True)
    ]
    # the same instant: the one earlier in the log comes first
    definitions, profile = setup(a_then_b)
    assert apply(definitions, profile, event(BASE, "b"), 1) == []
    assert apply(definitions, profile, event(BASE, "a"), 2) == []
    assert apply(definitions, profile, event(BASE, "b"), 3) == [(BASE, "a-then-b", True)]


def test_a_decaying_score_leaves_its_segment_at_a_step_boundary() -> None:
    """4 points halve every minute, at whole minutes: 4, then 2 at +1m, then 1 at +2m."""
    engagement = {
        "kind": "score",
        "key": "eng",
        "half_life": "1m",
        "decay_step": "1m",
        "rules": [{"event": "a", "points": 4}],
    }
    engaged = segment("engaged", {">=": [{"score": "eng"}, 2]})
    definitions, profile = setup(engagement, engaged)
    assert BASE % MINUTE == 0
    assert apply(definitions, profile, event(BASE + 10 * SECOND, "a"), 1) == [
        (BASE + 10 * SECOND, "engaged", True)
    ]
    assert changes(definitions.on_timer(profile, BASE + HOUR)) == [
        (BASE + 2 * MINUTE, "engaged", False)
    ]


def test_score_caps_per_hour_and_a_segment_reading_another() -> None:
    """2 points per a, at most 3 an hour; fans are engaged people with consent."""
    engagement = {
        "kind": "score",
        "key": "eng",
        "decay_step": "1m",
        "rules": [{"event": "a", "points": 2, "cap": {"points": 3, "per": "hour"}}],
    }
    engaged = segment("engaged", {">=": [{"score": "eng"}, 4]})
    fans = segment("fans", {"and": [{"in_segment": "engaged"}, {"consent": "ads"}]})
    stream = [
        event(BASE, "a"),  # 2
        event(BASE + SECOND, "a"),  # 3: capped
        event(BASE + 2 * SECOND, "a"),  # 3: nothing left this hour
        Step("consent", BASE + 3 * SECOND, "consent.updated", {}, "w1", BASE, ("ads", True)),
        event(BASE + 5 * MINUTE, "a"),  # 00:00, a new hour (and day, and week): 5
    ]
    assert drive([engagement, engaged, fans], stream) == [
        (BASE + 5 * MINUTE, "engaged", True),
        (BASE + 5 * MINUTE, "fans", True),
    ]


def test_an_event_late_for_an_earlier_period_gets_no_points_from_a_capped_rule() -> None:
    """One point per a, at most 5 an hour. At 00:01 one point; then, two minutes late, an a
    from 23:59 the day before: "an event late for a period before the latest one a capped rule
    awarded in gets no points from it". Without a cap, it would count."""
    capped = {"event": "a", "points": 1, "cap": {"points": 5, "per": "hour"}}
    midnight = BASE + 5 * MINUTE
    stream = [
        event(midnight + MINUTE, "a"),
        event(midnight + 2 * MINUTE, "a", at=midnight - MINUTE),
    ]
    for rule, entered in (
        (capped, []),
        ({"event": "a", "points": 1}, [(midnight + 2 * MINUTE, "engaged", True)]),
    ):
        engagement = {"kind": "score", "key": "eng", "rules": [rule]}
        engaged = segment("engaged", {">=": [{"score": "eng"}, 2]})
        assert drive([engagement, engaged], stream) == entered
