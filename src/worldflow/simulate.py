"""Deterministic traffic of realistic visitors across the example worlds, and a runner.

A :class:`Simulation` turns a world model (``examples/worlds.yaml``) into Segment messages:
people of four personas (browsers, enthusiasts, buyers, event-goers) visit two or three worlds
on different platforms and devices, browse the web shop, log in somewhere along the way, shop,
talk to agents and attend a concert. Everything derives from the seed, so a run can be replayed
exactly; message ids also depend on the start time, so a later run is new traffic rather than a
wall of duplicates.

Conventions the processor relies on (every world message carries them):

- ``context.world = {"id", "scene", "scene_version"}`` (the web shop is world ``web-shop``),
  ``context.platform``, ``context.device_class``, ``context.session_id`` (new per session),
  ``context.zone`` while inside a zone, ``context.device = {"id"}``, ``context.timezone`` and
  ``context.locale``.
- One anonymousId per person and platform (a device), kept across sessions; once the person
  identifies on a device, its messages carry the userId too, as Segment SDKs do.
- Linking: ``identify`` with traits, ``identity.linked`` (email, platform_user, wallet; the
  id_hash is a SHA-256 hex of the identifier), ``wallet.connected`` and occasionally ``alias``.
  E-mail hashes are of the trimmed, lower-cased address.
- Some sessions end without ``session.ended`` (closed tabs, crashes, the end of the window).
- A small share of deliberately malformed messages (``malformed_rate``); their ids are
  collected in :attr:`Simulation.malformed_ids` as the messages are generated.
"""

from __future__ import annotations

import hashlib
import heapq
import random
import re
import time
import uuid
from collections import Counter
from collections.abc import Callable, Generator, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import yaml

from worldflow.client import Client, DeliveryError, iso_timestamp
from worldflow.events.catalogue import Catalogue

__all__ = [
    "PERSONAS",
    "Agent",
    "Device",
    "Money",
    "Person",
    "Placement",
    "Portal",
    "Product",
    "Simulation",
    "SimulationReport",
    "VirtualEvent",
    "WebShop",
    "World",
    "WorldModel",
    "Zone",
    "load_world_model",
    "run",
    "simulate_command",
]

PERSONAS = ("browser", "enthusiast", "buyer", "event_goer")
DEFAULT_MODEL = Path(__file__).resolve().parents[2] / "examples" / "worlds.yaml"
_CURRENCY_RE = re.compile(r"[A-Z][A-Z0-9_]{1,15}")

# --- World model -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Money:
    amount: str  # a decimal string, so cents stay exact
    currency: str

    def as_dict(self) -> dict[str, str]:
        return {"amount": self.amount, "currency": self.currency}


@dataclass(frozen=True, slots=True)
class Zone:
    id: str
    zone_type: str
    name: str


@dataclass(frozen=True, slots=True)
class Product:
    object_id: str  # "<scene>/<node>"
    node: str
    zone: str  # the zone the node path starts with
    sku: str
    name: str
    category: str
    price: Money
    tags: tuple[str, ...]
    slot: str | None  # try-on slot, from the category

    def obj(self) -> dict[str, Any]:
        """The catalogue's ``obj``; the category travels as the first tag."""
        return {
            "object_id": self.object_id,
            "product": {"sku": self.sku},
            "tags": [self.category, *self.tags],
        }


@dataclass(frozen=True, slots=True)
class Agent:
    id: str
    name: str
    zone: str
    role: str


@dataclass(frozen=True, slots=True)
class Placement:
    id: str
    zone: str
    campaign_id: str
    creatives: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Portal:
    zone: str
    uri: str
    destination_world: str


@dataclass(frozen=True, slots=True)
class VirtualEvent:
    id: str
    name: str
    stage: str  # zone id
    reactions: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class World:
    id: str
    name: str
    platforms: tuple[str, ...]
    scene: str
    scene_version: str
    app_version: str
    zones: tuple[Zone, ...]
    products: tuple[Product, ...]
    agents: tuple[Agent, ...] = ()
    placements: tuple[Placement, ...] = ()
    portals: tuple[Portal, ...] = ()
    events: tuple[VirtualEvent, ...] = ()

    def zone(self, zone_type: str) -> Zone | None:
        return next((z for z in self.zones if z.zone_type == zone_type), None)

    def in_zone(self, zone_id: str) -> tuple[Product, ...]:
        return tuple(p for p in self.products if p.zone == zone_id)


@dataclass(frozen=True, slots=True)
class WebShop:
    id: str
    scene: str
    url: str
    pages: tuple[tuple[str, str], ...]  # (name, path)


@dataclass(frozen=True, slots=True)
class WorldModel:
    worlds: Mapping[str, World]
    web_shop: WebShop
    personas: Mapping[str, float]  # persona → share of visitors


