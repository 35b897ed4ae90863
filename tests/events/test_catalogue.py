"""The event catalogue: loading, validation messages and paths, tiers, Segment mapping, docs."""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from worldflow.events.catalogue import (
    CUSTOM_TIER,
    SEGMENT_TARGETS,
    Catalogue,
    FieldError,
    FieldSpec,
    Tier,
    _compile_object,
    render_markdown,
)

VOCABULARY_EVENTS = """
session.started session.heartbeat session.ended identity.linked consent.updated
privacy.requested zone.entered zone.exited portal.traversed friction.hit object.viewed
object.gaze_dwell object.hovered object.selected object.grabbed object.released
product.detail_opened product.configured product.tried_on cart.item_added cart.item_removed
checkout.started order.completed virtual_item.granted currency.flow wallet.connected
nft.claimed nft.transferred loyalty.points_changed quest.completed content.impression
content.interacted decision.served experiment.exposed event.registered event.checked_in
event.left event.reaction event.question_asked chat.message_sent agent.conversation_started
agent.conversation_ended agent.intent_detected lead.captured survey.answered perf.sample
error.raised telemetry.pose_batch telemetry.gaze_batch destination.circuit_changed
""".split()  # noqa: SIM905 - the word list reads like VOCABULARY.md; 49 quoted lines would not

DOCS = Path(__file__).resolve().parents[2] / "docs" / "CATALOGUE.md"


@pytest.fixture(scope="module")
def cat() -> Catalogue:
    return Catalogue.default()


def example(spec: FieldSpec, *, required_only: bool = False) -> Any:
    """A valid value for ``spec``, built from the spec itself."""
    if spec.fields is not None:
        return {
            name: example(field, required_only=required_only)
            for name, field in spec.fields.items()
            if field.required or not required_only
        }
    if spec.items is not None:
        return [example(spec.items, required_only=required_only)]
    if spec.values is not None:
        return {"key": example(spec.values, required_only=required_only)}
    by_type: dict[str, Any] = {
        "string": "USD" if spec.pattern else "x",
        "integer": int(spec.minimum or 0),
        "number": spec.minimum if spec.minimum is not None else 0.5,
        "boolean": True,
        "timestamp": "2025-05-01T12:00:00Z",
        "decimal": "12.50",
        "enum": spec.choices[0] if spec.choices else None,
    }
    return by_type[spec.type]


def example_properties(cat: Catalogue, name: str, *, required_only: bool = False) -> dict[str, Any]:
    spec = cat.get(name)
    assert spec is not None
    return {
        field_name: example(field, required_only=required_only)
        for field_name, field in spec.fields.items()
        if field.required or not required_only
    }


def errors_of(cat: Catalogue, name: str, properties: Mapping[str, Any]) -> dict[str, str]:
    return {error.path: error.message for error in cat.validate(name, properties)}


# --- Loading -----------------------------------------------------------------------------------


def test_every_vocabulary_event_is_in_the_catalogue(cat: Catalogue) -> None:
    assert sorted(cat.names()) == sorted(VOCABULARY_EVENTS)
    assert len(cat) == len(VOCABULARY_EVENTS)


def test_every_yaml_event_parses_with_version_tier_and_description(cat: Catalogue) -> None:
    text = resources.files("worldflow.events").joinpath("catalogue.yaml").read_text("utf-8")
    raw = yaml.safe_load(text)
    assert raw["version"] == cat.version == 1
    assert list(raw["events"]) == cat.names()
    for name in cat.names():
        spec = cat.get(name)
        assert spec is not None
        assert spec.name == name
        assert spec.version >= 1
        assert spec.tier in (0, 1, 2, 3)
        assert spec.description
        assert spec.group in cat.groups


def test_default_is_loaded_once() -> None:
    assert Catalogue.default() is Catalogue.default()


def test_from_yaml_builds_the_same_catalogue(cat: Catalogue) -> None:
    text = resources.files("worldflow.events").joinpath("catalogue.yaml").read_text("utf-8")
    again = Catalogue.from_yaml(text)
    assert again.names() == cat.names()
    assert again.get("order.completed") == cat.get("order.completed")


def test_object_types_are_resolved(cat: Catalogue) -> None:
    spec = cat.get("cart.item_added")
    assert spec is not None
    obj = spec.fields["obj"]
    assert obj.type == "obj"
    assert obj.required
    assert obj.fields is not None
    product = obj.fields["product"]
    assert product.fields is not None
    assert product.fields["sku"].required
    money = spec.fields["money"]
    assert money.fields is not None
    assert money.fields["kind"].choices == ("fiat", "platform_currency", "crypto", "virtual")
    assert set(cat.types) >= {"obj", "money", "product_ref", "line_item"}


