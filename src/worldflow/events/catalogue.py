"""The immersive event catalogue: load it, validate events against it, tier them, map Segment.

The catalogue is data (``catalogue.yaml`` beside this module). Loading it compiles every
event's fields into small check closures once, so :meth:`Catalogue.validate` on the ingest
hot path only runs those closures: a fast pass answers "valid?" and, only when the answer is
no, a second pass walks the same compiled tree to say where and why. Where msgspec can express
an event's rules exactly, a generated Struct type answers "valid" first, in C.

Validation checks the types of known fields and the presence of required ones. Unknown
properties are allowed and kept; a property that is null counts as absent. Names that are not
in the catalogue are custom events: they validate clean and get tier 1.

``python -m worldflow.events.catalogue`` prints docs/CATALOGUE.md.
"""

from __future__ import annotations

import functools
import keyword
import math
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from enum import IntEnum
from importlib import resources
from typing import Annotated, Any, Final, Literal, NoReturn

import msgspec
import yaml

__all__ = [
    "CUSTOM_TIER",
    "SEGMENT_TARGETS",
    "Catalogue",
    "EventSpec",
    "FieldError",
    "FieldSpec",
    "Tier",
    "TierRule",
    "TypeSpec",
    "render_markdown",
]


class Tier(IntEnum):
    """Privacy tiers (p0-p3); the higher, the more consent and protection an event needs."""

    TECHNICAL = 0
    BEHAVIOURAL = 1
    SENSITIVE = 2  # eye-based gaze, voice, exact positions: explicit consent
    BIOMETRIC = 3  # raw pose/gaze batches: off by default, short TTL, never joined to a person


CUSTOM_TIER: Final = Tier.BEHAVIOURAL

SCALAR_TYPES: Final = ("string", "integer", "number", "boolean", "timestamp", "decimal")
_BUILTIN_TYPES_ORDERED: Final = (*SCALAR_TYPES, "enum", "list", "map")
_BUILTIN_TYPES: Final = frozenset(_BUILTIN_TYPES_ORDERED)


# --- Public data model ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FieldError:
    """One problem with an event's properties, e.g. ``properties.obj.product.sku``."""

    path: str
    message: str


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """A field as the catalogue declares it; ``fields`` is set for object types (``obj``...)."""

    type: str
    required: bool = False
    pii: bool = False
    pseudonymous: bool = False
    sensitive: bool = False  # dropped when the consent a raised tier needs is missing
    description: str = ""
    choices: tuple[str, ...] = ()  # enum values
    items: FieldSpec | None = None  # list element
    values: FieldSpec | None = None  # map value
    fields: Mapping[str, FieldSpec] | None = None  # object type members
    pattern: str | None = None  # strings: must match in full
    minimum: int | float | None = None
    maximum: int | float | None = None


@dataclass(frozen=True, slots=True)
class TypeSpec:
    """A reusable object type from the catalogue's ``types:`` section."""

    name: str
    description: str
    fields: Mapping[str, FieldSpec]


@dataclass(frozen=True, slots=True)
class TierRule:
    """Raise an event's tier to ``tier`` when top-level ``field`` holds one of ``values``; such an
    occurrence needs the visitor's consent to ``consent`` (a purpose) to keep its sensitive
    fields."""

    field: str
    values: frozenset[str | int | float | bool]
    tier: int
    consent: str | None = None

    def matches(self, properties: Mapping[str, Any]) -> bool:
        value = properties.get(self.field)
        try:
            return value in self.values
        except TypeError:  # unhashable (list, dict): cannot be one of the scalar values
            return False


@dataclass(frozen=True, slots=True)
class EventSpec:
    """One catalogue event: its version, base privacy tier and fields."""

    name: str
    version: int
    tier: int
    description: str
    fields: Mapping[str, FieldSpec]
    group: str = ""
    tier_rules: tuple[TierRule, ...] = ()

    def tier_for(self, properties: Mapping[str, Any]) -> int:
        """The tier of one occurrence: the base tier, raised by any matching ``tier_when`` rule."""
        tier = self.tier
        for rule in self.tier_rules:
            if rule.tier > tier and rule.matches(properties):
                tier = rule.tier
        return tier

    @property
    def personal_fields(self) -> tuple[str, ...]:
        """Top-level fields marked ``pii`` or ``pseudonymous``."""
        return tuple(n for n, f in self.fields.items() if f.pii or f.pseudonymous)

    @property
    def sensitive_fields(self) -> tuple[str, ...]:
        """Top-level fields dropped from an occurrence whose consent is missing."""
        return tuple(n for n, f in self.fields.items() if f.sensitive)

    def consent_for(self, properties: Mapping[str, Any]) -> str | None:
        """The consent purpose this occurrence needs, if a matching rule names one."""
        for rule in self.tier_rules:
            if rule.consent and rule.matches(properties):
                return rule.consent
        return None


# --- Compiled checks -----------------------------------------------------------------------
# Each field compiles to two closures. `ok(value) -> bool` is the hot path. `explain(value, path,
# errors)` runs only when `ok` said no; it re-checks everything itself rather than trusting
# `ok`, so a property test can hold the two against each other.

_Ok = Callable[[Any], bool]
_Explain = Callable[[Any, str, list[FieldError]], None]
_Validate = Callable[[Mapping[str, Any]], list[FieldError]]

_MISSING: Final = "required field is missing"
_DECIMAL_RE: Final = re.compile(r"-?[0-9]{1,30}(?:\.[0-9]{1,18})?")
_DECIMAL_HINT: Final = "decimal (a string such as '12.50', or a number)"


