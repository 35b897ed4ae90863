"""Identity types and the identities an event carries.

Each type has a priority (which identity decides the profile when several resolve), whether it
may merge two profiles, and whether a profile may hold more than one value of it. Guarding
against over-merging: a shared headset or kiosk reports one device id for many people, so
``device_id`` never merges; a profile holds one ``user_id``, so two known users are never
merged by an anonymous id they happened to share.

E-mail addresses are identities only as a SHA-256 of the trimmed lower-cased address (the same
hash the SDKs send in ``identity.linked``), so the identity table never holds one in clear.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from worldflow.events.model import LoggedEvent


@dataclass(frozen=True, slots=True)
class IdentityType:
    name: str
    priority: int  # lower decides first
    merge: bool = True  # may link two profiles into one
    unique: bool = False  # a profile holds at most one value


DEFAULT_TYPES: Mapping[str, IdentityType] = {
    t.name: t
    for t in (
        IdentityType("user_id", 0, unique=True),
        IdentityType("crm_id", 1, unique=True),
        IdentityType("email", 2),
        IdentityType("platform_user", 3),
        IdentityType("wallet", 4),
        IdentityType("anonymous_id", 5),
        IdentityType("device_id", 6, merge=False),
    )
}

# identity.linked id_type → identity type
_LINKED = {"platform_user": "platform_user", "wallet": "wallet", "crm": "crm_id", "email": "email"}

Identity = tuple[str, str]  # (type, value)


def email_hash(address: str) -> str:
    return hashlib.sha256(address.strip().lower().encode()).hexdigest()


def identity_types(overrides: Mapping[str, Any] | None) -> dict[str, IdentityType]:
    """The default types with a workspace's overrides, e.g. ``{"device_id": {"merge": true}}``."""
    types = dict(DEFAULT_TYPES)
    for name, change in (overrides or {}).items():
        base = types.get(name, IdentityType(name, 7))
        types[name] = replace(
            base,
            merge=bool(change.get("merge", base.merge)),
            unique=bool(change.get("unique", base.unique)),
            priority=int(change.get("priority", base.priority)),
        )
    return types


def normalise(type_name: str, value: str) -> str:
    """The stored form of a looked-up value (e-mail addresses are hashed)."""
    if type_name == "email" and "@" in value:
        return email_hash(value)
    return value


def _text(value: Any) -> str | None:
    if isinstance(value, str) and value:
        return value[:200]
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


def identities_of(event: LoggedEvent) -> list[Identity]:
    """Every identity the event names, in no particular order (duplicates removed)."""
    found: list[Identity] = []
    if event.user_id:
        found.append(("user_id", event.user_id))
    if event.anonymous_id:
        found.append(("anonymous_id", event.anonymous_id))
    props = event.properties
    name = event.name
    if name == "identity.linked":
        kind = _LINKED.get(props.get("id_type", ""))
        value = _text(props.get("id_hash"))
        if kind and value:
            found.append((kind, value))
    elif name == "wallet.connected":
        value = _text(props.get("address_hash"))
        if value:
            found.append(("wallet", value))
    if event.type == "identify" or "email" in event.traits:
        email = event.traits.get("email")
        if isinstance(email, str) and "@" in email:
            found.append(("email", email_hash(email)))
        crm = _text(event.traits.get("crm_id"))
        if crm:
            found.append(("crm_id", crm))
    device = event.context.get("device")
    if isinstance(device, dict):
        device_id = _text(device.get("id"))
        if device_id:
            found.append(("device_id", device_id))
    return list(dict.fromkeys(found))