def test_personal_fields_are_marked(cat: Catalogue) -> None:
    personal = {
        n: s.personal_fields for n in cat.names() if (s := cat.get(n)) and s.personal_fields
    }
    assert personal["identity.linked"] == ("id_hash",)
    assert personal["wallet.connected"] == ("address_hash",)
    assert personal["survey.answered"] == ("answer",)
    assert "lead.captured" not in personal  # only the names of the fields filled in
    linked = cat.get("identity.linked")
    assert linked is not None
    assert linked.fields["id_hash"].pseudonymous


# --- Validation --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", VOCABULARY_EVENTS)
def test_examples_built_from_the_spec_are_valid(cat: Catalogue, name: str) -> None:
    assert cat.validate(name, example_properties(cat, name)) == []
    assert cat.validate(name, example_properties(cat, name, required_only=True)) == []


@pytest.mark.parametrize("name", VOCABULARY_EVENTS)
def test_empty_properties_miss_exactly_the_required_fields(cat: Catalogue, name: str) -> None:
    spec = cat.get(name)
    assert spec is not None
    required = {f"properties.{n}" for n, f in spec.fields.items() if f.required}
    errors = errors_of(cat, name, {})
    assert set(errors) == required
    assert set(errors.values()) <= {"required field is missing"}


def test_required_essentials(cat: Catalogue) -> None:
    assert errors_of(cat, "zone.entered", {}) == {"properties.zone_id": "required field is missing"}
    assert errors_of(cat, "order.completed", {"total": None}) == {
        "properties.order_id": "required field is missing"
    }
    for name in cat.names():
        if name.startswith("object."):
            assert "properties.obj" in errors_of(cat, name, {})


def test_null_counts_as_absent(cat: Catalogue) -> None:
    assert cat.validate("zone.entered", {"zone_id": "lobby", "from_zone": None}) == []
    assert errors_of(cat, "zone.entered", {"zone_id": None}) == {
        "properties.zone_id": "required field is missing"
    }


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("abc", "expected integer, got string 'abc'"),
        (True, "expected integer, got boolean true"),
        (1.5, "expected integer, got number 1.5"),
        (None, None),
        ([1], "expected integer, got list of 1 items"),
        ({"a": 1}, "expected integer, got object"),
        (-1, "must be >= 0, got -1"),
    ],
)
def test_integer_field(cat: Catalogue, value: Any, message: str | None) -> None:
    errors = errors_of(cat, "zone.exited", {"zone_id": "z", "dwell_ms": value})
    assert errors == ({"properties.dwell_ms": message} if message else {})


@pytest.mark.parametrize(
    ("value", "ok"),
    [(0, True), (1, True), (0.25, True), (True, False), ("0.5", False), (math.nan, False),
     (math.inf, False), (1.5, False), (-0.1, False)],
)  # fmt: skip
def test_number_field(cat: Catalogue, value: Any, ok: bool) -> None:
    props = {"obj": {"object_id": "o"}, "max_screen_frac": value}
    assert (cat.validate("object.viewed", props) == []) is ok


def test_number_bound_message(cat: Catalogue) -> None:
    props = {"obj": {"object_id": "o"}, "max_screen_frac": 1.5}
    assert errors_of(cat, "object.viewed", props) == {
        "properties.max_screen_frac": "must be <= 1, got 1.5"
    }


@pytest.mark.parametrize(
    ("value", "ok"),
    [("12.50", True), ("-3", True), ("0", True), (12, True), (12.5, True), ("1,5", False),
     ("1e3", False), ("", False), (".5", False), ("١٢", False), (True, False),
     (math.nan, False), (math.inf, False), (None, True)],
)  # fmt: skip
def test_decimal_field(cat: Catalogue, value: Any, ok: bool) -> None:
    props = {"flow": "source", "currency": "GEMS", "amount": "1", "balance_after": value}
    errors = errors_of(cat, "currency.flow", props)
    assert (errors == {}) is ok
    if not ok:
        assert errors["properties.balance_after"].startswith(
            "expected decimal (a string such as '12.50', or a number), got "
        )