@dataclass(frozen=True, slots=True)
class _Node:
    ok: _Ok
    explain: _Explain


def _short(text: str) -> str:
    return repr(text) if len(text) <= 40 else repr(text[:37]) + "..."


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean {'true' if value else 'false'}"
    if isinstance(value, int):
        return f"integer {value}"
    if isinstance(value, float):
        return f"number {value!r}"
    if isinstance(value, str):
        return f"string {_short(value)}"
    if isinstance(value, list | tuple):
        return f"list of {len(value)} items"
    if isinstance(value, Mapping):
        return "object"
    return type(value).__name__


def _is_mapping(value: Any) -> bool:
    return type(value) is dict or isinstance(value, Mapping)


def _is_list(value: Any) -> bool:
    return type(value) is list or isinstance(value, tuple)


def _is_str(value: Any) -> bool:
    return isinstance(value, str)


def _is_bool(value: Any) -> bool:
    return value is True or value is False


def _is_int(value: Any) -> bool:
    # JSON booleans are not integers, though Python's bool subclasses int.
    return type(value) is int or (isinstance(value, int) and not isinstance(value, bool))


def _is_number(value: Any) -> bool:
    if type(value) is float:
        return math.isfinite(value)
    return _is_int(value) or (isinstance(value, float) and math.isfinite(value))


def _is_decimal(value: Any) -> bool:
    if isinstance(value, str):
        return _DECIMAL_RE.fullmatch(value) is not None
    return _is_number(value)


def _is_timestamp(value: Any) -> bool:
    if not isinstance(value, str) or len(value) > 64:
        return False
    try:
        datetime.fromisoformat(value)
    except ValueError:
        return False
    return True


def _type_check(is_type: _Ok, expected: str) -> _Explain:
    def explain(value: Any, path: str, errors: list[FieldError]) -> None:
        if not is_type(value):
            errors.append(FieldError(path, f"expected {expected}, got {_describe(value)}"))

    return explain


_SCALAR_OK: Final[Mapping[str, tuple[_Ok, str]]] = {
    "string": (_is_str, "string"),
    "integer": (_is_int, "integer"),
    "number": (_is_number, "number"),
    "boolean": (_is_bool, "boolean"),
    "timestamp": (_is_timestamp, "timestamp (ISO-8601 string such as '2025-05-01T12:00:00Z')"),
    "decimal": (_is_decimal, _DECIMAL_HINT),
}


def _compile_scalar(spec: FieldSpec) -> _Node:
    is_type, expected = _SCALAR_OK[spec.type]
    check_type = _type_check(is_type, expected)
    if spec.pattern is not None:
        return _compile_pattern(spec.pattern, spec.description, check_type)
    if spec.minimum is None and spec.maximum is None:
        return _Node(is_type, check_type)
    low = -math.inf if spec.minimum is None else spec.minimum
    high = math.inf if spec.maximum is None else spec.maximum

    def ok(value: Any) -> bool:
        return is_type(value) and low <= value <= high

    def explain(value: Any, path: str, errors: list[FieldError]) -> None:
        if not is_type(value):
            check_type(value, path, errors)
        elif value < low:
            errors.append(FieldError(path, f"must be >= {low}, got {value!r}"))
        elif value > high:
            errors.append(FieldError(path, f"must be <= {high}, got {value!r}"))

    return _Node(ok, explain)


def _compile_pattern(pattern: str, description: str, check_type: _Explain) -> _Node:
    fullmatch = re.compile(pattern).fullmatch
    hint = f"; expected {description.rstrip('.')}" if description else ""

    def ok(value: Any) -> bool:
        return isinstance(value, str) and fullmatch(value) is not None

    def explain(value: Any, path: str, errors: list[FieldError]) -> None:
        if not isinstance(value, str):
            check_type(value, path, errors)
        elif fullmatch(value) is None:
            errors.append(FieldError(path, f"{_short(value)} does not match {pattern}{hint}"))

    return _Node(ok, explain)


def _compile_enum(choices: tuple[str, ...]) -> _Node:
    allowed = frozenset(choices)
    listed = ", ".join(choices)

    def ok(value: Any) -> bool:
        return isinstance(value, str) and value in allowed

    def explain(value: Any, path: str, errors: list[FieldError]) -> None:
        if not isinstance(value, str):
            errors.append(FieldError(path, f"expected one of: {listed}; got {_describe(value)}"))
        elif value not in allowed:
            errors.append(FieldError(path, f"{_short(value)} is not one of: {listed}"))

    return _Node(ok, explain)


def _compile_list(item: _Node, expected: str) -> _Node:
    item_ok, item_explain = item.ok, item.explain

    def ok(value: Any) -> bool:
        if type(value) is not list and not isinstance(value, tuple):
            return False
        for element in value:  # noqa: SIM110 - a loop is twice as fast as all() over a genexpr
            if not item_ok(element):
                return False
        return True

    def explain(value: Any, path: str, errors: list[FieldError]) -> None:
        if not _is_list(value):
            errors.append(FieldError(path, f"expected {expected}, got {_describe(value)}"))
            return
        for index, element in enumerate(value):
            item_explain(element, f"{path}[{index}]", errors)

    return _Node(ok, explain)


def _compile_map(value_node: _Node, expected: str) -> _Node:
    value_ok, value_explain = value_node.ok, value_node.explain

    def ok(value: Any) -> bool:
        if type(value) is not dict and not isinstance(value, Mapping):
            return False
        for key, element in value.items():
            if not isinstance(key, str) or not value_ok(element):
                return False
        return True

    def explain(value: Any, path: str, errors: list[FieldError]) -> None:
        if not _is_mapping(value):
            errors.append(FieldError(path, f"expected {expected}, got {_describe(value)}"))
            return
        for key, element in value.items():
            if not isinstance(key, str):
                errors.append(FieldError(path, f"keys must be strings, got {_describe(key)}"))
            else:
                value_explain(element, f"{path}.{key}", errors)

    return _Node(ok, explain)


