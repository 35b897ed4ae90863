"""One workspace's active segments and score models, evaluated incrementally on profiles.

The processor calls :meth:`Definitions.on_event` for each event applied to a profile,
:meth:`~Definitions.on_timer` when the profile's timer falls due, and
:meth:`~Definitions.on_session_end` and :meth:`~Definitions.on_merge` when those happen. Each
updates the aggregates and scores the event feeds, evaluates only the segments that can have
changed (in dependency order) and returns the membership transitions.
"""

from __future__ import annotations

import hashlib
import heapq
from bisect import bisect_left
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import msgspec

from worldflow.events.model import Event
from worldflow.log import LogRecord
from worldflow.profiles.model import Profile
from worldflow.segments import state
from worldflow.segments.definition import (
    Behaviour,
    Definition,
    DefinitionError,
    Scope,
    ScoreModel,
    ScoreRule,
    Segment,
)
from worldflow.segments.logic import Step, _lookup, _steps, truthy
from worldflow.segments.state import Agg


@dataclass(slots=True)
class Transition:
    profile_id: str
    workspace_id: str
    key: str
    version: int
    entered: bool
    at: int
    backfill: bool = False
    reason: str | None = None  # "merged" when the profile was merged into another


_ABSENT: Any = object()
SYSTEM_SOURCE = "_processor"  # the source of the events the processor itself appends
_encode = msgspec.json.Encoder().encode


def membership_record(t: Transition, identities: dict[str, list[str]],
                      partition: int) -> LogRecord:  # fmt: skip
    """A transition as a ``segment.entered`` / ``segment.exited`` event for the log; its
    message id is a function of the transition, so sending it twice is deduplicated."""
    message_id = "seg_" + hashlib.blake2b(
        f"{t.profile_id}\0{t.key}\0{t.version}\0{t.entered}\0{t.at}".encode(),
        digest_size=12).hexdigest()  # fmt: skip
    at = datetime.fromtimestamp(t.at / 1000, UTC)
    properties: dict[str, Any] = {"segment": t.key, "version": t.version,
                                  "profile_id": t.profile_id}  # fmt: skip
    if t.backfill:
        properties["backfill"] = True
    if t.reason:
        properties["reason"] = t.reason
    event = Event(
        message_id=message_id, workspace_id=t.workspace_id, source_id=SYSTEM_SOURCE,
        channel="processor", type="track",
        name="segment.entered" if t.entered else "segment.exited", custom=True, tier=0,
        timestamp=at, received_at=at, properties=properties,
        user_id=next(iter(identities.get("user_id", ())), None),
        anonymous_id=next(iter(identities.get("anonymous_id", ())), None),
        context={"profile_id": t.profile_id},
    )  # fmt: skip
    return LogRecord(t.workspace_id, message_id, partition, t.at, _encode(event))


class _ProfileScope(Scope):
    __slots__ = ("definitions", "measured", "now", "profile", "sessions")

    def __init__(self, definitions: Definitions, profile: Profile, now: int) -> None:
        self.definitions = definitions
        self.profile = profile
        self.now = now
        self.sessions = profile.sessions
        self.measured: dict[tuple[str, str], Any] = {}

    def measure(self, behaviour: Behaviour, measure: str) -> Any:
        key = (behaviour.id, measure)  # segments often share one: measured once per evaluation
        found = self.measured.get(key, _ABSENT)
        if found is _ABSENT:
            agg = self.profile.aggregates.get(behaviour.id)
            found = self.measured[key] = state.measure(agg, behaviour, measure, self.now,
                                                       self.sessions)  # fmt: skip
        return found

    def sequence(self, steps: list[Behaviour], within_ms: int | None) -> bool:
        aggregates = self.profile.aggregates
        lists = []
        for step in steps:
            agg = aggregates.get(step.id)
            if agg is None or not agg.entries:
                return False
            lists.append(state.live(agg, step, self.now, self.sessions))
        return state.sequence(lists, within_ms)

    def consent(self, purpose: str) -> bool:
        entry = self.profile.consent.get(purpose)
        return entry is not None and entry.granted

    def score(self, model: str) -> float:
        found = self.definitions.scores.get(model)
        if found is None:
            return 0.0
        return state.score_value(self.profile.scores.get(model), found, self.now)

    def in_segment(self, key: str) -> bool:
        return key in self.profile.segments


