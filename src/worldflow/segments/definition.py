"""Segment and score documents: parsed, validated and compiled (semantics: docs/SEGMENTS.md).

A document is checked whole before anything is compiled into the processor; every problem is
a :class:`DefinitionError` naming its place (``condition.and[0][">="][0].count.within``) and
what is wrong. Compiling a condition yields an evaluator of the profile's data and the
dependencies the processor indexes segments by: the behaviours (windowed aggregates of events)
it reads, traits, consent, scores, other segments, sessions, world statistics and the clock.
"""

from __future__ import annotations

import contextvars
import hashlib
import itertools
import json
import math
import re
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from worldflow.segments.logic import (
    Evaluator,
    LogicError,
    Operation,
    compile_logic,
    reads,
    register_operation,
    to_number,
    truthy,
)

KEY: Final = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
EVENT_NAME: Final = re.compile(r"[A-Za-z0-9_.:$ /-]{1,200}")
MEASURES: Final = ("count", "sum", "min", "max", "distinct", "first_time", "last_time")
SIGNALS: Final = {  # attention signal → (event, property summed, or None to count)
    "gaze_ms": ("object.gaze_dwell", "dwell_ms"),
    "views": ("object.viewed", None),
    "view_ms": ("object.viewed", "view_ms"),
    "hovers": ("object.hovered", None),
    "selects": ("object.selected", None),
    "grabs": ("object.grabbed", None),
    "details": ("product.detail_opened", None),
    "try_ons": ("product.tried_on", None),
    "cart_adds": ("cart.item_added", None),
}
ATTENTION_TARGETS: Final[dict[str, Callable[[str], Any]]] = {  # target → condition on obj
    "object": lambda v: {"==": [{"var": "obj.object_id"}, v]},
    "product": lambda v: {"==": [{"var": "obj.product.sku"}, v]},
    # A product's category: obj.product.category, or a tag of the object.
    "category": lambda v: {
        "or": [
            {"==": [{"var": "obj.product.category"}, v]},
            {"some": [{"var": "obj.tags"}, {"==": [{"var": ""}, v]}]},  # a tag, not a substring
        ]
    },
}
MEMBERSHIP_EVENTS: Final = frozenset({"segment.entered", "segment.exited"})
PERIODS: Final = ("hour", "day", "week")
_UNITS: Final = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000,
                 "w": 604_800_000}  # fmt: skip
_DURATION: Final = re.compile(r"(?:(\d{1,9})(ms|s|m|h|d|w))+")
_PART: Final = re.compile(r"(\d{1,9})(ms|s|m|h|d|w)")
MAX_WINDOW_MS: Final = 400 * 86_400_000


class DefinitionError(ValueError):
    """A document that is not a valid definition; ``path`` locates the problem."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}" if path else problem)
        self.path = path
        self.problem = problem


def parse_duration(value: Any, path: str) -> int:
    """``"90s"``, ``"1h30m"``, ``"7d"`` → milliseconds (a number is taken as milliseconds)."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        ms = value
    elif isinstance(value, str) and _DURATION.fullmatch(value.strip()):
        ms = sum(int(n) * _UNITS[u] for n, u in _PART.findall(value))
    else:
        raise DefinitionError(path, f"{value!r} is not a duration: 90s, 10m, 2h, 7d, 1h30m…")
    if not 0 < ms <= MAX_WINDOW_MS:
        raise DefinitionError(path, f"{value!r} must be longer than 0 and at most 400d")
    return ms


# --- behaviours -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Behaviour:
    """Events of one name that satisfy a condition on their properties, in one window: the
    unit of incremental state. Conditions that differ only in what they measure (count, sum…)
    share one behaviour, and so one aggregate per profile."""

    id: str
    event: str
    where: Any  # a JSON Logic rule on the properties, or None
    of: str | None  # the property measured (sum, min, max, distinct)
    world: str | None
    window_ms: int | None  # None: all time (or the session)
    session: bool
    keep_times: bool  # sequences need every matching event's time, even over all time
    matches: Evaluator = field(compare=False, repr=False)
    value_of: Callable[[dict[str, Any]], Any] = field(compare=False, repr=False)
    # Where ``where`` can only hold when one of these holds: (property path, "==" or "has",
    # a string); empty when it cannot be told. The processor indexes behaviours by them.
    keys: tuple[tuple[str, str, str], ...] = field(compare=False, repr=False, default=())
    # Whether ``where`` holds exactly when one of ``keys`` does (so an event found through
    # them needs no test).
    exact: bool = field(compare=False, repr=False, default=False)
    # Whether each matching event is kept (a window, a session, or a sequence step), rather
    # than running totals.
    entries: bool = field(compare=False, repr=False, default=False)


