"""The recommend strategy's models, learnt from the log (decide/learner.py), and the strategy
choosing by them in the decider."""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest

from tests.processor.harness import Harness, track
from worldflow.decide.definition import compile_offer, compile_placement
from worldflow.decide.engine import Decider
from worldflow.decide.learner import Learner
from worldflow.events.catalogue import Catalogue

CTX = {"world": {"id": "paris"}}


def viewed(who: str, sku: str, event: str = "object.viewed", **extra: Any) -> dict[str, Any]:
    obj = {"object_id": f"shelf/{sku.lower()}", "product": {"sku": sku}}
    return track(event, {"obj": obj, **extra}, anonymousId=who, context=CTX)


@pytest.fixture
def h(store_url: str) -> Iterator[Harness]:
    harness = Harness(store_url)
    yield harness
    harness.close()


def now_ms(h: Harness) -> int:
    return int(h.now.timestamp() * 1000)


SHELF = {"kind": "placement", "key": "shelf", "type": "shelf", "strategy": "recommend"}


def recommending(h: Harness, **placement: Any) -> None:
    """A live recommend placement in the harness's workspace (what the learner learns for)."""
    h.apply({**SHELF, **placement})
    h.process()


def test_what_people_engage_with_together_recommends_each_other(h: Harness) -> None:
    # Runners and trail shoes go together, many times; socks go with nothing here.
    for n in range(6):
        h.send(viewed(f"fan-{n}", "RUNNER", view_ms=2000), viewed(f"fan-{n}", "TRAIL"))
    h.send(viewed("sock-fan", "SOCKS"))
    h.send(viewed("ada", "RUNNER", view_ms=2000), {"type": "identify", "anonymousId": "ada",
                                                   "userId": "u-ada"})  # fmt: skip
    h.tick(h.now + timedelta(seconds=5))  # ticks and definitions in the log are skipped
    recommending(h)
    learner = Learner(h.sql.engine)
    assert learner.catch_up(now_ms(h)) > 0
    assert learner.learnt == 14 and learner.catch_up(now_ms(h)) == 0  # nothing new
    ada = h.by("user_id", "u-ada")
    scores = learner.scores(h.workspace, ada, ["TRAIL", "SOCKS", "RUNNER"])
    assert scores["TRAIL"] > 0 and scores["SOCKS"] == 0
    # Someone unknown gets popularity: the runner, seen by seven people, leads (seconds of a
    # 30-day half-life apart, the views weigh almost the same).
    newcomer = learner.scores(h.workspace, None, ["TRAIL", "SOCKS", "RUNNER"])
    assert newcomer == {"RUNNER": 1.0, "TRAIL": pytest.approx(6 / 7, rel=1e-4),
                        "SOCKS": pytest.approx(1 / 7, rel=1e-4)}  # fmt: skip
    assert learner.scores("another-workspace", ada, ["TRAIL"]) == {}
    # New entries are learnt from where it stopped.
    h.send(viewed("ada", "SOCKS", "cart.item_added", qty=1,
                  money={"amount": "9.00", "currency": "EUR"}))  # fmt: skip
    assert learner.catch_up(now_ms(h)) == 1 and learner.learnt == 15


def test_only_workspaces_with_a_recommend_placement_are_learnt(h: Harness) -> None:
    h.send(viewed("fan", "RUNNER"), viewed("fan", "TRAIL"))
    h.apply({**SHELF, "strategy": "priority"})
    h.process()
    learner = Learner(h.sql.engine)
    assert learner.catch_up(now_ms(h)) == 0 and learner.models == {}  # nothing read
    recommending(h)  # the shelf recommends from now on: the horizon's history is learnt
    assert learner.catch_up(now_ms(h)) > 0 and learner.learnt == 2
    assert learner.scores(h.workspace, None, ["RUNNER", "TRAIL"])["RUNNER"] > 0
    recommending(h, strategy="bandit")  # no longer: the model is dropped
    assert learner.catch_up(now_ms(h)) == 0 and learner.models == {} and learner.offsets == {}
    assert learner.scores(h.workspace, None, ["RUNNER"]) == {}


def test_only_the_horizon_is_read_at_start(h: Harness) -> None:
    h.send(viewed("old", "RUNNER"), viewed("old", "TRAIL"))
    h.now += timedelta(days=40)
    h.send(viewed("new", "SOCKS"))
    recommending(h)
    learner = Learner(h.sql.engine)
    learner.catch_up(now_ms(h))
    assert learner.learnt == 1
    assert learner.scores(h.workspace, None, ["RUNNER", "SOCKS"]) == {"RUNNER": 0.0,
                                                                     "SOCKS": 1.0}  # fmt: skip


def test_a_recommend_placement_shows_the_offer_of_the_item_recommended(h: Harness) -> None:
    for n in range(4):
        h.send(viewed(f"fan-{n}", "RUNNER"), viewed(f"fan-{n}", "TRAIL"))
        h.send(viewed(f"coat-{n}", "PARKA"), viewed(f"coat-{n}", "SCARF"))
    h.send(viewed("ada", "RUNNER"))
    recommending(h)
    learner = Learner(h.sql.engine)
    learner.catch_up(now_ms(h))
    decider = Decider(h.sql.engine, Catalogue.default(), recommend=learner.scores,
                      rng=random.Random(1))  # fmt: skip
    placement = compile_placement(SHELF, 1)
    offers = [compile_offer({"kind": "offer", "key": key, "placements": ["shelf"], "item": item,
                             "content": {"type": "text", "text": key}}, 1)
              for key, item in (("a-scarf", "SCARF"), ("b-trail", "TRAIL"))]  # fmt: skip
    ada = h.by("anonymous_id", "ada")
    chosen = decider.choose(h.workspace, placement, offers, ada, "ada", now_ms(h))
    assert (chosen.offer, chosen.strategy) == ("b-trail", "recommend")
    # A newcomer: the more popular item's offer (both were seen by four people; the scarves
    # a second later each time, so by a hair of decay they weigh more).
    fresh = decider.choose(h.workspace, placement, offers, None, "nobody", now_ms(h))
    assert fresh.offer == "a-scarf"
