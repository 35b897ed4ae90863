"""What a journey's action step can do, and how more kinds are added (docs/JOURNEYS.md).

An action kind is a subclass of :class:`ActionKind` registered under the key that names it in
a step (``action: {webhook: crm, body: {…}}`` is kind ``webhook``). It checks its document when
the journey is applied (:meth:`ActionKind.check`, raising :class:`DefinitionError` with the
path), and when a run reaches it, the engine asks it to :meth:`~ActionKind.prepare` (None: not
to be taken, having counted why), applies the caps of its ``channel``, then calls
:meth:`~ActionKind.take`, which acts only through the :class:`Context`: deliveries for the
dispatcher (webhook, email or inworld rows of the outbox), events for the log, trait changes
and score points. Nothing else: an action reads no clock and sends nothing itself, so its
effects are committed with the run's state and replay decides them again identically.

Kinds beyond the built-in ones come from packages that declare an entry point in the group
``worldflow.actions`` naming an :class:`ActionKind` subclass, or from :func:`register`.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, ClassVar, Final

import msgspec

from worldflow.events.model import Event
from worldflow.journeys import templates
from worldflow.log import LogRecord
from worldflow.profiles import model
from worldflow.segments.definition import (
    EVENT_NAME,
    KEY,
    DefinitionError,
    _fields,
    parse_duration,
)

if TYPE_CHECKING:
    from worldflow.decide.definition import Offer
    from worldflow.journeys.definition import Journey, Step
    from worldflow.journeys.engine import Effects
    from worldflow.profiles.model import Profile, Run

log = logging.getLogger(__name__)

ENTRY_POINTS: Final = "worldflow.actions"
JOURNEY_SOURCE: Final = "_journeys"  # the source of the events journeys emit
DELIVERED_CHANNELS: Final = ("webhook", "email", "inworld")  # what the dispatcher delivers
_encode = msgspec.json.Encoder().encode


class Context:
    """One action being taken: who, where in which run, when, and the ways it may act."""

    def __init__(self, workspace_id: str, profile: Profile, journey: Journey, run: Run,
                 step: Step, now: int, effects: Effects,
                 offers: Mapping[str, Offer] | None = None) -> None:  # fmt: skip
        self.workspace_id = workspace_id
        self.offers = offers or {}  # the workspace's offers, by key
        self.profile = profile
        self.journey = journey
        self.run = run
        self.step = step
        self.now = now
        self.effects = effects
        self.changed = False  # traits or scores: the segments that read them move next

    @property
    def ident(self) -> str:
        """A hash of the workspace, journey, person, run and action number: the same in a
        retry after a crash and in replay, different for every action taken."""
        return hashlib.blake2b(
            f"{self.workspace_id}\0{self.journey.key}\0{self.profile.id}\0{self.run.count}"
            f"\0{self.run.actions}".encode(), digest_size=12).hexdigest()  # fmt: skip

    @property
    def at(self) -> str:
        return datetime.fromtimestamp(self.now / 1000, UTC).isoformat().replace("+00:00", "Z")

    def envelope(self) -> dict[str, Any]:
        """What a delivery says of its origin: the journey, step, run, time and person."""
        profile = self.profile
        return {"journey": self.journey.key, "version": self.journey.version,
                "step": self.step.id, "run": self.run.count, "at": self.at,
                "profile": {"id": profile.id, "user_id": first(profile, "user_id"),
                            "anonymous_id": first(profile, "anonymous_id"),
                            "traits": profile.traits}}  # fmt: skip

    def count(self, metric: str, n: int = 1) -> None:
        self.effects.count(self.workspace_id, self.journey, metric, n)

    def deliver(self, channel: str, destination: str, event_type: str,
                payload: dict[str, Any], prefix: str | None = None) -> str:  # fmt: skip
        """A row of the outbox for the dispatcher; its id."""
        if channel not in DELIVERED_CHANNELS:
            raise ValueError(f"{channel!r} is not a delivered channel: "
                             f"{', '.join(DELIVERED_CHANNELS)}")  # fmt: skip
        ident = f"{prefix or channel[:2]}_{self.ident}"
        self.effects.deliveries.append({
            "id": ident, "workspace_id": self.workspace_id, "channel": channel,
            "destination_id": destination, "event_type": event_type,
            "payload": json.dumps(payload, separators=(",", ":"), default=str),
            "created_ms": self.now, "state": "pending", "attempts": 0,
            "next_attempt_ms": self.now, "profile_id": self.profile.id})  # fmt: skip
        return ident

    def emit(self, name: str, properties: dict[str, Any]) -> str:
        """An event of the person, appended to the log (source ``_journeys``); its id."""
        ident = f"je_{self.ident}"
        moment = datetime.fromtimestamp(self.now / 1000, UTC)
        profile = self.profile
        event = Event(
            message_id=ident, workspace_id=self.workspace_id, source_id=JOURNEY_SOURCE,
            channel="journey", type="track", name=name, custom=True, tier=1, timestamp=moment,
            received_at=moment, properties={**properties, "journey": self.journey.key},
            user_id=first(profile, "user_id"), anonymous_id=first(profile, "anonymous_id"),
            context={"profile_id": profile.id},
        )  # fmt: skip
        self.effects.events.append(LogRecord(self.workspace_id, ident, 0, self.now,
                                             _encode(event)))  # fmt: skip
        return ident

    def set_traits(self, traits: dict[str, Any]) -> None:
        model.set_traits(self.profile, traits, self.now)
        self.effects.traits.setdefault(self.profile.id, set()).update(traits)
        self.changed = True

    def unset_traits(self, names: list[str]) -> None:
        model.unset_traits(self.profile, names, self.now)
        self.effects.traits.setdefault(self.profile.id, set()).update(names)
        self.changed = True

    def award(self, score: str, points: float) -> None:
        """Points to a score model (added by the processor, decayed as the model says)."""
        self.effects.awards.append((self.profile.id, score, float(points), self.now))
        self.changed = True


class ActionKind:
    """A kind of action. Subclasses set ``name`` and override :meth:`check` and :meth:`take`
    (and :meth:`prepare` when the action can be declined before the caps count it)."""

    name: ClassVar[str]  # the key that names it in an action step
    options: ClassVar[frozenset[str]] = frozenset()  # other keys the step may hold
    channel: ClassVar[str | None] = None  # caps count it under this channel
    quiet: ClassVar[bool] = False  # held back by quiet hours (a message, not the world)

    def check(self, spec: dict[str, Any], path: str) -> None:
        """Raise :class:`DefinitionError` (path, problem) when ``spec`` — the whole action
        object, ``{name: value, option: …}`` — is not right."""

    def prepare(self, spec: dict[str, Any], ctx: Context) -> Any:
        """What :meth:`take` needs, or None when the action is not to be taken for this
        person (count the reason with ``ctx.count``): before the caps, so it uses none."""
        return spec

    def take(self, prepared: Any, ctx: Context) -> None:
        raise NotImplementedError


class Webhook(ActionKind):
    name = "webhook"
    options = frozenset({"body"})
    channel = "webhook"
    quiet = True

    def check(self, spec: dict[str, Any], path: str) -> None:
        key(spec["webhook"], f"{path}.webhook", "a destination id")
        if not isinstance(spec.get("body", {}), dict):
            raise DefinitionError(f"{path}.body", "is an object, sent in the webhook's data")

    def take(self, spec: dict[str, Any], ctx: Context) -> None:
        ctx.deliver("webhook", spec["webhook"], "journey.action",
                    {**ctx.envelope(), "data": spec.get("body", {})}, "wh")  # fmt: skip
        ctx.count("actions:webhook")


class Email(ActionKind):
    name = "email"
    channel = "email"
    quiet = True

    def check(self, spec: dict[str, Any], path: str) -> None:
        at = f"{path}.email"
        parts = _fields(spec["email"], at, {"subject", "text", "html"})
        if "subject" not in parts or "text" not in parts:
            raise DefinitionError(at, "has a subject and a text (and may have an html)")
        for name, template in parts.items():
            if not isinstance(template, str) or not template.strip():
                raise DefinitionError(f"{at}.{name}", "is a template (a non-empty string)")
            try:
                templates.compiled(template, html=name == "html")
            except templates.TemplateError as exc:
                raise DefinitionError(f"{at}.{name}", f"not a template: {exc}") from None

    def prepare(self, spec: dict[str, Any], ctx: Context) -> dict[str, str] | None:
        """The e-mail rendered; None when the person has not agreed to marketing contact,
        has no address, or a template fails."""
        profile = ctx.profile
        consent = profile.consent.get("marketing_contact")
        if consent is None or not consent.granted:
            ctx.count("no_consent:email")
            return None
        to = profile.traits.get("email")
        if not isinstance(to, str) or "@" not in to or len(to) > 320:
            ctx.count("no_address:email")
            return None
        context = {"traits": profile.traits, "profile": {"id": profile.id},
                   "journey": ctx.journey.key, "step": ctx.step.id,
                   "now": datetime.fromtimestamp(ctx.now / 1000, UTC).isoformat()}  # fmt: skip
        try:
            parts = {name: templates.render(source, context, html=name == "html")
                     for name, source in spec["email"].items()}  # fmt: skip
        except Exception:  # a template's own error ({{ 1 / 0 }}) must not stop the processor
            ctx.count("template_error:email")
            return None
        return {"to": to, **parts}

    def take(self, mail: dict[str, str], ctx: Context) -> None:
        origin = {k: v for k, v in ctx.envelope().items() if k in ("journey", "version", "step",
                                                                   "run")}  # fmt: skip
        ctx.deliver("email", "smtp", "journey.email",
                    {**mail, **origin, "profile": {"id": ctx.profile.id}}, "em")  # fmt: skip
        ctx.count("actions:email")


class InWorld(ActionKind):
    name = "inworld"
    options = frozenset({"world", "expires"})
    channel = "inworld"

    def check(self, spec: dict[str, Any], path: str) -> None:
        if not isinstance(spec["inworld"], dict) or not spec["inworld"]:
            raise DefinitionError(
                f"{path}.inworld", "is an object: the in-world action (placement, content…)"
            )
        if "expires" in spec:
            parse_duration(spec["expires"], f"{path}.expires")
        action = spec["inworld"]
        if "offer" in action:
            key(action["offer"], f"{path}.inworld.offer", "the key of an offer")
        if "decide" in action:
            at = f"{path}.inworld"
            if action["decide"] is not True:
                raise DefinitionError(f"{at}.decide", "is true or absent")
            if not isinstance(action.get("placement"), str):
                raise DefinitionError(f"{at}.placement", "is required to decide: the "
                                      "placement to decide for")  # fmt: skip
            for other in ("content", "offer"):
                if other in action:
                    raise DefinitionError(f"{at}.{other}", "is decided: a decision chooses "
                                          "the content (remove decide or this)")  # fmt: skip

    def prepare(self, spec: dict[str, Any], ctx: Context) -> dict[str, Any] | None:
        """The action with the content of the offer it names (``offer: KEY`` without
        ``content``), as the offer is at this point of the log; None when that offer is not
        there, paused or not valid now."""
        action = spec["inworld"]
        key = action.get("offer")
        if not isinstance(key, str) or isinstance(action.get("content"), dict):
            return spec
        offer = ctx.offers.get(key)
        if offer is None or offer.status != "active" or not offer.valid_at(ctx.now):
            ctx.count("offer_unavailable:inworld")
            return None
        content = {"creative_id": key, **offer.content}
        return {**spec, "inworld": {**action, "content": content}}

    def take(self, spec: dict[str, Any], ctx: Context) -> None:
        payload = {**ctx.envelope(), "action": spec["inworld"], "world": spec.get("world"),
                   "expires": spec.get("expires")}  # fmt: skip
        ctx.deliver("inworld", spec.get("world") or "*", "journey.inworld", payload, "iw")
        ctx.count("actions:inworld")


class SetTraits(ActionKind):
    name = "set_traits"

    def check(self, spec: dict[str, Any], path: str) -> None:
        if not isinstance(spec["set_traits"], dict) or not spec["set_traits"]:
            raise DefinitionError(f"{path}.set_traits", "is an object of traits to set")

    def take(self, spec: dict[str, Any], ctx: Context) -> None:
        ctx.set_traits(spec["set_traits"])
        ctx.count("actions:traits")


class UnsetTraits(ActionKind):
    name = "unset_traits"

    def check(self, spec: dict[str, Any], path: str) -> None:
        value = spec["unset_traits"]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise DefinitionError(f"{path}.unset_traits", "is a list of trait names")

    def take(self, spec: dict[str, Any], ctx: Context) -> None:
        ctx.unset_traits(spec["unset_traits"])
        ctx.count("actions:traits")


class Award(ActionKind):
    name = "award"
    options = frozenset({"points"})

    def check(self, spec: dict[str, Any], path: str) -> None:
        key(spec["award"], f"{path}.award", "a score model key")
        points = spec.get("points")
        if isinstance(points, bool) or not isinstance(points, int | float):
            raise DefinitionError(f"{path}.points", f"{points!r} is not a number")

    def take(self, spec: dict[str, Any], ctx: Context) -> None:
        ctx.award(spec["award"], spec["points"])
        ctx.count("actions:award")


class Emit(ActionKind):
    name = "emit"
    options = frozenset({"properties"})
    channel = "emit"

    def check(self, spec: dict[str, Any], path: str) -> None:
        if not isinstance(spec["emit"], str) or not EVENT_NAME.fullmatch(spec["emit"]):
            raise DefinitionError(f"{path}.emit", f"{spec['emit']!r} is not an event name")
        if not isinstance(spec.get("properties", {}), dict):
            raise DefinitionError(f"{path}.properties", "is an object")

    def take(self, spec: dict[str, Any], ctx: Context) -> None:
        ctx.emit(spec["emit"], spec.get("properties", {}))
        ctx.count("actions:emit")


_KINDS: dict[str, ActionKind] = {}


def register(kind: type[ActionKind] | ActionKind) -> ActionKind:
    """Add an action kind (a class or an instance); a name taken already is refused."""
    found = kind() if isinstance(kind, type) else kind
    name = getattr(found, "name", None)
    if not isinstance(name, str) or not KEY.fullmatch(name):
        raise ValueError(f"action kind {found!r} has no name that is a key")
    if name in _KINDS and type(_KINDS[name]) is not type(found):
        raise ValueError(f"action kind {name!r} is registered already")
    _KINDS[name] = found
    return found


@functools.cache
def _plugins() -> None:
    for point in entry_points(group=ENTRY_POINTS):
        try:
            register(point.load())
        except Exception:  # a broken plugin leaves its kind out, not the processor down
            log.exception("action plugin %s could not be loaded", point.value)


def kinds() -> dict[str, ActionKind]:
    """Every action kind: the built-in ones, then those of installed plugins."""
    _plugins()
    return _KINDS


def channels() -> tuple[str, ...]:
    """The channels caps can name: those of the action kinds."""
    return tuple(dict.fromkeys(k.channel for k in kinds().values() if k.channel is not None))


def first(profile: Profile, type_name: str) -> str | None:
    values = profile.identities.get(type_name)
    return values[0] if values else None


def key(value: Any, path: str, what: str) -> str:
    if not isinstance(value, str) or not KEY.fullmatch(value):
        raise DefinitionError(path, f"{value!r} is not {what}")
    return value


for _kind in (Webhook, Email, InWorld, SetTraits, UnsetTraits, Award, Emit):
    register(_kind)