def _behaviour(
    event: str,
    where: Any,
    of: str | None,
    world: str | None,
    within: Any,
    path: str,
    keep_times: bool = False,
) -> Behaviour:
    if not isinstance(event, str) or not EVENT_NAME.fullmatch(event):
        raise DefinitionError(f"{path}.event", f"{event!r} is not an event name")
    if event in MEMBERSHIP_EVENTS:
        raise DefinitionError(f"{path}.event", "use in_segment for segment membership")
    if of is not None and (not isinstance(of, str) or not of or len(of) > 200):
        raise DefinitionError(f"{path}.of", f"{of!r} is not a property path such as total.amount")
    if world is not None and (not isinstance(world, str) or not world):
        raise DefinitionError(f"{path}.world", f"{world!r} is not a world id")
    window_ms, session = None, False
    if within == "session":
        session = True
    elif within is not None:
        window_ms = parse_duration(within, f"{path}.within")
    if where is not None and _uses_profile_operators(where):
        raise DefinitionError(f"{path}.where", "a condition on event properties cannot use "
                              "profile operators (count, consent, score, in_segment…)")  # fmt: skip
    try:
        rule = compile_logic(where, f"{path}.where") if where is not None else None
    except LogicError as exc:
        raise DefinitionError(exc.path, exc.problem) from None
    matches = _always if rule is None else (lambda props: truthy(rule(props)))
    identity = json.dumps([event, where, of, world, window_ms, session, keep_times],
                          sort_keys=True, separators=(",", ":"))  # fmt: skip
    digest = hashlib.blake2b(identity.encode(), digest_size=8).hexdigest()
    keys = tuple(_index_keys(where) or ())
    return Behaviour(digest, event, where, of, world, window_ms, session, keep_times, matches,
                     _getter(of), keys, bool(keys) and _exact(where),
                     window_ms is not None or session or keep_times)  # fmt: skip


def _index_keys(where: Any) -> list[tuple[str, str, str]] | None:
    """Conditions under which ``where`` may hold, any of them: a property equal to a string
    (that no number equals) or an array property holding one; None when it cannot be told."""
    if type(where) is not dict or len(where) != 1:
        return None
    ((name, args),) = where.items()
    if type(args) is not list:
        return None
    if name in ("==", "===") and len(args) == 2:
        for var, literal in (args, args[::-1]):
            if _plain_var(var) and _indexable(literal):
                return [(var["var"], "==", literal)]
    if name == "some" and len(args) == 2 and _plain_var(args[0]):
        inner = args[1]
        if type(inner) is dict and list(inner) == ["=="] and type(inner["=="]) is list:
            pair = inner["=="]
            for var, literal in (pair, pair[::-1]):
                if var in ({"var": ""}, {"var": None}) and _indexable(literal):
                    return [(args[0]["var"], "has", literal)]
    if name == "and":
        for arg in args:
            found = _index_keys(arg)
            if found:
                return found
    if name == "or" and args:
        keys: list[tuple[str, str, str]] = []
        for arg in args:
            found = _index_keys(arg)
            if not found:
                return None
            keys += found
        return keys
    return None


def _exact(where: Any) -> bool:
    """Whether ``where`` is one of the conditions _index_keys finds, or an "or" of them."""
    ((name, args),) = where.items()
    if name == "or":
        return all(_exact(arg) for arg in args)
    return name in ("==", "===", "some")


def _plain_var(value: Any) -> bool:
    return (type(value) is dict and len(value) == 1 and type(value.get("var")) is str
            and bool(value["var"]))  # fmt: skip


def _indexable(value: Any) -> bool:
    """A string no number, boolean or null equals under JSON Logic's ==."""
    return type(value) is str and value.strip() != "" and to_number(value) != to_number(value)


def _always(data: Any) -> bool:
    return True


def _getter(path: str | None) -> Callable[[dict[str, Any]], Any]:
    if path is None:
        return lambda props: None
    steps = path.split(".")

    def get(props: dict[str, Any]) -> Any:
        value: Any = props
        for step in steps:
            if type(value) is not dict:
                return None
            value = value.get(step)
        return value if type(value) in (str, int, float, bool) else None

    return get


