"""The privacy gate at the processor's edge: what of an event may reach a profile.

- p3 raw telemetry (pose and gaze sample batches) is never joined to a profile; a workspace
  that has not enabled it (``raw_telemetry``) also has it counted as refused.
- When a person has refused ``analytics``, behavioural events (p1, p2) do not reach their
  profile; technical ones (p0: sessions, consent itself) still do.
- A p2 occurrence whose catalogue rule names a consent purpose (eye-tracked gaze needs
  ``gaze``) keeps its sensitive fields only when that purpose was granted; otherwise they are
  dropped (minimised) and counted.
- What is kept of an event in the profile's recent events never holds PII or pseudonymous
  fields, and any e-mail address left in its properties is replaced by its hash.
"""

from __future__ import annotations

import enum
import re
from typing import Any

from worldflow.events.catalogue import EventSpec
from worldflow.identity.types import email_hash
from worldflow.profiles.model import Profile, consents


class Verdict(enum.Enum):
    KEEP = "kept"
    MINIMISE = "minimised"
    SUPPRESS = "suppressed_no_consent"  # analytics refused
    REFUSE = "refused_raw_telemetry"
    SKIP = "raw_telemetry_not_joined"


def verdict(tier: int, spec: EventSpec | None, properties: dict[str, Any], profile: Profile,
            raw_telemetry: bool) -> Verdict:  # fmt: skip
    if tier >= 3:
        return telemetry(raw_telemetry)
    if tier >= 1 and consents(profile, "analytics") is False:
        return Verdict.SUPPRESS
    if tier == 2 and spec is not None:
        purpose = spec.consent_for(properties)
        if purpose is not None and consents(profile, purpose) is not True:
            return Verdict.MINIMISE
    return Verdict.KEEP


def telemetry(raw_telemetry: bool) -> Verdict:
    """What becomes of p3 telemetry: never joined to a profile, and refused where not enabled."""
    return Verdict.SKIP if raw_telemetry else Verdict.REFUSE


def minimise(spec: EventSpec, properties: dict[str, Any]) -> dict[str, Any]:
    drop = spec.sensitive_fields
    return {k: v for k, v in properties.items() if k not in drop}


_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
# Keys whose values are personal data by name, whatever the catalogue says of custom events.
_PERSONAL_KEYS = frozenset({"email", "phone", "name", "first_name", "last_name", "firstName",
                            "lastName", "address", "ip", "password"})  # fmt: skip


_personal_by_event: dict[str, tuple[str, ...]] = {}


def _personal(spec: EventSpec) -> tuple[str, ...]:
    found = _personal_by_event.get(spec.name)
    if found is None:
        found = _personal_by_event[spec.name] = spec.personal_fields
    return found


def _scrub(value: Any, depth: int = 0) -> Any:
    if isinstance(value, str):
        return "sha256:" + email_hash(value) if _EMAIL.fullmatch(value) else value
    if depth > 4:
        return None
    if isinstance(value, dict):
        return {k: _scrub(v, depth + 1) for k, v in value.items() if k not in _PERSONAL_KEYS}
    if isinstance(value, list):
        return [_scrub(v, depth + 1) for v in value[:20]]
    return value


def for_history(spec: EventSpec | None, properties: dict[str, Any], raw: bytes) -> dict[str, Any]:
    """The properties worth keeping in a profile's recent events; ``raw`` is the event as
    logged: the deep scrub of nested values runs only when an address may be in it."""
    personal = _personal(spec) if spec is not None else ()
    if b"@" in raw:
        scrubbed: dict[str, Any] = _scrub(
            {k: v for k, v in properties.items() if k not in personal}
        )
        return scrubbed
    if personal or not _PERSONAL_KEYS.isdisjoint(properties):
        return {
            k: v for k, v in properties.items() if k not in personal and k not in _PERSONAL_KEYS
        }
    return properties