def test_boolean_and_string_fields(cat: Catalogue) -> None:
    props = {"form_id": 7, "marketing_opt_in": 1, "fields_present": ["email", None]}
    assert errors_of(cat, "lead.captured", props) == {
        "properties.form_id": "expected string, got integer 7",
        "properties.marketing_opt_in": "expected boolean, got integer 1",
        "properties.fields_present[1]": "expected string, got null",
    }


@pytest.mark.parametrize(
    ("value", "ok"),
    [("2025-05-01T12:00:00Z", True), ("2025-05-01T12:00:00.123+02:00", True),
     ("2025-05-01", True), ("yesterday", False), ("2025-13-01T00:00:00Z", False),
     (1714564800, False)],
)  # fmt: skip
def test_timestamp_field(cat: Catalogue, value: Any, ok: bool) -> None:
    props = {"samples": [], "started_at": value}
    errors = errors_of(cat, "telemetry.gaze_batch", props)
    assert (errors == {}) is ok
    if not ok:
        assert errors["properties.started_at"].startswith("expected timestamp (ISO-8601 string")


def test_enum_message_lists_the_values(cat: Catalogue) -> None:
    assert errors_of(cat, "session.ended", {"reason": "foo"}) == {
        "properties.reason": "'foo' is not one of: quit, timeout, background, crash, xr_end"
    }
    assert errors_of(cat, "privacy.requested", {"kind": 3}) == {
        "properties.kind": "expected one of: erase, export, restrict; got integer 3"
    }


def test_nested_object_paths(cat: Catalogue) -> None:
    props = {
        "obj": {"object_id": 3, "product": {"variant": True}, "tags": ["shoes", 1]},
        "source": "eye",
    }
    assert errors_of(cat, "object.gaze_dwell", props) == {
        "properties.obj.object_id": "expected string, got integer 3",
        "properties.obj.product.sku": "required field is missing",
        "properties.obj.product.variant": "expected string, got boolean true",
        "properties.obj.tags[1]": "expected string, got integer 1",
    }
    assert errors_of(cat, "object.viewed", {"obj": "shoe"}) == {
        "properties.obj": "expected obj object, got string 'shoe'"
    }


def test_list_of_objects_paths(cat: Catalogue) -> None:
    money = {"amount": "10.00", "currency": "EUR", "kind": "fiat"}
    props = {
        "order_id": "o-1",
        "items": [
            {"sku": "A", "qty": 1, "money": money},
            {"sku": "B"},
            {"sku": "C", "qty": 0, "money": {"amount": "1,5", "currency": "eur", "kind": "cash"}},
            "D",
        ],
        "total": {"currency": "EUR"},
    }
    assert errors_of(cat, "order.completed", props) == {
        "properties.items[2].qty": "must be >= 1, got 0",
        "properties.items[2].money.amount": (
            "expected decimal (a string such as '12.50', or a number), got string '1,5'"
        ),
        "properties.items[2].money.currency": (
            "'eur' does not match [A-Z][A-Z0-9_]{1,15}; expected an ISO 4217 code (USD) or an "
            "upper-case virtual currency code (GEMS, ROBUX)"
        ),
        "properties.items[2].money.kind": (
            "'cash' is not one of: fiat, platform_currency, crypto, virtual"
        ),
        "properties.items[3]": "expected line_item object, got string 'D'",
        "properties.total.amount": "required field is missing",
    }
    assert errors_of(cat, "order.completed", {"order_id": "o", "items": {"sku": "A"}}) == {
        "properties.items": "expected list of line_item object, got object"
    }


def test_map_values(cat: Catalogue) -> None:
    ok = {"scopes": {"analytics": True, "gaze": False, "some_future_scope": True}}
    assert cat.validate("consent.updated", ok) == []
    bad = {"scopes": {"analytics": True, "motion": "yes", "voice": None}, "source": "gpc"}
    assert errors_of(cat, "consent.updated", bad) == {
        "properties.scopes.motion": "expected boolean, got string 'yes'",
        "properties.scopes.voice": "expected boolean, got null",
    }
    assert errors_of(cat, "consent.updated", {"scopes": ["gaze"]}) == {
        "properties.scopes": "expected object (map of boolean), got list of 1 items"
    }


