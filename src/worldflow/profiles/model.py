"""A profile's state, and how one event or one merge changes it.

Everything here is a pure function of the events applied, in log order: no wall clock, no
randomness, so replaying the log rebuilds exactly the same profiles. Times are UTC
milliseconds; ``at`` is the event's own time, the log's receipt time drives timers.

Semantics worth knowing:
- Traits are last-writer-wins by event time (an older ``identify`` arriving late does not
  overwrite a newer value); ``$set_once`` keeps the earliest value; ``$unset`` removes.
- Consent is per purpose, last-writer-wins by event time.
- Sessions are keyed by the client's ``context.session_id`` (or one per world when the client
  sends none). A session is open until ``session.ended``, a new session in the same world, or
  ``SESSION_IDLE_MS`` of log time without an event from it: then the processor synthesises the
  end (``synthetic``, reason ``timeout``).
"""

from __future__ import annotations

import sys
from decimal import Decimal, InvalidOperation
from typing import Any

import msgspec

from worldflow.segments.state import Agg, Score

RECENT_EVENTS = 10
MAX_SENDS = 500  # actions and offers served remembered per person, for the caps
MAX_DECISIONS = 50  # decisions remembered per person, for their attribution
SESSION_IDLE_MS = 30 * 60 * 1000
MAX_KEYS = 200  # per map of zones, objects or products in one world: the most engaged stay


class Consent(msgspec.Struct, omit_defaults=True, gc=False):
    granted: bool
    at: int
    policy_version: str | None = None
    source: str | None = None


class Session(msgspec.Struct, omit_defaults=True, gc=False):
    id: str
    world: str
    started: int  # event time
    last: int  # event time of its latest event
    last_received: int  # log time of its latest event: the idle timer runs on it
    events: int = 0
    active_ms: int = 0  # from heartbeats and the end event, when the client reports them


class Zone(msgspec.Struct, omit_defaults=True, gc=False):
    visits: int = 0
    dwell_ms: int = 0
    last: int = 0


