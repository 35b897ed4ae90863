"""The processor: the event log in, profiles out.

One processor owns one or more partitions of the log and is the only writer of the profiles
created from them. It works in micro-batches:

1. read the next entries of its partitions after its committed offset;
2. prefetch, in two queries, every identity those events name and every profile they resolve
   to that is not already in memory;
3. apply each event in log order: fire the durable timers that are due by the entry's receipt
   time (a session nobody ended), resolve the event's identities to one profile (creating or
   merging profiles), pass it through the privacy gate, and update the profile;
4. commit the changed profiles, identities, merges, counters and the new offset in one
   transaction.

A crash between two commits loses only uncommitted work, which the next start reads again
from the committed offset: no event is applied twice or lost. Everything applied is a pure
function of the log (the log's receipt times are the clock), so ``worldflow replay`` rebuilds
the same profiles; when the log is idle the processor appends clock ticks to it, so timers
fire on time and replay sees those ticks too.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import islice
from typing import Any, Protocol

import msgspec

from worldflow.decide import learn
from worldflow.decide.definition import (
    OFFER,
    PLACEMENT,
    Offer,
    Placement,
    compile_offer,
    compile_placement,
)
from worldflow.events.catalogue import Catalogue, EventSpec
from worldflow.events.model import LoggedEvent, decode_logged
from worldflow.identity.types import Identity, IdentityType, identities_of, identity_types
from worldflow.journeys.definition import (
    MESSAGING,
    Journey,
    Messaging,
    compile_journey,
    compile_messaging,
)
from worldflow.journeys.engine import Effects, Journeys, is_hidden, next_occurrence
from worldflow.log import LogEntry, LogRecord
from worldflow.privacy import gate
from worldflow.profiles import model
from worldflow.profiles.model import Profile, Session
from worldflow.segments import backfill
from worldflow.segments.definition import (
    Definition,
    DefinitionError,
    Segment,
    compile_definition,
)
from worldflow.segments.incremental import SYSTEM_SOURCE, Definitions, Transition, membership_record

log = logging.getLogger(__name__)

_encode = msgspec.json.Encoder().encode
TICK_WORKSPACE = "_system"  # log entries of this workspace are clock ticks, not events
SETTINGS_TTL_S = 10.0  # a workspace's settings are read again after this

IdentityKey = tuple[str, str, str]  # (workspace, type, value)


@dataclass(slots=True)
class PartitionState:
    offset: int = 0
    stream_time_ms: int = 0
    counters: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True)
class Merge:
    workspace_id: str
    survivor_id: str
    merged_id: str
    offset: int
    at_ms: int
    identity: str


@dataclass(slots=True)
class Commit:
    """Everything one micro-batch changed, written in one transaction."""

    profiles: list[Profile]
    tombstones: list[tuple[Profile, str]]  # (merged profile, survivor id)
    identities: dict[IdentityKey, str]
    merges: list[Merge]
    partitions: dict[int, PartitionState]
    partition_of_profile: dict[str, int]
    transitions: list[Transition] = field(default_factory=list)
    outbox: list[LogRecord] = field(default_factory=list)  # membership events for the log
    activated: list[tuple[str, str, str, int]] = field(default_factory=list)  # ws, kind, key, v
    effects: Effects = field(default_factory=Effects)  # journeys' deliveries and stats
    deliver: bool = True  # write the deliveries (not in replay: they were, and were sent)


class ProfileStore(Protocol):
    """What the processor needs from the store (adapter: store/profiles.py)."""

    def load_partitions(self, partitions: Sequence[int]) -> dict[int, PartitionState]: ...

    def lookup_identities(self, keys: Sequence[IdentityKey]) -> dict[IdentityKey, str]: ...

    def load_profiles(self, ids: Sequence[str]) -> dict[str, Profile | str]:
        """Each found id → its profile, or the id of the survivor it was merged into."""
        ...

    def timers(self, partitions: Sequence[int]) -> list[tuple[int, str]]: ...

    def workspace_ids(self) -> list[str]: ...

    def segment_member_ids(self, workspace_id: str, key: str, partitions: Sequence[int],
                           after: str, limit: int) -> list[str]: ...  # fmt: skip

    def workspace_settings(self, workspace_id: str) -> dict[str, Any]: ...

    def active_definitions(self, workspace_id: str) -> list[tuple[int, dict[str, Any]]]:
        """The (version, document) of each definition the processor activated."""
        ...

    def definition(self, workspace_id: str, kind: str, key: str,
                   version: int) -> dict[str, Any] | None: ...  # fmt: skip

    def profile_ids(self, workspace_id: str, partitions: Sequence[int], after: str,
                    limit: int) -> list[str]: ...  # fmt: skip

    def count_profiles(self, workspace_id: str, partitions: Sequence[int]) -> int: ...

    def definition_progress(self, workspace_id: str, kind: str, key: str, version: int,
                            state: str, done: int, total: int) -> None: ...  # fmt: skip

    def commit(self, commit: Commit) -> None: ...


ReadLog = Callable[[int, int], list[LogEntry]]  # (after offset, limit) → entries


def _ms(value: datetime) -> int:
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return int(value.timestamp() * 1000)


def profile_id_for(workspace_id: str, message_id: str) -> str:
    """Deterministic, so that replay creates the same ids."""
    digest = hashlib.blake2b(f"{workspace_id}\0{message_id}".encode(), digest_size=10)
    return "p_" + digest.hexdigest()


class Processor:
    def __init__(
        self,
        store: ProfileStore,
        read_log: ReadLog,
        partitions: Sequence[int] = (0,),
        *,
        catalogue: Catalogue | None = None,
        batch_size: int = 2000,
        max_profiles: int = 20_000,
        max_identities: int = 100_000,
        emit: bool = True,
    ) -> None:
        self.store = store
        self.read_log = read_log
        self.partitions = tuple(partitions)
        self.catalogue = catalogue or Catalogue.default()
        self.batch_size = batch_size
        self.max_profiles = max_profiles
        self.max_identities = max_identities
        self.emit = emit  # membership events go to the log (not in replay: they are there)
        self._definitions: dict[str, Definitions] = {}
        self._offers: dict[str, dict[str, Offer]] = {}  # their conditions: hidden segments
        self._journeys: dict[str, Journeys] = {}
        # Hot state, in least-recently-used order (dicts keep insertion order).
        self.profiles: dict[str, Profile] = {}
        self.identities: dict[IdentityKey, str] = {}
        self.state: dict[int, PartitionState] = {}
        self._timers: list[tuple[int, str]] = []  # heap of (due ms, profile id)
        self._scheduled: dict[str, int] = {}  # earliest due pushed per profile
        # The next occurrence of each scheduled journey entry, per partition.
        self._occurrences: dict[tuple[str, str, int], int] = {}
        self._next_occurrence: int | None = None
        self._settings: dict[str, tuple[float, dict[str, IdentityType], bool]] = {}
        self._now = time.monotonic()
        self._begin_batch()

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        self.state = self.store.load_partitions(self.partitions)
        for due, profile_id in self.store.timers(self.partitions):
            self._schedule(profile_id, due)
        for workspace_id in self.store.workspace_ids():  # scheduled entries need no event
            self._definitions_for(workspace_id)

    @property
    def offset(self) -> int:
        """Every entry up to here is applied and committed."""
        return min(s.offset for s in self.state.values())

    def next_timer_ms(self) -> int | None:
        due = [d for d in (self._timers[0][0] if self._timers else None,
                           self._next_occurrence) if d is not None]  # fmt: skip
        return min(due, default=None)

    def counters(self) -> dict[str, int]:
        total: dict[str, int] = {}
        for state in self.state.values():
            for name, count in state.counters.items():
                total[name] = total.get(name, 0) + count
        return total

    def step(self) -> int:
        """Apply and commit one micro-batch; return how many log entries it read."""
        entries = self.read_log(self.offset, self.batch_size)
        if not entries:
            return 0
        self._now = time.monotonic()  # settings are read again when older than their TTL
        decoded: list[tuple[LogEntry, LoggedEvent | None, list[Identity]]] = []
        for entry in entries:
            state = self.state.get(entry.partition)
            if state is None or entry.offset <= state.offset:
                continue  # another processor's partition, or already applied
            if entry.workspace_id == TICK_WORKSPACE:
                decoded.append((entry, None, []))
                continue
            try:
                event = decode_logged(entry.body)
                decoded.append((entry, event, identities_of(event)))
            except (msgspec.ValidationError, msgspec.DecodeError):
                log.exception("log entry %d is not a canonical event; skipped", entry.offset)
                self._count(entry.partition, "unreadable")
                decoded.append((entry, None, []))
        self._prefetch([(event, ids) for _, event, ids in decoded if event is not None])
        self._prefetch_timers(max(entry.received_at_ms for entry in entries))
        timers = self._timers
        activations = _definition_runs(decoded)
        for entry, maybe_event, ids in decoded:
            state = self.state[entry.partition]
            state.stream_time_ms = max(state.stream_time_ms, entry.received_at_ms)
            if self._next_occurrence is not None and (
                    self._next_occurrence <= state.stream_time_ms):  # fmt: skip
                self._fire_occurrences(entry.partition, state.stream_time_ms, entry.offset)
            if timers and timers[0][0] <= state.stream_time_ms:
                self._fire_timers(entry.partition, state.stream_time_ms, entry.offset)
            if maybe_event is not None:
                self._apply(entry, maybe_event, ids)
            elif entry.offset in activations:
                self._activate(activations[entry.offset])
            state.offset = entry.offset
        for state in self.state.values():  # an owned partition with no entries here moves on
            state.offset = max(state.offset, entries[-1].offset)
        self._commit()
        return len(entries)

    # -- batch bookkeeping -----------------------------------------------------------------

    def _begin_batch(self) -> None:
        self._dirty: dict[str, Profile] = {}
        self._dirty_identities: dict[IdentityKey, str] = {}
        self._tombstones: list[tuple[Profile, str]] = []
        self._merges: list[Merge] = []
        self._new_partition: dict[str, int] = {}
        self._transitions: list[Transition] = []
        self._outbox: list[LogRecord] = []
        self._activated: list[tuple[str, str, str, int]] = []
        self._effects = Effects()

    def _commit(self) -> None:
        self.store.commit(
            Commit(
                profiles=list(self._dirty.values()),
                tombstones=self._tombstones,
                identities=self._dirty_identities,
                merges=self._merges,
                partitions=self.state,
                partition_of_profile=self._new_partition,
                transitions=self._transitions,
                outbox=self._outbox + self._effects.events if self.emit else self._outbox,
                activated=self._activated,
                effects=self._effects,
                deliver=self.emit,
            )
        )
        self._begin_batch()
        self._evict()

    def _record(self, transitions: list[Transition], partition: int, depth: int = 0) -> None:
        """Membership changes: committed with the profiles, sent to the log as events, and
        to the journeys (those of journeys' hidden segments only to the journeys)."""
        if not transitions:
            return
        journeys = self._journeys_for(transitions[0].workspace_id)
        shown = transitions if journeys.empty else [t for t in transitions if not is_hidden(t.key)]
        self._transitions += shown
        self._count(partition, "segment_transitions", len(shown))
        if self.emit:
            for t in shown:
                profile = self.profiles.get(t.profile_id)
                ids = profile.identities if profile is not None else {}
                self._outbox.append(membership_record(t, ids, partition))
        if journeys.empty:
            return
        by_profile: dict[str, list[Transition]] = {}
        for t in transitions:
            by_profile.setdefault(t.profile_id, []).append(t)
        for profile_id, found in by_profile.items():
            profile = self.profiles.get(profile_id)
            if profile is not None:
                journeys.on_transitions(profile, found, self._effects)
                self._after_journeys(profile, partition, found[-1].at, depth)

    def _after_journeys(self, profile: Profile, partition: int, now: int, depth: int) -> None:
        """What runs changed on the profile: traits and scores re-evaluate the segments that
        read them (whose transitions reach the journeys again, a few levels deep at most)."""
        effects = self._effects
        traits = effects.traits.pop(profile.id, None)
        awards = [a for a in effects.awards if a[0] == profile.id]
        if awards:
            effects.awards = [a for a in effects.awards if a[0] != profile.id]
        journeys = self._journeys_for(profile.workspace_id)
        journeys.schedule(profile)
        self._touch(profile)
        if not traits and not awards:
            return
        if depth >= 4:
            self._count(partition, "journey_cascades_cut")
            return
        definitions = self._definitions_for(profile.workspace_id)
        transitions = []
        for _, score, points, at in awards:
            transitions += definitions.award(profile, score, points, at)
        if traits:
            transitions += definitions.on_event(profile, None, {}, "", "", now, 0, now, traits)
        if transitions:
            self._record(transitions, partition, depth + 1)
        if 0 < profile.journey_due <= now:  # runs that changed them go on, seeing the segments
            journeys.on_timer(profile, now, effects)
            self._after_journeys(profile, partition, now, depth + 1)

    def _definitions_for(self, workspace_id: str) -> Definitions:
        found = self._definitions.get(workspace_id)
        if found is None:
            compiled: list[Definition] = []
            journeys: list[Journey] = []
            offers: dict[str, Offer] = {}
            messaging = None
            for version, document in self.store.active_definitions(workspace_id):
                try:
                    one = _compile(document, version)
                except DefinitionError:
                    log.exception("definition %s of %s no longer compiles; left out",
                                  document.get("key"), workspace_id)  # fmt: skip
                    continue
                if isinstance(one, Journey):
                    journeys.append(one)
                elif isinstance(one, Messaging):
                    messaging = one
                elif isinstance(one, Offer):
                    offers[one.key] = one
                elif not isinstance(one, Placement):  # (placements are the decide API's)
                    compiled.append(one)
            self._journeys[workspace_id] = _live(workspace_id, journeys, messaging, offers)
            self._offers[workspace_id] = offers
            self._plan(workspace_id, None)
            hidden = _hidden(journeys, offers)
            found = self._definitions[workspace_id] = Definitions(workspace_id,
                                                                  [*compiled, *hidden])  # fmt: skip
        return found

    def _journeys_for(self, workspace_id: str) -> Journeys:
        found = self._journeys.get(workspace_id)
        if found is None:
            self._definitions_for(workspace_id)
            found = self._journeys[workspace_id]
        return found

    def _evict(self) -> None:
        """Forget the least recently used profiles and identities beyond the bounds: they are
        committed, and are read back from the store when they are next needed."""
        _evict(self.profiles, self.max_profiles)
        _evict(self.identities, self.max_identities)

    def _count(self, partition: int, name: str, n: int = 1) -> None:
        counters = self.state[partition].counters
        counters[name] = counters.get(name, 0) + n

    def _settings_for(self, workspace_id: str) -> tuple[dict[str, IdentityType], bool]:
        found = self._settings.get(workspace_id)
        if found is None or found[0] < self._now:
            settings = self.store.workspace_settings(workspace_id)
            found = (time.monotonic() + SETTINGS_TTL_S,
                     identity_types(settings.get("identity_types")),
                     bool(settings.get("raw_telemetry", False)))  # fmt: skip
            self._settings[workspace_id] = found
        return found[1], found[2]

    # -- definitions -----------------------------------------------------------------------

    def _activate(self, entries: list[LogEntry]) -> None:
        """Segment and score definitions take effect here in the log (``entries``: records
        next to each other, activated together): compute them over the profiles of the
        partitions, from their history, then apply them to what follows."""
        by_workspace: dict[str, dict[tuple[str, str], int]] = {}
        for entry in entries:
            spec = json.loads(entry.body)["definition"]
            wanted = by_workspace.setdefault(spec["workspace_id"], {})
            wanted[(spec["kind"], spec["key"])] = spec["version"]
        for ws, wanted in by_workspace.items():
            self._activate_versions(ws, wanted, entries[0])

    def _activate_versions(self, ws: str, wanted: dict[tuple[str, str], int],
                           entry: LogEntry) -> None:  # fmt: skip
        old = self._definitions_for(ws)
        chosen = {}
        for (kind, key), version in wanted.items():
            document = self.store.definition(ws, kind, key, version)
            if document is not None and old.versions.get((kind, key), 0) < version:
                chosen[(kind, key)] = (version, document)  # not unknown, nor superseded
        if not chosen:
            return
        old_journeys = self._journeys_for(ws)
        try:
            compiled = [_compile(d, v) for v, d in chosen.values()]
            journeys = [*(j for j in old_journeys.journeys.values()
                          if ("journey", j.key) not in chosen),
                        *(c for c in compiled if isinstance(c, Journey))]  # fmt: skip
            messaging = next((c for c in compiled if isinstance(c, Messaging)),
                             old_journeys.messaging)  # fmt: skip
            offers = {**{k: o for k, o in self._offers.get(ws, {}).items()
                         if (OFFER, k) not in chosen},
                      **{c.key: c for c in compiled if isinstance(c, Offer)}}  # fmt: skip
            new = Definitions(ws, [
                *(d for d in old.all() if (d.kind, d.key) not in chosen and not is_hidden(d.key)),
                *(c for c in compiled if isinstance(c, Definition)),
                *_hidden(journeys, offers)])  # fmt: skip
        except DefinitionError:
            log.exception("definitions %s of %s do not compile; not activated", sorted(chosen),
                          ws)  # fmt: skip
            self._count(entry.partition, "definitions_refused")
            return
        self._commit()  # everything before this place, under the old definitions
        scores = [key for kind, key in chosen if kind == "score"]
        todo = backfill.change(old, new, scores)
        history: dict[str, list[backfill.Past]] = {}
        if todo:
            history = backfill.collect(
                self.read_log, entry.offset - 1, self.partitions, ws, todo.names,
                self.store.lookup_identities, self._settings_for(ws)[0], self.catalogue,
            )  # fmt: skip
        keys = {key for kind, key in chosen if kind == "segment"}
        keys.update(s.key for c in compiled if isinstance(c, Journey | Offer) for s in c.hidden)
        keys.update(k for score in scores for k in new.score_readers.get(score, ()))
        keys.update(k for b in todo.behaviours for k in new.readers.get(b.id, ()))
        now = self.state[entry.partition].stream_time_ms
        total = self.store.count_profiles(ws, self.partitions)
        done, after = 0, ""

        def progress(state: str) -> None:
            for (kind, key), (version, _) in chosen.items():
                self.store.definition_progress(ws, kind, key, version, state, done, total)

        progress("backfilling")
        log.info("activating %d definitions of %s over %d profiles", len(chosen), ws, total)
        only_policy = all(kind in (MESSAGING, PLACEMENT) for kind, _ in chosen)  # nothing to do
        while not only_policy and (ids := self.store.profile_ids(ws, self.partitions, after,
                                                                  2000)):  # fmt: skip
            self._load([i for i in ids if i not in self.profiles])
            for profile_id in ids:
                profile = self.profiles.get(profile_id)
                if profile is None:
                    continue
                past = history.pop(profile_id, None)
                stale = [b for b in profile.aggregates if b not in new.behaviours]
                for behaviour_id in stale:  # of definitions changed since
                    del profile.aggregates[behaviour_id]
                changed = bool(past or stale) or any(
                    b.id in profile.aggregates for b in todo.behaviours) or any(
                    m.key in profile.scores for m, _ in todo.rules)  # fmt: skip
                if changed:
                    backfill.apply(new, profile, past or (), todo)
                transitions = new.evaluate_all(profile, now, keys, backfill=True)
                if transitions:
                    self._record(transitions, entry.partition)
                if changed or transitions:
                    self._touch(profile)
            done, after = done + len(ids), ids[-1]
            self._commit()
            progress("backfilling")
        self._definitions[ws] = new
        self._journeys[ws] = _live(ws, journeys, messaging, offers)
        self._offers[ws] = offers
        self._plan(ws, now)
        self._activated += [(ws, kind, key, version) for (kind, key), (version, _) in
                            chosen.items()]  # fmt: skip
        self._commit()  # with the status: active
        self._count(entry.partition, "definitions_activated", len(chosen))

    # -- scheduled entries -----------------------------------------------------------------

    def _plan(self, workspace_id: str, after: int | None) -> None:
        """The next occurrence of each scheduled entry of the workspace, per partition:
        after ``after`` (an activation), else after the partition's committed stream time
        (an occurrence not committed as fired comes again after a restart)."""
        for key in [k for k in self._occurrences if k[0] == workspace_id]:
            del self._occurrences[key]
        journeys = self._journeys.get(workspace_id)
        for journey in journeys.scheduled if journeys is not None else ():
            assert journey.schedule is not None
            for partition, state in self.state.items():
                since = state.stream_time_ms if after is None else after
                due = next_occurrence(journey.schedule, since)
                if due is not None:
                    self._occurrences[(workspace_id, journey.key, partition)] = due
        self._next_occurrence = min(self._occurrences.values(), default=None)

    def _fire_occurrences(self, partition: int, now: int, offset: int) -> None:
        """Occurrences due on the partition by ``now``, in time order with the timers due
        before each: the members of its segment enter (several occurrences of one schedule
        missed while the log was idle make one, at the latest)."""
        due: list[tuple[int, str, str]] = []
        for (ws, key, p), first in list(self._occurrences.items()):
            if p != partition or first > now:
                continue
            schedule = self._journeys_for(ws).journeys[key].schedule
            assert schedule is not None
            latest = first
            while (following := next_occurrence(schedule, latest)) is not None and (
                    following <= now):  # fmt: skip
                latest = following
            if following is None:
                del self._occurrences[(ws, key, p)]
            else:
                self._occurrences[(ws, key, p)] = following
            due.append((latest, ws, key))
        self._next_occurrence = min(self._occurrences.values(), default=None)
        for at, ws, key in sorted(due):
            if self._timers and self._timers[0][0] <= at:
                self._fire_timers(partition, at, offset)
            journeys = self._journeys_for(ws)
            self._enter_members(journeys, journeys.journeys[key], partition, at)

    def _enter_members(self, journeys: Journeys, journey: Journey, partition: int,
                       at: int) -> None:  # fmt: skip
        """The members of the journey's segment on the partition enter it at ``at``, page
        by page, each page committed (a restart goes on where it was: a run entered at this
        occurrence is not entered again)."""
        assert journey.entry.segment is not None
        ws = journeys.workspace_id
        self._commit()  # the memberships as of now are in the store
        self._effects.count(ws, journey, "occurrences")
        after = ""
        while ids := self.store.segment_member_ids(ws, journey.entry.segment, (partition,),
                                                   after, 2000):  # fmt: skip
            self._load([i for i in ids if i not in self.profiles])
            for profile_id in ids:
                profile = self.profiles.get(profile_id)
                if profile is not None:
                    journeys.on_schedule(profile, journey, at, self._effects)
                    self._after_journeys(profile, partition, at, 0)
            after = ids[-1]
            self._commit()

    # -- loading ---------------------------------------------------------------------------

    def _prefetch(self, events: Iterable[tuple[LoggedEvent, list[Identity]]]) -> None:
        wanted: set[IdentityKey] = set()
        for event, ids in events:
            ws = event.workspace_id
            for type_name, value in ids:
                wanted.add((ws, type_name, value))
            if event.previous_id:
                wanted.add((ws, "user_id", event.previous_id))
                wanted.add((ws, "anonymous_id", event.previous_id))
        missing = [key for key in wanted if key not in self.identities]
        if missing:
            self.identities.update(self.store.lookup_identities(missing))
        found = {self.identities[k] for k in wanted if k in self.identities}
        self._load([i for i in found if i not in self.profiles])

    def _prefetch_timers(self, horizon: int) -> None:
        """Load, in one query, the profiles whose timers fall due within this batch."""
        timers, due = self._timers, []
        while timers and timers[0][0] <= horizon:
            due.append(heapq.heappop(timers))
        for timer in due:
            heapq.heappush(timers, timer)
        self._load([pid for _, pid in due if pid not in self.profiles])

    def _load(self, ids: Sequence[str]) -> None:
        pending = list(ids)
        for _ in range(8):  # follow merge pointers a few hops
            if not pending:
                return
            found = self.store.load_profiles(pending)
            pending = []
            for profile_id, value in found.items():
                if isinstance(value, Profile):
                    self.profiles[profile_id] = value
                elif value not in self.profiles:
                    pending.append(value)

    def _profile(self, profile_id: str) -> Profile | None:
        profile = self.profiles.get(profile_id)
        if profile is None:
            self._load([profile_id])
            profile = self.profiles.get(profile_id)
        else:  # most recently used goes last
            del self.profiles[profile_id]
            self.profiles[profile_id] = profile
        return profile

    def _resolve_id(self, key: IdentityKey) -> str | None:
        """The live profile an identity points at (following merges), or None."""
        profile_id = self.identities.get(key)
        if profile_id is None:
            return None
        profile = self._profile(profile_id)
        if profile is None:  # merged away; its identities were re-pointed in the same commit
            found = self.store.lookup_identities([key]).get(key)
            if found is None or found == profile_id:
                return None
            self.identities[key] = found
            return found if self._profile(found) is not None else None
        return profile.id

    # -- identity resolution ---------------------------------------------------------------

    def _identities(self, event: LoggedEvent, found: list[Identity]) -> list[Identity]:
        if event.previous_id:  # alias: the previous id is a known user id or an anonymous id
            ws = event.workspace_id
            kind = "user_id" if (ws, "user_id", event.previous_id) in self.identities else (
                "anonymous_id")  # fmt: skip
            return [*found, (kind, event.previous_id)]
        return found

    def _resolve(self, entry: LogEntry, event: LoggedEvent, ids: list[Identity], at: int,
                 types: dict[str, IdentityType]) -> Profile:  # fmt: skip
        ws = event.workspace_id
        cached, profiles = self.identities, self.profiles
        if not event.previous_id:  # the common case: every identity known, all to one profile
            first = None
            for type_name, value in ids:
                profile_id = cached.get((ws, type_name, value))
                if profile_id is None or (first is not None and profile_id != first):
                    break
                first = profile_id
            else:
                found = profiles.get(first) if first is not None else None
                if found is not None:
                    return found
        known: list[tuple[Identity, str]] = []
        unknown: list[Identity] = []
        for identity in self._identities(event, ids):
            profile_id = cached.get((ws, *identity))
            if profile_id is None or profile_id not in profiles:
                profile_id = self._resolve_id((ws, *identity))
            if profile_id is None:
                unknown.append(identity)
            else:
                known.append((identity, profile_id))
        if not unknown and len({p for _, p in known}) == 1:
            return self.profiles[known[0][1]]
        known.sort(key=lambda k: types[k[0][0]].priority)
        unique_unknown = [i for i in unknown if types[i[0]].unique]
        primary: Profile | None = None
        for identity, _ in known:
            spec = types[identity[0]]
            if not spec.merge:
                continue
            # Looked up again: a merge earlier in this loop may have re-pointed it.
            candidate = self.profiles.get(self.identities[(ws, *identity)])
            if candidate is None:
                continue
            if primary is None:
                if any(candidate.identities.get(t) for t, _ in unique_unknown):
                    continue  # it already belongs to another user: a shared device
                primary = candidate
            elif candidate.id != primary.id:
                primary = self._merge(primary, candidate, identity, entry, at)
        if primary is None:
            primary = model.new_profile(profile_id_for(ws, event.message_id), ws, entry.offset, at)
            self.profiles[primary.id] = primary
            self._new_partition[primary.id] = entry.partition
            self._count(entry.partition, "profiles_created")
        for identity in unknown:
            spec = types[identity[0]]
            if spec.unique and primary.identities.get(identity[0]):
                self._count(entry.partition, "identities_refused_unique")
                continue
            self._link(primary, ws, identity)
        for identity, profile_id in known:  # devices follow their latest user
            spec = types[identity[0]]
            if not spec.merge and profile_id != primary.id:
                self._link(primary, ws, identity)
        return primary

    def _link(self, profile: Profile, ws: str, identity: Identity) -> None:
        key = (ws, *identity)
        self.identities[key] = profile.id
        self._dirty_identities[key] = profile.id
        model.add_identity(profile, *identity)

    def _merge(self, a: Profile, b: Profile, via: Identity, entry: LogEntry, at: int) -> Profile:
        types, _ = self._settings_for(a.workspace_id)
        for type_name, spec in types.items():
            mine, theirs = a.identities.get(type_name), b.identities.get(type_name)
            if spec.unique and mine and theirs and set(mine) != set(theirs):
                self._count(entry.partition, "merges_refused_unique")
                return a
        survivor, merged = (a, b) if a.created_offset <= b.created_offset else (b, a)
        model.merge_into(survivor, merged)
        ws = survivor.workspace_id
        for type_name, values in merged.identities.items():
            for value in values:
                self.identities[(ws, type_name, value)] = survivor.id
                self._dirty_identities[(ws, type_name, value)] = survivor.id
        del self.profiles[merged.id]
        self._dirty.pop(merged.id, None)
        self._scheduled.pop(merged.id, None)
        self._tombstones.append((merged, survivor.id))
        self._merges.append(
            Merge(ws, survivor.id, merged.id, entry.offset, entry.received_at_ms, ":".join(via))
        )
        self._count(entry.partition, "merges")
        definitions = self._definitions_for(ws)
        now = self.state[entry.partition].stream_time_ms
        if merged.journeys or survivor.journeys:
            self._journeys_for(ws).on_merge(survivor, merged, now, self._effects)
        if not definitions.empty:
            self._record(definitions.on_merge(survivor, merged, now), entry.partition)
        self._touch(survivor)
        return survivor

    # -- applying --------------------------------------------------------------------------

    def _touch(self, profile: Profile) -> None:
        self._dirty[profile.id] = profile
        # A session's timer only moves later as it goes on (or ends with it), so one already
        # scheduled stays the earliest: when it fires, it reschedules what is left. A segment's
        # window may expire earlier than the timer scheduled (a late event, a shorter window).
        scheduled = self._scheduled.get(profile.id)
        if scheduled is None:
            if profile.sessions or profile.due or profile.journey_due:
                due = profile.next_timer()
                if due is not None:
                    self._schedule(profile.id, due)
        else:
            for due in (profile.due, profile.journey_due):
                if due and due < scheduled:
                    self._schedule(profile.id, due)

    def _schedule(self, profile_id: str, due: int) -> None:
        scheduled = self._scheduled.get(profile_id)
        if scheduled is None or due < scheduled:
            self._scheduled[profile_id] = due
            heapq.heappush(self._timers, (due, profile_id))

    def _fire_timers(self, partition: int, now: int, offset: int) -> None:
        timers = self._timers
        while timers and timers[0][0] <= now:
            due, profile_id = heapq.heappop(timers)
            if self._scheduled.get(profile_id) != due:
                continue  # superseded by an earlier push that already fired
            del self._scheduled[profile_id]
            profile = self._profile(profile_id)
            if profile is None:
                continue
            expired = [s for s in profile.sessions.values()
                       if s.last_received + model.SESSION_IDLE_MS <= now]  # fmt: skip
            for session in expired:
                self._end_session(
                    profile, session, None, offset, synthetic=True, partition=partition
                )
            definitions = self._definitions_for(profile.workspace_id)
            while True:  # segments' instants and journeys' waits, in time order
                wake = profile.journey_due if 0 < profile.journey_due <= now else 0
                until = wake or now
                if profile.due and profile.due <= until:
                    self._record(definitions.on_timer(profile, until), partition)
                if not wake:
                    break
                self._journeys_for(profile.workspace_id).on_timer(profile, wake, self._effects)
                self._after_journeys(profile, partition, wake, 0)
            self._touch(profile)

    def _apply(self, entry: LogEntry, event: LoggedEvent, ids: list[Identity]) -> None:
        partition = entry.partition
        at = _ms(event.timestamp)
        spec: EventSpec | None = None
        name = event.name
        if event.type == "track" and name is not None and not event.custom:
            spec = self.catalogue.get(name)
            if spec is not None:
                name = spec.name  # the catalogue's own string, shared
        if event.source_id == SYSTEM_SOURCE:  # membership events: for journeys, not profiles
            self._count(partition, "membership_events")
            return
        types, raw_telemetry = self._settings_for(event.workspace_id)
        tier = event.tier
        if tier >= 3:  # never joined to a person, whatever the settings
            self._count(partition, gate.telemetry(raw_telemetry).value)
            return
        profile = self._resolve(entry, event, ids, at, types)
        profiles = self.profiles
        del profiles[profile.id]  # most recently used goes last
        profiles[profile.id] = profile
        if at < profile.first_seen:  # noqa: PLR1730 - likewise
            profile.first_seen = at
        if at > profile.last_seen:  # noqa: PLR1730 - hot path: cheaper than a call to max()
            profile.last_seen = at
        counters = profile.counters
        counters["events"] = counters.get("events", 0) + 1
        totals = self.state[partition].counters
        totals["events"] = totals.get("events", 0) + 1
        properties = event.properties
        if name == "consent.updated":
            model.set_consent(profile, properties, at)
        # Nobody's consent matters to the common case: tier 1, nothing recorded.
        if tier > 1 or profile.consent:
            verdict = gate.verdict(tier, spec, properties, profile, raw_telemetry)
            if verdict is not _KEEP:
                self._count(partition, verdict.value)
                counters[verdict.value] = counters.get(verdict.value, 0) + 1
                if verdict is _SUPPRESS:
                    self._touch(profile)
                    return
                if spec is not None:
                    properties = gate.minimise(spec, properties)
        key = _COUNTER_KEYS.get(name or event.type) or _counter_key(name or event.type)
        counters[key] = counters.get(key, 0) + 1
        traits: Iterable[str] = ()
        if event.type == "identify" and event.traits:
            model.set_traits(profile, event.traits, at)
            model.apply_trait_operations(profile, event.traits, at)
            traits = _changed_traits(event.traits)
        elif "$set" in properties or "$set_once" in properties or "$unset" in properties:
            model.apply_trait_operations(profile, properties, at)
            traits = _changed_traits(properties, plain=False)
        world_id = model.world_id(event.context)
        world = model.world_of(profile, world_id, at)
        world.events += 1
        session_id = self._session(profile, event, world_id, at, entry, properties)
        if name is not None and spec is not None:
            if name.startswith(("object.", "product.", "cart.item_added")):
                model.engage(world, name, properties, at)
            elif name in ("zone.entered", "zone.exited"):
                model.zone(world, name, properties, at)
            elif name == "order.completed":
                model.order(world, properties)
            elif name in learn.EVENTS:
                learn.observe(profile, name, properties, at, self._effects.decisions)
        recent = profile.recent
        recent.append(model.Recent(
            entry.offset, event.message_id, event.type, at, name, world_id,
            msgspec.Raw(_encode(gate.for_history(spec, properties, entry.body))),
        ))  # fmt: skip
        if len(recent) > model.RECENT_EVENTS:
            del recent[0]
        definitions = self._definitions_for(event.workspace_id)
        if not definitions.empty:
            transitions = definitions.on_event(
                profile, name if event.type == "track" else None, properties, world_id,
                session_id, at, entry.offset, self.state[partition].stream_time_ms, traits,
                consent=name == "consent.updated",
            )  # fmt: skip
            if transitions:
                self._record(transitions, partition)
        journeys = self._journeys_for(event.workspace_id)
        if not journeys.empty and event.type == "track":
            now = self.state[partition].stream_time_ms
            journeys.on_event(profile, name, properties, now, self._effects)
            self._after_journeys(profile, partition, now, 0)
        self._touch(profile)

    def _session(self, profile: Profile, event: LoggedEvent, world_id: str, at: int,
                 entry: LogEntry, properties: dict[str, Any]) -> str:  # fmt: skip
        name = event.name
        session_id = model.session_id(event.context, world_id)
        sessions = profile.sessions
        session = sessions.get(session_id)
        if (
            session is not None
            and at - session.last > model.SESSION_IDLE_MS
            and session_id.endswith("~auto")
        ):
            self._end_session(profile, session, None, entry.offset, True, entry.partition)
            session = None
        if session is None:
            if name == "session.ended":
                return session_id  # the end of a session already closed (by a timeout…)
            for other in [s for s in sessions.values() if s.world == world_id]:
                self._end_session(profile, other, None, entry.offset, True, entry.partition)
            session = sessions[session_id] = Session(
                id=session_id, world=world_id, started=at, last=at,
                last_received=entry.received_at_ms,
            )  # fmt: skip
            profile.worlds[world_id].sessions += 1
        session.events += 1
        if at > session.last:  # noqa: PLR1730 - hot path: cheaper than a call to max()
            session.last = at
        if entry.received_at_ms > session.last_received:  # noqa: PLR1730 - likewise
            session.last_received = entry.received_at_ms
        if name == "session.heartbeat":
            session.active_ms += model.positive_int(properties.get("active_ms"))
        elif name == "session.ended":
            self._end_session(profile, session, properties, entry.offset, False, entry.partition)
        return session_id

    def _end_session(self, profile: Profile, session: Session, properties: dict[str, Any] | None,
                     offset: int, synthetic: bool, partition: int) -> None:  # fmt: skip
        duration = model.positive_int((properties or {}).get("duration_ms")) or (
            session.last - session.started)  # fmt: skip
        world = profile.worlds.get(session.world)
        if world is not None:
            world.active_ms += session.active_ms or duration
        del profile.sessions[session.id]
        if synthetic:
            self._count(partition, "sessions_synthesised")
            profile.recent.append(model.Recent(
                offset=offset, message_id=f"synthetic:{session.id}", type="track",
                at=session.last, name="session.ended", world=session.world,
                properties=msgspec.Raw(_encode({"session_id": session.id, "duration_ms": duration,
                                                "reason": "timeout", "synthetic": True})),
            ))  # fmt: skip
            if len(profile.recent) > model.RECENT_EVENTS:
                del profile.recent[0]
        definitions = self._definitions_for(profile.workspace_id)
        if definitions.session_readers:
            now = self.state[partition].stream_time_ms
            self._record(definitions.on_session_end(profile, now), partition)


_COUNTER_KEYS: dict[str, str] = {}
_TRAIT_OPERATIONS = ("$set", "$set_once", "$unset")


def _changed_traits(fields: dict[str, Any], plain: bool = True) -> list[str]:
    """The traits an identify's traits (``plain``) or ``$set``-style fields may change."""
    names = [k for k in fields if not k.startswith("$")] if plain else []
    for operation in _TRAIT_OPERATIONS:
        value = fields.get(operation)
        if isinstance(value, dict):
            names += value
        elif isinstance(value, list):
            names += [k for k in value if isinstance(k, str)]
    return names


def _counter_key(name: str) -> str:
    """One shared string per counter name, not one per profile (custom names are capped)."""
    key = f"events.{name}"
    if len(_COUNTER_KEYS) < 4096:
        _COUNTER_KEYS[name] = key
    return key


def _definition_runs(decoded: Sequence[tuple[LogEntry, Any, Any]]) -> dict[int, list[LogEntry]]:
    """Definition records next to each other in the log, by the offset of the first: applying
    a directory of definitions activates them together, with one pass over the profiles."""
    runs: dict[int, list[LogEntry]] = {}
    run: list[LogEntry] | None = None
    for entry, event, _ in decoded:
        if event is None and entry.workspace_id == TICK_WORKSPACE and b'"definition"' in entry.body:
            if run is None:
                run = runs[entry.offset] = []
            run.append(entry)
        else:
            run = None
    return runs


def _compile(document: dict[str, Any],
             version: int) -> Definition | Journey | Messaging | Offer | Placement:  # fmt: skip
    kind = document.get("kind")
    if kind == "journey":
        return compile_journey(document, version)
    if kind == MESSAGING:
        return compile_messaging(document, version)
    if kind == OFFER:
        return compile_offer(document, version)
    if kind == PLACEMENT:
        return compile_placement(document, version)
    return compile_definition(document, version)


def _hidden(journeys: list[Journey], offers: dict[str, Offer]) -> list[Segment]:
    """The hidden segments of journeys' and offers' conditions."""
    return [*(s for j in journeys for s in j.hidden), *(s for o in offers.values()
                                                        for s in o.hidden)]  # fmt: skip


def _live(workspace_id: str, journeys: list[Journey], messaging: Messaging | None,
          offers: dict[str, Offer]) -> Journeys:  # fmt: skip
    """The journeys whose runs the processor moves (drafts take no part), with the offers
    their in-world actions may name."""
    return Journeys(workspace_id, [j for j in journeys if j.status != "draft"], messaging,
                    offers)  # fmt: skip


def _evict(cache: dict[Any, Any], bound: int) -> None:
    """Drop the oldest entries beyond ``bound``, and a tenth more so this runs seldom."""
    excess = len(cache) - bound
    if excess > 0:
        for key in list(islice(iter(cache), excess + bound // 10)):
            del cache[key]


_KEEP, _SUPPRESS = gate.Verdict.KEEP, gate.Verdict.SUPPRESS


def tick_record_body(now_ms: int) -> bytes:
    return json.dumps({"tick": now_ms}).encode()