def test_deeply_nested_list_inside_object_inside_list(cat: Catalogue) -> None:
    props = {"samples": [{"t": 0, "ray_dir_q": [1, 2, 3]}, {"t": 5, "ray_dir_q": [1, "x"],
             "obj": {"object_id": "o", "product": {}}}]}  # fmt: skip
    assert errors_of(cat, "telemetry.gaze_batch", props) == {
        "properties.samples[1].ray_dir_q[1]": "expected integer, got string 'x'",
        "properties.samples[1].obj.product.sku": "required field is missing",
    }


def test_extra_properties_are_allowed_everywhere(cat: Catalogue) -> None:
    props = {
        "obj": {"object_id": "o", "product": {"sku": "S", "colour": "red"}, "custom": [1, {}]},
        "qty": 2,
        "money": {"amount": "5", "currency": "GEMS", "note": None},
        "brand": "Acme",
        "nested": {"anything": ["goes"]},
    }
    assert cat.validate("cart.item_added", props) == []


def test_long_strings_are_shortened_in_messages(cat: Catalogue) -> None:
    message = errors_of(cat, "session.ended", {"reason": "x" * 500})["properties.reason"]
    assert len(message) < 120
    assert message.startswith("'xxxxxxxx")
    assert "'... is not one of" in message


def test_properties_that_are_not_an_object(cat: Catalogue) -> None:
    assert cat.validate("zone.entered", ["lobby"]) == [  # type: ignore[arg-type]
        FieldError("properties", "expected object, got list of 1 items")
    ]


def test_custom_names_are_accepted(cat: Catalogue) -> None:
    assert "game.level_up" not in cat
    assert cat.get("game.level_up") is None
    assert cat.validate("game.level_up", {"anything": object()}) == []
    assert cat.tier("game.level_up", {}) == CUSTOM_TIER == 1


# --- Tiers -------------------------------------------------------------------------------------


def test_gaze_dwell_from_the_eyes_is_sensitive(cat: Catalogue) -> None:
    spec = cat.get("object.gaze_dwell")
    assert spec is not None
    assert spec.tier == Tier.BEHAVIOURAL
    assert spec.tier_for({"source": "eye"}) == 2
    assert spec.tier_for({"source": "head"}) == 1
    assert spec.tier_for({}) == 1
    assert spec.tier_for({"source": ["eye"]}) == 1  # unhashable: no match, no crash
    assert cat.tier("object.gaze_dwell", {"source": "eye"}) == Tier.SENSITIVE


def test_base_tiers(cat: Catalogue) -> None:
    tiers = {name: cat.tier(name, {}) for name in cat.names()}
    assert tiers["session.started"] == tiers["perf.sample"] == tiers["consent.updated"] == 0
    assert tiers["zone.entered"] == tiers["order.completed"] == 1
    assert tiers["telemetry.pose_batch"] == tiers["telemetry.gaze_batch"] == 3
    assert {name for name, tier in tiers.items() if tier == 3} == {
        "telemetry.pose_batch",
        "telemetry.gaze_batch",
    }


# --- Segment e-commerce ------------------------------------------------------------------------

PRODUCT = {
    "product_id": "p-1001",
    "sku": "SHOE-42",
    "category": "Sneakers",
    "name": "Runner",
    "brand": "Acme",
    "variant": "red",
    "price": 18.99,
    "quantity": 2,
    "coupon": "SPRING",
    "currency": "eur",
    "position": 3,
    "url": "https://shop.example/p/1001",
}
PRODUCTS = [
    {"product_id": "p-1", "sku": "A-1", "name": "Cap", "price": 19, "quantity": 1},
    {"product_id": "p-2", "sku": "B-2", "name": "Tee", "price": 3.5, "quantity": 2},
    {"product_id": "p-3", "name": "Sticker"},
]
PROMOTION = {"promotion_id": "spring", "creative": "banner_2", "name": "Sale", "position": "top"}
ORDER = {
    "order_id": "o-77",
    "checkout_id": "c-77",
    "affiliation": "World Store",
    "total": 27.5,
    "revenue": 25.0,
    "value": 26,
    "shipping": 3,
    "tax": 2,
    "discount": 2.5,
    "currency": "usd",
    "products": PRODUCTS,
}

