"""One workspace's live journeys, run per profile by the processor (docs/JOURNEYS.md).

A run's state lives on the profile (``Profile.journeys``), so it is written in the same commit
as everything else the event changed, by the single writer of the profile's partition. The
hooks take what happened — an event, segment transitions, time passing — advance the runs it
concerns as far as they go without waiting, and collect the effects in an :class:`Effects`:
deliveries (webhooks, in-world actions) and events for the log, both committed with the
state, and counters for the stats. Nothing here reads a clock or sends anything: a decision
is a function of the log, so a crash between two commits repeats none, and replay makes the
same ones (with the same ids).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from datetime import time as dt_time
from typing import TYPE_CHECKING, Any, Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec

from worldflow.journeys import actions
from worldflow.journeys.definition import HIDDEN, Journey, Messaging, Step, Trigger, Until
from worldflow.log import LogRecord
from worldflow.profiles import model
from worldflow.profiles.model import Profile, Run
from worldflow.segments.incremental import Transition

if TYPE_CHECKING:
    from worldflow.decide.definition import Offer

API_ENTRY: Final = "journey.entry_requested"  # the event of an entry by API call
MAX_STEPS_AT_ONCE: Final = 100  # a run that loops without waiting stops here (and exits)
DAY_MS: Final = 86_400_000
WEEK_MS: Final = 7 * DAY_MS
_encode = msgspec.json.Encoder().encode

Stat = tuple[str, str, int, str]  # (workspace, journey, version, metric)


@dataclass(slots=True)
class Effects:
    """What runs decided in one micro-batch; committed with the profiles."""

    deliveries: list[dict[str, Any]] = field(default_factory=list)  # rows of ``deliveries``
    events: list[LogRecord] = field(default_factory=list)  # emitted, for the log
    stats: dict[Stat, int] = field(default_factory=dict)
    traits: dict[str, set[str]] = field(default_factory=dict)  # profile id → traits changed
    awards: list[tuple[str, str, float, int]] = field(default_factory=list)  # id, score, points
    # (workspace, placement, arm, offer) → [served, impressions, interactions] (decide/learn.py)
    decisions: dict[tuple[str, str, str, str], list[int]] = field(default_factory=dict)

    def count(self, workspace_id: str, journey: Journey, metric: str, n: int = 1,
              version: int | None = None) -> None:  # fmt: skip
        key = (workspace_id, journey.key, journey.version if version is None else version,
               metric)  # fmt: skip
        self.stats[key] = self.stats.get(key, 0) + n


class Journeys:
    """The compiled journeys of one workspace, indexed by what starts and ends their runs."""

    def __init__(self, workspace_id: str, journeys: Iterable[Journey],
                 messaging: Messaging | None = None,
                 offers: Mapping[str, Offer] | None = None) -> None:  # fmt: skip
        self.workspace_id = workspace_id
        self.journeys = {j.key: j for j in journeys}
        self.messaging = messaging  # the workspace's caps and quiet hours
        self.offers = offers or {}  # what in-world actions may name (``offer: KEY``)
        self.by_event: dict[str, list[Journey]] = {}
        self.by_segment: dict[tuple[str, bool], list[Journey]] = {}
        for journey in self.journeys.values():
            if journey.entry.api:  # POST /v1/journeys/{key}/entries writes this event
                self.by_event.setdefault(API_ENTRY, []).append(journey)
            for trigger in (journey.entry, journey.goal, journey.exit):
                if trigger is None or (trigger is journey.entry and journey.schedule):
                    continue  # (a scheduled entry reads its segment at each occurrence)
                if trigger.event is not None:
                    self.by_event.setdefault(trigger.event, []).append(journey)
                for key, entered in ((trigger.segment, True), (trigger.segment_exited, False)):
                    if key is not None:
                        self.by_segment.setdefault((key, entered), []).append(journey)
            for step in journey.steps:
                if step.event is not None and step.event.event is not None:
                    self.by_event.setdefault(step.event.event, []).append(journey)
        self.empty = not self.journeys
        self.scheduled = [j for j in self.journeys.values()
                          if j.schedule is not None and j.status == "active"]  # fmt: skip

    # -- hooks ---------------------------------------------------------------------------

    def on_event(self, profile: Profile, name: str | None, properties: dict[str, Any],
                 now: int, effects: Effects) -> None:  # fmt: skip
        if name is None:
            return
        for journey in _unique(self.by_event.get(name, ())):
            run = profile.journeys.get(journey.key)
            running = run is not None and run.step >= 0
            if running and run is not None:
                if run.version != journey.version:
                    self._migrate(journey, run, effects)
                    if run.step < 0:
                        continue
                if _met(journey.goal, name, properties):
                    self._end(profile, journey, run, "converted", now, effects)
                    continue
                if _met(journey.exit, name, properties):
                    self._end(profile, journey, run, "exited", now, effects)
                    continue
                step = self._step(journey, run)
                # An event at the very instant the run reached the step (the one that made
                # it enter, say) is not what it waits for.
                if (
                    step is not None
                    and step.kind == "wait_for"
                    and step.event is not None
                    and run.since < now
                    and step.event.matches_event(name, properties)
                ):
                    effects.count(self.workspace_id, journey, f"event:{step.id}")
                    self._move(profile, journey, run, step.next, now, effects)
                    self._advance(profile, journey, run, now, effects)
            elif journey.entry.matches_event(name, properties) or (
                    name == API_ENTRY and journey.entry.api
                    and properties.get("journey") == journey.key):  # fmt: skip
                self._enter(profile, journey, now, effects)

    def on_transitions(self, profile: Profile, transitions: Iterable[Transition],
                       effects: Effects) -> None:  # fmt: skip
        """Segment memberships that changed (backfills excepted: a journey reacts to what
        happens after it started)."""
        for t in transitions:
            if t.backfill:
                continue
            for journey in self.by_segment.get((t.key, t.entered), ()):
                run = profile.journeys.get(journey.key)
                if run is not None and run.version != journey.version:
                    self._migrate(journey, run, effects)
                if run is not None and run.step >= 0:
                    if _crossed(journey.goal, t):
                        self._end(profile, journey, run, "converted", t.at, effects)
                    elif _crossed(journey.exit, t):
                        self._end(profile, journey, run, "exited", t.at, effects)
                elif journey.schedule is None and _crossed(journey.entry, t):
                    self._enter(profile, journey, t.at, effects)

    def on_timer(self, profile: Profile, now: int, effects: Effects) -> None:
        """Waits that ended by ``now``."""
        for key, run in list(profile.journeys.items()):
            journey = self.journeys.get(key)
            if run.step < 0 or not run.wake or run.wake > now:
                continue
            if journey is None:  # no longer live: the run stops where it is
                run.wake = 0
                continue
            if run.version != journey.version:
                self._migrate(journey, run, effects)
            step = self._step(journey, run)
            at = run.wake
            run.wake = 0
            if step is not None and step.kind == "wait_for":
                effects.count(self.workspace_id, journey, f"timeout:{step.id}")
                self._move(profile, journey, run, step.on_timeout, at, effects)
            elif step is not None and step.kind in ("wait", "wait_until"):
                self._move(profile, journey, run, step.next, at, effects)
            # (an action held back by quiet hours is taken now, by _advance)
            self._advance(profile, journey, run, at, effects)
        self.schedule(profile)

    def on_schedule(self, profile: Profile, journey: Journey, at: int, effects: Effects) -> None:
        """An occurrence of a scheduled entry, for a member of its segment (once: a run
        entered at this very occurrence is not entered again, after a restart say)."""
        run = profile.journeys.get(journey.key)
        if run is not None and run.entered == at:
            return
        if journey.entry.segment in profile.segments:
            self._enter(profile, journey, at, effects)
            self.schedule(profile)

    def on_merge(self, survivor: Profile, merged: Profile, now: int, effects: Effects) -> None:
        """Two people found to be one: per journey, a run in progress beats an ended one (of
        two in progress, the survivor's); the other ends as "merged"."""
        for key, run in merged.journeys.items():
            mine = survivor.journeys.get(key)
            keep_theirs = mine is None or (mine.step < 0 <= run.step)
            loser = mine if keep_theirs else run
            if keep_theirs:
                survivor.journeys[key] = run
            journey = self.journeys.get(key)
            if loser is not None and loser.step >= 0 and journey is not None:
                self._end(survivor, journey, loser, "merged", now, effects)
        merged.journeys = {}
        self.schedule(survivor)

    def schedule(self, profile: Profile) -> None:
        profile.journey_due = min((r.wake for r in profile.journeys.values() if r.wake),
                                  default=0)  # fmt: skip

    # -- runs ----------------------------------------------------------------------------

    def _step(self, journey: Journey, run: Run) -> Step | None:
        """The run's step in the journey's current version (a new version keeps runs at the
        step with the same id; one whose step is gone ends)."""
        if run.version != journey.version:
            return None
        return journey.steps[run.step] if 0 <= run.step < len(journey.steps) else None

    def _enter(self, profile: Profile, journey: Journey, now: int, effects: Effects) -> None:
        if journey.status != "active":
            return
        if journey.entry_segment is not None and journey.entry_segment not in profile.segments:
            return
        run = profile.journeys.get(journey.key)
        if run is not None:
            if run.step >= 0 or journey.reentry == "never":
                return
            if journey.reentry == "after" and now - run.ended < (journey.reentry_after_ms or 0):
                return
        count = run.count + 1 if run is not None else 1
        run = profile.journeys[journey.key] = Run(journey.version, 0, journey.steps[0].id, now,
                                                  entered=now, count=count)  # fmt: skip
        effects.count(self.workspace_id, journey, "entered")
        effects.count(self.workspace_id, journey, f"at:{journey.steps[0].id}")
        effects.count(self.workspace_id, journey, f"reached:{journey.steps[0].id}")
        self._advance(profile, journey, run, now, effects)

    def _move(self, profile: Profile, journey: Journey, run: Run, target: int | None,
              now: int, effects: Effects) -> None:  # fmt: skip
        effects.count(self.workspace_id, journey, f"at:{journey.steps[run.step].id}", -1)
        if target is None:
            run.step, run.step_id = len(journey.steps), ""  # past the end: completes
            return
        run.step, run.since, run.step_id = target, now, journey.steps[target].id
        effects.count(self.workspace_id, journey, f"at:{journey.steps[target].id}")
        effects.count(self.workspace_id, journey, f"reached:{journey.steps[target].id}")

    def _end(self, profile: Profile, journey: Journey, run: Run, outcome: str, now: int,
             effects: Effects) -> None:  # fmt: skip
        if run.step >= 0 and run.step_id:  # at a step (not past the last one)
            effects.count(self.workspace_id, journey, f"at:{run.step_id}", -1, run.version)
        run.step, run.wake, run.ended, run.outcome = -1, 0, now, outcome
        effects.count(self.workspace_id, journey, outcome)

    def _advance(self, profile: Profile, journey: Journey, run: Run, now: int,
                 effects: Effects) -> None:  # fmt: skip
        """Execute steps from the run's current one until it waits or ends."""
        if run.version != journey.version:
            self._migrate(journey, run, effects)
        for _ in range(MAX_STEPS_AT_ONCE):
            if run.step < 0:
                return
            if run.step >= len(journey.steps):
                self._end(profile, journey, run, "completed", now, effects)
                return
            if journey.status == "archived":
                self._end(profile, journey, run, "archived", now, effects)
                return
            step = journey.steps[run.step]
            if step.kind == "wait":
                if run.wake:
                    return  # already waiting
                run.wake = run.since + (step.wait_ms or 0)
                if run.wake > now:
                    return
                run.wake = 0
                self._move(profile, journey, run, step.next, now, effects)
            elif step.kind == "wait_until":
                if run.wake:
                    return  # already waiting
                until = _opening(profile, step.until, now) if step.until is not None else now
                if until > now:
                    run.wake = until
                    return
                self._move(profile, journey, run, step.next, now, effects)
            elif step.kind == "wait_for":
                if not run.wake:
                    run.wake = run.since + (step.wait_ms or 0)
                return
            elif step.kind == "branch":
                target, arm = step.next, "else"
                for hidden, goto in step.branches:
                    if hidden in profile.segments:  # the condition's hidden segment
                        target, arm = goto, _name(journey, goto)
                        break
                effects.count(self.workspace_id, journey, f"branch:{step.id}:{arm}")
                self._move(profile, journey, run, target, now, effects)
            elif step.kind == "split":
                draw = _uniform(profile.id, journey.key, run.count, step.id) * 100
                if draw < step.holdout:  # the control group: counted, and sent nothing
                    effects.count(self.workspace_id, journey, f"split:{step.id}:holdout")
                    self._end(profile, journey, run, "holdout", now, effects)
                    return
                share = (draw - step.holdout) / (100 - step.holdout)
                pick = next((i for i, (upto, _) in enumerate(step.weights) if share < upto),
                            len(step.weights) - 1)  # fmt: skip
                effects.count(self.workspace_id, journey, f"split:{step.id}:{pick + 1}")
                self._move(profile, journey, run, step.weights[pick][1], now, effects)
            elif step.kind == "action":
                until = self._quiet_until(profile, journey, step, now)
                if until:  # quiet hours: the run waits at the action until they end
                    if not run.wake:
                        run.wake = until
                        effects.count(self.workspace_id, journey, f"quiet:{step.id}")
                    return
                changes = self._act(profile, journey, run, step, now, effects)
                self._move(profile, journey, run, step.next, now, effects)
                if changes:  # traits or points: the segments move first, then the run goes on
                    run.wake = now
                    return
            elif step.kind == "goto":
                if step.journey is not None:
                    self._end(profile, journey, run, "moved", now, effects)
                    other = self.journeys.get(step.journey)
                    if other is not None:
                        self._enter(profile, other, now, effects)
                    return
                self._move(profile, journey, run, step.next, now, effects)
            else:  # exit
                self._end(profile, journey, run, step.reason, now, effects)
                return
        self._end(profile, journey, run, "looped", now, effects)

    def _migrate(self, journey: Journey, run: Run, effects: Effects) -> None:
        """A run of an earlier version goes on in this one at the step with the same id (its
        wait, if any, unchanged); one whose step is gone ends, as "step_removed"."""
        if run.step < 0 or not run.step_id:  # ended, or past its last step
            run.version, run.step = journey.version, run.step if run.step < 0 else len(
                journey.steps)  # fmt: skip
            return
        effects.count(self.workspace_id, journey, f"at:{run.step_id}", -1, run.version)
        for step in journey.steps:
            if step.id == run.step_id:
                run.version, run.step = journey.version, step.index
                effects.count(self.workspace_id, journey, f"at:{run.step_id}")
                return
        run.version, run.step, run.wake = journey.version, -1, 0
        run.ended, run.outcome = run.since, "step_removed"
        effects.count(self.workspace_id, journey, "step_removed")

    # -- actions -------------------------------------------------------------------------

    def _capped(self, profile: Profile, journey: Journey, channel: str, now: int) -> str:
        """``capped`` when this journey already took its cap of ``channel`` actions for the
        person in the last 24 hours or 7 days, ``capped_workspace`` when all the workspace's
        journeys did (transactional ones neither held nor counted), else ``""``."""
        sends = profile.sends
        while sends and sends[0][0] <= now - WEEK_MS:
            del sends[0]  # older sends are forgotten
        mine = journey.caps.get(channel)
        own = [at for at, c, key in sends if c == channel and key == journey.key]
        if mine is not None and _over(own, mine, now):
            return "capped"
        shared = self.messaging.caps.get(channel) if self.messaging is not None else None
        if shared is None or journey.transactional:
            return ""
        counted = [at for at, c, key in sends if c == channel and not (
            (other := self.journeys.get(key)) is not None and other.transactional)]  # fmt: skip
        return "capped_workspace" if _over(counted, shared, now) else ""

    def _quiet_until(self, profile: Profile, journey: Journey, step: Step, now: int) -> int:
        """When quiet hours end — the journey's, else the workspace's unless the journey is
        transactional — if ``now`` is in them and they hold the action back (0 otherwise)."""
        kind = actions.kinds().get(step.action_kind or "")
        if kind is None or not kind.quiet:
            return 0
        quiet = journey.quiet
        if quiet is None and self.messaging is not None and not journey.transactional:
            quiet = self.messaging.quiet
        return _quiet(quiet, profile, now) if quiet is not None else 0

    def _act(self, profile: Profile, journey: Journey, run: Run, step: Step, now: int,
             effects: Effects) -> bool:  # fmt: skip
        """Take the step's action; whether it changed the profile's traits or scores."""
        kind = actions.kinds().get(step.action_kind or "")
        if kind is None:  # its plugin is gone since the journey was applied
            effects.count(self.workspace_id, journey, f"unknown_action:{step.action_kind}")
            return False
        ctx = actions.Context(self.workspace_id, profile, journey, run, step, now, effects,
                              self.offers)  # fmt: skip
        prepared = kind.prepare(step.action or {}, ctx)
        if prepared is None:
            return False  # declined (no consent, no address, a template that fails…)
        channel = kind.channel
        if channel is not None:
            capped = self._capped(profile, journey, channel, now)
            if capped:
                effects.count(self.workspace_id, journey, f"{capped}:{channel}")
                return False  # not sent; the run goes on
            profile.sends.append((now, channel, journey.key))
            if len(profile.sends) > model.MAX_SENDS:
                del profile.sends[0]
        run.actions += 1
        kind.take(prepared, ctx)
        return ctx.changed


def _over(sends: list[int], limits: tuple[int | None, int | None], now: int) -> bool:
    """Whether the sends (times) already reach a (per day, per week) cap."""
    per_day, per_week = limits
    if per_week is not None and len(sends) >= per_week:
        return True
    return per_day is not None and sum(at > now - DAY_MS for at in sends) >= per_day


def _quiet(quiet: tuple[int, int, ZoneInfo | None], profile: Profile, now: int) -> int:
    """When quiet hours end, if ``now`` is in them (0 otherwise)."""
    start, end, zone = quiet
    if zone is None:
        zone = _zone(profile.traits.get("timezone"))
    local = datetime.fromtimestamp(now / 1000, zone)
    minute = local.hour * 60 + local.minute
    inside = start <= minute < end if start < end else (minute >= start or minute < end)
    if not inside:
        return 0
    day = local.date() if minute < end else local.date() + timedelta(days=1)
    ends = datetime.combine(day, dt_time(end // 60, end % 60), zone)
    return int(ends.timestamp() * 1000)


def next_occurrence(schedule: Until, after: int) -> int | None:
    """The first occurrence of a schedule strictly after ``after`` (None: no more)."""
    if schedule.at is not None:
        return schedule.at if schedule.at > after else None
    zone = schedule.zone or ZoneInfo("UTC")
    today = datetime.fromtimestamp(after / 1000, zone).date()
    time_of_day = dt_time(schedule.start // 60, schedule.start % 60)
    for offset in range(9):
        day = today + timedelta(days=offset)
        if day.weekday() in schedule.days:
            at = int(datetime.combine(day, time_of_day, zone).timestamp() * 1000)
            if at > after:
                return at
    return None


def _opening(profile: Profile, until: Until, now: int) -> int:
    """The moment a wait_until ends: its date, or ``now`` inside its window, or the window's
    next opening (in its time zone, else the person's, else UTC)."""
    if until.at is not None:
        return until.at
    zone = until.zone or _zone(profile.traits.get("timezone"))
    today = datetime.fromtimestamp(now / 1000, zone).date()
    opens = dt_time(until.start // 60, until.start % 60)
    closes = dt_time(until.end // 60, until.end % 60)
    for offset in range(-1, 8):  # from yesterday: a window may run past midnight
        day = today + timedelta(days=offset)
        if day.weekday() not in until.days:
            continue
        start = int(datetime.combine(day, opens, zone).timestamp() * 1000)
        last = day if until.end > until.start else day + timedelta(days=1)
        end = int(datetime.combine(last, closes, zone).timestamp() * 1000)
        if start <= now < end:
            return now
        if now < start:
            return start
    return now


def _zone(name: Any) -> ZoneInfo:
    if isinstance(name, str) and 0 < len(name) <= 64:
        try:
            return ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            pass
    return ZoneInfo("UTC")


def _unique(journeys: Iterable[Journey]) -> list[Journey]:
    return list({j.key: j for j in journeys}.values())


def _met(trigger: Trigger | None, name: str, properties: dict[str, Any]) -> bool:
    return trigger is not None and trigger.matches_event(name, properties)


def _crossed(trigger: Trigger | None, t: Transition) -> bool:
    if trigger is None:
        return False
    return (trigger.segment == t.key and t.entered) or (
        trigger.segment_exited == t.key and not t.entered
    )


def _name(journey: Journey, target: int | None) -> str:
    return "exit" if target is None else journey.steps[target].id


def _uniform(*parts: Any) -> float:
    """A number in [0, 1) that depends only on ``parts``: the same draw in replay."""
    digest = hashlib.blake2b("\0".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def is_hidden(key: str) -> bool:
    return key.startswith(HIDDEN)