def load_world_model(path: str | Path | None = None) -> WorldModel:
    """Read a world model (default: the repository's ``examples/worlds.yaml``).

    Raises ValueError naming the first inconsistency: a zone type the catalogue does not know,
    a product outside any zone, an unknown persona or category, a malformed price."""
    source = Path(path) if path is not None else DEFAULT_MODEL
    if path is None and not source.exists():
        source = Path("examples/worlds.yaml")
    data = yaml.safe_load(source.read_text(encoding="utf-8"))
    zone_spec = Catalogue.default().get("zone.entered")
    zone_types = set(zone_spec.fields["zone_type"].choices) if zone_spec else set()
    slots: dict[str, str | None] = dict(data["categories"])
    personas = {str(k): float(v) for k, v in data["personas"].items()}
    if set(personas) - set(PERSONAS) or sum(personas.values()) <= 0:
        raise ValueError(f"personas must be among {', '.join(PERSONAS)} with positive shares")
    worlds: dict[str, World] = {}
    for world_id, w in data["worlds"].items():
        zones = tuple(Zone(z["id"], z["zone_type"], z.get("name", z["id"])) for z in w["zones"])
        zone_ids = {z.id for z in zones}
        for z in zones:
            if z.zone_type not in zone_types:
                raise ValueError(f"{world_id}: zone {z.id} has unknown type {z.zone_type!r}")
        products = tuple(_product(world_id, w["scene"], p, zone_ids, slots) for p in w["products"])
        world = World(
            id=world_id,
            name=w["name"],
            platforms=tuple(w["platforms"]),
            scene=w["scene"],
            scene_version=str(w.get("scene_version", "1")),
            app_version=str(w.get("app_version", "1.0.0")),
            zones=zones,
            products=products,
            agents=tuple(
                Agent(a["id"], a["name"], a["zone"], a.get("role", ""))
                for a in w.get("agents") or ()
            ),
            placements=tuple(
                Placement(p["id"], p["zone"], p["campaign_id"], tuple(p["creatives"]))
                for p in w.get("placements") or ()
            ),
            portals=tuple(
                Portal(p["zone"], p["uri"], p["destination_world"]) for p in w.get("portals") or ()
            ),
            events=tuple(
                VirtualEvent(e["id"], e["name"], e["stage"], tuple(e["reactions"]))
                for e in w.get("events") or ()
            ),
        )
        placed = [a.zone for a in world.agents] + [p.zone for p in world.placements]
        placed += [p.zone for p in world.portals] + [e.stage for e in world.events]
        for zone_id in placed:
            if zone_id not in zone_ids:
                raise ValueError(f"{world_id}: unknown zone {zone_id!r}")
        if world.zone("lobby") is None:
            raise ValueError(f"{world_id}: needs a lobby zone where visitors arrive")
        worlds[world_id] = world
    shop = data["web_shop"]
    web_shop = WebShop(
        shop["id"],
        shop["scene"],
        shop["url"].rstrip("/"),
        tuple((p["name"], p["path"]) for p in shop["pages"]),
    )
    return WorldModel(worlds, web_shop, personas)


def _product(
    world_id: str, scene: str, p: Mapping[str, Any], zones: set[str], slots: Mapping[str, Any]
) -> Product:
    zone = p["node"].split("/", 1)[0]
    if zone not in zones:
        raise ValueError(f"{world_id}: product {p['sku']} is not in a zone ({p['node']})")
    if p["category"] not in slots:
        raise ValueError(f"{world_id}: product {p['sku']} has unknown category {p['category']}")
    price = Money(str(p["price"]["amount"]), str(p["price"]["currency"]))
    Decimal(price.amount)  # raises on a malformed amount
    if not _CURRENCY_RE.fullmatch(price.currency):
        raise ValueError(f"{world_id}: product {p['sku']} has currency {price.currency!r}")
    return Product(
        object_id=f"{scene}/{p['node']}",
        node=p["node"],
        zone=zone,
        sku=p["sku"],
        name=p["name"],
        category=p["category"],
        price=price,
        tags=tuple(p.get("tags") or ()),
        slot=slots[p["category"]],
    )


# --- People ----------------------------------------------------------------------------------

_FIRST = ("Camille", "Lucas", "Emma", "Hugo", "Yuki", "Haruto", "Sofia", "Mateo", "Lena",
          "Jonas", "Olivia", "Noah", "Aiko", "Ren", "Giulia", "Marco", "Chloe", "Sami")  # fmt: skip
_LAST = ("Martin", "Bernard", "Tanaka", "Suzuki", "Smith", "Brown", "Schmidt", "Garcia",
         "Rossi", "Dubois", "Sato", "Wilson", "Fischer", "Lopez", "Moreau", "Kato")  # fmt: skip
_PLACES = (("fr-FR", "Europe/Paris"), ("en-GB", "Europe/London"), ("de-DE", "Europe/Berlin"),
           ("ja-JP", "Asia/Tokyo"), ("en-US", "America/New_York"), ("es-ES", "Europe/Madrid"),
           ("it-IT", "Europe/Rome"))  # fmt: skip
_DEVICE_CLASSES: dict[str, tuple[tuple[str, float], ...]] = {
    "webxr": (("hmd", 0.35), ("desktop", 0.45), ("mobile", 0.2)),
    "roblox": (("desktop", 0.5), ("mobile", 0.4), ("console", 0.1)),
    "decentraland": (("desktop", 1.0),),
    "unity": (("hmd", 0.5), ("desktop", 0.5)),
    "web": (("desktop", 0.55), ("mobile", 0.45)),
}


def _pick(rng: random.Random, weighted: Mapping[str, float]) -> str:
    return rng.choices(list(weighted), weights=list(weighted.values()))[0]


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Device:
    platform: str
    device_class: str
    anonymous_id: str
    device_id: str


@dataclass(frozen=True, slots=True)
class Person:
    index: int
    persona: str
    user_id: str
    first_name: str
    last_name: str
    email: str
    locale: str
    timezone: str
    plan: str
    worlds: tuple[str, ...]  # in the order first visited
    platforms: Mapping[str, str]  # world id → the platform this person uses there
    devices: Mapping[str, Device]  # platform (or "web") → device
    wallet: str | None  # an address, for Decentraland users who connect one
    seed: int  # behaviour