SEGMENT_EXAMPLES: list[tuple[str, dict[str, Any], str]] = [
    ("Product Viewed", PRODUCT, "object.viewed"),
    ("Product Clicked", PRODUCT, "object.selected"),
    ("Product Added", {**PRODUCT, "cart_id": "cart-9"}, "cart.item_added"),
    ("Product Removed", {**PRODUCT, "cart_id": 9}, "cart.item_removed"),
    ("Wishlist Product Added to Cart", {**PRODUCT, "wishlist_id": "w"}, "cart.item_added"),
    ("Checkout Started", ORDER, "checkout.started"),
    ("Order Completed", ORDER, "order.completed"),
    ("Product List Viewed", {"list_id": "deals", "category": "Deals", "products": PRODUCTS},
     "content.impression"),
    ("Promotion Viewed", PROMOTION, "content.impression"),
    ("Promotion Clicked", PROMOTION, "content.interacted"),
    ("Viewed Product", PRODUCT, "object.viewed"),
    ("Completed Order", ORDER, "order.completed"),
    ("Viewed Product Category", {"category": "Deals"}, "content.impression"),
]  # fmt: skip


@pytest.mark.parametrize(("segment_name", "props", "target"), SEGMENT_EXAMPLES)
def test_segment_mapping_produces_valid_catalogue_events(
    cat: Catalogue, segment_name: str, props: dict[str, Any], target: str
) -> None:
    original = copy.deepcopy(props)
    mapped = cat.map_segment(segment_name, props)
    assert mapped is not None
    name, properties = mapped
    assert name == target == SEGMENT_TARGETS[segment_name]
    assert cat.validate(name, properties) == []
    for key, value in original.items():  # nothing is lost
        assert properties.get(key) == value or properties[f"segment_{key}"] == value
    assert props == original  # the caller's dict is left alone


def test_every_mapped_segment_name_is_covered() -> None:
    mapped = {name for name, target in SEGMENT_TARGETS.items() if target}
    assert mapped == {name for name, _, _ in SEGMENT_EXAMPLES} | {
        "Added Product", "Removed Product", "Clicked Product", "Viewed Promotion",
        "Clicked Promotion", "Started Order",
    }  # fmt: skip


def test_segment_product_becomes_obj_money_and_qty(cat: Catalogue) -> None:
    mapped = cat.map_segment("Product Added", {**PRODUCT, "cart_id": 9})
    assert mapped is not None
    _, props = mapped
    assert props["obj"] == {
        "object_id": "p-1001",
        "product": {"sku": "SHOE-42", "variant": "red"},
        "tags": ["Sneakers"],
    }
    assert props["money"] == {"amount": "18.99", "currency": "EUR", "kind": "fiat"}
    assert props["qty"] == 2
    assert props["cart_id"] == "9"
    assert props["segment_cart_id"] == 9
    assert props["currency"] == "eur"  # the original stays as sent


def test_segment_defaults(cat: Catalogue) -> None:
    mapped = cat.map_segment("Product Added", {"sku": "S-1", "price": 5})
    assert mapped is not None
    _, props = mapped
    assert props["obj"] == {"object_id": "S-1", "product": {"sku": "S-1"}}
    assert props["money"] == {"amount": "5", "currency": "USD", "kind": "fiat"}
    assert props["qty"] == 1
    assert cat.validate("cart.item_added", props) == []


def test_segment_order_items_total_and_shadowed_original(cat: Catalogue) -> None:
    mapped = cat.map_segment("Order Completed", ORDER)
    assert mapped is not None
    _, props = mapped
    assert props["order_id"] == "o-77"
    assert props["total"] == {"amount": "27.5", "currency": "USD", "kind": "fiat"}
    assert props["segment_total"] == 27.5
    assert props["items"] == [
        {"sku": "A-1", "qty": 1, "money": {"amount": "19", "currency": "USD", "kind": "fiat"}},
        {"sku": "B-2", "qty": 2, "money": {"amount": "3.5", "currency": "USD", "kind": "fiat"}},
        {"sku": "p-3"},
    ]
    assert props["products"] == PRODUCTS


def test_segment_order_falls_back_to_revenue_and_checkout_id(cat: Catalogue) -> None:
    mapped = cat.map_segment("Order Completed", {"checkout_id": 5, "revenue": "25.00"})
    assert mapped == (
        "order.completed",
        {
            "checkout_id": 5,
            "revenue": "25.00",
            "order_id": "5",
            "total": {"amount": "25.00", "currency": "USD", "kind": "fiat"},
        },
    )


def test_segment_checkout_counts_units(cat: Catalogue) -> None:
    mapped = cat.map_segment("Checkout Started", ORDER)
    assert mapped is not None
    _, props = mapped
    assert props["items_count"] == 4  # 1 + 2 + 1 (no quantity means one)
    assert props["cart_value"] == {"amount": "26", "currency": "USD", "kind": "fiat"}