def _uses_profile_operators(rule: Any) -> bool:
    return bool(reads(rule) & {"$profile"})


def _unknown(allowed: set[str]) -> str:
    return f"unknown field; expected one of {', '.join(sorted(allowed))}"


def _fields(arg: Any, path: str, allowed: set[str],
            required: Collection[str] = ()) -> dict[str, Any]:  # fmt: skip
    """``arg`` as an object with only ``allowed`` fields and all ``required`` ones."""
    if not isinstance(arg, dict):
        raise DefinitionError(path, f"expects an object with "
                              f"{', '.join(sorted(required or allowed))}")  # fmt: skip
    for name in arg:
        if name not in allowed:
            raise DefinitionError(f"{path}.{name}", _unknown(allowed))
    for name in sorted(set(required) - set(arg)):
        raise DefinitionError(f"{path}.{name}", "is required")
    return arg


# --- compiling conditions ---------------------------------------------------------------------


@dataclass(slots=True)
class Needs:
    """What one compiled condition depends on."""

    behaviours: dict[str, Behaviour] = field(default_factory=dict)
    traits: set[str] = field(default_factory=set)  # "*" for all of them
    consent: bool = False
    scores: set[str] = field(default_factory=set)
    segments: set[str] = field(default_factory=set)
    sessions: bool = False  # per-session behaviours
    activity: bool = False  # world statistics, first and last seen: any event changes them
    activity_events: set[str] = field(default_factory=set)  # counters of these events only
    clock: bool = False  # reads "now" otherwise than in flip: evaluated at every change
    # Reads "now" only in comparisons of a·now + b: when, after an evaluation at a time, the
    # truth of one of them flips next (docs/SEGMENTS.md, "The clock").
    flip: Callable[[Any, int], int | None] | None = None
    # Scores read only through comparisons with numbers: the membership can change only when
    # the score crosses one of these. A score read any other way is in score_free.
    score_thresholds: dict[str, set[float]] = field(default_factory=dict)
    score_free: set[str] = field(default_factory=set)
    # Likewise behaviours, per measure (count, sum…): the numbers each is compared with, and
    # the behaviours read any other way (in arithmetic, a sequence…), whose change always counts.
    measure_limits: dict[str, dict[str, set[float]]] = field(default_factory=dict)
    measure_free: set[str] = field(default_factory=set)


_NEEDS: contextvars.ContextVar[Needs] = contextvars.ContextVar("needs")
_BEHAVIOUR_FIELDS: Final = {"event", "where", "of", "world", "within"}
_ACTIVITY: Final = ("counters", "worlds", "world_ids", "first_seen", "last_seen", "orders",
                    "sessions", "active_ms", "events", "identities")  # fmt: skip


class Scope:
    """What evaluating a segment's condition on one profile at one time needs; the data passed
    to evaluators carries it under ``"$"``."""

    __slots__ = ()

    def measure(self, behaviour: Behaviour, measure: str) -> Any:
        raise NotImplementedError

    def sequence(self, steps: list[Behaviour], within_ms: int | None) -> bool:
        raise NotImplementedError

    def consent(self, purpose: str) -> bool:
        raise NotImplementedError

    def score(self, model: str) -> float:
        raise NotImplementedError

    def in_segment(self, key: str) -> bool:
        raise NotImplementedError


def _needs() -> Needs:
    try:
        return _NEEDS.get()
    except LookupError:
        return Needs()  # compiled outside a definition (the plain logic tests): discarded


def _measure_compiler(measure: str) -> Callable[[Operation], Evaluator]:
    def compile_measure(op: Operation) -> Evaluator:
        path = op.arg_path(0)
        arg = _fields(op.args[0] if op.args else None, path, _BEHAVIOUR_FIELDS, {"event"})
        if measure in ("sum", "min", "max", "distinct") and "of" not in arg:
            raise DefinitionError(f"{path}.of", f"{measure} needs the property to measure")
        behaviour = _behaviour(arg["event"], arg.get("where"), arg.get("of"), arg.get("world"),
                               arg.get("within"), path)  # fmt: skip
        return _measured(behaviour, measure)

    return compile_measure


def _measured(behaviour: Behaviour, measure: str) -> Evaluator:
    needs = _needs()
    needs.behaviours[behaviour.id] = behaviour
    needs.sessions |= behaviour.session

    def evaluate(data: Any) -> Any:
        scope = data.get("$") if type(data) is dict else None
        return None if scope is None else scope.measure(behaviour, measure)

    return evaluate