def _person(model: WorldModel, index: int, rng: random.Random) -> Person:
    persona = _pick(rng, model.personas)
    first, last = rng.choice(_FIRST), rng.choice(_LAST)
    locale, tz = rng.choice(_PLACES)
    worlds = list(model.worlds)
    shops = [w for w in worlds if model.worlds[w].zone("showroom")] or worlds
    stages = [w for w in worlds if model.worlds[w].events]
    if persona == "event_goer" and stages:
        chosen = [rng.choice(stages)]
        if rng.random() < 0.4:
            chosen.append(rng.choice([w for w in worlds if w not in chosen] or chosen))
    elif persona == "enthusiast":
        chosen = rng.sample(worlds, k=min(len(worlds), rng.choice((2, 2, 3))))
    elif persona == "buyer":
        chosen = rng.sample(shops, k=min(len(shops), rng.choice((1, 1, 2))))
    else:
        chosen = [rng.choice(shops)]
        if rng.random() < 0.25:
            chosen.append(rng.choice(worlds))
    chosen = list(dict.fromkeys(chosen))
    platforms: dict[str, str] = {}
    for world_id in chosen:
        platforms[world_id] = rng.choice(model.worlds[world_id].platforms)
    devices: dict[str, Device] = {}
    for platform in [*platforms.values(), "web"]:
        if platform not in devices:
            devices[platform] = Device(
                platform=platform,
                device_class=_pick(rng, dict(_DEVICE_CLASSES.get(platform, (("desktop", 1),)))),
                anonymous_id=_uuid(rng),
                device_id=f"{platform}-{rng.getrandbits(64):016x}",
            )
    wallet = f"0x{rng.getrandbits(160):040x}" if rng.random() < 0.7 else None
    return Person(
        index=index,
        persona=persona,
        user_id=f"usr_{rng.getrandbits(48):012x}",
        first_name=first,
        last_name=last,
        email=f"{first}.{last}{rng.randint(1, 999)}@example.com".lower(),
        locale=locale,
        timezone=tz,
        plan=_pick(rng, {"free": 0.6, "member": 0.3, "vip": 0.1}),
        worlds=tuple(chosen),
        platforms=platforms,
        devices=devices,
        wallet=wallet,
        seed=rng.getrandbits(64),
    )


# --- Simulation ------------------------------------------------------------------------------

_Item = tuple[float, int, int, dict[str, Any]]  # (seconds since start, person, seq, message)


# Deliberately malformed messages: (event, properties); the heartbeat goes without any id.
_MALFORMED: tuple[tuple[str | None, dict[str, Any]], ...] = (
    ("zone.entered", {"zone_id": 42}),  # wrong type
    ("object.viewed", {"view_ms": 1200}),  # required obj missing
    ("cart.item_added", {"obj": {"object_id": "x"}, "qty": 0,  # below the minimum
                         "money": {"amount": "twelve", "currency": "EUR"}}),  # not a decimal
    (None, {}),  # a track without an event name
    ("consent.updated", {"scopes": {"analytics": "yes"}}),  # map values must be booleans
    ("object.gaze_dwell", {"obj": {"object_id": "x"}, "source": "brain"}),  # not in the enum
    ("session.heartbeat", {"active_ms": 1000}),  # neither userId nor anonymousId
)  # fmt: skip


class _WindowClosed(Exception):
    """The simulated time ran out: the person's journey stops where it is."""


@dataclass(slots=True)
class _Visit:
    world: World | None  # None: the web shop
    login: bool = False
    buy: bool = False
    event: VirtualEvent | None = None  # attend it
    register: VirtualEvent | None = None  # register for it


class Simulation:
    """``avatars`` people over ``minutes`` of simulated time ending at ``start + minutes``."""

    def __init__(
        self,
        model: WorldModel,
        avatars: int,
        minutes: float,
        seed: int = 7,
        start: datetime | None = None,
        malformed_rate: float = 0.002,
    ) -> None:
        if avatars < 0 or minutes <= 0:
            raise ValueError("avatars must be >= 0 and minutes > 0")
        self.model = model
        self.seed = seed
        self.span_s = minutes * 60
        self.start = (start or datetime.now(UTC) - timedelta(minutes=minutes)).astimezone(UTC)
        self.malformed_rate = malformed_rate
        rng = random.Random(seed)
        self.people = [_person(model, i, rng) for i in range(avatars)]
        self.malformed_ids: set[str] = set()
        self.messages_by_persona: Counter[str] = Counter()
        catalogue = Catalogue.default()
        # Events an SDK still sends without analytics consent: the technical ones (tier 0).
        self.technical_events = frozenset(
            n for n in catalogue.names() if (spec := catalogue.get(n)) and spec.tier == 0
        )

    def persons_by_persona(self) -> dict[str, int]:
        return dict(Counter(p.persona for p in self.people))

    def messages(self) -> Iterator[dict[str, Any]]:
        """Every message in timestamp order (ties: by person, then as generated)."""
        self.malformed_ids = set()
        self.messages_by_persona = Counter()
        journeys = [_Journey(self, person).run() for person in self.people]
        for _, index, _, message in heapq.merge(*journeys):
            self.messages_by_persona[self.people[index].persona] += 1
            yield message


