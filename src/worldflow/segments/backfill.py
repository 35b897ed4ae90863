"""A definition's history: what profiles did before it existed, read back from the log.

When a segment or score model with new behaviours is activated, the processor collects the
log's events before that place that feed them (and the consent changes that decide what those
events may carry), grouped by the profile their identities resolve to now, and folds them into
each profile as if the behaviour had always been counted. A preview does the same on copies.
"""

from __future__ import annotations

import logging
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec

from worldflow.events.catalogue import Catalogue, EventSpec
from worldflow.events.model import decode_logged
from worldflow.identity.types import IdentityType, identities_of
from worldflow.log import LogEntry
from worldflow.privacy import gate
from worldflow.profiles import model
from worldflow.profiles.model import Profile
from worldflow.segments.definition import Behaviour, ScoreModel, ScoreRule
from worldflow.segments.incremental import Definitions

log = logging.getLogger(__name__)

IdentityKey = tuple[str, str, str]
ReadLog = Callable[[int, int], list[LogEntry]]
Resolve = Callable[[Sequence[IdentityKey]], dict[IdentityKey, str]]
CHUNK = 5000


@dataclass(slots=True)
class Past:
    """One event of a profile's history, as the processor saw it."""

    offset: int
    now: int  # the processor's log clock when it applied the event
    at: int
    name: str
    tier: int
    spec: EventSpec | None
    properties: dict[str, Any]
    world: str
    session: str


@dataclass(slots=True)
class Change:
    """What a new definition needs computed from the past."""

    behaviours: list[Behaviour]
    rules: list[tuple[ScoreModel, ScoreRule]]

    @property
    def names(self) -> set[str]:
        return {b.event for b in self.behaviours} | {r.behaviour.event for _, r in self.rules}

    def __bool__(self) -> bool:
        return bool(self.behaviours or self.rules)


def change(old: Definitions | None, new: Definitions, models: Iterable[str] = ()) -> Change:
    """The behaviours ``new`` has that ``old`` has not, and the rules of the score models
    ``models`` (whose scores are computed again from the start)."""
    known = old.behaviours if old is not None else {}
    fresh = [b for b in new.behaviours.values() if b.id not in known]
    rules = [(m, r) for key in models if (m := new.scores.get(key)) for r in m.rules]
    return Change(fresh, rules)


def collect(read_log: ReadLog, until: int, partitions: Iterable[int], workspace_id: str,
            names: set[str], resolve: Resolve, types: dict[str, IdentityType],
            catalogue: Catalogue, on_progress: Callable[[int], None] | None = None,
            ) -> dict[str, list[Past]]:  # fmt: skip
    """Every event of the workspace up to offset ``until`` named in ``names`` (and every
    consent change), by the profile it resolves to now, in log order."""
    owned = set(partitions)
    wanted = {*names, "consent.updated"}
    pattern = re.compile(rb'"name":"(?:' + b"|".join(re.escape(n.encode()) for n in wanted)
                         + rb')"')  # fmt: skip
    history: dict[str, list[Past]] = defaultdict(list)
    clocks: dict[int, int] = {}
    after = 0
    while after < until:
        entries = read_log(after, CHUNK)
        if not entries:
            break
        batch: list[tuple[Past, list[IdentityKey]]] = []
        for entry in entries:
            if entry.offset > until:
                break
            if entry.partition not in owned:
                continue
            clock = clocks[entry.partition] = max(clocks.get(entry.partition, 0),
                                                  entry.received_at_ms)  # fmt: skip
            if entry.workspace_id != workspace_id or not pattern.search(entry.body):
                continue
            found = _past(entry, clock, wanted, catalogue)
            if found is not None:
                batch.append(found)
        keys = [key for _, ids in batch for key in ids]
        resolved = resolve(keys) if keys else {}
        for past, ids in batch:
            ranked = sorted(ids, key=lambda k: types[k[1]].priority if k[1] in types else 99)
            profile_id = next((resolved[k] for k in ranked if k in resolved), None)
            if profile_id is not None:
                history[profile_id].append(past)
        after = entries[-1].offset
        if on_progress is not None:
            on_progress(after)
    return history