def _is_behaviour(op: Operation) -> bool:
    return len(op.args) == 1 and isinstance(op.args[0], dict) and "event" in op.args[0]


def _min_max(measure: str, builtin: Callable[[Operation], Evaluator]) -> Callable[..., Evaluator]:
    """``min`` and ``max`` of a behaviour measure it; of anything else they are JSON Logic's."""

    def compile_either(op: Operation) -> Evaluator:
        return _measure_compiler(measure)(op) if _is_behaviour(op) else builtin(op)

    return compile_either


def _compile_sequence(op: Operation) -> Evaluator:
    path = op.arg_path(0)
    arg = _fields(op.args[0] if op.args else None, path, {"steps", "within", "window", "world"},
                  {"steps"})  # fmt: skip
    steps = arg["steps"]
    if not isinstance(steps, list) or not 2 <= len(steps) <= 10:
        raise DefinitionError(f"{path}.steps", "expects a list of 2 to 10 steps")
    within = parse_duration(arg["within"], f"{path}.within") if "within" in arg else None
    window = arg.get("window")
    behaviours = []
    for i, raw in enumerate(steps):
        step_path = f"{path}.steps[{i}]"
        step = _fields(raw, step_path, {"event", "where", "world"}, {"event"})
        behaviours.append(_behaviour(step["event"], step.get("where"), None,
                                     step.get("world", arg.get("world")), window, step_path,
                                     keep_times=True))  # fmt: skip
    needs = _needs()
    for behaviour in behaviours:
        needs.behaviours[behaviour.id] = behaviour

    def evaluate(data: Any) -> bool:
        scope = data.get("$") if type(data) is dict else None
        return False if scope is None else scope.sequence(behaviours, within)

    return evaluate


def _compile_dwell(op: Operation) -> Evaluator:
    path = op.arg_path(0)
    arg = _fields(op.args[0] if op.args else None, path, {"zone", "world", "within"}, {"zone"})
    if not isinstance(arg["zone"], str) or not arg["zone"]:
        raise DefinitionError(f"{path}.zone", f"{arg['zone']!r} is not a zone id")
    behaviour = _behaviour("zone.exited", {"==": [{"var": "zone_id"}, arg["zone"]]}, "dwell_ms",
                           arg.get("world"), arg.get("within"), path)  # fmt: skip
    return _measured(behaviour, "sum")


def _compile_attention(op: Operation) -> Evaluator:
    path = op.arg_path(0)
    allowed = {*ATTENTION_TARGETS, "signal", "world", "within"}
    arg = _fields(op.args[0] if op.args else None, path, allowed, set())
    targets = [t for t in ATTENTION_TARGETS if t in arg]
    if len(targets) != 1:
        raise DefinitionError(path, "names exactly one of object, product or category")
    target = targets[0]
    if not isinstance(arg[target], str) or not arg[target]:
        raise DefinitionError(f"{path}.{target}", f"{arg[target]!r} is not a {target} id")
    signal = arg.get("signal", "gaze_ms")
    if signal not in SIGNALS:
        raise DefinitionError(f"{path}.signal",
                              f"{signal!r} is not one of {', '.join(SIGNALS)}")  # fmt: skip
    event, of = SIGNALS[signal]
    where = ATTENTION_TARGETS[target](arg[target])
    behaviour = _behaviour(event, where, of, arg.get("world"), arg.get("within"), path)
    return _measured(behaviour, "sum" if of else "count")


def _name_argument(op: Operation, what: str, pattern: re.Pattern[str] | None = None) -> str:
    value = op.args[0] if len(op.args) == 1 else None
    if not isinstance(value, str) or not value or (pattern and not pattern.fullmatch(value)):
        raise op.error(f"expects one {what} as a string")
    return value


def _compile_consent(op: Operation) -> Evaluator:
    purpose = _name_argument(op, "consent purpose")
    _needs().consent = True

    def evaluate(data: Any) -> bool:
        scope = data.get("$") if type(data) is dict else None
        return False if scope is None else scope.consent(purpose)

    return evaluate


def _compile_score(op: Operation) -> Evaluator:
    model = _name_argument(op, "score model key", KEY)
    _needs().scores.add(model)

    def evaluate(data: Any) -> float:
        scope = data.get("$") if type(data) is dict else None
        return 0 if scope is None else scope.score(model)

    return evaluate