class _EventIndex:
    """The behaviours of one event name, by the property values their conditions require, so
    that an event is tested only against behaviours it may match."""

    def __init__(self, behaviours: Iterable[Behaviour]) -> None:
        self.unindexed: list[Behaviour] = []
        # path → (its steps, behaviours by the string required, all behaviours on the path)
        self.equal: dict[str, tuple[tuple[Step, ...], dict[str, list[Behaviour]],
                                    list[Behaviour]]] = {}  # fmt: skip
        self.member: dict[str, tuple[tuple[Step, ...], dict[str, list[Behaviour]],
                                     list[Behaviour]]] = {}  # fmt: skip
        for behaviour in behaviours:
            if not behaviour.keys:
                self.unindexed.append(behaviour)
            for path, kind, value in behaviour.keys:
                table = self.equal if kind == "==" else self.member
                _, by_value, everything = table.setdefault(path, (_steps(path), {}, []))
                by_value.setdefault(value, []).append(behaviour)
                everything.append(behaviour)
        self.indexed = bool(self.equal or self.member)

    def candidates(self, properties: dict[str, Any]) -> tuple[Iterable[Behaviour], bool]:
        """The behaviours the event may match, and whether those found through a property
        value are certain to (false when an array or object value made everything a
        candidate, as JavaScript's == of an array and a string would)."""
        if not self.indexed:
            return self.unindexed, True
        found = list(self.unindexed)
        certain = True
        for steps, by_value, everything in self.equal.values():
            value = _lookup(properties, steps, None)
            if type(value) is str:
                found += by_value.get(value, ())
            elif type(value) in (list, dict):
                found += everything
                certain = False
        for steps, by_value, everything in self.member.values():
            values = _lookup(properties, steps, None)
            if type(values) is list:
                for value in values:
                    if type(value) is str:
                        found += by_value.get(value, ())
                    elif type(value) in (list, dict):
                        found += everything
                        certain = False
        if len(found) > 1:
            found = list({b.id: b for b in found}.values())  # an "or" may index one twice
        return found, certain


class _Watch:
    """The readers of one behaviour that compare its measures with numbers only: a change
    concerns those whose numbers lie between the old and the new value."""

    __slots__ = ("by_measure", "single")

    def __init__(self, readers: list[tuple[str, dict[str, set[float]]]]) -> None:
        # Per measure: its name, every reader's numbers together (sorted), and each reader
        # with its own numbers (sorted; empty when it does not read that measure).
        self.by_measure = []
        for name in sorted({m for _, limits in readers for m in limits}):
            own = [(key, tuple(sorted(limits.get(name, ())))) for key, limits in readers]
            union = tuple(sorted({x for _, numbers in own for x in numbers}))
            self.by_measure.append((name, union, own))
        self.single = len(self.by_measure) == 1  # the common case: a value, not a list

    def measure(self, agg: Agg | None, behaviour: Behaviour, now: int, sessions: Any) -> Any:
        if self.single:  # hot: called twice per event folded or entry expired
            return state.measure(agg, behaviour, self.by_measure[0][0], now, sessions)
        return [state.measure(agg, behaviour, name, now, sessions)
                for name, _, _ in self.by_measure]  # fmt: skip

    def moved(self, before: Any, after: Any, affected: set[str]) -> None:
        if self.single:
            _, union, own = self.by_measure[0]
            self._moved(before, after, union, own, affected)
            return
        for (_, union, own), old, new in zip(self.by_measure, before, after, strict=True):
            self._moved(old, new, union, own, affected)

    @staticmethod
    def _moved(old: Any, new: Any, union: tuple[float, ...],
               readers: list[tuple[str, tuple[float, ...]]],
               affected: set[str]) -> None:  # fmt: skip
        if old == new:
            return
        if old is None or new is None:  # a min, max or time that appears or goes
            affected.update(key for key, limits in readers if limits)
            return
        low, high = (old, new) if old < new else (new, old)
        j = bisect_left(union, low)
        if j == len(union) or union[j] > high:
            return  # the common case: no reader's number lies between the two values
        for key, limits in readers:
            j = bisect_left(limits, low)
            if j < len(limits) and limits[j] <= high:
                affected.add(key)