def _compile_object(fields: Mapping[str, FieldSpec], expected: str) -> _Node:
    compiled = tuple((name, spec.required, _compile(spec)) for name, spec in fields.items())
    checks = tuple((name, required, node.ok) for name, required, node in compiled)
    explainers = tuple((name, required, node.explain) for name, required, node in compiled)

    def ok(value: Any) -> bool:
        if type(value) is not dict and not isinstance(value, Mapping):
            return False
        get = value.get
        for name, required, check in checks:
            member = get(name)
            if member is None:
                if required:
                    return False
            elif not check(member):
                return False
        return True

    def explain(value: Any, path: str, errors: list[FieldError]) -> None:
        if not _is_mapping(value):
            errors.append(FieldError(path, f"expected {expected}, got {_describe(value)}"))
            return
        for name, required, explain_member in explainers:
            member = value.get(name)
            if member is not None:
                explain_member(member, f"{path}.{name}", errors)
            elif required:
                errors.append(FieldError(f"{path}.{name}", _MISSING))

    return _Node(ok, explain)


def _type_label(spec: FieldSpec) -> str:
    if spec.fields is not None:
        return f"{spec.type} object"
    if spec.items is not None:
        return f"list of {_type_label(spec.items)}"
    if spec.values is not None:
        return f"object (map of {_type_label(spec.values)})"
    return spec.type


def _compile(spec: FieldSpec) -> _Node:
    if spec.fields is not None:
        return _compile_object(spec.fields, _type_label(spec))
    if spec.type == "enum":
        return _compile_enum(spec.choices)
    if spec.items is not None:
        return _compile_list(_compile(spec.items), _type_label(spec))
    if spec.values is not None:
        return _compile_map(_compile(spec.values), _type_label(spec))
    return _compile_scalar(spec)


_FAST_SCALARS: Final[Mapping[str, Any]] = {
    "string": str,
    "integer": int,  # msgspec refuses booleans and floats for int, as _is_int does
    "boolean": bool,
}
_FINITE = {"ge": -sys.float_info.max, "le": sys.float_info.max}  # refuses inf and NaN


def _fast_type(spec: FieldSpec, name: str) -> Any:
    """A msgspec type accepting no more than the compiled checks of ``spec`` do, or None when
    the field's rules (timestamps, decimals, maps) have no exact msgspec equivalent."""
    if spec.fields is not None:
        return _fast_struct(spec.fields, name)
    if spec.type == "enum":
        return Literal[tuple(spec.choices)]
    if spec.items is not None:
        item = _fast_type(spec.items, name)
        return None if item is None else list[item]  # type: ignore[valid-type]
    if spec.values is not None:
        return None
    constraints: dict[str, Any] = {}
    if spec.type == "number":
        base: Any = float  # ints are accepted as floats
        constraints.update(_FINITE)
    elif spec.type in _FAST_SCALARS:
        base = _FAST_SCALARS[spec.type]
    else:
        return None
    if spec.pattern is not None:
        constraints["pattern"] = rf"^(?:{spec.pattern})\Z"  # search → fullmatch
    if spec.minimum is not None:
        constraints["ge"] = max(spec.minimum, constraints.get("ge", spec.minimum))
    if spec.maximum is not None:
        constraints["le"] = min(spec.maximum, constraints.get("le", spec.maximum))
    return Annotated[base, msgspec.Meta(**constraints)] if constraints else base


def _fast_struct(fields: Mapping[str, FieldSpec], name: str) -> Any:
    members: list[tuple[str, Any] | tuple[str, Any, Any]] = []
    for field_name, spec in fields.items():
        if not field_name.isidentifier() or keyword.iskeyword(field_name):
            return None
        kind = _fast_type(spec, f"{name}_{field_name}")
        if kind is None:
            return None
        # Null counts as absent: optional members take None, required ones do not.
        members.append((field_name, kind) if spec.required else (field_name, kind | None, None))
    return msgspec.defstruct(name, members, kw_only=True)


def _compile_event(fields: Mapping[str, FieldSpec]) -> _Validate:
    node = _compile_object(fields, "object")
    ok, explain = node.ok, node.explain
    fast = _fast_struct(fields, "Properties")
    convert, invalid = msgspec.convert, msgspec.ValidationError

    def validate(properties: Mapping[str, Any]) -> list[FieldError]:
        # msgspec checks in C what it can express exactly; anything it refuses goes through
        # the compiled checks, which also explain.
        if fast is not None:
            try:
                convert(properties, fast)
            except invalid:
                pass
            else:
                return []
        if ok(properties):
            return []
        errors: list[FieldError] = []
        explain(properties, "properties", errors)
        return errors

    return validate


# --- Catalogue -----------------------------------------------------------------------------

_PACKAGE: Final = "worldflow.events"  # not derived from __name__: it is "__main__" under -m