def _compile_in_segment(op: Operation) -> Evaluator:
    key = _name_argument(op, "segment key", KEY)
    _needs().segments.add(key)

    def evaluate(data: Any) -> bool:
        scope = data.get("$") if type(data) is dict else None
        return False if scope is None else scope.in_segment(key)

    return evaluate


def _profile_reads(args: list[Any]) -> set[str]:
    return {"$profile"}


def _register() -> None:
    from worldflow.segments import logic

    for measure in ("count", "sum", "distinct", "first_time", "last_time"):
        register_operation(measure, _measure_compiler(measure), reads=_profile_reads)
    for measure in ("min", "max"):
        builtin = logic._OPERATIONS[measure]
        register_operation(measure, _min_max(measure, builtin.compiler),
                           reads=_min_max_reads(builtin.reads), replace=True)  # fmt: skip
    register_operation("sequence", _compile_sequence, reads=_profile_reads, boolean=True)
    register_operation("dwell", _compile_dwell, reads=_profile_reads)
    register_operation("attention", _compile_attention, reads=_profile_reads)
    register_operation("consent", _compile_consent, reads=_profile_reads, boolean=True)
    register_operation("score", _compile_score, reads=_profile_reads)
    register_operation("in_segment", _compile_in_segment, reads=_profile_reads, boolean=True)
    register_operation(_COUNTER_OP, _compile_counter, reads=lambda args: {f"counters.{args[0]}"})


_COUNTER_OP: Final = "$counter"
_EVENT_COUNTERS: Final = "counters.events."
_ELEMENT_SCOPED: Final = frozenset({"map", "filter", "reduce", "all", "none", "some"})


def _counter_vars(rule: Any) -> Any:
    """The rule with each ``{"var": "counters.events.<event name>"}`` reading that event's
    counter: the processor keeps its counters flat (``"events.object.viewed"``), where a
    dotted path would look for ``object`` inside the number of all events."""
    if type(rule) is list:
        return [_counter_vars(item) for item in rule]
    if type(rule) is not dict or len(rule) != 1:
        return rule
    ((name, value),) = rule.items()
    if name == "var":
        args = value if type(value) is list else [value]  # [path] or [path, default]
        path = args[0] if args else None
        if type(path) is str and path.startswith(_EVENT_COUNTERS) and path != _EVENT_COUNTERS:
            return {_COUNTER_OP: [path.removeprefix("counters."), *args[1:2]]}
        return rule
    if name in _ELEMENT_SCOPED and type(value) is list and value:  # the rest reads elements
        return {name: [_counter_vars(value[0]), *value[1:]]}
    return {name: _counter_vars(value)}


def _compile_counter(op: Operation) -> Evaluator:
    key = op.args[0]  # "events.<event name>", from _counter_vars
    default = op.compile(1) if len(op.args) > 1 else None

    def evaluate(data: Any) -> Any:
        counters = data.get("counters") if type(data) is dict else None
        found = counters.get(key) if type(counters) is dict else None
        if found is None and default is not None:
            return default(data)
        return found

    return evaluate


def _min_max_reads(builtin: Callable[[list[Any]], set[str]] | None) -> Callable[..., set[str]]:
    def read(args: list[Any]) -> set[str]:
        if len(args) == 1 and isinstance(args[0], dict) and "event" in args[0]:
            return {"$profile"}
        found: set[str] = set()
        for arg in args:
            found |= reads(arg)
        return found if builtin is None else builtin(args)

    return read


_register()


def compile_condition(rule: Any, path: str = "condition") -> tuple[Evaluator, Needs]:
    """A segment's condition → its evaluator and what it depends on."""
    needs = Needs()
    token = _NEEDS.set(needs)
    flips: list[tuple[int, Any, Any]] = []
    rule = _counter_vars(rule)
    try:
        evaluate = compile_logic(rule, path)
        exact_clock = _reads_now(rule) and not _reads_now(_without_flips(rule, flips))
        flip = _compile_flips(flips) if exact_clock else None
        _measure_uses(rule, needs)
    except LogicError as exc:
        raise DefinitionError(exc.path, exc.problem) from None
    finally:
        _NEEDS.reset(token)
    for read in reads(rule) - {"$profile"}:
        head = read.split(".", 1)[0]
        if read == "*":
            needs.traits.add("*")
            needs.activity = needs.clock = True
        elif head == "traits":
            needs.traits.add(read.split(".")[1] if "." in read else "*")
        elif head == "now":
            needs.clock = True
        elif head == "counters" and read.startswith("counters.events.") and len(read) > 16:
            needs.activity_events.add(read[16:])  # the counter of one event name
        elif head == "orders":
            needs.activity_events.add("order.completed")
        elif head in _ACTIVITY:
            needs.activity = True
    _score_uses(rule, needs)
    if exact_clock:
        needs.clock, needs.flip = False, flip
    return evaluate, needs


