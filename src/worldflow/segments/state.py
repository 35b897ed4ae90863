"""The incremental state segments and scores keep on a profile, and how it changes.

An :class:`Agg` holds what one profile did of one behaviour (definition.Behaviour): each
matching event when the behaviour has a window, a session or feeds a sequence, otherwise
running totals. Measures are read at a time ``now``; nothing here reads a clock.
"""

from __future__ import annotations

import math
import re
from bisect import bisect_right, insort
from datetime import UTC, datetime
from operator import itemgetter
from typing import TYPE_CHECKING, Any, Final

import msgspec

if TYPE_CHECKING:
    from worldflow.segments.definition import Behaviour, ScoreModel, ScoreRule

MAX_ENTRIES: Final = 1000  # events kept per behaviour per profile: the latest
MAX_DISTINCT: Final = 1000  # distinct values kept per all-time behaviour per profile
ZERO: Final = 0.001  # a decayed score smaller than this is 0
_DECIMAL: Final = re.compile(r"-?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_time = itemgetter(0)

Entry = tuple[int, int, Any, str]  # (event time, log offset, measured value, session id)


class Agg(msgspec.Struct, array_like=True, omit_defaults=True, gc=False):
    entries: list[Entry] = []  # sorted by (time, offset)
    count: int = 0
    total: int | float = 0
    low: int | float | None = None
    high: int | float | None = None
    first: int | None = None
    last: int | None = None
    values: list[Any] = []


class Score(msgspec.Struct, array_like=True, gc=False):
    value: float  # at the start of step ``step``
    step: int


def numeric(value: Any) -> int | float | None:
    """A number property (or a decimal string, as money amounts are) as a number."""
    t = type(value)
    if t is int:
        return value  # type: ignore[no-any-return]
    if t is float:
        return value if math.isfinite(value) else None
    if t is str and _DECIMAL.fullmatch(value):
        number = float(value)
        return number if math.isfinite(number) else None
    return None


def fold(agg: Agg, behaviour: Behaviour, at: int, offset: int, value: Any, session: str) -> None:
    """One matching event into the aggregate."""
    if behaviour.entries:
        entries = agg.entries
        entry = (at, offset, value, session)
        if not entries or entries[-1] < entry:
            entries.append(entry)  # the common case: in order
        else:
            insort(entries, entry)
        if len(entries) > MAX_ENTRIES:
            del entries[0]
        return
    agg.count += 1
    number = numeric(value)
    if number is not None:
        agg.total += number
        if agg.low is None or number < agg.low:
            agg.low = number
        if agg.high is None or number > agg.high:
            agg.high = number
    if agg.first is None or at < agg.first:
        agg.first = at
    if agg.last is None or at > agg.last:
        agg.last = at
    if value is not None and len(agg.values) < MAX_DISTINCT and value not in agg.values:
        agg.values.append(value)


def live(agg: Agg, behaviour: Behaviour, now: int, sessions: Any) -> list[Entry]:
    """The entries that count at ``now`` (``sessions``: the ids of the open sessions)."""
    entries = agg.entries
    if behaviour.window_ms is not None:
        start = bisect_right(entries, now - behaviour.window_ms, key=_time)
        entries = entries[start:] if start else entries
    if behaviour.session:
        entries = [e for e in entries if e[3] in sessions]
    return entries


def measure(agg: Agg | None, behaviour: Behaviour, what: str, now: int, sessions: Any) -> Any:
    if agg is None:
        return 0 if what in ("count", "sum", "distinct") else None
    if not behaviour.entries:
        if what == "count":
            return agg.count
        if what == "sum":
            return agg.total
        if what == "distinct":
            return len(agg.values)
        return {"min": agg.low, "max": agg.high, "first_time": agg.first,
                "last_time": agg.last}[what]  # fmt: skip
    entries = agg.entries
    start = 0
    if behaviour.window_ms is not None:
        start = bisect_right(entries, now - behaviour.window_ms, key=_time)
    if behaviour.session:
        entries, start = [e for e in entries[start:] if e[3] in sessions], 0
    if what == "count":
        return len(entries) - start
    if start == len(entries):
        return 0 if what in ("sum", "distinct") else None
    if what == "first_time":
        return entries[start][0]
    if what == "last_time":
        return entries[-1][0]
    if what == "distinct":
        return len({entries[i][2] for i in range(start, len(entries))} - {None})
    total: int | float = 0
    low: int | float | None = None
    high: int | float | None = None
    for i in range(start, len(entries)):
        n = numeric(entries[i][2])
        if n is None:
            continue
        total += n
        if low is None or n < low:
            low = n
        if high is None or n > high:
            high = n
    return total if what == "sum" else low if what == "min" else high


def prune(agg: Agg, behaviour: Behaviour, now: int, sessions: Any) -> None:
    """Forget the entries that can never count again (time only moves forward)."""
    if behaviour.window_ms is not None:
        start = bisect_right(agg.entries, now - behaviour.window_ms, key=_time)
        if start:
            del agg.entries[:start]
    if behaviour.session and agg.entries:
        agg.entries = [e for e in agg.entries if e[3] in sessions]


def expiry(agg: Agg, behaviour: Behaviour) -> int | None:
    """When the oldest entry leaves the window (the next change without a new event)."""
    if behaviour.window_ms is None or not agg.entries:
        return None
    return agg.entries[0][0] + behaviour.window_ms


def merge(into: Agg, other: Agg) -> None:
    if other.entries:
        into.entries = sorted({*into.entries, *other.entries})[-MAX_ENTRIES:]
    into.count += other.count
    into.total += other.total
    if other.low is not None and (into.low is None or other.low < into.low):
        into.low = other.low
    if other.high is not None and (into.high is None or other.high > into.high):
        into.high = other.high
    if other.first is not None and (into.first is None or other.first < into.first):
        into.first = other.first
    if other.last is not None and (into.last is None or other.last > into.last):
        into.last = other.last
    for value in other.values:
        if len(into.values) < MAX_DISTINCT and value not in into.values:
            into.values.append(value)


def sequence(steps: list[list[Entry]], within_ms: int | None) -> bool:
    """Whether one entry of each step follows the previous one, in (time, offset) order, with
    the last no later than ``within_ms`` after the first."""
    first, rest = steps[0], steps[1:]
    for start in first:
        current = start
        for entries in rest:
            i = bisect_right(entries, (current[0], current[1]), key=_order)
            if i == len(entries):
                return False  # no later start can find what this one could not
            current = entries[i]
        if within_ms is None or current[0] - start[0] <= within_ms:
            return True
    return False


def _order(entry: Entry) -> tuple[int, int]:
    return entry[0], entry[1]


# --- scores -----------------------------------------------------------------------------------


def score_value(state: Score | None, model: ScoreModel, now: int) -> float:
    if state is None:
        return 0.0
    value = state.value
    if model.half_life_ms is not None:
        steps = now // model.step_ms - state.step
        if steps > 0:
            value *= 2.0 ** (-steps * model.step_ms / model.half_life_ms)
    return 0.0 if abs(value) < ZERO else value


def score_due(state: Score | None, model: ScoreModel, now: int,
              thresholds: tuple[float, ...] | None = None) -> int | None:  # fmt: skip
    """The next step boundary at which the score, decaying by itself, changes (``thresholds``
    None), or crosses one of ``thresholds`` or reaches 0; None if it never will."""
    if state is None or model.half_life_ms is None:
        return None
    value = score_value(state, model, now)
    if value == 0:
        return None
    step = now // model.step_ms
    if thresholds is None:
        return (step + 1) * model.step_ms
    # Decaying towards 0, the value meets first the nearest threshold between it and 0 (one
    # it equals is left at the next step), or 0 itself.
    if value > 0:
        limits = (max((t for t in thresholds if 0 < t <= value), default=0.0), 0.0)
    else:
        limits = (min((t for t in thresholds if value <= t < 0), default=0.0), 0.0)

    def crossed(n: int) -> bool:
        return crosses(value, score_value(state, model, (step + n) * model.step_ms), limits)

    # The decay is monotonic and reaches 0 (the cut-off) in finitely many steps: find the
    # first step that crosses, by doubling then bisecting.
    high = 1
    while not crossed(high):
        high *= 2
    low = high // 2  # not crossed (or 0)
    while high - low > 1:
        middle = (low + high) // 2
        if crossed(middle):
            high = middle
        else:
            low = middle
    return (step + high) * model.step_ms


def crosses(before: float, after: float, limits: tuple[float, ...]) -> bool:
    """Whether a comparison of the value with one of ``limits`` differs after the change:
    one lies between the two values, ends included."""
    if before == after:
        return False
    low, high = (before, after) if before < after else (after, before)
    return any(low <= limit <= high for limit in limits)


def period(rule: ScoreRule, model: ScoreModel, at: int) -> int:
    if rule.per == "hour":
        return at // 3_600_000
    day = datetime.fromtimestamp(at / 1000, UTC).astimezone(model.timezone).date().toordinal()
    return day - (day - 1) % 7 if rule.per == "week" else day  # weeks start on Monday


def award(scores: dict[str, Score], caps: dict[str, tuple[int, float]], model: ScoreModel,
          rule: ScoreRule, at: int, now: int) -> bool:  # fmt: skip
    """Add a rule's points (within its cap for the period of ``at``); whether the score moved."""
    points = rule.points
    if rule.cap is not None and points > 0:
        current = period(rule, model, at)
        spent_period, spent = caps.get(rule.id, (current, 0.0))
        if spent_period > current:
            return False  # a late event for a period already passed: its cap is not kept
        if spent_period < current:
            spent = 0.0
        points = min(points, rule.cap - spent)
        if points <= 0:
            return False
        caps[rule.id] = (current, spent + points)
    step = now // model.step_ms
    scores[model.key] = Score(score_value(scores.get(model.key), model, now) + points, step)
    return True


def merge_score(a: Score | None, b: Score, model: ScoreModel, now: int) -> Score:
    return Score(score_value(a, model, now) + score_value(b, model, now), now // model.step_ms)