class Catalogue:
    """The closed set of known events, compiled for validation."""

    __slots__ = ("_events", "_validators", "groups", "types", "version")

    version: int
    types: Mapping[str, TypeSpec]
    groups: Mapping[str, str]

    def __init__(
        self,
        version: int,
        events: Mapping[str, EventSpec],
        types: Mapping[str, TypeSpec] | None = None,
        groups: Mapping[str, str] | None = None,
    ) -> None:
        self.version = version
        self.types = dict(types or {})
        self.groups = dict(groups or {})
        self._events = dict(events)
        self._validators = {name: _compile_event(s.fields) for name, s in self._events.items()}

    @classmethod
    def default(cls) -> Catalogue:
        """The catalogue packaged with Worldflow, loaded and compiled once per process."""
        return _default_catalogue()

    @classmethod
    def from_yaml(cls, text: str) -> Catalogue:
        """Parse catalogue YAML; raises ValueError for invalid YAML or a malformed catalogue."""
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ValueError(f"malformed catalogue: not valid YAML: {exc}") from exc
        return cls.from_mapping(_require_mapping(data, "(document)"))

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> Catalogue:
        """Build from parsed YAML; raises ValueError naming the bad path when malformed."""
        return _parse_catalogue(cls, data)

    def get(self, name: str) -> EventSpec | None:
        return self._events.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._events

    def __len__(self) -> int:
        return len(self._events)

    def names(self) -> list[str]:
        """Event names in catalogue order."""
        return list(self._events)

    def validate(self, name: str, properties: Mapping[str, Any]) -> list[FieldError]:
        """Problems with ``properties`` for event ``name``; [] when valid or custom."""
        validator = self._validators.get(name)
        return [] if validator is None else validator(properties)

    def tier(self, name: str, properties: Mapping[str, Any]) -> int:
        """Privacy tier of one occurrence; custom events are behavioural (1)."""
        spec = self._events.get(name)
        if spec is None:
            return CUSTOM_TIER
        return spec.tier if not spec.tier_rules else spec.tier_for(properties)

    def map_segment(
        self, name: str, properties: Mapping[str, Any]
    ) -> tuple[str, dict[str, Any]] | None:
        """Translate a Segment e-commerce spec event into the catalogue.

        Returns ``(catalogue name, properties)``, where properties keeps every original key and
        adds the catalogue's fields; a catalogue field that replaces an original value of the
        same key keeps that value under ``segment_<key>``. A returned catalogue event always
        validates: the Segment spec makes every property optional, so an event that cannot
        become a valid catalogue event (no product_id or sku, no order_id...) comes back
        unchanged under its Segment name, as a custom event, rather than being rejected. So do
        spec names the catalogue has no event for. None: ``name`` is not a Segment spec name.
        """
        rule = _SEGMENT_RULES.get(_SEGMENT_V1_ALIASES.get(name, name))
        if rule is None:
            return None
        target, derive = rule
        if target is None or derive is None or target not in self._events:
            return name, dict(properties)
        mapped = dict(properties)
        for key, value in derive(properties).items():
            if key in mapped and mapped[key] != value:
                mapped[f"segment_{key}"] = mapped[key]
            mapped[key] = value
        if self._validators[target](mapped):
            return name, dict(properties)
        return target, mapped


@functools.cache
def _default_catalogue() -> Catalogue:
    text = resources.files(_PACKAGE).joinpath("catalogue.yaml").read_text(encoding="utf-8")
    return Catalogue.from_yaml(text)


# --- Parsing (catalogue.yaml → specs) --------------------------------------------------------

_EVENT_NAME_RE: Final = re.compile(r"[a-z][a-z0-9_]*(?:\.[a-z][a-z0-9_]*)+")
_IDENT_RE: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_TOP_KEYS: Final = frozenset({"version", "groups", "types", "events"})
_EVENT_KEYS: Final = frozenset({"group", "version", "tier", "tier_when", "description", "fields"})
_TYPE_KEYS: Final = frozenset({"description", "fields"})
_RULE_KEYS: Final = frozenset({"field", "equals", "in", "tier", "consent"})
_FIELD_KEYS: Final = frozenset(
    {"type", "required", "pii", "pseudonymous", "sensitive", "description"}
)
_FIELD_EXTRA_KEYS: Final[Mapping[str, frozenset[str]]] = {
    "string": frozenset({"pattern"}),
    "integer": frozenset({"minimum", "maximum"}),
    "number": frozenset({"minimum", "maximum"}),
    "enum": frozenset({"values"}),
    "list": frozenset({"items"}),
    "map": frozenset({"values"}),
}


def _fail(path: str, message: str) -> NoReturn:
    raise ValueError(f"malformed catalogue at {path}: {message}")


def _join(path: str, key: str) -> str:
    return key if not path else f"{path}.{key}"