_COMPARISONS: Final = frozenset({"<", "<=", ">", ">=", "==", "!=", "===", "!=="})


def _score_key(arg: Any) -> str | None:
    if type(arg) is dict and len(arg) == 1 and "score" in arg:
        key = arg["score"]
        key = key[0] if type(key) is list and len(key) == 1 else key
        return key if type(key) is str else None
    return None


def _score_uses(rule: Any, needs: Needs) -> None:
    """Record, per score, the numbers it is compared with, or that it is read otherwise."""
    if type(rule) is list:
        for item in rule:
            _score_uses(item, needs)
        return
    if type(rule) is not dict or len(rule) != 1:
        return
    ((name, value),) = rule.items()
    if name == "score":
        key = _score_key(rule)
        if key is not None:
            needs.score_free.add(key)
        return
    args = value if type(value) is list else [value]
    if name in _COMPARISONS:
        keys = [_score_key(arg) for arg in args]
        numbers = [a for a in args if type(a) in (int, float)]
        scored = [k for k in keys if k is not None]
        if len(scored) == 1 and len(numbers) == len(args) - 1:
            needs.score_thresholds.setdefault(scored[0], set()).update(map(float, numbers))
            return
    for arg in args:
        _score_uses(arg, needs)


def _measured_behaviour(node: Any) -> tuple[str, str] | None:
    """(behaviour id, measure) when ``node`` measures a behaviour (count, sum, dwell…)."""
    if type(node) is not dict or len(node) != 1:
        return None
    ((name, arg),) = node.items()
    if type(arg) is list and len(arg) == 1:
        arg = arg[0]
    if type(arg) is not dict or (name in MEASURES and "event" not in arg):
        return None
    if name in MEASURES:
        measure = name
    elif name == "dwell":
        measure = "sum"
    elif name == "attention":
        measure = "sum" if SIGNALS.get(arg.get("signal", "gaze_ms"), ("", None))[1] else "count"
    else:
        return None
    found = _probe(node)
    return (next(iter(found)), measure) if len(found) == 1 else None


def _probe(node: Any) -> dict[str, Behaviour]:
    """The behaviours ``node`` reads (it compiles, as part of a condition that did)."""
    probe = Needs()
    token = _NEEDS.set(probe)
    try:
        compile_logic(node)
    finally:
        _NEEDS.reset(token)
    return probe.behaviours


def _measure_uses(rule: Any, needs: Needs) -> None:
    """Record, per behaviour and measure, the numbers it is compared with, or that the
    behaviour is read otherwise."""
    if type(rule) is list:
        for item in rule:
            _measure_uses(item, needs)
        return
    if type(rule) is not dict or len(rule) != 1:
        return
    ((name, value),) = rule.items()
    measured = _measured_behaviour(rule)
    if measured is not None:
        needs.measure_free.add(measured[0])  # not compared with a number
        return
    if name == "sequence":
        needs.measure_free.update(_probe(rule))
        return
    args = value if type(value) is list else [value]
    if name in _COMPARISONS:
        hits = [m for m in map(_measured_behaviour, args) if m is not None]
        numbers = [a for a in args if type(a) in (int, float)]
        if len(hits) == 1 and len(numbers) == len(args) - 1:
            behaviour, measure = hits[0]
            limits = needs.measure_limits.setdefault(behaviour, {})
            limits.setdefault(measure, set()).update(map(float, numbers))
            return
    for arg in args:
        _measure_uses(arg, needs)


# --- the clock --------------------------------------------------------------------------------

_MAX_INSTANT: Final = 2**53  # later flips are never


def _reads_now(rule: Any) -> bool:
    return any(r in ("*", "now") or r.startswith("now.") for r in reads(rule))


def _is_now(node: Any) -> bool:
    if type(node) is not dict or len(node) != 1 or "var" not in node:
        return False
    key = node["var"]
    if type(key) is list:
        if not 1 <= len(key) <= 2 or (len(key) == 2 and type(key[1]) in (list, dict)):
            return False
        key = key[0]
    return type(key) is str and key == "now"