def _past(entry: LogEntry, clock: int, wanted: set[str],
          catalogue: Catalogue) -> tuple[Past, list[IdentityKey]] | None:  # fmt: skip
    try:
        event = decode_logged(entry.body)
    except (msgspec.ValidationError, msgspec.DecodeError):
        return None
    if event.type != "track" or event.name is None or event.tier >= 3:
        return None
    spec = None if event.custom else catalogue.get(event.name)
    name = spec.name if spec is not None else event.name
    if name not in wanted:
        return None
    world = model.world_id(event.context)
    at = int(event.timestamp.timestamp() * 1000)
    past = Past(entry.offset, clock, at, name, event.tier, spec, event.properties, world,
                model.session_id(event.context, world))  # fmt: skip
    ws = event.workspace_id
    return past, [(ws, t, v) for t, v in identities_of(event)]


def apply(definitions: Definitions, profile: Profile, history: Iterable[Past],
          todo: Change) -> None:  # fmt: skip
    """Fold a profile's history into the state ``todo`` names, replacing what was there."""
    for behaviour in todo.behaviours:
        profile.aggregates.pop(behaviour.id, None)
    for score_model, rule in todo.rules:
        profile.scores.pop(score_model.key, None)
        profile.caps.pop(rule.id, None)
    by_name: dict[str, tuple[list[Behaviour], list[tuple[ScoreModel, ScoreRule]]]] = {}
    for behaviour in todo.behaviours:
        by_name.setdefault(behaviour.event, ([], []))[0].append(behaviour)
    for score_model, rule in todo.rules:
        by_name.setdefault(rule.behaviour.event, ([], []))[1].append((score_model, rule))
    consent = model.new_profile(profile.id, profile.workspace_id, 0, 0)  # consent as it was
    unused: set[str] = set()
    for past in history:
        properties = past.properties
        if past.name == "consent.updated":
            model.set_consent(consent, properties, past.at)
        feeds = by_name.get(past.name)
        if feeds is None:
            continue
        if past.tier > 1 or consent.consent:
            verdict = gate.verdict(past.tier, past.spec, properties, consent, False)
            if verdict is gate.Verdict.SUPPRESS:
                continue
            if verdict is not gate.Verdict.KEEP and past.spec is not None:
                properties = gate.minimise(past.spec, properties)
        definitions.feed(profile, past.name, properties, past.world, past.session, past.at,
                         past.offset, past.now, unused, feeds[0], feeds[1])  # fmt: skip


def preview(document: dict[str, Any], workspace_id: str,
            active: Iterable[tuple[int, dict[str, Any]]],
            history_of: Callable[[Change, Definitions], dict[str, list[Past]]],
            pages: Iterable[Iterable[Profile]], now: int, sample: int = 10,
            ) -> dict[str, Any]:  # fmt: skip
    """Evaluate a segment over profiles (copies: nothing is written) without activating it."""
    from worldflow.segments.definition import compile_definition

    segment = compile_definition(document, 0)
    key = segment.key
    current = [compile_definition(d, v) for v, d in active
               if d.get("kind", "segment") in ("segment", "score")
               and (d.get("kind", "segment"), d.get("key")) != ("segment", key)]  # fmt: skip
    base = Definitions(workspace_id, current)
    new = Definitions(workspace_id, [*current, segment])
    todo = change(base, new)
    history = history_of(todo, new) if todo else {}
    size = evaluated = 0
    members: list[str] = []
    for page in pages:
        for profile in page:
            evaluated += 1
            apply(new, profile, history.get(profile.id, ()), todo)
            new.evaluate_all(profile, now, [key])
            if key in profile.segments:
                size += 1
                if len(members) < sample:
                    members.append(profile.id)
    return {"size": size, "profiles": evaluated, "sample": members}