class _Journey:
    """One person's messages over the window, generated lazily in time order."""

    def __init__(self, sim: Simulation, person: Person) -> None:
        self.sim = sim
        self.p = person
        self.rng = random.Random(person.seed)
        # Ids vary with the start time (see the module docstring); malformed messages draw from
        # their own stream so that the rate does not change the valid traffic.
        self.ids = random.Random(f"{sim.seed}:{sim.start.isoformat()}:{person.index}")
        self.noise = random.Random(person.seed ^ 0x5EED)
        self.t = 0.0
        self.seq = 0
        self.device = person.devices["web"]
        self.ctx: dict[str, Any] = {}
        self.heartbeat_at: float | None = None
        self.identified: set[str] = set()  # platforms whose messages carry the userId
        self.linked: set[str] = set()  # platforms where the person logged in
        self.consent: dict[str, dict[str, bool]] = {}
        self.wallet_linked = False
        self.cart: list[tuple[Product, int]] = []  # of the current session
        self.cart_id = ""

    # --- Plan --------------------------------------------------------------------------------

    def run(self) -> Iterator[_Item]:
        try:
            yield from self._journey()
        except _WindowClosed:
            return

    def _journey(self) -> Iterator[_Item]:
        plan = self._plan()
        offsets = sorted(self.rng.uniform(0, self.sim.span_s * 0.85) for _ in plan)
        for visit, offset in zip(plan, offsets, strict=True):
            self.t = max(self.t + self.rng.uniform(20, 240), offset)
            if visit.world is None:
                yield from self._web_visit(visit)
            else:
                yield from self._world_session(visit)

    def _plan(self) -> list[_Visit]:
        rng, p = self.rng, self.p
        worlds = [self.sim.model.worlds[w] for w in p.worlds]
        visits: list[_Visit] = []
        if p.persona == "browser":
            visits = [_Visit(rng.choice(worlds)) for _ in range(rng.randint(1, 2))]
            visits[0].world = worlds[0]
            if rng.random() < 0.25:
                visits.insert(0, _Visit(None))
            if rng.random() < 0.08:
                rng.choice(visits).login = True
        elif p.persona == "enthusiast":
            order = worlds + [rng.choice(worlds) for _ in range(rng.randint(1, 3))]
            visits = [_Visit(w) for w in order]
            if rng.random() < 0.75:
                visits[1].login = True
            if rng.random() < 0.15:
                visits[-1].buy = True
            if rng.random() < 0.2:
                visits.insert(rng.randint(0, len(visits)), _Visit(None))
        elif p.persona == "buyer":
            order = worlds + [rng.choice(worlds) for _ in range(rng.randint(0, 2))]
            visits = [_Visit(w) for w in order]
            visits[-1].buy = rng.random() < 0.9
            visits[-1].login = True  # checkout asks for an account
            if rng.random() < 0.6:
                visits.insert(0, _Visit(None, login=rng.random() < 0.3))
        else:  # event_goer
            hall = next(w for w in worlds if w.events) if any(w.events for w in worlds) else None
            if hall is None:
                return [_Visit(w) for w in worlds]
            event = rng.choice(hall.events)
            register = _Visit(None) if rng.random() < 0.6 else _Visit(hall)
            register.register = event
            register.login = True
            attend = _Visit(hall, event=event, buy=rng.random() < 0.3)
            visits = [register, attend]
            for other in worlds:
                if other is not hall:
                    visits.insert(rng.randint(0, len(visits)), _Visit(other))
        return visits

    # --- Messages ----------------------------------------------------------------------------

    def _message(self, kind: str, **fields: Any) -> dict[str, Any]:
        message: dict[str, Any] = {
            "type": kind,
            "messageId": _uuid(self.ids),
            "timestamp": iso_timestamp(self.sim.start + timedelta(seconds=self.t)),
            "anonymousId": self.device.anonymous_id,
            "context": dict(self.ctx),
            **fields,
        }
        if self.device.platform in self.identified:
            message["userId"] = self.p.user_id
        return message

    def _item(self, message: dict[str, Any]) -> _Item:
        self.seq += 1
        return (self.t, self.p.index, self.seq, message)

    def _emit(self, kind: str, **fields: Any) -> Iterator[_Item]:
        if self.t > self.sim.span_s:
            raise _WindowClosed
        now = self.t
        while self.heartbeat_at is not None and self.heartbeat_at <= now:
            self.t = self.heartbeat_at
            active = self.rng.randint(35_000, 60_000)
            beat = self._message(
                "track",
                event="session.heartbeat",
                properties={"active_ms": active, "idle_ms": 60_000 - active},
            )
            yield self._item(beat)
            self.heartbeat_at += 60
        self.t = now
        message = self._message(kind, **fields)
        yield self._item(message)
        if self.noise.random() < self.sim.malformed_rate:
            broken = self._malformed(message)
            self.sim.malformed_ids.add(broken["messageId"])
            yield self._item(broken)

    def _track(self, event: str, **properties: Any) -> Iterator[_Item]:
        consent = self.consent.get(self.device.platform, {})
        if event not in self.sim.technical_events and not consent.get("analytics", True):
            return  # the SDK sends only technical events without analytics consent
        yield from self._emit("track", event=event, properties=properties)

    def _wait(self, low: float, high: float) -> None:
        self.t += self.rng.uniform(low, high)

    def _malformed(self, valid: dict[str, Any]) -> dict[str, Any]:
        """A broken message the server must quarantine, in the context of a valid one."""
        message = {k: valid[k] for k in ("timestamp", "anonymousId", "context")}
        # Derived from its neighbour's id, so that the valid traffic draws the same ids at any rate.
        message["messageId"] = str(
            uuid.uuid5(uuid.NAMESPACE_URL, f"malformed:{valid['messageId']}")
        )
        event, properties = self.noise.choice(_MALFORMED)
        if event == "session.heartbeat":
            del message["anonymousId"]
        return {**message, "type": "track", "event": event, "properties": properties}

    # --- Sessions ----------------------------------------------------------------------------

    def _context(self, world_id: str, scene: str, version: str) -> dict[str, Any]:
        d = self.device
        return {
            "world": {"id": world_id, "scene": scene, "scene_version": version},
            "platform": d.platform,
            "device_class": d.device_class,
            "session_id": _uuid(self.ids),
            "device": {"id": d.device_id},
            "timezone": self.p.timezone,
            "locale": self.p.locale,
        }

    def _consent_once(self, source: str) -> Iterator[_Item]:
        platform = self.device.platform
        if platform in self.consent:
            return
        rng = self.rng
        gpc = source == "ui" and platform == "web" and rng.random() < 0.1
        scopes = {
            "analytics": rng.random() < 0.96,
            "personalisation": rng.random() < 0.7,
            "marketing_contact": not gpc and rng.random() < 0.45,
        }
        if self.device.device_class == "hmd":
            scopes["gaze"] = rng.random() < 0.15
            scopes["motion"] = rng.random() < 0.3
        self.consent[platform] = scopes
        yield from self._track(
            "consent.updated",
            scopes=scopes,
            policy_version="2025-03",
            source="gpc" if gpc else source,
        )

    def _login(self, method: str) -> Iterator[_Item]:
        """Log in on the current device: identify (mostly), then the hashed identifiers."""
        platform, p, rng = self.device.platform, self.p, self.rng
        if platform in self.linked:
            return
        self.linked.add(platform)
        consent = self.consent.get(platform, {})
        if rng.random() < 0.9 and consent.get("analytics", True):
            self.identified.add(platform)
            traits = {
                "email": p.email,
                "name": f"{p.first_name} {p.last_name}",
                "first_name": p.first_name,
                "last_name": p.last_name,
                "locale": p.locale,
                "plan": p.plan,
            }
            yield from self._emit("identify", traits=traits)
            if rng.random() < 0.12:
                yield from self._emit("alias", previousId=self.device.anonymous_id)
        if platform in ("roblox", "unity"):
            account = _sha256(f"{platform}:{p.user_id}")
            yield from self._track(
                "identity.linked",
                id_type="platform_user",
                id_hash=account,
                method="oauth" if platform == "roblox" else "login",
            )
        yield from self._track(
            "identity.linked",
            id_type="email",
            method=method,
            id_hash=_sha256(p.email.strip().lower()),
        )

    def _web_visit(self, visit: _Visit) -> Iterator[_Item]:
        shop = self.sim.model.web_shop
        self.device = self.p.devices["web"]
        self.ctx = self._context(shop.id, shop.scene, "1")
        rng = self.rng
        yield from self._consent_once("ui")
        pages = [shop.pages[0], *rng.sample(shop.pages[1:], k=rng.randint(1, 3))]
        if visit.register is not None:  # registration ends on the events page
            events = [pg for pg in shop.pages if pg[0] == "Events"]
            pages = [pg for pg in pages if pg not in events] + events
        referrer = rng.choice(("https://www.google.com/", "https://mail.example.net/", ""))
        for name, path in pages:
            yield from self._page(shop, name, path, referrer)
            referrer = f"{shop.url}{path}"
            self._wait(5, 90)
        if self.p.persona == "buyer":
            world = self.sim.model.worlds[self.p.worlds[0]]
            product = rng.choice(world.products)
            yield from self._page(
                shop, "Product", f"/p/{product.sku.lower()}", referrer, sku=product.sku
            )
            self._wait(20, 120)
        if visit.login:
            yield from self._login("form")
        if visit.register is not None:
            yield from self._login("form")
            yield from self._track("event.registered", event_id=visit.register.id, channel="web")
        self.ctx = {}

    def _page(
        self, shop: WebShop, name: str, path: str, referrer: str, **extra: Any
    ) -> Iterator[_Item]:
        consent = self.consent.get("web", {})
        if not consent.get("analytics", True):
            return
        page = {
            "path": path,
            "url": f"{shop.url}{path}",
            "title": f"{name} · Worldflow Shop",
            "referrer": referrer,
        }
        self.ctx["page"] = page
        yield from self._emit("page", name=name, category="shop", properties={**page, **extra})

    def _world_session(self, visit: _Visit) -> Iterator[_Item]:
        world, p, rng = visit.world, self.p, self.rng
        assert world is not None
        self.device = p.devices[p.platforms[world.id]]
        platform = self.device.platform
        self.ctx = self._context(world.id, world.scene, world.scene_version)
        self.cart, self.cart_id = [], f"cart_{self.ids.getrandbits(40):010x}"
        began = self.t
        self.heartbeat_at = began + 60
        started: dict[str, Any] = {"app_version": world.app_version}
        if visit.event is not None:
            started["entry_point"] = "event"
        else:
            started["entry_point"] = _pick(
                rng, {"direct": 0.5, "link": 0.15, "campaign": 0.2, "portal": 0.15}
            )
            if started["entry_point"] == "campaign" and world.placements:
                started["campaign_id"] = rng.choice(world.placements).campaign_id
            if started["entry_point"] == "portal":
                others = [w for w in self.sim.model.worlds if w != world.id]
                started["referrer_world"] = rng.choice(others or [world.id])
        yield from self._track("session.started", **started)
        yield from self._consent_once("platform" if platform == "roblox" else "ui")
        if platform == "decentraland" and p.wallet and not self.wallet_linked:
            self.wallet_linked = True
            address = _sha256(p.wallet.lower())
            yield from self._track(
                "wallet.connected",
                chain_id="eip155:1",
                address_hash=address,
                wallet_type=rng.choice(("metamask", "walletconnect")),
            )
            yield from self._track(
                "identity.linked", id_type="wallet", id_hash=address, method="wallet_sign"
            )
        # Someone known elsewhere usually logs in on a new device too: this is what lets the
        # processor stitch their worlds together.
        relogin = bool(self.linked) and platform not in self.linked and rng.random() < 0.85
        if relogin or (visit.login and not visit.buy and rng.random() < 0.5):
            yield from self._login("login" if platform != "decentraland" else "form")
        route = self._route(world, visit)
        for i, zone in enumerate(route):
            after = route[i + 1].id if i + 1 < len(route) else None
            left = yield from self._zone(world, zone, route[i - 1].id if i else None, after, visit)
            if left:
                break
        self.heartbeat_at = None
        if visit.login and platform not in self.linked:
            yield from self._login("login")
        # Closed tabs, crashes and backgrounded apps never say goodbye.
        if rng.random() < 0.85:
            self._wait(1, 10)
            reason = {"hmd": "xr_end", "mobile": "background"}.get(self.device.device_class, "quit")
            yield from self._track(
                "session.ended", reason=reason, duration_ms=int((self.t - began) * 1000)
            )
        self.ctx = {}

    def _route(self, world: World, visit: _Visit) -> list[Zone]:
        rng, persona = self.rng, self.p.persona
        lobby = world.zone("lobby")
        assert lobby is not None
        inner = [z for z in world.zones if z.zone_type in ("showroom", "booth") and z is not lobby]
        count = {"browser": (1, 2), "enthusiast": (3, 5), "buyer": (2, 3), "event_goer": (1, 2)}
        low, high = count[persona]
        route = [lobby, *rng.sample(inner, k=min(len(inner), rng.randint(low, high)))]
        if visit.event is not None:
            stage = next(z for z in world.zones if z.id == visit.event.stage)
            route.insert(1, stage)
        extras = [z for z in world.zones if z.zone_type == "portal_hub"]
        if extras and rng.random() < 0.25:
            route.append(extras[0])
        checkout = world.zone("checkout")
        if visit.buy and checkout is not None:
            route.append(checkout)
        return list(dict.fromkeys(route))

    def _zone(
        self, world: World, zone: Zone, came_from: str | None, going_to: str | None, visit: _Visit
    ) -> Generator[_Item, None, bool]:
        """A stay in one zone; returns True when the visitor left the world through a portal."""
        rng, persona = self.rng, self.p.persona
        entered = self.t
        self.ctx["zone"] = zone.id
        props: dict[str, Any] = {"zone_id": zone.id, "zone_type": zone.zone_type}
        if came_from:
            props["from_zone"] = came_from
        yield from self._track("zone.entered", **props)
        self._wait(2, 15)
        for placement in (pl for pl in world.placements if pl.zone == zone.id):
            if rng.random() < 0.6:
                yield from self._track(
                    "content.impression",
                    placement_id=placement.id,
                    creative_id=rng.choice(placement.creatives),
                    campaign_id=placement.campaign_id,
                    visible_ms=rng.randint(800, 12_000),
                    max_screen_frac=round(rng.uniform(0.05, 0.6), 3),
                )
        if visit.register is not None and zone.zone_type == "lobby":
            yield from self._login("form")
            yield from self._track(
                "event.registered", event_id=visit.register.id, channel="in_world"
            )
        if visit.event is not None and zone.id == visit.event.stage:
            yield from self._attend(visit.event, zone)
        products = list(world.in_zone(zone.id))
        rng.shuffle(products)
        take = {"browser": 2, "enthusiast": len(products), "buyer": 3, "event_goer": 2}[persona]
        for product in products[:take]:
            yield from self._product(product, visit)
        if visit.buy and not self.cart and products:
            yield from self._add_to_cart(products[0])
        for agent in (a for a in world.agents if a.zone == zone.id):
            chance = {"browser": 0.05, "enthusiast": 0.6, "buyer": 0.3, "event_goer": 0.15}
            if rng.random() < chance[persona]:
                yield from self._conversation(world, agent)
        buying_here = zone.zone_type == "checkout" or (
            world.zone("checkout") is None and zone.zone_type == "booth"
        )
        if visit.buy and self.cart and buying_here:
            if visit.login and self.device.platform not in self.linked:
                yield from self._login("login")
            yield from self._checkout(world)
        portal = next((pt for pt in world.portals if pt.zone == zone.id), None)
        through = portal is not None and rng.random() < 0.3
        if portal is not None and through:
            yield from self._track(
                "portal.traversed", uri=portal.uri, destination_world=portal.destination_world
            )
        self._wait(2, 20)
        exited: dict[str, Any] = {"zone_id": zone.id, "dwell_ms": int((self.t - entered) * 1000)}
        if going_to and not through:
            exited["to_zone"] = going_to
        yield from self._track("zone.exited", **exited)
        self.ctx.pop("zone", None)
        self._wait(3, 25)
        return through

    def _product(self, product: Product, visit: _Visit) -> Iterator[_Item]:
        rng, persona, dev = self.rng, self.p.persona, self.device
        obj = product.obj()
        keen = persona == "enthusiast"
        view_s = rng.uniform(8, 60) if keen else rng.uniform(2, 20)
        yield from self._track(
            "object.viewed",
            obj=obj,
            view_ms=int(view_s * 1000),
            max_screen_frac=round(rng.uniform(0.02, 0.7), 3),
            distance_bucket=rng.choice(("touch", "near", "near", "mid", "far")),
        )
        self.t += view_s
        gaze = {"browser": 0.3, "enthusiast": 0.9, "buyer": 0.6, "event_goer": 0.3}[persona]
        if rng.random() < gaze:
            source = "head"
            eye_ok = self.consent.get(dev.platform, {}).get("gaze", False)
            if dev.device_class == "hmd" and eye_ok and rng.random() < 0.6:
                source = "eye"
            elif dev.device_class == "mobile" and rng.random() < 0.3:
                source = "pointer"
            dwell = rng.randint(2_000, 15_000) if keen else rng.randint(400, 5_000)
            yield from self._track(
                "object.gaze_dwell",
                obj=obj,
                source=source,
                dwell_ms=dwell,
                fixations=max(1, dwell // rng.randint(400, 1500)),
                ttff_ms=rng.randint(100, 2_500),
            )
        grab = {"browser": 0.1, "enthusiast": 0.6, "buyer": 0.4, "event_goer": 0.15}[persona]
        if rng.random() < (grab if dev.device_class == "hmd" else grab / 3):
            hold = rng.randint(1_500, 20_000)
            yield from self._track(
                "object.grabbed", obj=obj, hold_ms=hold, inspected=rng.random() < 0.6
            )
            self.t += hold / 1000
        detail = {"browser": 0.1, "enthusiast": 0.6, "buyer": 0.7, "event_goer": 0.2}[persona]
        if rng.random() < detail:
            yield from self._track(
                "product.detail_opened",
                obj=obj,
                panel=rng.choice(("specs", "sizes", "reviews", "materials")),
            )
            self._wait(5, 40)
        try_on = {"browser": 0.03, "enthusiast": 0.5, "buyer": 0.45, "event_goer": 0.2}[persona]
        if product.slot and rng.random() < try_on:
            wear = rng.randint(5_000, 60_000)
            yield from self._track("product.tried_on", obj=obj, slot=product.slot, duration_ms=wear)
            self.t += wear / 1000
        wants = 0.5 if visit.buy else (0.08 if keen else 0.0)
        if len(self.cart) < 3 and rng.random() < wants:
            yield from self._add_to_cart(product)
        self._wait(2, 12)

    def _add_to_cart(self, product: Product) -> Iterator[_Item]:
        qty = 1 if self.rng.random() < 0.85 else 2
        self.cart.append((product, qty))
        yield from self._track(
            "cart.item_added",
            obj=product.obj(),
            qty=qty,
            money=product.price.as_dict(),
            cart_id=self.cart_id,
        )
        self._wait(3, 15)

    def _checkout(self, world: World) -> Iterator[_Item]:
        rng = self.rng
        items = [{"sku": pr.sku, "qty": qty, "money": pr.price.as_dict()} for pr, qty in self.cart]
        currency = self.cart[0][0].price.currency
        total = sum((Decimal(pr.price.amount) * qty for pr, qty in self.cart), Decimal(0))
        value = {"amount": f"{total:.2f}", "currency": currency}
        order_id = f"ord_{self.ids.getrandbits(40):010x}"
        rail = {"roblox": "platform", "unity": "platform", "decentraland": "wallet"}
        yield from self._track(
            "checkout.started",
            cart_value=value,
            items_count=sum(q for _, q in self.cart),
            rail=rail.get(self.device.platform, rng.choice(("web_handoff", "shopify"))),
            order_id=order_id,
            items=items,
        )
        self._wait(30, 180)
        if rng.random() < 0.9:
            twin = rng.random() < 0.5
            yield from self._track(
                "order.completed",
                order_id=order_id,
                items=items,
                total=value,
                physical=True,
                twin_granted=twin,
            )
            if twin:
                for product, _ in self.cart:
                    yield from self._track(
                        "virtual_item.granted",
                        item_sku=f"{product.sku}-TWIN",
                        reason="purchase_twin",
                        order_id=order_id,
                    )
            self.cart = []
        self._wait(5, 30)

    def _conversation(self, world: World, agent: Agent) -> Iterator[_Item]:
        rng = self.rng
        conversation = _uuid(self.ids)
        began = self.t
        yield from self._track(
            "agent.conversation_started", agent_id=agent.id, conversation_id=conversation
        )
        turns = rng.randint(2, 12)
        self.t += turns * rng.uniform(6, 20) / 2
        if rng.random() < 0.5:
            skus = sorted(
                {pr.sku for pr in rng.sample(world.products, k=min(2, len(world.products)))}
            )
            yield from self._track(
                "agent.intent_detected",
                agent_id=agent.id,
                conversation_id=conversation,
                intent=rng.choice(("product_question", "price", "availability")),
                products=skus,
            )
        self.t += turns * rng.uniform(6, 20) / 2
        outcome = _pick(rng, {"answered": 0.6, "lead": 0.15, "handoff": 0.05, "abandoned": 0.2})
        yield from self._track(
            "agent.conversation_ended",
            agent_id=agent.id,
            conversation_id=conversation,
            turns=turns,
            duration_ms=int((self.t - began) * 1000),
            outcome=outcome,
        )
        self._wait(2, 10)

    def _attend(self, event: VirtualEvent, zone: Zone) -> Iterator[_Item]:
        rng = self.rng
        arrived = self.t
        yield from self._track("event.checked_in", event_id=event.id, stage=zone.id)
        until = self.t + rng.uniform(5, 35) * 60
        while self.t < until:
            self.t += 10  # reactions are aggregated per 10 s
            if rng.random() < 0.3:
                yield from self._track(
                    "event.reaction",
                    event_id=event.id,
                    reaction=rng.choice(event.reactions),
                    count=rng.randint(1, 15),
                )
            if rng.random() < 0.01:
                yield from self._track(
                    "event.question_asked", event_id=event.id, length_chars=rng.randint(15, 220)
                )
            if rng.random() < 0.02:
                yield from self._track(
                    "chat.message_sent", channel="public", length_chars=rng.randint(2, 120)
                )
        yield from self._track(
            "event.left",
            event_id=event.id,
            stage=zone.id,
            attended_ms=int((self.t - arrived) * 1000),
        )


# --- Runner ----------------------------------------------------------------------------------


@dataclass(slots=True)
class SimulationReport:
    """What a run generated and what the server made of it (counts are messages)."""

    persons: int = 0
    persons_by_persona: dict[str, int] = field(default_factory=dict)
    messages: int = 0  # generated so far
    messages_by_persona: dict[str, int] = field(default_factory=dict)
    malformed: int = 0  # deliberately malformed among them
    sent: int = 0
    accepted: int = 0
    duplicates: int = 0
    rejected: int = 0
    failed: int = 0
    unexpected_rejections: list[dict[str, Any]] = field(default_factory=list)  # valid but refused
    malformed_accepted: int = 0  # malformed but not refused
    error: str | None = None  # why the run stopped early
    elapsed_s: float = 0.0
    done: bool = False

    @property
    def rate(self) -> float:
        return self.sent / self.elapsed_s if self.elapsed_s > 0 else 0.0


def run(
    url: str,
    write_key: str,
    avatars: int,
    minutes: float,
    *,
    seed: int = 7,
    rate: float | None = None,
    on_progress: Callable[[SimulationReport], None] | None = None,
    model: WorldModel | None = None,
    start: datetime | None = None,
    malformed_rate: float = 0.002,
    progress_every_s: float = 0.5,
) -> SimulationReport:
    """Generate a simulation and send it through :class:`worldflow.client.Client`.

    ``rate`` caps messages per second (None: as fast as the server takes them). The run stops
    early, with ``error`` set, if the server cannot be reached or refuses a batch."""
    sim = Simulation(
        model or load_world_model(), avatars, minutes, seed=seed, start=start,
        malformed_rate=malformed_rate,
    )  # fmt: skip
    report = SimulationReport(persons=len(sim.people), persons_by_persona=sim.persons_by_persona())
    began = time.monotonic()
    next_progress = began + progress_every_s
    errors: list[DeliveryError] = []

    def update(client: Client) -> None:
        stats = client.stats()
        report.sent, report.accepted = stats["sent"], stats["accepted"]
        report.duplicates, report.rejected = stats["duplicates"], stats["rejected"]
        report.failed = stats["failed"]
        report.malformed = len(sim.malformed_ids)
        report.messages_by_persona = dict(sim.messages_by_persona)
        report.elapsed_s = time.monotonic() - began

    # A short blocking queue makes the generator wait for the server. Retries are quick: a
    # local server that stops answering for seconds is gone (Retry-After is honoured anyway).
    with Client(
        url, write_key, block=True, max_queue=400, flush_interval=0.2, max_retries=4,
        backoff_base=0.25, on_error=lambda error, _: errors.append(error),
    ) as client:  # fmt: skip
        try:
            client.ping()
        except DeliveryError as exc:
            errors.append(exc)
        messages = sim.messages()
        while not errors:
            message = next(messages, None)
            if message is None:
                break
            client.send(message)
            report.messages += 1
            if rate:
                ahead = began + report.messages / rate - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)
            if on_progress is not None and time.monotonic() >= next_progress:
                next_progress = time.monotonic() + progress_every_s
                update(client)
                on_progress(report)
        if errors:  # what is still queued would fail the same way
            client.close(discard=True)
        client.flush()
        update(client)
        refused = {r.get("messageId") for r in client.rejections}
        report.unexpected_rejections = [
            r for r in client.rejections if r.get("messageId") not in sim.malformed_ids
        ]
        report.malformed_accepted = len(sim.malformed_ids - refused)
    if errors:
        report.error = str(errors[0])
    report.done = True
    if on_progress is not None:
        on_progress(report)
    return report