def _affine(node: Any) -> tuple[int, Any] | None:
    """``node`` as a·now + b: (a, b as a rule that does not read now); None when it reads now
    otherwise. ``+`` and ``-`` are linear in a number, whatever their coercions do to b."""
    if _is_now(node):
        return 1, 0
    if not _reads_now(node):
        return 0, node
    if type(node) is not dict or len(node) != 1:
        return None
    ((name, value),) = node.items()
    parts = [_affine(arg) for arg in (value if type(value) is list else [value])]
    if any(part is None for part in parts):
        return None
    terms = [part for part in parts if part is not None]
    if name == "+":
        return sum(a for a, _ in terms), {"+": [b for _, b in terms]}
    if name == "-" and len(terms) == 2:
        return terms[0][0] - terms[1][0], {"-": [terms[0][1], terms[1][1]]}
    if name == "-" and len(terms) == 1:
        return -terms[0][0], {"-": [terms[0][1]]}
    return None


def _without_flips(rule: Any, found: list[tuple[int, Any, Any]]) -> Any:
    """``rule`` with every comparison of two affine sides replaced by ``true``, each added to
    ``found`` as (a, b of the left, b of the right) when now does not cancel out."""
    if type(rule) is list:
        return [_without_flips(item, found) for item in rule]
    if type(rule) is not dict or len(rule) != 1:
        return rule
    ((name, value),) = rule.items()
    args = value if type(value) is list else [value]
    between = len(args) == 3 and name in ("<", "<=")
    if name in _COMPARISONS and (len(args) == 2 or between) and _reads_now(rule):
        pairs = [(_affine(x), _affine(y)) for x, y in itertools.pairwise(args)]
        if all(x is not None and y is not None for x, y in pairs):
            found += [(x[0] - y[0], x[1], y[1]) for x, y in pairs
                      if x is not None and y is not None and x[0] != y[0]]  # fmt: skip
            return True
    return {name: [_without_flips(arg, found) for arg in args]}


def _compile_flips(found: list[tuple[int, Any, Any]]) -> Callable[[Any, int], int | None] | None:
    """The next instant after ``now`` at which one of the comparisons may change: a·now + d
    changes sign at −d/a, so the first whole millisecond on each side of it."""
    if not found:
        return None
    compiled = [(a, compile_logic(left), compile_logic(right)) for a, left, right in found]

    def flip(data: Any, now: int) -> int | None:
        best = None
        for a, left, right in compiled:
            x = -(to_number(left(data)) - to_number(right(data))) / a
            if not math.isfinite(x):
                continue  # NaN: the comparison is false whatever the time
            for t in (math.ceil(x), math.floor(x) + 1):
                if now < t < _MAX_INSTANT and (best is None or t < best):
                    best = t
        return best

    return flip


# --- documents --------------------------------------------------------------------------------


@dataclass(slots=True)
class Segment:
    kind: ClassVar[str] = "segment"
    key: str
    version: int
    document: dict[str, Any]
    evaluate: Evaluator
    needs: Needs


@dataclass(frozen=True, slots=True)
class ScoreRule:
    id: str  # "<model>#<index>"
    behaviour: Behaviour
    points: float
    cap: float | None
    per: str | None


@dataclass(slots=True)
class ScoreModel:
    kind: ClassVar[str] = "score"
    key: str
    version: int
    document: dict[str, Any]
    rules: list[ScoreRule]
    half_life_ms: int | None
    step_ms: int
    timezone: ZoneInfo


Definition = Segment | ScoreModel

_SEGMENT_FIELDS: Final = {"kind", "key", "name", "description", "condition"}
_SCORE_FIELDS: Final = {"kind", "key", "name", "description", "half_life", "decay_step",
                        "timezone", "rules"}  # fmt: skip
_RULE_FIELDS: Final = {"event", "where", "world", "points", "cap"}


def _mapping(raw: Any, what: str) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise DefinitionError("", f"{what} is an object (a YAML mapping)")
    return {str(name): value for name, value in raw.items()}


def _check_key(document: dict[str, Any], key: str | None) -> None:
    """``key`` filled in from the URL (it must agree with the document's), and a key."""
    if key is not None and document.setdefault("key", key) != key:
        raise DefinitionError("key", f"{document['key']!r} differs from {key!r} in the URL")
    if not isinstance(document.get("key"), str) or not KEY.fullmatch(document["key"]):
        raise DefinitionError("key", f"{document.get('key')!r} is not a key: lower-case "
                              "letters, digits, - and _, at most 64")  # fmt: skip