class Engagement(msgspec.Struct, omit_defaults=True, gc=False):
    """What a person did with one object or product."""

    views: int = 0
    view_ms: int = 0
    gaze_ms: int = 0
    hovers: int = 0
    selects: int = 0
    grabs: int = 0
    details: int = 0
    try_ons: int = 0
    cart_adds: int = 0
    purchases: int = 0
    last: int = 0

    def score(self) -> int:
        return (self.views + self.hovers + self.selects + 2 * self.grabs + 2 * self.details
                + 3 * self.try_ons + 5 * self.cart_adds + 10 * self.purchases
                + self.gaze_ms // 1000)  # fmt: skip


class World(msgspec.Struct, omit_defaults=True):
    first_seen: int
    last_seen: int
    events: int = 0
    sessions: int = 0
    active_ms: int = 0
    orders: int = 0
    revenue: dict[str, str] = {}  # currency → decimal string
    zones: dict[str, Zone] = {}
    objects: dict[str, Engagement] = {}
    products: dict[str, Engagement] = {}  # by SKU


class Recent(msgspec.Struct, omit_defaults=True, gc=False):
    """One recent event, minimised: no traits, no PII fields, e-mail addresses hashed. Its
    properties stay encoded (JSON): a profile is written far more often than it is read, and a
    few bytes objects cost less to keep and to write than a tree of small dicts."""

    offset: int
    message_id: str
    type: str
    at: int
    name: str | None = None
    world: str | None = None
    properties: msgspec.Raw = msgspec.Raw(b"{}")

    def decoded_properties(self) -> dict[str, Any]:
        value: dict[str, Any] = msgspec.json.decode(self.properties)
        return value


class Run(msgspec.Struct, array_like=True, gc=False):
    """One profile's run through one journey (the latest: an ended one is kept for the
    re-entry policy)."""

    version: int  # of the journey
    step: int  # index of the current step; -1 once ended
    step_id: str  # the current step's id: where a new version of the journey continues
    since: int  # when it reached the step
    wake: int = 0  # when its wait ends (0: not waiting on time)
    entered: int = 0
    count: int = 1  # runs so far, this one included
    actions: int = 0  # actions taken in this run (their ids count them)
    ended: int = 0
    outcome: str = ""  # of an ended run: completed, converted, exited, holdout…


class Served(msgspec.Struct, array_like=True, gc=False):
    """A decision served to the person (``decision.served``), for its attribution: which
    offer of which placement and bandit arm, and whether it was seen and acted on."""

    placement: str
    arm: str  # the segment the bandit learned for ("": the placement's own)
    offer: str
    at: int
    impressed: bool = False
    interacted: bool = False


class Profile(msgspec.Struct, omit_defaults=True, dict=True):
    id: str
    workspace_id: str
    created_offset: int  # the log entry that created it: merges keep the older profile
    first_seen: int
    last_seen: int
    traits: dict[str, Any] = {}
    trait_times: dict[str, int] = {}  # when each trait was last set (event time)
    set_once: list[str] = []  # traits set with $set_once: the earliest value wins a merge
    identities: dict[str, list[str]] = {}  # type → values (e-mail as SHA-256)
    consent: dict[str, Consent] = {}
    worlds: dict[str, World] = {}
    sessions: dict[str, Session] = {}  # open sessions by session id
    recent: list[Recent] = []
    counters: dict[str, int] = {}  # events, events by name, minimised, … (later stages add more)
    merged_from: list[str] = []
    segments: dict[str, int] = {}  # segment key → when the person entered it
    scores: dict[str, Score] = {}  # score model key → value (read it with its model's decay)
    aggregates: dict[str, Agg] = {}  # behaviour id → what segments count of it
    caps: dict[str, tuple[int, float]] = {}  # score rule id → (period, points awarded in it)
    clocks: dict[str, int] = {}  # segment key → when a comparison of it with now may flip
    due: int = 0  # when a window, a score or a clock next changes by itself (0: never)
    journeys: dict[str, Run] = {}  # journey key → the latest run
    journey_due: int = 0  # when a journey's wait next ends (0: never)
    sends: list[tuple[int, str, str]] = []  # (when, channel, journey or offer), last 7 days
    decisions: dict[str, Served] = {}  # decision id → what it served (the latest ones)

    def next_timer(self) -> int | None:
        due = self.due or None
        if self.journey_due and (due is None or self.journey_due < due):
            due = self.journey_due
        if not self.sessions:
            return due
        session_due = min(s.last_received for s in self.sessions.values()) + SESSION_IDLE_MS
        return session_due if due is None or session_due < due else due


def new_profile(profile_id: str, workspace_id: str, offset: int, at: int) -> Profile:
    return Profile(id=profile_id, workspace_id=workspace_id, created_offset=offset,
                   first_seen=at, last_seen=at)  # fmt: skip


# --- traits and consent --------------------------------------------------------------------


def set_traits(profile: Profile, traits: dict[str, Any], at: int) -> None:
    times = profile.trait_times
    for key, value in traits.items():
        if key.startswith("$"):
            continue
        if times.get(key, -1) > at:
            continue  # a newer value is already there
        if value is None:
            profile.traits.pop(key, None)
        else:
            profile.traits[key] = value
        times[key] = at
        if key in profile.set_once:
            profile.set_once.remove(key)


def set_traits_once(profile: Profile, traits: dict[str, Any], at: int) -> None:
    for key, value in traits.items():
        if value is None or key.startswith("$"):
            continue
        if key not in profile.traits or (key in profile.set_once and at < profile.trait_times[key]):
            profile.traits[key] = value
            profile.trait_times[key] = at
            if key not in profile.set_once:
                profile.set_once.append(key)


def unset_traits(profile: Profile, keys: list[Any], at: int) -> None:
    for key in keys:
        if isinstance(key, str) and profile.trait_times.get(key, -1) <= at:
            profile.traits.pop(key, None)
            profile.trait_times[key] = at


def apply_trait_operations(profile: Profile, fields: dict[str, Any], at: int) -> None:
    """``$set`` / ``$set_once`` / ``$unset`` in traits or properties (PostHog's convention)."""
    value = fields.get("$set")
    if isinstance(value, dict):
        set_traits(profile, value, at)
    value = fields.get("$set_once")
    if isinstance(value, dict):
        set_traits_once(profile, value, at)
    value = fields.get("$unset")
    if isinstance(value, list):
        unset_traits(profile, value, at)


def set_consent(profile: Profile, properties: dict[str, Any], at: int) -> None:
    scopes = properties.get("scopes")
    if not isinstance(scopes, dict):
        return
    for purpose, granted in scopes.items():
        current = profile.consent.get(purpose)
        if current is not None and current.at > at:
            continue
        profile.consent[purpose] = Consent(
            bool(granted), at, properties.get("policy_version"), properties.get("source")
        )


def consents(profile: Profile, purpose: str) -> bool | None:
    """True or False when the person chose; None when they never said."""
    entry = profile.consent.get(purpose)
    return None if entry is None else entry.granted


# --- identities ----------------------------------------------------------------------------


def add_identity(profile: Profile, type_name: str, value: str) -> None:
    values = profile.identities.setdefault(type_name, [])
    if value not in values:
        values.append(value)


# --- worlds, objects, products -------------------------------------------------------------


def world_id(context: dict[str, Any]) -> str:
    """The world an event happened in: ``context.world.id`` or a string ``context.world``."""
    world = context.get("world")
    if isinstance(world, dict):
        world = world.get("id")
    if isinstance(world, str) and world:
        return sys.intern(world[:100])  # shared by every profile and recent event held
    return "web"  # pages and calls from outside any world


def session_id(context: dict[str, Any], world: str) -> str:
    """The client's ``context.session_id`` (or ``sessionId``), else one per world."""
    found = context.get("session_id") or context.get("sessionId")
    if type(found) is str:
        return found[:100]
    if isinstance(found, int) and not isinstance(found, bool):
        return str(found)
    return f"{world}~auto"


def world_of(profile: Profile, world_id: str, at: int) -> World:
    world = profile.worlds.get(world_id)
    if world is None:
        world = profile.worlds[sys.intern(world_id)] = World(first_seen=at, last_seen=at)
    elif at > world.last_seen:
        world.last_seen = at
    elif at < world.first_seen:
        world.first_seen = at
    return world


def _bounded_get(items: dict[str, Any], key: str, factory: type) -> Any:
    entry = items.get(key)
    if entry is None:
        if len(items) >= MAX_KEYS:
            # Keep the map bounded: forget the least engaged entry (an attention long tail).
            weakest = min(items, key=lambda k: (_weight(items[k]), items[k].last))
            del items[weakest]
        # Interned: the same object and product ids recur across many profiles in memory.
        entry = items[sys.intern(key)] = factory()
    return entry


def _weight(entry: Any) -> int:
    return entry.score() if isinstance(entry, Engagement) else entry.visits


def positive_int(value: Any) -> int:
    """A positive integer property, or 0 for anything else (absent, negative, not a number)."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _sku(obj: Any) -> str | None:
    if isinstance(obj, dict):
        product = obj.get("product")
        if isinstance(product, dict) and isinstance(product.get("sku"), str):
            return str(product["sku"])
    return None


_ENGAGEMENT = {
    "object.viewed": "views",
    "object.hovered": "hovers",
    "object.selected": "selects",
    "object.grabbed": "grabs",
    "product.detail_opened": "details",
    "product.tried_on": "try_ons",
    "cart.item_added": "cart_adds",
}


def engage(world: World, name: str, props: dict[str, Any], at: int) -> None:
    obj = props.get("obj")
    if not isinstance(obj, dict):
        return
    counter = _ENGAGEMENT.get(name)
    view_ms = positive_int(props.get("view_ms")) if name == "object.viewed" else 0
    gaze_ms = positive_int(props.get("dwell_ms")) if name == "object.gaze_dwell" else 0
    object_id = obj.get("object_id")
    if type(object_id) is str:
        _engaged(_bounded_get(world.objects, object_id, Engagement), counter, view_ms, gaze_ms, at)
    sku = _sku(obj)
    if sku is not None:
        _engaged(_bounded_get(world.products, sku, Engagement), counter, view_ms, gaze_ms, at)


def _engaged(entry: Engagement, counter: str | None, view_ms: int, gaze_ms: int, at: int) -> None:
    if at > entry.last:  # noqa: PLR1730 - hot path: cheaper than a call to max()
        entry.last = at
    if counter is not None:
        setattr(entry, counter, getattr(entry, counter) + 1)
    if view_ms:
        entry.view_ms += view_ms
    if gaze_ms:
        entry.gaze_ms += gaze_ms


def add_money(totals: dict[str, str], money: Any) -> None:
    if not isinstance(money, dict):
        return
    currency = money.get("currency")
    try:
        amount = Decimal(str(money.get("amount")))
    except (InvalidOperation, ValueError):
        return
    if not isinstance(currency, str) or not amount.is_finite():
        return
    totals[currency] = str(Decimal(totals.get(currency, "0")) + amount)


def order(world: World, props: dict[str, Any]) -> None:
    world.orders += 1
    total = props.get("total")
    if isinstance(total, dict):
        add_money(world.revenue, total)
    items = props.get("items")
    if isinstance(items, list):
        for item in items:
            if isinstance(item, dict) and isinstance(item.get("sku"), str):
                entry = _bounded_get(world.products, item["sku"], Engagement)
                entry.purchases += 1


def zone(world: World, name: str, props: dict[str, Any], at: int) -> None:
    zone_id = props.get("zone_id")
    if not isinstance(zone_id, str):
        return
    entry = _bounded_get(world.zones, zone_id, Zone)
    entry.last = max(entry.last, at)
    if name == "zone.entered":
        entry.visits += 1
    else:
        entry.dwell_ms += positive_int(props.get("dwell_ms"))


# --- merging -------------------------------------------------------------------------------


def _merge_engagement(into: dict[str, Any], other: dict[str, Any]) -> None:
    for key, entry in other.items():
        mine = into.get(key)
        if mine is None:
            into[key] = entry
            continue
        for field in entry.__struct_fields__:
            if field == "last":
                mine.last = max(mine.last, entry.last)
            else:
                setattr(mine, field, getattr(mine, field) + getattr(entry, field))


def _merge_world(mine: World, other: World) -> None:
    mine.first_seen = min(mine.first_seen, other.first_seen)
    mine.last_seen = max(mine.last_seen, other.last_seen)
    mine.events += other.events
    mine.sessions += other.sessions
    mine.active_ms += other.active_ms
    mine.orders += other.orders
    for currency, amount in other.revenue.items():
        mine.revenue[currency] = str(Decimal(mine.revenue.get(currency, "0")) + Decimal(amount))
    _merge_engagement(mine.zones, other.zones)
    _merge_engagement(mine.objects, other.objects)
    _merge_engagement(mine.products, other.products)


def merge_into(survivor: Profile, other: Profile) -> None:
    """Fold ``other`` into ``survivor``: history, traits, counters and consent follow it."""
    survivor.first_seen = min(survivor.first_seen, other.first_seen)
    survivor.last_seen = max(survivor.last_seen, other.last_seen)
    for key, value in other.traits.items():
        at = other.trait_times.get(key, 0)
        once = key in other.set_once
        if key not in survivor.traits:
            take = key not in survivor.trait_times or survivor.trait_times[key] < at
        elif once and key in survivor.set_once:
            take = at < survivor.trait_times.get(key, 0)
        elif once:
            take = False  # a value set explicitly beats one set once
        else:
            take = key in survivor.set_once or survivor.trait_times.get(key, 0) < at
        if take:
            survivor.traits[key] = value
            survivor.trait_times[key] = at
            if once and key not in survivor.set_once:
                survivor.set_once.append(key)
            elif not once and key in survivor.set_once:
                survivor.set_once.remove(key)
    for key, at in other.trait_times.items():  # unsets carry their time too
        if key not in other.traits and key not in survivor.trait_times:
            survivor.trait_times[key] = at
    for type_name, values in other.identities.items():
        for value in values:
            add_identity(survivor, type_name, value)
    for purpose, entry in other.consent.items():
        current = survivor.consent.get(purpose)
        if current is None or current.at < entry.at:
            survivor.consent[purpose] = entry
    for world_id, world in other.worlds.items():
        if world_id in survivor.worlds:
            _merge_world(survivor.worlds[world_id], world)
        else:
            survivor.worlds[world_id] = world
    for session_id, session in other.sessions.items():
        survivor.sessions.setdefault(session_id, session)
    recent = sorted([*survivor.recent, *other.recent], key=lambda r: (r.at, r.offset))
    survivor.recent = recent[-RECENT_EVENTS:]
    for name, count in other.counters.items():
        survivor.counters[name] = survivor.counters.get(name, 0) + count
    survivor.merged_from = [*survivor.merged_from, other.id, *other.merged_from]
    survivor.sends = sorted([*survivor.sends, *other.sends])[-MAX_SENDS:]
    decisions = sorted([*survivor.decisions.items(), *other.decisions.items()],
                       key=lambda item: item[1].at)  # fmt: skip
    survivor.decisions = dict(decisions[-MAX_DECISIONS:])


profile_encoder = msgspec.json.Encoder()
profile_decoder = msgspec.json.Decoder(Profile)