def simulate_command(
    url: str, write_key: str, avatars: int, minutes: float, seed: int, rate: float | None
) -> SimulationReport:
    """Run a simulation against a server and print a summary.

    Raises ``typer.Exit(1)`` when messages were lost or valid ones refused."""
    import typer
    from rich.console import Console
    from rich.table import Table

    console = Console()
    with console.status("simulating…") as status:

        def progress(report: SimulationReport) -> None:
            status.update(
                f"simulating… {report.messages} generated, {report.accepted} accepted, "
                f"{report.rejected} quarantined ({report.rate:.0f}/s)"
            )

        report = run(url, write_key, avatars, minutes, seed=seed, rate=rate, on_progress=progress)
    table = Table(title=f"Simulated {report.persons} visitors over {minutes:g} minutes")
    table.add_column("")
    table.add_column("count", justify="right")
    for persona in PERSONAS:
        persons = report.persons_by_persona.get(persona, 0)
        messages = report.messages_by_persona.get(persona, 0)
        table.add_row(f"{persona.replace('_', '-')}s", f"{persons} ({messages} messages)")
    table.add_section()
    table.add_row("messages sent", str(report.sent))
    table.add_row("accepted", str(report.accepted))
    table.add_row("duplicates", str(report.duplicates))
    table.add_row("quarantined (deliberately malformed)", f"{report.rejected} ({report.malformed})")
    table.add_row("failed to deliver", str(report.failed))
    table.add_row("rate", f"{report.rate:.0f} messages/s in {report.elapsed_s:.1f} s")
    console.print(table)
    if report.error:
        console.print(f"[red]stopped:[/red] {report.error}")
    for rejection in report.unexpected_rejections[:5]:
        errors = "; ".join(f"{e.get('field')}: {e.get('message')}" for e in rejection["errors"])
        console.print(f"[red]valid message refused[/red] {rejection.get('code')}: {errors}")
    if report.error or report.failed or report.unexpected_rejections or report.malformed_accepted:
        raise typer.Exit(1)
    return report