def test_segment_promotions(cat: Catalogue) -> None:
    assert cat.map_segment("Promotion Clicked", PROMOTION) == (
        "content.interacted",
        {
            **PROMOTION,
            "placement_id": "top",
            "creative_id": "banner_2",
            "campaign_id": "spring",
            "action": "select",
        },
    )
    mapped = cat.map_segment("Promotion Viewed", {})
    assert mapped == ("content.impression", {"placement_id": "promotion"})


@pytest.mark.parametrize(
    ("segment_name", "props"),
    [
        ("Product Viewed", {"name": "Mystery"}),  # no product_id or sku: no obj
        ("Product Added", {"sku": "S", "price": 5, "currency": "US Dollar"}),
        ("Order Completed", {"total": 10, "products": PRODUCTS}),  # no order_id or checkout_id
        ("Completed Order", {"order_id": ["o"]}),
    ],
)
def test_segment_events_that_cannot_be_made_valid_stay_custom(
    cat: Catalogue, segment_name: str, props: dict[str, Any]
) -> None:
    assert cat.map_segment(segment_name, props) == (segment_name, props)


@pytest.mark.parametrize(
    "segment_name", ["Products Searched", "Cart Viewed", "Order Refunded", "Coupon Applied"]
)
def test_segment_names_without_a_catalogue_event_stay_custom(
    cat: Catalogue, segment_name: str
) -> None:
    props = {"query": "red shoes"}
    assert SEGMENT_TARGETS[segment_name] is None
    assert cat.map_segment(segment_name, props) == (segment_name, props)


@pytest.mark.parametrize("name", ["Signed Up", "product viewed", "zone.entered", ""])
def test_non_segment_names_are_not_mapped(cat: Catalogue, name: str) -> None:
    assert cat.map_segment(name, {"sku": "x"}) is None


def test_segment_target_missing_from_a_custom_catalogue_stays_custom() -> None:
    small = Catalogue.from_mapping(minimal_catalogue())
    assert small.map_segment("Product Viewed", {"sku": "x"}) == ("Product Viewed", {"sku": "x"})


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                max_size=3),
    max_leaves=10,
)  # fmt: skip
SEGMENT_KEYS = ["product_id", "sku", "variant", "category", "price", "quantity", "currency",
                "cart_id", "order_id", "checkout_id", "total", "revenue", "value", "products",
                "list_id", "position", "promotion_id", "creative"]  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(
    name=st.sampled_from(sorted(SEGMENT_TARGETS)),
    props=st.dictionaries(st.sampled_from(SEGMENT_KEYS) | st.text(max_size=6), JSON, max_size=8),
)
def test_segment_mapping_never_raises_and_keeps_originals(name: str, props: dict[str, Any]) -> None:
    cat = Catalogue.default()
    mapped = cat.map_segment(name, props)
    assert mapped is not None
    target, out = mapped
    assert target in (name, SEGMENT_TARGETS[name])
    assert cat.validate(target, out) == []  # a catalogue event comes out valid, or not at all
    for key, value in props.items():
        kept, shadow = out.get(key), out.get(f"segment_{key}")
        # `is` first: NaN drawn by Hypothesis is kept, but is not equal to itself.
        assert kept is value or kept == value or shadow is value or shadow == value


# --- Fast path and explanation agree -----------------------------------------------------------


