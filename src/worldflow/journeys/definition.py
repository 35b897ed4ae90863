"""Journey documents: parsed, validated with paths, compiled (semantics: docs/JOURNEYS.md).

A journey is an entry, a list of steps and optional goal and exit conditions. Every condition
it holds (the entry's, a branch's, the goal's) is compiled into a hidden segment, keyed
``~<journey>.<n>``, that the segments engine keeps exact and incremental like any other: a
branch reads its membership, and a goal or exit condition is met the instant its hidden
segment is entered.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from worldflow.journeys import actions
from worldflow.segments.definition import (
    EVENT_NAME,
    KEY,
    DefinitionError,
    Segment,
    _fields,
    _unknown,
    compile_condition,
    document_header,
    parse_duration,
)
from worldflow.segments.logic import Evaluator, LogicError, compile_logic, reads, truthy

STATUSES: Final = ("draft", "active", "paused", "archived")
HIDDEN: Final = "~"  # the prefix of the segments journeys compile their conditions into
MAX_STEPS: Final = 200
EXIT: Final = "exit"

_JOURNEY_FIELDS: Final = {"kind", "key", "name", "description", "status", "entry", "reentry",
                          "steps", "goal", "exit", "caps", "quiet_hours",
                          "transactional"}  # fmt: skip
MESSAGING: Final = "messaging"  # the kind of the workspace's caps and quiet hours
_MESSAGING_FIELDS: Final = {"kind", "key", "description", "caps", "quiet_hours"}
_CLOCK: Final = re.compile(r"([01]\d|2[0-3]):([0-5]\d)")
_ENTRY_FIELDS: Final = {"event", "where", "segment", "segment_exited", "api", "condition",
                        "schedule"}  # fmt: skip
_STEP_KINDS: Final = ("wait", "wait_until", "wait_for", "branch", "split", "action", "goto",
                      "exit")  # fmt: skip
DAYS: Final = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


@dataclass(frozen=True, slots=True)
class Trigger:
    """What starts a run, or ends one (a goal, an exit): an event (with a condition on its
    properties), entering or leaving a segment, an API call, or a profile condition becoming
    true (its hidden segment entered)."""

    event: str | None = None
    where: Evaluator | None = field(default=None, compare=False, repr=False)
    segment: str | None = None  # entered
    segment_exited: str | None = None
    api: bool = False

    def matches_event(self, name: str | None, properties: dict[str, Any]) -> bool:
        if self.event is None or name != self.event:
            return False
        return self.where is None or truthy(self.where(properties))


@dataclass(frozen=True, slots=True)
class Until:
    """A moment to wait for: a date and time (``at``, UTC ms), or the next opening of a window
    on some days of the week (``days``: 0 = Monday), between two times of the day (minutes),
    in ``zone`` (None: the person's time zone, else UTC)."""

    at: int | None = None
    days: tuple[int, ...] = ()
    start: int = 0
    end: int = 0
    zone: ZoneInfo | None = None


@dataclass(frozen=True, slots=True)
class Step:
    index: int
    id: str
    kind: str  # one of _STEP_KINDS
    next: int | None  # the step that follows (None: the end, the run completes)
    wait_ms: int | None = None  # wait; wait_for's timeout
    event: Trigger | None = None  # wait_for
    on_timeout: int | None = None  # wait_for: where a timeout goes
    branches: tuple[tuple[str, int | None], ...] = ()  # branch: (hidden segment, target)
    weights: tuple[tuple[float, int | None], ...] = ()  # split: (cumulative weight, target)
    holdout: float = 0.0  # split: the share kept out as a control group (percent)
    action: dict[str, Any] | None = None
    action_kind: str | None = None  # action: its kind (worldflow.journeys.actions)
    journey: str | None = None  # goto another journey
    reason: str = "completed"  # exit
    until: Until | None = None  # wait_until


@dataclass(slots=True)
class Journey:
    kind = "journey"
    key: str
    version: int
    document: dict[str, Any]
    status: str
    entry: Trigger
    entry_segment: str | None  # hidden segment of the entry condition (members may enter)
    reentry: str  # never | always | after
    reentry_after_ms: int | None
    steps: list[Step]
    goal: Trigger | None
    exit: Trigger | None
    hidden: list[Segment]  # the hidden segments of its conditions
    caps: dict[str, tuple[int | None, int | None]] = field(default_factory=dict)  # day, week
    # (start, end) in minutes of the day, and the time zone (None: the person's, else UTC)
    quiet: tuple[int, int, ZoneInfo | None] | None = None
    transactional: bool = False  # the workspace's caps and quiet hours do not apply
    # entry on a schedule: the members of entry.segment at each occurrence enter then
    schedule: Until | None = None


@dataclass(slots=True)
class Messaging:
    """The workspace's caps and quiet hours, across all its journeys (one document, key
    ``default``): a journey marked ``transactional`` is not held by them nor counted."""

    kind = MESSAGING
    key: str
    version: int
    document: dict[str, Any]
    caps: dict[str, tuple[int | None, int | None]]
    quiet: tuple[int, int, ZoneInfo | None] | None


def validate_messaging(raw: Any, key: str | None = None) -> dict[str, Any]:
    """Check the workspace's messaging document; return it with ``kind`` and ``key``."""
    if not isinstance(raw, dict):
        raise DefinitionError("", "the messaging policy is an object (a YAML mapping)")
    document: dict[str, Any] = {str(name): value for name, value in raw.items()}
    if document.setdefault("kind", MESSAGING) != MESSAGING:
        raise DefinitionError("kind", f"{document['kind']!r} is not {MESSAGING}")
    if document.setdefault("key", key or "default") != "default":
        raise DefinitionError("key", "a workspace has one messaging policy, key default")
    for name in document:
        if name not in _MESSAGING_FIELDS:
            raise DefinitionError(name, _unknown(_MESSAGING_FIELDS))
    compile_messaging(document, 0)
    return document


def compile_messaging(document: dict[str, Any], version: int) -> Messaging:
    quiet = _quiet(document["quiet_hours"]) if "quiet_hours" in document else None
    return Messaging("default", version, document, _caps(document.get("caps", {})), quiet)


def validate(raw: Any, key: str | None = None) -> dict[str, Any]:
    """Check a journey document's shape; return it with ``kind`` and ``key`` filled in."""
    document = document_header(raw, "journey", key, _JOURNEY_FIELDS, "a journey")
    compile_journey(document, 0)
    return document


def compile_journey(document: dict[str, Any], version: int) -> Journey:
    key = document["key"]
    status = document.get("status", "draft")
    if status not in STATUSES:
        raise DefinitionError("status", f"{status!r} is not one of {', '.join(STATUSES)}")
    hidden: list[Segment] = []

    def condition(rule: Any, path: str) -> str:
        """A hidden segment for a profile condition; its key."""
        segment_key = f"{HIDDEN}{key}.{len(hidden)}"
        evaluate, needs = compile_condition(rule, path)
        if any(s.startswith(HIDDEN) for s in needs.segments):
            raise DefinitionError(path, "in_segment cannot name a journey's hidden segment")
        document = {"kind": "segment", "key": segment_key, "condition": rule}
        hidden.append(Segment(segment_key, version, document, evaluate, needs))
        return segment_key

    entry, entry_segment = _trigger(document.get("entry"), "entry", condition, entry=True)
    schedule = None
    if "schedule" in document["entry"]:  # (a checked entry: an object)
        schedule = _schedule(document["entry"]["schedule"], "entry.schedule")
    reentry, after = _reentry(document.get("reentry", "never"))
    goal = exit_ = None
    if "goal" in document:
        goal, _ = _trigger(document["goal"], "goal", condition)
    if "exit" in document:
        exit_, _ = _trigger(document["exit"], "exit", condition)
    steps = _steps(document.get("steps"), condition, key)
    quiet = _quiet(document["quiet_hours"]) if "quiet_hours" in document else None
    transactional = document.get("transactional", False)
    if not isinstance(transactional, bool):
        raise DefinitionError("transactional", f"{transactional!r} is not true or false")
    return Journey(key, version, document, status, entry, entry_segment, reentry, after, steps,
                   goal, exit_, hidden, _caps(document.get("caps", {})), quiet,
                   transactional, schedule)  # fmt: skip


def _until(raw: Any, path: str) -> Until:
    """``{at: "2026-12-24T18:00:00+01:00"}``, or ``{days: [mon, …], from: "09:00", to: "18:00",
    timezone: …}``."""
    spec = _fields(raw, path, {"at", "days", "from", "to", "timezone"})
    if "at" in spec:
        if len(spec) != 1:
            raise DefinitionError(path, "at is alone, or days, from, to and timezone are used")
        value = spec["at"]
        try:
            moment = datetime.fromisoformat(value) if isinstance(value, str) else None
        except ValueError:
            moment = None
        if moment is None or moment.tzinfo is None:
            raise DefinitionError(f"{path}.at", f"{value!r} is not a date and time with its "
                                  "offset, such as 2026-12-24T18:00:00+01:00")  # fmt: skip
        return Until(at=int(moment.timestamp() * 1000))
    days = spec.get("days", list(DAYS))
    if not isinstance(days, list) or not days or any(d not in DAYS for d in days):
        raise DefinitionError(f"{path}.days", f"{days!r} is not a list of {', '.join(DAYS)}")
    times = [_minutes(spec.get(name), f"{path}.{name}") for name in ("from", "to")]
    zone = _zone(spec["timezone"], f"{path}.timezone") if "timezone" in spec else None
    return Until(days=tuple(sorted({DAYS.index(d) for d in days})), start=times[0],
                 end=times[1], zone=zone)  # fmt: skip


def _schedule(raw: Any, path: str) -> Until:
    """``{at: "2026-12-24T09:00:00+01:00"}`` (once), or ``{days: [mon, …], time: "09:00",
    timezone: Europe/Paris}`` (every such day at that time; days default to every day, the
    time zone to UTC: one instant for everybody)."""
    spec = _fields(raw, path, {"at", "days", "time", "timezone"})
    if "at" in spec:
        if len(spec) != 1:
            raise DefinitionError(path, "at is alone, or days, time and timezone are used")
        return _until({"at": spec["at"]}, path)
    if "time" not in spec:
        raise DefinitionError(path, "names at (once) or time (with days and timezone)")
    days = spec.get("days", list(DAYS))
    if not isinstance(days, list) or not days or any(d not in DAYS for d in days):
        raise DefinitionError(f"{path}.days", f"{days!r} is not a list of {', '.join(DAYS)}")
    minute = _minutes(spec["time"], f"{path}.time")
    zone = _zone(spec.get("timezone", "UTC"), f"{path}.timezone")
    return Until(days=tuple(sorted({DAYS.index(d) for d in days})), start=minute, end=minute,
                 zone=zone)  # fmt: skip


def _minutes(value: Any, path: str) -> int:
    """``"09:30"`` → minutes of the day."""
    match = _CLOCK.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise DefinitionError(path, f"{value!r} is not a time of the day such as 09:30")
    return int(match[1]) * 60 + int(match[2])


def _zone(value: Any, path: str) -> ZoneInfo:
    try:
        return ZoneInfo(str(value))
    except (ZoneInfoNotFoundError, ValueError):
        raise DefinitionError(path, f"{value!r} is not an IANA time zone such as "
                              "Europe/Paris") from None  # fmt: skip


def _caps(raw: Any) -> dict[str, tuple[int | None, int | None]]:
    """``{webhook: {per_day: 1, per_week: 3}}``: at most so many actions of a channel per
    person in any 24 hours and any 7 days, from this journey."""
    spec = _fields(raw, "caps", set(actions.channels()))
    caps = {}
    for channel, limits in spec.items():
        path = f"caps.{channel}"
        _fields(limits, path, {"per_day", "per_week"})
        found = []
        for name in ("per_day", "per_week"):
            value = limits.get(name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                      or value < 0):  # fmt: skip
                raise DefinitionError(f"{path}.{name}", f"{value!r} is not a whole number >= 0")
            found.append(value)
        if found == [None, None]:
            raise DefinitionError(path, "names per_day, per_week or both")
        caps[channel] = (found[0], found[1])
    return caps


def _quiet(raw: Any) -> tuple[int, int, ZoneInfo | None]:
    """``{start: "22:00", end: "08:00", timezone: Europe/Paris}``: webhooks decided in between
    wait for the end (the person's ``timezone`` trait when no zone is given, else UTC)."""
    spec = _fields(raw, "quiet_hours", {"start", "end", "timezone"})
    minutes = [_minutes(spec.get(name), f"quiet_hours.{name}") for name in ("start", "end")]
    if minutes[0] == minutes[1]:
        raise DefinitionError("quiet_hours.end", "is the start: quiet hours would be empty")
    zone = _zone(spec["timezone"], "quiet_hours.timezone") if "timezone" in spec else None
    return minutes[0], minutes[1], zone


def _where(rule: Any, path: str) -> Evaluator:
    if reads(rule) & {"$profile"}:
        raise DefinitionError(path, "a condition on event properties cannot use profile "
                              "operators (count, consent, score, in_segment…)")  # fmt: skip
    try:
        return compile_logic(rule, path)
    except LogicError as exc:
        raise DefinitionError(exc.path, exc.problem) from None


def _event_name(value: Any, path: str) -> str:
    if not isinstance(value, str) or not EVENT_NAME.fullmatch(value):
        raise DefinitionError(path, f"{value!r} is not an event name")
    return value


def _segment_key(value: Any, path: str) -> str:
    if not isinstance(value, str) or not KEY.fullmatch(value):
        raise DefinitionError(path, f"{value!r} is not a segment key")
    return value


def _trigger(raw: Any, path: str, condition: Any,
             entry: bool = False) -> tuple[Trigger, str | None]:  # fmt: skip
    allowed = _ENTRY_FIELDS if entry else _ENTRY_FIELDS - {"api", "schedule"}
    spec = _fields(raw, path, allowed)
    kinds = [k for k in ("event", "segment", "segment_exited", "api") if k in spec]
    if not entry and "condition" in spec and not kinds:
        return Trigger(segment=condition(spec["condition"], f"{path}.condition")), None
    if len(kinds) != 1:
        what = "event, segment, segment_exited or api" if entry else (
            "event, segment, segment_exited or condition")  # fmt: skip
        raise DefinitionError(path, f"names exactly one of {what}")
    if "where" in spec and "event" not in spec:
        raise DefinitionError(f"{path}.where", "applies to an event only")
    if "schedule" in spec and "segment" not in spec:
        raise DefinitionError(f"{path}.schedule", "goes with segment: the members of the "
                              "segment at each occurrence enter")  # fmt: skip
    if not entry and "condition" in spec:
        raise DefinitionError(f"{path}.condition", "is alone or not at all")
    found = Trigger(
        event=_event_name(spec["event"], f"{path}.event") if "event" in spec else None,
        where=_where(spec["where"], f"{path}.where") if "where" in spec else None,
        segment=_segment_key(spec["segment"], f"{path}.segment") if "segment" in spec else None,
        segment_exited=(_segment_key(spec["segment_exited"], f"{path}.segment_exited")
                        if "segment_exited" in spec else None),
        api=spec.get("api") is True,
    )  # fmt: skip
    if "api" in spec and spec["api"] is not True:
        raise DefinitionError(f"{path}.api", "is true or absent")
    hidden = condition(spec["condition"], f"{path}.condition") if "condition" in spec else None
    return found, hidden


def _reentry(raw: Any) -> tuple[str, int | None]:
    if raw in ("never", "always"):
        return raw, None
    if isinstance(raw, dict) and set(raw) == {"after"}:
        return "after", parse_duration(raw["after"], "reentry.after")
    raise DefinitionError("reentry", f"{raw!r} is not never, always or {{after: 7d}}")


def _steps(raw: Any, condition: Any, journey: str) -> list[Step]:
    if not isinstance(raw, list) or not 1 <= len(raw) <= MAX_STEPS:
        raise DefinitionError("steps", f"expects a list of 1 to {MAX_STEPS} steps")
    ids: dict[str, int] = {}
    for i, step in enumerate(raw):
        path = f"steps[{i}]"
        if not isinstance(step, dict):
            raise DefinitionError(path, "a step is an object: wait, wait_for, branch, split, "
                                  "action, goto or exit")  # fmt: skip
        step_id = step.get("id", f"{i + 1}")
        if not isinstance(step_id, str) or not KEY.fullmatch(step_id) or step_id == EXIT:
            raise DefinitionError(f"{path}.id", f"{step_id!r} is not a step id (a key, not exit)")
        if step_id in ids:
            raise DefinitionError(f"{path}.id", f"{step_id!r} is the id of steps[{ids[step_id]}]")
        ids[step_id] = i

    def target(value: Any, path: str) -> int | None:
        if value == EXIT:
            return None
        if not isinstance(value, str) or value not in ids:
            raise DefinitionError(path, f"{value!r} is not a step id of this journey or exit")
        return ids[value]

    steps = []
    for i, step in enumerate(raw):
        path = f"steps[{i}]"
        kinds = [k for k in _STEP_KINDS if k in step]
        if len(kinds) != 1:
            raise DefinitionError(path, f"has exactly one of {', '.join(_STEP_KINDS)}")
        kind = kinds[0]
        allowed = {"id", kind, *_EXTRA.get(kind, ())}
        _fields(step, path, allowed)
        following = i + 1 if i + 1 < len(raw) else None
        nxt = target(step["next"], f"{path}.next") if "next" in step else following
        step_id = step.get("id", f"{i + 1}")
        at = f"{path}.{kind}"
        value = step[kind]
        if kind == "wait":
            steps.append(Step(i, step_id, kind, nxt, wait_ms=parse_duration(value, at)))
        elif kind == "wait_until":
            steps.append(Step(i, step_id, kind, nxt, until=_until(value, at)))
        elif kind == "wait_for":
            spec = _fields(value, at, {"event", "where", "timeout"})
            if "event" not in spec or "timeout" not in spec:
                raise DefinitionError(at, "names the event and a timeout")
            trigger = Trigger(event=_event_name(spec["event"], f"{at}.event"),
                              where=_where(spec["where"], f"{at}.where")
                              if "where" in spec else None)  # fmt: skip
            timeout = target(step["on_timeout"], f"{path}.on_timeout") if (
                "on_timeout" in step) else nxt  # fmt: skip
            steps.append(Step(i, step_id, kind, nxt, parse_duration(spec["timeout"],
                              f"{at}.timeout"), trigger, timeout))  # fmt: skip
        elif kind == "branch":
            if not isinstance(value, list) or not value:
                raise DefinitionError(at, "expects a list of {if: condition, goto: step}")
            branches = []
            for j, arm in enumerate(value):
                arm_path = f"{at}[{j}]"
                _fields(arm, arm_path, {"if", "goto"})
                if "if" not in arm or "goto" not in arm:
                    raise DefinitionError(arm_path, "has if and goto")
                branches.append((condition(arm["if"], f"{arm_path}.if"),
                                 target(arm["goto"], f"{arm_path}.goto")))  # fmt: skip
            otherwise = target(step["else"], f"{path}.else") if "else" in step else nxt
            steps.append(Step(i, step_id, kind, otherwise, branches=tuple(branches)))
        elif kind == "split":
            steps.append(_split(value, step, path, i, step_id, nxt, target))
        elif kind == "action":
            action_kind, action = _action(value, at)
            steps.append(Step(i, step_id, kind, nxt, action=action, action_kind=action_kind))
        elif kind == "goto":
            if isinstance(value, dict):
                spec = _fields(value, at, {"journey"})
                other = _segment_key(spec.get("journey"), f"{at}.journey")
                if other == journey:
                    raise DefinitionError(f"{at}.journey", "a journey cannot enter itself")
                steps.append(Step(i, step_id, kind, None, journey=other))
            else:
                steps.append(Step(i, step_id, kind, target(value, at)))
        else:  # exit
            reason = value if isinstance(value, str) and value else "exited"
            if not isinstance(value, str | bool) or len(reason) > 64:
                raise DefinitionError(at, "is true or a short reason")
            steps.append(Step(i, step_id, kind, None, reason=reason))
    return steps


_EXTRA: Final = {"wait": ("next",), "wait_until": ("next",), "wait_for": ("next", "on_timeout"),
                 "branch": ("else",),
                 "split": ("holdout",), "action": ("next",), "goto": (), "exit": ()}  # fmt: skip


def _split(value: Any, step: dict[str, Any], path: str, i: int, step_id: str,
           nxt: int | None, target: Any) -> Step:  # fmt: skip
    at = f"{path}.split"
    if not isinstance(value, list) or not value:
        raise DefinitionError(at, "expects a list of {weight: number, goto: step}")
    total, arms = 0.0, []
    for j, arm in enumerate(value):
        arm_path = f"{at}[{j}]"
        _fields(arm, arm_path, {"weight", "goto"})
        weight = arm.get("weight")
        if isinstance(weight, bool) or not isinstance(weight, int | float) or weight <= 0:
            raise DefinitionError(f"{arm_path}.weight", f"{weight!r} is not a positive number")
        total += weight
        arms.append((total, target(arm["goto"], f"{arm_path}.goto") if "goto" in arm else nxt))
    holdout = step.get("holdout", 0)
    if isinstance(holdout, bool) or not isinstance(holdout, int | float) or not (
            0 <= holdout < 100):  # fmt: skip
        raise DefinitionError(f"{path}.holdout", f"{holdout!r} is not a percentage in [0, 100)")
    return Step(i, step_id, "split", nxt, weights=tuple((w / total, t) for w, t in arms),
                holdout=float(holdout))  # fmt: skip


def _action(raw: Any, path: str) -> tuple[str, dict[str, Any]]:
    """The action's kind and its document, checked by the kind."""
    registry = actions.kinds()
    named = [k for k in raw if k in registry] if isinstance(raw, dict) else []
    if len(named) != 1:
        raise DefinitionError(path, f"names exactly one of {', '.join(registry)}")
    kind = registry[named[0]]
    _fields(raw, path, {kind.name, *kind.options})
    kind.check(raw, path)
    try:
        json.dumps(raw)  # JSON all the way down: it is sent and stored
    except (TypeError, ValueError) as exc:
        raise DefinitionError(path, f"is not JSON: {exc}") from None
    return kind.name, dict(raw)