def document_header(raw: Any, kind: str, key: str | None, allowed: set[str] | frozenset[str],
                    what: str) -> dict[str, Any]:  # fmt: skip
    """A definition document of ``kind`` (``what``: "a journey", "an offer"…) with its
    ``kind`` and ``key`` filled in and checked, and no field outside ``allowed``."""
    document = _mapping(raw, what)
    if document.setdefault("kind", kind) != kind:
        raise DefinitionError("kind", f"{document['kind']!r} is not {kind}")
    _check_key(document, key)
    for name in document:
        if name not in allowed:
            raise DefinitionError(name, _unknown(set(allowed)))
    return document


def validate(raw: Any, kind: str | None = None, key: str | None = None) -> dict[str, Any]:
    """Check a document's shape and return it with ``kind`` and ``key`` filled in."""
    document = _mapping(raw, "a definition")
    kind = document.setdefault("kind", kind or "segment")
    if kind not in ("segment", "score"):
        raise DefinitionError("kind", f"{kind!r} is not segment or score")
    _check_key(document, key)
    for name in ("name", "description"):
        if name in document and not isinstance(document[name], str):
            raise DefinitionError(name, "must be a string")
    allowed = _SEGMENT_FIELDS if kind == "segment" else _SCORE_FIELDS
    for name in document:
        if name not in allowed:
            raise DefinitionError(name, _unknown(allowed))
    compile_definition(document, 0)  # every other check happens while compiling
    return document


def compile_definition(document: dict[str, Any], version: int) -> Definition:
    if document.get("kind", "segment") == "segment":
        if "condition" not in document:
            raise DefinitionError("condition", "is required")
        evaluate, needs = compile_condition(document["condition"])
        if document["key"] in needs.segments:
            raise DefinitionError("condition", "a segment cannot depend on itself")
        return Segment(document["key"], version, document, evaluate, needs)
    return _compile_score_model(document, version)


def _compile_score_model(document: dict[str, Any], version: int) -> ScoreModel:
    key = document["key"]
    half_life = document.get("half_life")
    half_life_ms = parse_duration(half_life, "half_life") if half_life is not None else None
    step_ms = parse_duration(document.get("decay_step", "1d"), "decay_step")
    try:
        tz = ZoneInfo(str(document.get("timezone", "UTC")))
    except (ZoneInfoNotFoundError, ValueError):
        raise DefinitionError("timezone", f"{document.get('timezone')!r} is not an IANA time "
                              "zone such as Europe/Paris") from None  # fmt: skip
    rules = document.get("rules")
    if not isinstance(rules, list) or not 1 <= len(rules) <= 200:
        raise DefinitionError("rules", "expects a list of 1 to 200 rules")
    compiled = []
    for i, raw in enumerate(rules):
        path = f"rules[{i}]"
        rule = _fields(raw, path, _RULE_FIELDS, {"event", "points"})
        points = rule["points"]
        if isinstance(points, bool) or not isinstance(points, int | float) or math.isnan(points):
            raise DefinitionError(f"{path}.points", f"{points!r} is not a number")
        cap, per = None, None
        if "cap" in rule:
            spec = _fields(rule["cap"], f"{path}.cap", {"points", "per"}, {"points", "per"})
            cap, per = spec["points"], spec["per"]
            if isinstance(cap, bool) or not isinstance(cap, int | float) or cap <= 0:
                raise DefinitionError(f"{path}.cap.points", f"{cap!r} is not a positive number")
            if per not in PERIODS:
                raise DefinitionError(f"{path}.cap.per", f"{per!r} is not one of hour, day, week")
        behaviour = _behaviour(rule["event"], rule.get("where"), None, rule.get("world"), None,
                               path)  # fmt: skip
        compiled.append(ScoreRule(f"{key}#{i}", behaviour, float(points), cap, per))
    return ScoreModel(key, version, document, compiled, half_life_ms, step_ms, tz)


def iter_documents(text: str, source: str = "") -> Iterator[dict[str, Any]]:
    """The definitions in a YAML or JSON text (several YAML documents, or a list, allowed)."""
    import yaml

    try:
        loaded = list(yaml.safe_load_all(text))
    except yaml.YAMLError as exc:
        raise DefinitionError(source, f"not YAML or JSON: {exc}") from None
    for item in loaded:
        for document in item if isinstance(item, list) else [item]:
            if document is not None:
                yield document
