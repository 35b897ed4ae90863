"""Action kinds from plugins: an installed package's entry point in ``worldflow.actions`` adds
a kind that journeys can use, checked when applied, capped and held by quiet hours like the
built-in ones, and acting only through the context (outbox, traits)."""

from __future__ import annotations

import json
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from tests.processor.harness import Harness, track
from worldflow.journeys import actions
from worldflow.journeys.definition import validate
from worldflow.segments.definition import DefinitionError
from worldflow.store.schema import deliveries, journey_stats

PLUGIN = '''
from worldflow.journeys.actions import ActionKind
from worldflow.segments.definition import DefinitionError


class Coupon(ActionKind):
    """Gives the person a coupon code once, and tells the shop over a webhook."""

    name = "coupon"
    options = frozenset({"destination"})
    channel = "webhook"
    quiet = True

    def check(self, spec, path):
        if not isinstance(spec["coupon"], int) or not 1 <= spec["coupon"] <= 90:
            raise DefinitionError(f"{path}.coupon", "is a discount in percent, 1 to 90")
        if not isinstance(spec.get("destination"), str):
            raise DefinitionError(f"{path}.destination", "names the shop's destination")

    def prepare(self, spec, ctx):
        if "coupon" in ctx.profile.traits:
            ctx.count("has_one:coupon")
            return None
        return spec

    def take(self, spec, ctx):
        code = f"C{spec['coupon']}-{ctx.ident[:8].upper()}"
        ctx.set_traits({"coupon": code})
        ctx.deliver("webhook", spec["destination"], "journey.coupon",
                    {**ctx.envelope(), "code": code}, "cp")
        ctx.count("actions:coupon")
'''

JOURNEY: dict[str, Any] = {
    "kind": "journey", "key": "welcome", "status": "active", "reentry": "always",
    "entry": {"event": "session.started"},
    "caps": {"webhook": {"per_day": 2}},
    "steps": [{"id": "give", "action": {"coupon": 10, "destination": "shop"}}],
}  # fmt: skip


@pytest.fixture
def plugin(tmp_path: Path) -> Iterator[None]:
    """A package installed the way pip installs one: its module and its dist-info with the
    entry point, on the path."""
    (tmp_path / "wf_coupon.py").write_text(textwrap.dedent(PLUGIN))
    info = tmp_path / "wf_coupon-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: wf-coupon\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[worldflow.actions]\ncoupon = wf_coupon:Coupon\n")
    sys.path.insert(0, str(tmp_path))
    actions._plugins.cache_clear()
    try:
        yield
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("wf_coupon", None)
        actions._KINDS.pop("coupon", None)
        actions._plugins.cache_clear()


def test_an_unknown_kind_names_the_known_ones() -> None:
    with pytest.raises(DefinitionError) as exc:
        validate(JOURNEY)
    assert exc.value.path == "steps[0].action"
    assert "names exactly one of webhook, email, inworld" in exc.value.problem


def test_the_plugin_checks_its_own_document(plugin: None) -> None:
    assert "coupon" in actions.kinds() and "webhook" in actions.channels()
    bad = {**JOURNEY, "steps": [{"action": {"coupon": 200, "destination": "shop"}}]}
    with pytest.raises(DefinitionError) as exc:
        validate(bad)
    assert (exc.value.path, exc.value.problem) == ("steps[0].action.coupon",
                                                   "is a discount in percent, 1 to 90")  # fmt: skip
    extra = {**JOURNEY, "steps": [{"action": {"coupon": 5, "destination": "shop", "x": 1}}]}
    with pytest.raises(DefinitionError) as exc:
        validate(extra)
    assert exc.value.path == "steps[0].action.x"


def test_a_plugin_action_acts_through_the_outbox_once_per_person(
    plugin: None, store_url: str
) -> None:
    h = Harness(store_url)
    try:
        h.apply(JOURNEY)
        for _ in range(3):  # three sessions: one coupon, declined by the plugin afterwards
            h.send(track("session.started", {}, userId="u1", context={"world": {"id": "w"}}))
        h.process()
        person = h.by("user_id", "u1")
        code = person.traits["coupon"]
        with h.sql.engine.connect() as conn:
            (row,) = conn.execute(sa.select(deliveries)).mappings()
        assert row["id"].startswith("cp_") and row["destination_id"] == "shop"
        assert row["event_type"] == "journey.coupon"
        payload = json.loads(row["payload"])
        assert payload["code"] == code and payload["profile"]["user_id"] == "u1"
        assert payload["journey"] == "welcome" and payload["step"] == "give"
        c = journey_stats.c
        with h.sql.engine.connect() as conn:
            counted = dict(conn.execute(sa.select(c.metric, c.count)).all())
        assert counted["entered"] == 3 and counted["actions:coupon"] == 1
        assert counted["has_one:coupon"] == 2
    finally:
        h.close()