class Definitions:
    """The compiled, indexed definitions of one workspace."""

    def __init__(self, workspace_id: str, definitions: Iterable[Definition]) -> None:
        self.workspace_id = workspace_id
        self.segments: dict[str, Segment] = {}
        self.scores: dict[str, ScoreModel] = {}
        for definition in definitions:
            if isinstance(definition, Segment):
                self.segments[definition.key] = definition
            else:
                self.scores[definition.key] = definition
        self.order = _dependency_order(self.segments)
        self.versions = {(d.kind, d.key): d.version for d in self.all()}
        self.rank = {key: i for i, key in enumerate(self.order)}
        self.behaviours: dict[str, Behaviour] = {}
        self.by_event: dict[str, list[Behaviour]] = defaultdict(list)
        self.readers: dict[str, list[str]] = defaultdict(list)  # behaviour id → segments
        self.trait_readers: dict[str, list[str]] = defaultdict(list)
        self.all_trait_readers: list[str] = []
        self.consent_readers: list[str] = []
        self.session_readers: list[str] = []
        self.activity_readers: list[str] = []  # of statistics any event changes
        self.activity_by_event: dict[str, list[str]] = defaultdict(list)  # of event counters
        self.clock_readers: list[str] = []
        self.score_readers: dict[str, list[str]] = defaultdict(list)
        # Per score: each reader with the numbers it compares the score with (None: any change
        # may matter), and the union of them (None when some reader needs every change).
        self.score_reader_thresholds: dict[str, list[tuple[str, tuple[float, ...] | None]]] = (
            defaultdict(list))  # fmt: skip
        self.thresholds: dict[str, tuple[float, ...] | None] = {}
        self.dependents: dict[str, list[str]] = defaultdict(list)
        # Per behaviour: the readers any change of it concerns, and those that compare its
        # measures with numbers only (_Watch).
        self.free_readers: dict[str, list[str]] = defaultdict(list)
        limited: dict[str, list[tuple[str, dict[str, set[float]]]]] = defaultdict(list)
        for key in self.order:
            needs = self.segments[key].needs
            for behaviour in needs.behaviours.values():
                if behaviour.id not in self.behaviours:
                    self.behaviours[behaviour.id] = behaviour
                    self.by_event[behaviour.event].append(behaviour)
                self.readers[behaviour.id].append(key)
                compared = needs.measure_limits.get(behaviour.id)
                if compared and behaviour.id not in needs.measure_free:
                    limited[behaviour.id].append((key, compared))
                else:
                    self.free_readers[behaviour.id].append(key)
            for trait in needs.traits:
                if trait == "*":
                    self.all_trait_readers.append(key)
                else:
                    self.trait_readers[trait].append(key)
            for flag, readers in ((needs.consent, self.consent_readers),
                                  (needs.sessions, self.session_readers),
                                  (needs.activity, self.activity_readers),
                                  (needs.clock, self.clock_readers)):  # fmt: skip
                if flag:
                    readers.append(key)
            for event in needs.activity_events:
                self.activity_by_event[event].append(key)
            for score in needs.scores:
                self.score_readers[score].append(key)
                found = needs.score_thresholds.get(score)
                limits = None if score in needs.score_free or not found else tuple(sorted(found))
                self.score_reader_thresholds[score].append((key, limits))
                known = self.thresholds.get(score, ())
                self.thresholds[score] = (None if limits is None or known is None
                                          else tuple(sorted({*known, *limits})))  # fmt: skip
            for other in needs.segments:
                self.dependents[other].append(key)
        self.rules_by_event: dict[str, list[tuple[ScoreModel, ScoreRule]]] = defaultdict(list)
        for model in self.scores.values():
            for rule in model.rules:
                self.rules_by_event[rule.behaviour.event].append((model, rule))
        self.decaying = [m for m in self.scores.values()
                         if m.half_life_ms is not None and m.key in self.score_readers]  # fmt: skip
        self.decaying_keys = {m.key for m in self.decaying}
        self.index = {name: _EventIndex(found) for name, found in self.by_event.items()}
        self.watched = {bid: _Watch(readers) for bid, readers in limited.items()}
        self.flip_segments = {k for k, s in self.segments.items() if s.needs.flip is not None}
        # Per-world statistics and their totals, in the data of every evaluation when some
        # segment reads them (``orders`` only changes with an order: not an activity reader;
        # the counters of events are in the profile's counters, which the data always has).
        self.statistics = bool(self.activity_readers) or "order.completed" in self.activity_by_event
        self.empty = not self.segments and not self.scores

    def all(self) -> list[Definition]:
        return [*self.segments.values(), *self.scores.values()]

    # -- the processor's hooks ---------------------------------------------------------------

    def on_event(self, profile: Profile, name: str | None, properties: dict[str, Any],
                 world: str, session: str, at: int, offset: int, now: int,
                 traits: Iterable[str] = (),
                 consent: bool = False) -> list[Transition]:  # fmt: skip
        """An event applied to the profile at log time ``now``."""
        affected: set[str] = set()
        due = 0
        if name is not None and (name in self.by_event or name in self.rules_by_event):
            due = self.feed(profile, name, properties, world, session, at, offset, now,
                            affected)  # fmt: skip
        for trait in traits:
            affected.update(self.trait_readers.get(trait, ()))
            affected.update(self.all_trait_readers)
        if consent:
            affected.update(self.consent_readers)
        if self.clock_readers:
            affected.update(self.clock_readers)
        if self.activity_readers:
            affected.update(self.activity_readers)
        if self.activity_by_event:
            if name is None:  # a call other than track: its counter is by type
                for readers in self.activity_by_event.values():
                    affected.update(readers)
            else:
                affected.update(self.activity_by_event.get(name, ()))
        transitions = self._evaluate(profile, affected, now) if affected else []
        if due and (not profile.due or due < profile.due):
            # Only ever earlier: a timer that finds nothing to do costs one evaluation, and
            # setting it again would walk all the profile's aggregates on every event.
            profile.due = due
        return transitions

    def feed(self, profile: Profile, name: str, properties: dict[str, Any], world: str,
             session: str, at: int, offset: int, now: int, affected: set[str],
             behaviours: Iterable[Behaviour] | None = None,
             rules: Iterable[tuple[ScoreModel, ScoreRule]] | None = None) -> int:  # fmt: skip
        """Fold an event into the aggregates and scores it feeds (by default all of them),
        adding the segments that read them to ``affected``; the earliest instant at which
        what it changed changes again by itself (0: none)."""
        at = min(at, now)  # an event from the future happened when it arrived
        due = 0
        expiries = self._expiries(profile)
        certain = False
        if behaviours is None:
            index = self.index.get(name)
            if index is None:
                behaviours = ()
            else:
                behaviours, certain = index.candidates(properties)
        for behaviour in behaviours:
            if behaviour.world is not None and behaviour.world != world:
                continue
            if behaviour.window_ms is not None and at <= now - behaviour.window_ms:
                continue  # it arrived after its window had passed over it
            if not (certain and behaviour.exact) and not behaviour.matches(properties):
                continue
            agg = profile.aggregates.get(behaviour.id)
            watch = self.watched.get(behaviour.id)
            if watch is not None:
                before = watch.measure(agg, behaviour, now, profile.sessions)
            if agg is None:
                agg = profile.aggregates[behaviour.id] = Agg()
            oldest = agg.entries[0][0] if agg.entries else None
            state.fold(agg, behaviour, at, offset, behaviour.value_of(properties), session)
            affected.update(self.free_readers.get(behaviour.id, ()))
            if watch is not None:
                watch.moved(before, watch.measure(agg, behaviour, now, profile.sessions),
                            affected)  # fmt: skip
            if behaviour.window_ms is not None:
                expires = agg.entries[0][0] + behaviour.window_ms
                if agg.entries[0][0] != oldest:
                    heapq.heappush(expiries, (expires, behaviour.id))
                due = expires if not due or expires < due else due
        for model, rule in self.rules_by_event.get(name, ()) if rules is None else rules:
            behaviour = rule.behaviour
            if behaviour.world is not None and behaviour.world != world:
                continue
            if not behaviour.matches(properties):
                continue
            before = state.score_value(profile.scores.get(model.key), model, now)
            if state.award(profile.scores, profile.caps, model, rule, at, now):
                after = state.score_value(profile.scores[model.key], model, now)
                self._score_moved(model.key, before, after, affected)
                if model.key in self.decaying_keys:
                    score_due = self._score_due(profile, model, now)
                    due = score_due if not due or (score_due and score_due < due) else due
        return due

    def on_timer(self, profile: Profile, now: int) -> list[Transition]:
        """Time passed: evaluate, at each instant a window or a score changes, what it changes."""
        transitions: list[Transition] = []
        while profile.due and profile.due <= now:
            instant = profile.due
            affected: set[str] = set(self.clock_readers)
            if profile.clocks:
                for key, flip in list(profile.clocks.items()):
                    if flip <= instant:
                        del profile.clocks[key]
                        affected.add(key)
            expiries = self._expiries(profile)
            while expiries and expiries[0][0] <= instant:
                expires, behaviour_id = heapq.heappop(expiries)
                if not self._expires(profile, expires, behaviour_id):
                    continue  # superseded: its aggregate changed since
                agg, behaviour = profile.aggregates[behaviour_id], self.behaviours[behaviour_id]
                watch = self.watched.get(behaviour_id)
                if watch is not None:  # what it was until now, and from now
                    before = watch.measure(agg, behaviour, instant - 1, profile.sessions)
                state.prune(agg, behaviour, instant, profile.sessions)
                affected.update(self.free_readers.get(behaviour_id, ()))
                if watch is not None:
                    after = watch.measure(agg, behaviour, instant, profile.sessions)
                    watch.moved(before, after, affected)
                if agg.entries and behaviour.window_ms is not None:
                    heapq.heappush(expiries, (agg.entries[0][0] + behaviour.window_ms,
                                              behaviour_id))  # fmt: skip
            due = self._next_expiry(profile, expiries)
            for model in self.decaying:
                if model.key not in profile.scores:
                    continue
                # Has the score, decaying, reached its next step that concerns a reader?
                score_due = self._score_due(profile, model, instant - 1)
                if score_due and score_due <= instant:
                    score = profile.scores[model.key]
                    before = state.score_value(score, model, score_due - 1)
                    after = state.score_value(score, model, instant)
                    self._score_moved(model.key, before, after, affected)
                    score_due = self._score_due(profile, model, instant)
                if score_due and (not due or score_due < due):
                    due = score_due
            transitions += self._evaluate(profile, affected, instant)
            if profile.clocks:
                flip = min(profile.clocks.values())
                due = flip if not due or flip < due else due
            profile.due = due
        return transitions

    # -- what changes by itself, and when ------------------------------------------------------

    def _expiries(self, profile: Profile) -> list[tuple[int, str]]:
        """The profile's windowed aggregates by when their oldest entry leaves the window: a
        heap kept beside the profile (not stored; built again when missing). An aggregate
        that changes pushes its new expiry; the old one is skipped when it surfaces."""
        heap: list[tuple[int, str]] | None = profile.__dict__.get("expiries")
        if heap is None:
            behaviours = self.behaviours
            heap = [(agg.entries[0][0] + b.window_ms, behaviour_id)
                    for behaviour_id, agg in profile.aggregates.items()
                    if agg.entries and (b := behaviours.get(behaviour_id)) is not None
                    and b.window_ms is not None]  # fmt: skip
            heapq.heapify(heap)
            profile.__dict__["expiries"] = heap
        return heap

    def _expires(self, profile: Profile, expires: int, behaviour_id: str) -> bool:
        agg = profile.aggregates.get(behaviour_id)
        behaviour = self.behaviours.get(behaviour_id)
        return (agg is not None and bool(agg.entries) and behaviour is not None
                and behaviour.window_ms is not None
                and agg.entries[0][0] + behaviour.window_ms == expires)  # fmt: skip

    def _next_expiry(self, profile: Profile, expiries: list[tuple[int, str]]) -> int:
        while expiries:
            expires, behaviour_id = expiries[0]
            if self._expires(profile, expires, behaviour_id):
                return expires
            heapq.heappop(expiries)
        return 0

    def _score_due(self, profile: Profile, model: ScoreModel, now: int) -> int:
        """When the decaying score next crosses a number its readers compare it with (0:
        never); kept beside the profile until the score changes or that time comes."""
        score = profile.scores.get(model.key)
        cache: dict[str, tuple[Any, int]] = profile.__dict__.setdefault("score_dues", {})
        found = cache.get(model.key)
        if found is not None and found[0] is score and (not found[1] or now < found[1]):
            return found[1]
        due = state.score_due(score, model, now, self.thresholds.get(model.key)) or 0
        cache[model.key] = (score, due)
        return due

    def _score_moved(self, key: str, before: float, after: float, affected: set[str]) -> None:
        """Add the readers of a score whose comparisons may have changed."""
        union = self.thresholds.get(key)  # sorted
        if union is not None:
            low, high = min(before, after), max(before, after)
            i = bisect_left(union, low)
            if i == len(union) or union[i] > high:
                return  # the common case: no reader's number lies between the two values
        for reader, limits in self.score_reader_thresholds.get(key, ()):
            if limits is None or state.crosses(before, after, limits):
                affected.add(reader)

    def on_session_end(self, profile: Profile, now: int) -> list[Transition]:
        if not self.session_readers:
            return []
        expiries = self._expiries(profile)
        for behaviour in self.behaviours.values():
            agg = profile.aggregates.get(behaviour.id)
            if behaviour.session and agg is not None:
                state.prune(agg, behaviour, now, profile.sessions)
                if agg.entries and behaviour.window_ms is not None:
                    heapq.heappush(expiries, (agg.entries[0][0] + behaviour.window_ms,
                                              behaviour.id))  # fmt: skip
        return self._evaluate(profile, set(self.session_readers), now)

    def on_merge(self, survivor: Profile, merged: Profile, now: int) -> list[Transition]:
        """After profile.model.merge_into: fold the merged profile's state into the survivor,
        and evaluate the survivor again; the merged profile leaves its segments."""
        for behaviour_id, agg in merged.aggregates.items():
            mine = survivor.aggregates.get(behaviour_id)
            if mine is None:
                survivor.aggregates[behaviour_id] = agg
            else:
                state.merge(mine, agg)
        for key, score in merged.scores.items():
            model = self.scores.get(key)
            if model is not None:
                survivor.scores[key] = state.merge_score(survivor.scores.get(key), score, model,
                                                         now)  # fmt: skip
        for rule_id, (period, spent) in merged.caps.items():
            mine_period, mine_spent = survivor.caps.get(rule_id, (period, 0.0))
            if period == mine_period:
                survivor.caps[rule_id] = (period, mine_spent + spent)
            elif period > mine_period:
                survivor.caps[rule_id] = (period, spent)
        transitions = [
            Transition(merged.id, self.workspace_id, key, self._version(key), False, now,
                       reason="merged")
            for key in merged.segments
        ]  # fmt: skip
        merged.segments, merged.clocks = {}, {}
        transitions += self._evaluate(survivor, set(self.segments), now)
        self._schedule(survivor, now)
        return transitions

    def award(self, profile: Profile, key: str, points: float, now: int) -> list[Transition]:
        """Points given outside the score model's rules (a journey's action)."""
        model = self.scores.get(key)
        if model is None:
            return []
        before = state.score_value(profile.scores.get(key), model, now)
        profile.scores[key] = state.Score(before + points, now // model.step_ms)
        affected: set[str] = set()
        self._score_moved(key, before, state.score_value(profile.scores[key], model, now),
                          affected)  # fmt: skip
        transitions = self._evaluate(profile, affected, now) if affected else []
        if key in self.decaying_keys:
            due = self._score_due(profile, model, now)
            if due and (not profile.due or due < profile.due):
                profile.due = due
        return transitions

    def evaluate_all(self, profile: Profile, now: int, keys: Iterable[str] | None = None,
                     backfill: bool = False) -> list[Transition]:  # fmt: skip
        """Evaluate the given segments (all by default) and their dependents."""
        transitions = self._evaluate(profile, set(self.segments if keys is None else keys), now,
                                     backfill)  # fmt: skip
        self._schedule(profile, now)
        return transitions

    # -- evaluation ----------------------------------------------------------------------------

    def _version(self, key: str) -> int:
        segment = self.segments.get(key)
        return segment.version if segment is not None else 0

    def data(self, profile: Profile, now: int) -> dict[str, Any]:
        """What a condition's ``var`` reads, with the scope the profile operators use."""
        data: dict[str, Any] = {
            "traits": profile.traits,
            "counters": profile.counters,
            "first_seen": profile.first_seen,
            "last_seen": profile.last_seen,
            "identities": profile.identities,
            "now": now,
            "$": _ProfileScope(self, profile, now),
        }
        if self.statistics:
            worlds: dict[str, dict[str, int]] = {}
            totals = dict.fromkeys(("events", "sessions", "active_ms", "orders"), 0)
            for world_id, world in profile.worlds.items():
                worlds[world_id] = {"events": world.events, "sessions": world.sessions,
                                    "active_ms": world.active_ms, "orders": world.orders,
                                    "first_seen": world.first_seen,
                                    "last_seen": world.last_seen}  # fmt: skip
                for name in totals:
                    totals[name] += worlds[world_id][name]
            data["worlds"] = worlds
            data["world_ids"] = list(worlds)
            data.update(totals)
        return data

    def _evaluate(self, profile: Profile, keys: set[str], now: int,
                  backfill: bool = False) -> list[Transition]:  # fmt: skip
        rank, segments, members = self.rank, self.segments, profile.segments
        heap = [rank[key] for key in keys if key in rank]
        heapq.heapify(heap)
        done: set[int] = set()
        data: dict[str, Any] | None = None
        transitions: list[Transition] = []
        while heap:
            position = heapq.heappop(heap)
            if position in done:
                continue
            done.add(position)
            key = self.order[position]
            if data is None:
                data = self.data(profile, now)
            segment = segments[key]
            inside = truthy(segment.evaluate(data))
            if segment.needs.flip is not None:
                self._set_clock(profile, key, segment.needs.flip(data, now))
            if inside == (key in members):
                continue
            if inside:
                members[key] = now
            else:
                del members[key]
            transitions.append(Transition(profile.id, profile.workspace_id, key,
                                          segment.version, inside, now, backfill))  # fmt: skip
            for dependent in self.dependents.get(key, ()):
                heapq.heappush(heap, rank[dependent])
        return transitions

    @staticmethod
    def _set_clock(profile: Profile, key: str, flip: int | None) -> None:
        if flip is None:
            if key in profile.clocks:
                del profile.clocks[key]
            return
        profile.clocks[key] = flip
        if not profile.due or flip < profile.due:
            profile.due = flip

    def _schedule(self, profile: Profile, now: int) -> None:
        """The profile's next instant at which a window, a score or a clock changes by itself,
        from scratch."""
        profile.__dict__.pop("expiries", None)
        profile.__dict__.pop("score_dues", None)
        due = self._next_expiry(profile, self._expiries(profile)) or None
        for model in self.decaying:
            score_due = self._score_due(profile, model, now)
            if score_due and (due is None or score_due < due):
                due = score_due
        for key in list(profile.clocks):
            if key not in self.flip_segments:
                del profile.clocks[key]  # of a segment no longer active, or changed
        if profile.clocks:
            flip = min(profile.clocks.values())
            due = flip if due is None or flip < due else due
        profile.due = due or 0


def _dependency_order(segments: dict[str, Segment]) -> list[str]:
    """Segments after the segments they read; a cycle is a DefinitionError."""
    order: list[str] = []
    marks: dict[str, int] = {}

    def visit(key: str, trail: Sequence[str]) -> None:
        mark = marks.get(key)
        if mark == 2:
            return
        if mark == 1:
            cycle = " → ".join([*trail[trail.index(key) :], key])
            raise DefinitionError(f"segments.{key}", f"segments read each other: {cycle}")
        marks[key] = 1
        for other in sorted(segments[key].needs.segments):
            if other in segments:
                visit(other, [*trail, key])
        marks[key] = 2
        order.append(key)

    for key in sorted(segments):
        visit(key, [])
    return order