def mostly(valid: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``valid`` five times in six, arbitrary JSON otherwise: one bad value among good ones."""
    return st.integers(0, 5).flatmap(lambda roll: JSON if roll == 0 else valid)


def near_misses(spec: FieldSpec) -> st.SearchStrategy[Any]:
    """Values for ``spec`` that are mostly valid, with wrong ones at any depth."""
    if spec.fields is not None:
        members = {name: near_misses(field) for name, field in spec.fields.items()}
        return mostly(st.fixed_dictionaries({}, optional=members))
    if spec.items is not None:
        return mostly(st.lists(near_misses(spec.items), max_size=3))
    if spec.values is not None:
        return mostly(st.dictionaries(st.text(max_size=4), near_misses(spec.values), max_size=3))
    low = int(spec.minimum) if spec.minimum is not None else -5
    high = int(spec.maximum) if spec.maximum is not None else 200
    scalars: dict[str, st.SearchStrategy[Any]] = {
        "string": st.from_regex(spec.pattern, fullmatch=True) if spec.pattern else st.text(),
        "integer": st.integers(low, high),
        "number": st.floats(low, high) | st.integers(low, high),
        "boolean": st.booleans(),
        "timestamp": st.datetimes().map(lambda d: d.isoformat()),
        "decimal": st.from_regex(r"-?[0-9]{1,4}(\.[0-9]{1,3})?", fullmatch=True) | st.floats(),
        "enum": st.sampled_from(spec.choices),
    }
    return mostly(scalars[spec.type])


@settings(max_examples=1000, deadline=None)
@given(data=st.data())
def test_fast_path_and_explanations_agree(data: st.DataObject) -> None:
    # validate() trusts the fast pass when it says "valid" and explains only otherwise: the two
    # compiled walks must never disagree, or errors would be missed or come back empty.
    cat = Catalogue.default()
    spec = cat.get(data.draw(st.sampled_from(cat.names())))
    assert spec is not None
    node = _compile_object(spec.fields, "object")
    props = data.draw(
        st.fixed_dictionaries({}, optional={n: near_misses(f) for n, f in spec.fields.items()})
    )
    errors: list[FieldError] = []
    node.explain(props, "properties", errors)
    assert node.ok(props) is (errors == [])
    assert cat.validate(spec.name, props) == errors
    assert all(error.path.startswith("properties") and error.message for error in errors)


# --- Malformed catalogues ----------------------------------------------------------------------


def minimal_catalogue() -> dict[str, Any]:
    return {
        "version": 1,
        "groups": {"space": "Space"},
        "types": {"ref": {"fields": {"id": {"type": "string", "required": True}}}},
        "events": {
            "zone.entered": {
                "group": "space",
                "version": 1,
                "tier": 1,
                "description": "Entered.",
                "tier_when": [{"field": "kind", "equals": "secret", "tier": 2}],
                "fields": {
                    "zone_id": {"type": "string", "required": True},
                    "kind": {"type": "enum", "values": ["open", "secret"]},
                    "ref": {"type": "ref"},
                    "tags": {"type": "list", "items": {"type": "string"}},
                    "n": {"type": "integer", "minimum": 0},
                },
            }
        },
    }


def test_minimal_catalogue_loads() -> None:
    small = Catalogue.from_mapping(minimal_catalogue())
    assert small.names() == ["zone.entered"]
    assert small.tier("zone.entered", {"kind": "secret"}) == 2
    assert small.validate("zone.entered", {"zone_id": "z", "ref": {}}) == [
        FieldError("properties.ref.id", "required field is missing")
    ]


EVENT = ("events", "zone.entered")
FIELDS = (*EVENT, "fields")


def _set(path: tuple[str, ...], value: Any) -> Any:
    def mutate(data: dict[str, Any]) -> None:
        target = data
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return mutate


def _delete(path: tuple[str, ...]) -> Any:
    def mutate(data: dict[str, Any]) -> None:
        target = data
        for key in path[:-1]:
            target = target[key]
        del target[path[-1]]

    return mutate


@pytest.mark.parametrize(
    ("mutate", "where"),
    [
        (_set(("evnets",), {}), "at evnets:"),
        (_set(("version",), 0), "at version:"),
        (_set(("version",), "1"), "at version:"),
        (_delete(("events",)), "at events:"),
        (_set(("events",), []), "at events:"),
        (_set(("events", "Zone Entered"), {}), "at events.Zone Entered:"),
        (_set((*EVENT, "tier"), 4), "at events.zone.entered.tier:"),
        (_set((*EVENT, "tier"), True), "at events.zone.entered.tier:"),
        (_delete((*EVENT, "version")), "at events.zone.entered.version:"),
        (_delete((*EVENT, "description")), "at events.zone.entered.description:"),
        (_set((*EVENT, "group"), "nowhere"), "at events.zone.entered.group:"),
        (_set((*EVENT, "colour"), "red"), "at events.zone.entered.colour:"),
        (_delete((*EVENT, "fields")), "at events.zone.entered.fields:"),
        (_set((*FIELDS, "zone_id", "type"), "strng"),
         "at events.zone.entered.fields.zone_id.type:"),
        (_delete((*FIELDS, "zone_id", "type")), "at events.zone.entered.fields.zone_id.type:"),
        (_set((*FIELDS, "zone_id", "requried"), True),
         "at events.zone.entered.fields.zone_id.requried:"),
        (_set((*FIELDS, "zone_id", "required"), "yes"),
         "at events.zone.entered.fields.zone_id.required:"),
        (_set((*FIELDS, "zone_id", "pattern"), "("),
         "at events.zone.entered.fields.zone_id.pattern:"),
        (_set((*FIELDS, "n", "pattern"), "x"), "at events.zone.entered.fields.n.pattern:"),
        (_set((*FIELDS, "n", "maximum"), -1), "at events.zone.entered.fields.n.minimum:"),
        (_set((*FIELDS, "n", "minimum"), "0"), "at events.zone.entered.fields.n.minimum:"),
        (_delete((*FIELDS, "kind", "values")), "at events.zone.entered.fields.kind.values:"),
        (_set((*FIELDS, "kind", "values"), ["open", True]),
         "at events.zone.entered.fields.kind.values[1]:"),
        (_set((*FIELDS, "kind", "values"), ["open", "open"]),
         "at events.zone.entered.fields.kind.values:"),
        (_delete((*FIELDS, "tags", "items")), "at events.zone.entered.fields.tags.items:"),
        (_set((*FIELDS, "tags", "items"), {"type": "string", "required": True}),
         "at events.zone.entered.fields.tags.items.required:"),
        (_set((*FIELDS, "bad-name"), {"type": "string"}),
         "at events.zone.entered.fields.bad-name:"),
        (_set((*FIELDS, "zone_id"), "string"), "at events.zone.entered.fields.zone_id:"),
        (_set((*EVENT, "tier_when"), [{"field": "nope", "equals": "x", "tier": 2}]),
         "at events.zone.entered.tier_when[0].field:"),
        (_set((*EVENT, "tier_when"), [{"field": "kind", "equals": "open", "tier": 0}]),
         "at events.zone.entered.tier_when[0].tier:"),
        (_set((*EVENT, "tier_when"), [{"field": "kind", "equals": "x", "in": ["y"], "tier": 2}]),
         "at events.zone.entered.tier_when[0]:"),
        (_set(("types", "ref", "fields", "id", "type"), "money"), "at types.ref.fields.id.type:"),
        (_set(("types", "ref", "fields", "self"), {"type": "ref"}),
         "at types.ref.fields.self.type:"),
        (_set(("types", "list"), {"fields": {}}), "at types.list:"),
        (_set(("groups",), {"space": 3}), "at groups.space:"),
    ],
)  # fmt: skip
def test_malformed_catalogues_name_the_bad_path(mutate: Any, where: str) -> None:
    data = minimal_catalogue()
    mutate(data)
    with pytest.raises(ValueError, match="malformed catalogue") as info:
        Catalogue.from_mapping(data)
    assert where in str(info.value)


def test_recursive_types_are_refused() -> None:
    data = minimal_catalogue()
    data["types"]["a"] = {"fields": {"b": {"type": "b"}}}
    data["types"]["b"] = {"fields": {"a": {"type": "list", "items": {"type": "a"}}}}
    with pytest.raises(ValueError, match=r"a -> b -> a"):
        Catalogue.from_mapping(data)


def test_from_yaml_rejects_a_document_that_is_not_a_mapping() -> None:
    with pytest.raises(ValueError, match=r"at \(document\)"):
        Catalogue.from_yaml("- just\n- a list\n")


def test_from_yaml_translates_yaml_errors() -> None:
    with pytest.raises(ValueError, match="not valid YAML") as info:
        Catalogue.from_yaml("events: {zone.entered: [unclosed\n")
    assert isinstance(info.value.__cause__, yaml.YAMLError)


def test_yaml_booleans_in_enum_values_are_caught() -> None:
    text = yaml.safe_dump(minimal_catalogue()).replace("- secret", "- yes")
    with pytest.raises(ValueError, match=r"values\[1\]: expected a non-empty string, got boolean"):
        Catalogue.from_yaml(text)


# --- Reference documentation -------------------------------------------------------------------


def test_docs_match_the_catalogue(cat: Catalogue) -> None:
    rendered = render_markdown(cat)
    assert DOCS.read_text(encoding="utf-8") == rendered, (
        "docs/CATALOGUE.md is stale: run `python -m worldflow.events.catalogue > docs/CATALOGUE.md`"
    )


def test_docs_name_every_event_and_segment_mapping(cat: Catalogue) -> None:
    rendered = render_markdown(cat)
    for name in cat.names():
        assert f"`{name}`" in rendered
    for segment_name in SEGMENT_TARGETS:
        assert segment_name in rendered
    assert "p2 when source = eye" in rendered