def _require_mapping(value: Any, path: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        _fail(path, f"expected a mapping, got {_describe(value)}")
    for key in value:
        if not isinstance(key, str):
            _fail(path, f"keys must be strings, got {_describe(key)}")
    return value


def _check_keys(data: Mapping[str, Any], allowed: frozenset[str], path: str) -> None:
    unknown = sorted(set(data) - allowed)
    if unknown:
        expected = ", ".join(sorted(allowed))
        _fail(_join(path, unknown[0]), f"unknown key; expected one of: {expected}")


def _int_in(data: Mapping[str, Any], key: str, path: str, low: int, high: int) -> int:
    value = data.get(key)
    if isinstance(value, int) and not isinstance(value, bool) and low <= value <= high:
        return value
    _fail(_join(path, key), f"expected an integer from {low} to {high}, got {_describe(value)}")


def _flag(data: Mapping[str, Any], key: str, path: str) -> bool:
    value = data.get(key, False)
    if not isinstance(value, bool):
        _fail(_join(path, key), f"expected true or false, got {_describe(value)}")
    return value


def _text(data: Mapping[str, Any], key: str, path: str, *, required: bool = False) -> str:
    value = data.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or not value.strip():
        _fail(_join(path, key), f"expected non-empty text, got {_describe(value)}")
    return value


def _bound(data: Mapping[str, Any], key: str, path: str) -> int | float | None:
    value = data.get(key)
    if value is not None and not _is_number(value):
        _fail(_join(path, key), f"expected a number, got {_describe(value)}")
    return value


class _FieldParser:
    """Parses field specs, resolving named object types once each and refusing cycles."""

    def __init__(self, raw_types: Mapping[str, Any]) -> None:
        self._raw = raw_types
        self._done: dict[str, TypeSpec] = {}
        self._resolving: list[str] = []

    def all_types(self) -> dict[str, TypeSpec]:
        for name in self._raw:
            self.resolve(name, "types")
        return {name: self._done[name] for name in self._raw}

    def resolve(self, name: str, path: str) -> TypeSpec:
        if name in self._done:
            return self._done[name]
        if name in self._resolving:
            cycle = " -> ".join([*self._resolving[self._resolving.index(name) :], name])
            _fail(path, f"type {name!r} contains itself ({cycle}); recursive types are not allowed")
        type_path = f"types.{name}"
        if name in _BUILTIN_TYPES or not _IDENT_RE.fullmatch(name):
            _fail(type_path, "type names must be identifiers other than the built-in type names")
        raw = _require_mapping(self._raw[name], type_path)
        _check_keys(raw, _TYPE_KEYS, type_path)
        self._resolving.append(name)
        fields = self.fields(raw.get("fields"), f"{type_path}.fields")
        self._resolving.pop()
        spec = TypeSpec(name, _text(raw, "description", type_path), fields)
        self._done[name] = spec
        return spec

    def fields(self, raw: Any, path: str) -> dict[str, FieldSpec]:
        raw_fields = _require_mapping(raw, path)
        parsed: dict[str, FieldSpec] = {}
        for name, raw_field in raw_fields.items():
            if not _IDENT_RE.fullmatch(name):
                _fail(_join(path, name), "field names must be identifiers")
            parsed[name] = self.field(raw_field, _join(path, name))
        return parsed

    def field(self, raw: Any, path: str, *, element: bool = False) -> FieldSpec:
        data = _require_mapping(raw, path)
        type_name = data.get("type")
        if not isinstance(type_name, str):
            _fail(_join(path, "type"), f"expected a type name, got {_describe(type_name)}")
        is_named = type_name not in _BUILTIN_TYPES
        if is_named and type_name not in self._raw:
            known = ", ".join([*_BUILTIN_TYPES_ORDERED, *self._raw])
            _fail(_join(path, "type"), f"unknown type {type_name!r}; known types: {known}")
        _check_keys(data, _FIELD_KEYS | _FIELD_EXTRA_KEYS.get(type_name, frozenset()), path)
        if element and "required" in data:
            _fail(_join(path, "required"), "list items and map values cannot be required")
        common: dict[str, Any] = {
            "required": _flag(data, "required", path),
            "pii": _flag(data, "pii", path),
            "pseudonymous": _flag(data, "pseudonymous", path),
            "sensitive": _flag(data, "sensitive", path),
            "description": _text(data, "description", path),
        }
        if is_named:
            resolved = self.resolve(type_name, _join(path, "type"))
            return FieldSpec(type_name, fields=resolved.fields, **common)
        if type_name == "enum":
            return FieldSpec(type_name, choices=_enum_values(data, path), **common)
        if type_name == "list":
            items = self.field(data.get("items"), _join(path, "items"), element=True)
            return FieldSpec(type_name, items=items, **common)
        if type_name == "map":
            values = self.field(data.get("values"), _join(path, "values"), element=True)
            return FieldSpec(type_name, values=values, **common)
        low, high = _bound(data, "minimum", path), _bound(data, "maximum", path)
        if low is not None and high is not None and low > high:
            _fail(_join(path, "minimum"), f"minimum {low} is greater than maximum {high}")
        return FieldSpec(
            type_name, pattern=_pattern(data, path), minimum=low, maximum=high, **common
        )


def _enum_values(data: Mapping[str, Any], path: str) -> tuple[str, ...]:
    values = data.get("values")
    path = _join(path, "values")
    if not isinstance(values, list) or not values:
        _fail(path, f"expected a non-empty list of strings, got {_describe(values)}")
    for index, value in enumerate(values):
        if not isinstance(value, str) or not value:
            # YAML 1.1 reads bare yes/no/on/off as booleans: quote such values.
            _fail(f"{path}[{index}]", f"expected a non-empty string, got {_describe(value)}")
    if len(set(values)) != len(values):
        _fail(path, "values must be unique")
    return tuple(values)


def _pattern(data: Mapping[str, Any], path: str) -> str | None:
    pattern = data.get("pattern")
    if pattern is None:
        return None
    if not isinstance(pattern, str):
        _fail(_join(path, "pattern"), f"expected a regular expression, got {_describe(pattern)}")
    try:
        re.compile(pattern)
    except re.error as exc:
        _fail(_join(path, "pattern"), f"invalid regular expression: {exc}")
    return pattern


def _tier_rules(
    raw: Any, path: str, base: int, fields: Mapping[str, FieldSpec]
) -> tuple[TierRule, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        _fail(path, f"expected a list of rules, got {_describe(raw)}")
    rules = []
    for index, raw_rule in enumerate(raw):
        rule_path = f"{path}[{index}]"
        rule = _require_mapping(raw_rule, rule_path)
        _check_keys(rule, _RULE_KEYS, rule_path)
        field_name = rule.get("field")
        if field_name not in fields:
            _fail(_join(rule_path, "field"), f"{field_name!r} is not a field of this event")
        if ("equals" in rule) == ("in" in rule):
            _fail(rule_path, "give exactly one of 'equals' or 'in'")
        values = [rule["equals"]] if "equals" in rule else rule["in"]
        if not isinstance(values, list) or not values:
            _fail(_join(rule_path, "in"), f"expected a non-empty list, got {_describe(values)}")
        for value in values:
            if not isinstance(value, str | int | float):
                _fail(rule_path, f"rule values must be scalars, got {_describe(value)}")
        tier = _int_in(rule, "tier", rule_path, Tier.TECHNICAL, Tier.BIOMETRIC)
        if tier <= base:
            _fail(_join(rule_path, "tier"), f"a rule can only raise the tier above {base}")
        consent = rule.get("consent")
        if consent is not None and not isinstance(consent, str):
            _fail(_join(rule_path, "consent"), f"expected a purpose name, got {_describe(consent)}")
        rules.append(TierRule(str(field_name), frozenset(values), Tier(tier), consent))
    return tuple(rules)


def _parse_catalogue(cls: type[Catalogue], raw: Mapping[str, Any]) -> Catalogue:
    data = _require_mapping(raw, "(document)")
    _check_keys(data, _TOP_KEYS, "")
    version = _int_in(data, "version", "", 1, 1_000_000)
    groups = dict(_require_mapping(data.get("groups", {}), "groups"))
    for key, title in groups.items():
        if not isinstance(title, str):
            _fail(f"groups.{key}", f"expected a title, got {_describe(title)}")
    parser = _FieldParser(_require_mapping(data.get("types", {}), "types"))
    types = parser.all_types()
    raw_events = _require_mapping(data.get("events"), "events")
    events: dict[str, EventSpec] = {}
    for name, raw_event in raw_events.items():
        path = f"events.{name}"
        if not _EVENT_NAME_RE.fullmatch(name):
            _fail(path, "event names are lower-case dotted words such as zone.entered")
        event = _require_mapping(raw_event, path)
        _check_keys(event, _EVENT_KEYS, path)
        group = _text(event, "group", path)
        if groups and group not in groups:
            _fail(_join(path, "group"), f"unknown group {group!r}; known: {', '.join(groups)}")
        tier = Tier(_int_in(event, "tier", path, Tier.TECHNICAL, Tier.BIOMETRIC))
        fields = parser.fields(event.get("fields"), _join(path, "fields"))
        events[name] = EventSpec(
            name=name,
            version=_int_in(event, "version", path, 1, 1_000_000),
            tier=tier,
            description=_text(event, "description", path, required=True),
            fields=fields,
            group=group,
            tier_rules=_tier_rules(event.get("tier_when"), _join(path, "tier_when"), tier, fields),
        )
    return cls(version, events, types, groups)


# --- Segment e-commerce spec (v2) ------------------------------------------------------------

_Derive = Callable[[Mapping[str, Any]], dict[str, Any]]


def _ident(value: Any) -> str | None:
    if isinstance(value, str):
        return value or None
    if _is_int(value):
        return str(value)
    return None


def _decimal_text(value: Any) -> str | None:
    if isinstance(value, str):
        return value if _DECIMAL_RE.fullmatch(value) else None
    if not _is_number(value):
        return None
    # repr() of a float is its shortest round-tripping form: 18.99 stays "18.99".
    text = format(Decimal(repr(value) if isinstance(value, float) else int(value)), "f")
    return text if _DECIMAL_RE.fullmatch(text) else None


def _quantity(value: Any) -> int | None:
    if _is_int(value):
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def _money(amount: Any, currency: Any) -> dict[str, str] | None:
    text = _decimal_text(amount)
    if text is None:
        return None
    code = currency.strip().upper() if isinstance(currency, str) and currency.strip() else "USD"
    return {"amount": text, "currency": code, "kind": "fiat"}


def _first(props: Mapping[str, Any], *keys: str) -> Any:
    for key in keys:
        value = props.get(key)
        if value is not None:
            return value
    return None


def _obj(props: Mapping[str, Any]) -> dict[str, Any] | None:
    object_id = _ident(props.get("product_id")) or _ident(props.get("sku"))
    if object_id is None:
        return None
    product: dict[str, Any] = {"sku": _ident(props.get("sku")) or object_id}
    if isinstance(props.get("variant"), str):
        product["variant"] = props["variant"]
    obj: dict[str, Any] = {"object_id": object_id, "product": product}
    if isinstance(props.get("category"), str) and props["category"]:
        obj["tags"] = [props["category"]]
    return obj


def _line_item(product: Any, currency: Any) -> dict[str, Any] | None:
    if not _is_mapping(product):
        return None
    sku = _ident(product.get("sku")) or _ident(product.get("product_id"))
    if sku is None:
        return None
    item: dict[str, Any] = {"sku": sku}
    qty = _quantity(product.get("quantity"))
    if qty is not None and qty >= 1:
        item["qty"] = qty
    money = _money(product.get("price"), product.get("currency") or currency)
    if money is not None:
        item["money"] = money
    return item


def _products(props: Mapping[str, Any]) -> list[Any]:
    products = props.get("products")
    return list(products) if isinstance(products, list | tuple) else []


def _drop_none(values: Mapping[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in values.items() if value is not None}


def _derive_product(props: Mapping[str, Any]) -> dict[str, Any]:
    return _drop_none({"obj": _obj(props)})


def _derive_cart_item(props: Mapping[str, Any]) -> dict[str, Any]:
    qty = _quantity(props.get("quantity"))
    return _drop_none(
        {
            "obj": _obj(props),
            "qty": qty if qty is not None and qty >= 1 else 1,
            "money": _money(props.get("price"), props.get("currency")),
            "cart_id": _ident(props.get("cart_id")),
        }
    )


def _derive_product_list(props: Mapping[str, Any]) -> dict[str, Any]:
    placement = _ident(props.get("list_id")) or _ident(props.get("category"))
    return {"placement_id": placement or "product_list"}


def _derive_promotion(props: Mapping[str, Any]) -> dict[str, Any]:
    placement = _ident(props.get("position")) or _ident(props.get("promotion_id"))
    return _drop_none(
        {
            "placement_id": placement or "promotion",
            "creative_id": _ident(props.get("creative")),
            "campaign_id": _ident(props.get("promotion_id")),
        }
    )


def _derive_promotion_click(props: Mapping[str, Any]) -> dict[str, Any]:
    return {**_derive_promotion(props), "action": "select"}


def _derive_items(props: Mapping[str, Any]) -> list[dict[str, Any]]:
    currency = props.get("currency")
    items = (_line_item(product, currency) for product in _products(props))
    return [item for item in items if item is not None]


def _derive_checkout(props: Mapping[str, Any]) -> dict[str, Any]:
    units = 0
    for product in _products(props):
        qty = _quantity(product.get("quantity")) if _is_mapping(product) else None
        units += qty if qty is not None and qty >= 1 else 1
    return _drop_none(
        {
            "order_id": _ident(props.get("order_id")),
            "cart_value": _money(_first(props, "value", "revenue", "total"), props.get("currency")),
            "items_count": units,
            "items": _derive_items(props) or None,
        }
    )


def _derive_order(props: Mapping[str, Any]) -> dict[str, Any]:
    return _drop_none(
        {
            "order_id": _ident(props.get("order_id")) or _ident(props.get("checkout_id")),
            "items": _derive_items(props) or None,
            "total": _money(_first(props, "total", "revenue", "value"), props.get("currency")),
        }
    )


# Spec name → (catalogue event or None when it stays custom, derivation, note for the docs).
# fmt: off
_SEGMENT_TABLE: Final[tuple[tuple[str, str | None, _Derive | None, str], ...]] = (
    ("Products Searched", None, None, "no search event in the catalogue; the free-text "
     "query may hold personal data"),
    ("Product List Viewed", "content.impression", _derive_product_list,
     "placement_id ← list_id, else category, else 'product_list'"),
    ("Product List Filtered", None, None, ""),
    ("Promotion Viewed", "content.impression", _derive_promotion,
     "placement_id ← position, else promotion_id, else 'promotion'; creative_id ← creative; "
     "campaign_id ← promotion_id"),
    ("Promotion Clicked", "content.interacted", _derive_promotion_click,
     "as Promotion Viewed, plus action 'select'"),
    ("Product Clicked", "object.selected", _derive_product, "obj ← product"),
    ("Product Viewed", "object.viewed", _derive_product, "obj ← product"),
    ("Product Added", "cart.item_added", _derive_cart_item,
     "obj ← product; qty ← quantity (default 1); money ← price, currency; cart_id"),
    ("Product Removed", "cart.item_removed", _derive_cart_item, "as Product Added"),
    ("Cart Viewed", None, None, ""),
    ("Checkout Started", "checkout.started", _derive_checkout,
     "cart_value ← value, else revenue, else total; items ← products; items_count = units; "
     "order_id"),
    ("Checkout Step Viewed", None, None, ""),
    ("Checkout Step Completed", None, None, ""),
    ("Payment Info Entered", None, None, ""),
    ("Order Completed", "order.completed", _derive_order,
     "order_id ← order_id, else checkout_id; total ← total, else revenue, else value; "
     "items ← products"),
    ("Order Updated", None, None, ""),
    ("Order Refunded", None, None, "the catalogue has no refund event yet"),
    ("Order Cancelled", None, None, ""),
    ("Coupon Entered", None, None, ""),
    ("Coupon Applied", None, None, ""),
    ("Coupon Denied", None, None, ""),
    ("Coupon Removed", None, None, ""),
    ("Product Added to Wishlist", None, None, ""),
    ("Product Removed from Wishlist", None, None, ""),
    ("Wishlist Product Added to Cart", "cart.item_added", _derive_cart_item,
     "as Product Added"),
    ("Product Shared", None, None, ""),
    ("Cart Shared", None, None, ""),
    ("Product Reviewed", None, None, "review text may hold personal data"),
)
# fmt: on

# E-commerce v1 names that Segment aliases to the v2 ones.
_SEGMENT_V1_ALIASES: Final[Mapping[str, str]] = {
    "Viewed Product Category": "Product List Viewed",
    "Viewed Promotion": "Promotion Viewed",
    "Clicked Promotion": "Promotion Clicked",
    "Clicked Product": "Product Clicked",
    "Viewed Product": "Product Viewed",
    "Added Product": "Product Added",
    "Removed Product": "Product Removed",
    "Started Order": "Checkout Started",
    "Completed Order": "Order Completed",
}

_SEGMENT_RULES: Final[Mapping[str, tuple[str | None, _Derive | None]]] = {
    name: (target, derive) for name, target, derive, _ in _SEGMENT_TABLE
}

SEGMENT_TARGETS: Final[Mapping[str, str | None]] = {
    **{name: target for name, target, _, _ in _SEGMENT_TABLE},
    **{alias: _SEGMENT_RULES[name][0] for alias, name in _SEGMENT_V1_ALIASES.items()},
}
"""Every Segment spec name recognised (v2 and v1 aliases) → catalogue event, None if custom."""


# --- Reference documentation -----------------------------------------------------------------

_TIER_NAMES: Final = {
    0: "technical",
    1: "behavioural",
    2: "sensitive behavioural",
    3: "raw biometric-grade",
}


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _number(value: int | float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _md_type(spec: FieldSpec) -> str:
    if spec.fields is not None:
        return f"[{spec.type}](#{spec.type})"
    if spec.items is not None:
        return f"list of {_md_type(spec.items)}"
    if spec.values is not None:
        return f"map of {_md_type(spec.values)}"
    if spec.type == "enum":
        return "enum: " + ", ".join(spec.choices)
    text = spec.type
    if spec.pattern is not None:
        text += f" matching `{spec.pattern}`"
    if spec.minimum is not None and spec.maximum is not None:
        text += f" {_number(spec.minimum)}–{_number(spec.maximum)}"
    elif spec.minimum is not None:
        text += f" ≥ {_number(spec.minimum)}"
    elif spec.maximum is not None:
        text += f" ≤ {_number(spec.maximum)}"
    return text


def _md_marks(spec: FieldSpec) -> str:
    marks = (
        ("required", spec.required),
        ("PII", spec.pii),
        ("pseudonymous", spec.pseudonymous),
        ("sensitive", spec.sensitive),
    )
    return ", ".join(mark for mark, on in marks if on)


def _md_field(name: str, spec: FieldSpec) -> str:
    marks = _md_marks(spec)
    suffix = f" ({marks})" if marks else ""
    label = f"**`{name}`**" if spec.required else f"`{name}`"
    return _cell(f"{label} {_md_type(spec)}{suffix}")


def _md_tier(spec: EventSpec) -> str:
    text = f"p{spec.tier}"
    for rule in spec.tier_rules:
        shown = " or ".join(sorted(str(v) for v in rule.values))
        needs = f", needs {rule.consent} consent" if rule.consent else ""
        text += f" (p{rule.tier} when {rule.field} = {shown}{needs})"
    return text


_DOC_INTRO: Final = """\
# Event catalogue

Worldflow's closed catalogue of immersive events (catalogue version {version}). Known names get
typed validation and a privacy tier; any other name is accepted as a custom event (tier p1,
no field checks). Unknown extra properties are always allowed and kept. A property that is
null counts as absent. `integer` fields reject booleans and fractions; `number` accepts
integers; `decimal` is a string such as `"12.50"` (integers and floats are accepted too);
`timestamp` is an ISO-8601 string. **Bold** fields are required.

Privacy tiers: {tiers}.

This page is generated from `src/worldflow/events/catalogue.yaml` by
`python -m worldflow.events.catalogue > docs/CATALOGUE.md`; a test fails when they differ.
"""


def render_markdown(catalogue: Catalogue) -> str:
    """The reference page for ``catalogue`` (docs/CATALOGUE.md)."""
    tiers = "; ".join(f"p{n} {label}" for n, label in _TIER_NAMES.items())
    lines = [_DOC_INTRO.format(version=catalogue.version, tiers=tiers)]
    groups = dict(catalogue.groups)
    events = [s for n in catalogue.names() if (s := catalogue.get(n)) is not None]
    if any(spec.group not in groups for spec in events):
        groups[""] = "Other events"
    for group, title in groups.items():
        members = [spec for spec in events if spec.group == group]
        if not members:
            continue
        lines += [f"## {title}", "", "| Event | Fields | Tier | Version |", "|---|---|---|---|"]
        for spec in members:
            fields = "<br>".join(_md_field(n, f) for n, f in spec.fields.items()) or "—"
            event = f"`{spec.name}`<br>{_cell(spec.description)}"
            lines.append(f"| {event} | {fields} | {_md_tier(spec)} | {spec.version} |")
        lines.append("")
    lines += ["## Types", ""]
    for type_spec in catalogue.types.values():
        lines += [f"### {type_spec.name}", "", _cell(type_spec.description), ""]
        lines += ["| Field | Type | Notes |", "|---|---|---|"]
        for name, field in type_spec.fields.items():
            notes = "; ".join(part for part in (_md_marks(field), _cell(field.description)) if part)
            lines.append(f"| `{name}` | {_cell(_md_type(field))} | {notes} |")
        lines.append("")
    lines += [
        "## Segment e-commerce events",
        "",
        "`Catalogue.map_segment` translates Segment e-commerce v2 spec names (and the v1 names",
        "Segment aliases to them) into catalogue events. Every original property is kept under",
        "its own key; a catalogue field that replaces an original value of the same key keeps",
        "that value under `segment_<key>`. Product fields become `obj` {object_id ← product_id",
        "or sku, product {sku ← sku or product_id, variant}, tags ← [category]}; prices become",
        "`money` {amount as a decimal string, currency upper-cased (default USD), kind fiat}.",
        "Names marked custom keep their Segment name, and so does an event that cannot become a",
        "valid catalogue event (the Segment spec makes every property optional; a product with",
        "neither product_id nor sku has no `obj`): it is kept as a custom event, not rejected.",
        "",
        "| Segment event | Catalogue event | Mapping |",
        "|---|---|---|",
    ]
    for name, target, _, note in _SEGMENT_TABLE:
        shown = f"`{target}`" if target else "custom"
        lines.append(f"| {name} | {shown} | {_cell(note) or '—'} |")
    aliases = ", ".join(f"{alias} → {name}" for alias, name in _SEGMENT_V1_ALIASES.items())
    lines += ["", f"Segment e-commerce v1 aliases: {aliases}."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(render_markdown(Catalogue.default()), end="")
