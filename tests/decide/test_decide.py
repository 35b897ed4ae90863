"""Offers and placements: checked with paths; eligibility kept by the processor as hidden
segments; decisions by priority, caps, Thompson sampling and fallback; what decisions,
impressions and interactions teach (docs/DECIDE.md)."""

from __future__ import annotations

import random
import statistics
import time
from collections import Counter
from typing import Any

import pytest
import sqlalchemy as sa

from tests.processor.harness import Harness, track
from worldflow.decide.definition import (
    compile_offer,
    compile_placement,
    hidden_key,
    validate_offer,
    validate_placement,
)
from worldflow.decide.engine import Decider, beta
from worldflow.events.catalogue import Catalogue
from worldflow.profiles.model import new_profile
from worldflow.segments.definition import DefinitionError
from worldflow.store.schema import decision_stats

BILLBOARD = {"kind": "placement", "key": "lobby-billboard", "type": "billboard",
             "strategy": "bandit", "fallback": {"type": "text", "text": "Welcome"}}  # fmt: skip


def offer(key: str, **extra: Any) -> dict[str, Any]:
    return {"kind": "offer", "key": key, "placements": ["lobby-billboard"],
            "content": {"type": "image", "image_url": f"https://cdn.example/{key}.png"},
            **extra}  # fmt: skip


def test_offers_and_placements_are_checked_with_paths() -> None:
    for bad, path in ((offer("a", placements=[]), "placements"),
                      (offer("a", content={"type": "hologram"}), "content.type"),
                      (offer("a", content={"text": "hi"}), "content.type"),
                      (offer("a", eligible={"in_segment": "~x.0"}), "eligible.in_segment"),
                      (offer("a", valid={"from": "2026-12-24"}), "valid.from"),
                      (offer("a", caps={"per_day": 0}), "caps.per_day"),
                      (offer("a", colour="red"), "colour")):  # fmt: skip
        with pytest.raises(DefinitionError) as exc:
            validate_offer(bad)
        assert exc.value.path == path, bad
    for bad, path in (({**BILLBOARD, "type": "sky"}, "type"),
                      ({**BILLBOARD, "strategy": "guess"}, "strategy"),
                      ({**BILLBOARD, "strategy": "priority", "by_segment": ["vip"]},
                       "by_segment")):  # fmt: skip
        with pytest.raises(DefinitionError) as exc:
            validate_placement(bad)
        assert exc.value.path == path


def decider_with(evidence: dict[tuple[str, str], tuple[int, int]], seed: int = 7) -> Decider:
    decider = Decider(sa.create_engine("sqlite://"), Catalogue.default(), rng=random.Random(seed))
    decider._stats[("ws", "lobby-billboard")] = (time.monotonic() + 3600, evidence)
    return decider


def test_priority_eligibility_validity_caps_and_the_fallback() -> None:
    placement = compile_placement({**BILLBOARD, "strategy": "priority"}, 1)
    now = 1_800_000_000_000
    offers = [compile_offer(offer("vip-gift", priority=5, eligible={"in_segment": "vip"}), 1),
              compile_offer(offer("xmas", priority=9, valid={
                  "from": "2027-12-01T00:00:00+00:00"}), 1),
              compile_offer(offer("sneakers", priority=1, caps={"per_day": 1}), 1)]  # fmt: skip
    decider = decider_with({})
    person = new_profile("p1", "ws", 1, now)
    first = decider.choose("ws", placement, offers, person, "u1", now)
    assert (first.offer, first.strategy) == ("sneakers", "priority")  # xmas not yet valid
    assert first.body()["content"]["creative_id"] == "sneakers"
    decider.remember("ws", "u1", "sneakers", now)
    capped = decider.choose("ws", placement, offers, person, "u1", now + 1000)
    assert (capped.offer, capped.content, capped.fallback) == (
        None,
        {"type": "text", "text": "Welcome"},
        True,
    )
    person.segments[hidden_key("vip-gift")] = now  # the processor found them eligible
    assert decider.choose("ws", placement, offers, person, "u1", now).offer == "vip-gift"
    assert decider.choose("ws", placement, offers, None, "new", now).offer == "sneakers"


def test_beta_draws_have_the_beta_distribution() -> None:
    rng = random.Random(3)
    for a, b in ((1, 1), (1, 9), (1, 200), (4, 1), (3, 7)):
        draws = sorted(beta(rng, a, b) for _ in range(20_000))
        assert all(0.0 <= d <= 1.0 for d in draws)
        mean = a / (a + b)
        assert abs(statistics.fmean(draws) - mean) < 0.01 * max(mean, 0.1), (a, b)
        variance = a * b / ((a + b) ** 2 * (a + b + 1))
        assert abs(statistics.variance(draws) - variance) < 0.05 * variance, (a, b)


def test_the_bandit_favours_what_people_act_on_and_still_explores() -> None:
    placement = compile_placement(BILLBOARD, 1)
    offers = [compile_offer(offer(k), 1) for k in ("a", "b", "c")]
    decider = decider_with({("", "a"): (1000, 20), ("", "b"): (1000, 80), ("", "c"): (30, 0)})
    picks = Counter(decider.choose("ws", placement, offers, None, f"u{i}", 0).offer
                    for i in range(2000))  # fmt: skip
    assert picks["b"] > 0.6 * 2000  # 8 % beats 2 %
    assert picks["c"] > 20  # little evidence: still tried
    assert picks["a"] < picks["c"]


def test_the_processor_keeps_eligibility_and_learns_from_impressions(store_url: str) -> None:
    h = Harness(store_url)
    try:
        h.apply({"kind": "segment", "key": "vip",
                 "condition": {"==": [{"var": "traits.plan"}, "vip"]}})  # fmt: skip
        h.apply(BILLBOARD)
        h.apply(offer("vip-gift", eligible={"in_segment": "vip"}))
        h.send({"type": "identify", "userId": "u1", "traits": {"plan": "vip"}},
               {"type": "identify", "userId": "u2", "traits": {"plan": "free"}})  # fmt: skip
        h.process()
        assert hidden_key("vip-gift") in h.by("user_id", "u1").segments
        assert hidden_key("vip-gift") not in h.by("user_id", "u2").segments
        served = {"decision_id": "dc_1", "placement_id": "lobby-billboard",
                  "variant": "vip-gift", "strategy": "experiment"}  # fmt: skip
        seen = {"placement_id": "lobby-billboard", "decision_id": "dc_1",
                "creative_id": "vip-gift"}  # fmt: skip
        h.send(track("decision.served", served, userId="u1"),
               track("content.impression", seen, userId="u1"),
               track("content.impression", seen, userId="u1"),  # the same decision: once
               track("content.interacted", {**seen, "action": "select"}, userId="u1"),
               track("content.impression", {**seen, "decision_id": "dc_forged"},
                     userId="u1"))  # fmt: skip
        h.process()
        person = h.by("user_id", "u1")
        assert person.decisions["dc_1"].impressed and person.decisions["dc_1"].interacted
        assert [(c, k) for _, c, k in person.sends] == [("offer", "vip-gift")]
        with h.sql.engine.connect() as conn:
            rows = conn.execute(sa.select(decision_stats)).mappings().all()
        assert [dict(r) for r in rows] == [
            {
                "workspace_id": h.workspace,
                "placement": "lobby-billboard",
                "arm": "",
                "offer": "vip-gift",
                "served": 1,
                "impressions": 1,
                "interactions": 1,
            }
        ]
    finally:
        h.close()
