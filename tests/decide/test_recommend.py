"""Co-engagement recommendations (`worldflow.decide.recommend`): the module docstring's model
checked on small hand-computed streams, and against a brute-force recomputation.

Notation as in the module: ``w(a, b)`` co-engagement, ``pop(a)`` popularity, ``n(a)`` norm. With
``asymmetry`` α the code scores a neighbour ``b`` of ``a`` as ``w(a, b) / (n(a)^α · n(b)^(1-α))``,
which is the documented cosine ``w / sqrt(n(a) · n(b))`` when α = 0.5, so most examples use
α = 0.5; the default α (0.8) is checked against that formula on its own.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worldflow.decide.recommend import DAY_MS, SUGGESTED_WEIGHTS, CoEngagement, Scored

CO = "co_engagement"
POP = "popular"
SQRT10 = math.sqrt(10.0)
SQRT2 = math.sqrt(2.0)


def rows(result: Sequence[Scored]) -> list[tuple[str, float, str]]:
    return [(s.item, s.score, s.source) for s in result]


def approx(*expected: tuple[str, float, str]) -> list[tuple[str, Any, str]]:
    return [(item, pytest.approx(score, rel=1e-12, abs=1e-300), source)
            for item, score, source in expected]  # fmt: skip


def feed(model: CoEngagement, engagements: Iterable[tuple[str, str, int, float]]) -> CoEngagement:
    model.add_many(engagements)
    return model


# The worked example. p1: a, b, c; p2: a, then c weighing 2; p3: b, d; p4: e alone.
#   w(a,b) = 1, w(a,c) = 1 + 1·2 = 3, w(b,c) = 1, w(b,d) = 1
#   pop: a 2, b 2, c 3, d 1, e 1;  n: a 2, b 2, c 1 + 4 = 5, d 1, e 1
EXAMPLE = [
    ("p1", "a", 0, 1.0), ("p1", "b", 1, 1.0), ("p1", "c", 2, 1.0),
    ("p2", "a", 3, 1.0), ("p2", "c", 4, 2.0),
    ("p3", "b", 5, 1.0), ("p3", "d", 6, 1.0),
    ("p4", "e", 7, 1.0),
]  # fmt: skip


def example(**params: Any) -> CoEngagement:
    options: dict[str, Any] = {"half_life_ms": None, "asymmetry": 0.5, "history_decay": 0.5}
    options.update(params)
    return feed(CoEngagement(**options), EXAMPLE)


# --- co-engagement, popularity, norm ---------------------------------------------------------


def test_worked_example_weights_and_popularity() -> None:
    m = example()
    expected = {("a", "b"): 1.0, ("a", "c"): 3.0, ("b", "c"): 1.0, ("b", "d"): 1.0}
    for a in "abcde":
        for b in "abcde":
            want = expected.get((a, b), expected.get((b, a), 0.0))
            assert m.weight(a, b) == pytest.approx(want), (a, b)
            assert m.weight(a, b) == m.weight(b, a)  # symmetric
    assert {i: m.popularity(i) for i in "abcde"} == {"a": 2, "b": 2, "c": 3, "d": 1, "e": 1}
    assert m.popularity("unknown") == 0.0
    assert m.weight("a", "unknown") == 0.0
    assert (m.items, m.edges, m.people) == (5, 8, 4)
    assert m.history("p1") == ["a", "b", "c"]
    assert m.history("p2") == ["a", "c"]
    assert m.history("nobody") == []


def test_a_pair_counts_once_per_person_while_both_are_recent() -> None:
    m = CoEngagement(half_life_ms=None)
    for t, item in enumerate("ababab"):  # a heavy user going back and forth
        m.add("p", item, t)
    assert m.weight("a", "b") == 1.0
    assert m.popularity("a") == m.popularity("b") == 1.0
    m.add("q", "b", 10)
    m.add("q", "a", 11)  # another person counts again, in either order
    assert m.weight("a", "b") == m.weight("b", "a") == 2.0
    assert m.popularity("a") == 2.0


def test_a_rising_weight_adds_only_the_difference() -> None:
    m = CoEngagement(half_life_ms=None, asymmetry=0.5)
    m.add("p", "a", 0, 1.0)
    m.add("p", "b", 1, 1.0)
    assert m.weight("a", "b") == 1.0
    m.add("p", "a", 2, 1.0)  # same weight again: nothing
    assert (m.weight("a", "b"), m.popularity("a")) == (1.0, 1.0)
    m.add("p", "a", 3, 3.0)  # 1 -> 3 (view, then purchase): + 2·r_b
    assert (m.weight("a", "b"), m.popularity("a")) == (3.0, 3.0)
    m.add("p", "b", 4, 2.0)  # 1 -> 2: + 1·r_a = 3
    assert (m.weight("a", "b"), m.popularity("b")) == (6.0, 2.0)
    m.add("p", "a", 5, 1.0)  # lower than kept: nothing
    assert (m.weight("a", "b"), m.popularity("a")) == (6.0, 3.0)
    # w = 3·2 = r_a·r_b with the highest weights; n(a) = 9, n(b) = 4: cosine 6 / 6
    assert rows(m.similar("a")) == approx(("b", 1.0, CO))
    assert m.history("p") == ["b", "a"]  # re-engaging moves an item to the newest place


def test_the_newest_item_pairs_with_every_recent_one_before_it() -> None:
    m = CoEngagement(half_life_ms=None)
    m.add_many([("p", "a", 0, 2.0), ("p", "b", 1, 3.0), ("p", "c", 2, 5.0)])
    assert (m.weight("a", "b"), m.weight("a", "c"), m.weight("b", "c")) == (6.0, 10.0, 15.0)
    assert m.edges == 6


def test_non_positive_weights_are_ignored() -> None:
    m = CoEngagement(half_life_ms=1000)
    m.add("p", "a", 0, 1.0)
    for bad in (0.0, -1.0, math.nan):
        m.add("p", "b", 5000, bad)
        m.add("q", "c", 5000, bad)
    assert (m.items, m.edges, m.people) == (1, 0, 1)
    assert m.history("p") == ["a"]
    assert m.weight("a", "b") == 0.0
    assert m.popularity("a") == 1.0  # the clock did not move either: no decay at all


def test_suggested_weights_are_the_documented_ones() -> None:
    assert SUGGESTED_WEIGHTS == {
        "object.viewed": 1.0, "object.gaze_dwell": 1.0,
        "object.selected": 1.5, "object.grabbed": 1.5,
        "product.detail_opened": 2.0, "product.configured": 2.0,
        "product.tried_on": 3.0, "cart.item_added": 4.0, "order.completed": 6.0,
    }  # fmt: skip


# --- similarity ------------------------------------------------------------------------------


def test_similar_is_the_cosine_with_symmetric_norms() -> None:
    m = example()
    # sim(a,c) = 3/sqrt(2·5), sim(a,b) = 1/sqrt(2·2)
    assert rows(m.similar("a")) == approx(("c", 3 / SQRT10, CO), ("b", 0.5, CO))
    # sim(b,d) = 1/sqrt(2), sim(b,a) = 1/2, sim(b,c) = 1/sqrt(10)
    assert rows(m.similar("b")) == approx(("d", 1 / SQRT2, CO), ("a", 0.5, CO),
                                          ("c", 1 / SQRT10, CO))  # fmt: skip
    assert rows(m.similar("b", k=2)) == approx(("d", 1 / SQRT2, CO), ("a", 0.5, CO))
    assert m.similar("b", k=0) == m.similar("b", k=-1) == []
    assert m.similar("e") == []  # no neighbours
    assert m.similar("unknown") == []
    for a in "abcd":
        for s in m.similar(a):
            assert 0.0 <= s.score <= 1.0
            assert s.score == pytest.approx(next(t.score for t in m.similar(s.item) if t.item == a))


@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.5, 0.8, 1.0])
def test_asymmetry_weights_the_two_norms(alpha: float) -> None:
    m = example(asymmetry=alpha)
    # w(a,b) / (n(a)^α · n(b)^(1-α)), n(a) = 2, n(b) = 2, n(c) = 5
    c = 3 / (2**alpha * 5 ** (1 - alpha))
    b = 1 / (2**alpha * 2 ** (1 - alpha))
    expected = sorted([("c", c, CO), ("b", b, CO)], key=lambda e: (-e[1], e[0]))
    assert rows(m.similar("a")) == approx(*expected)
    # and from c's side: w(c,a) / (n(c)^α · n(a)^(1-α))
    assert rows(m.similar("c"))[:1] == approx(("a", 3 / (5**alpha * 2 ** (1 - alpha)), CO))


def test_default_asymmetry_recommend_uses_the_same_weighting() -> None:
    m = example(asymmetry=0.8)
    # history [a, b]: b newest (d^0), a (d^1 = 0.5); total 1.5; score(c) damped by n(c)^-0.2
    c = (1 * 2**-0.8 + 0.5 * 3 * 2**-0.8) * 5**-0.2 / 1.5
    d = (1 * 2**-0.8) * 1**-0.2 / 1.5
    assert rows(m.recommend(["a", "b"], k=2)) == approx(("c", c, CO), ("d", d, CO))
    assert m.score(["a", "b"], ["c", "d"]) == {"c": pytest.approx(c), "d": pytest.approx(d)}


# --- recommend -------------------------------------------------------------------------------


def test_recommend_weights_the_history_by_recency() -> None:
    m = example()
    # newest b: sim(b,c) = 1/√10, sim(b,d) = 1/√2; then a (×0.5): sim(a,c) = 3/√10; total 1.5
    assert rows(m.recommend(["a", "b"])) == approx(
        ("c", (1 + 0.5 * 3) / SQRT10 / 1.5, CO),
        ("d", (1 / SQRT2) / 1.5, CO),
        ("e", 1 / 3, POP),  # the only item left, relative to the most popular (c, 3)
    )
    # the other way round a is the newest
    assert rows(m.recommend(["b", "a"], k=2)) == approx(
        ("c", (3 + 0.5 * 1) / SQRT10 / 1.5, CO), ("d", 0.5 * (1 / SQRT2) / 1.5, CO)
    )


def test_history_decay_one_averages_the_similarities() -> None:
    m = example(history_decay=1.0)
    assert rows(m.recommend(["a", "b"], k=2)) == approx(
        ("c", (1 + 3) / SQRT10 / 2, CO), ("d", (1 / SQRT2) / 2, CO)
    )


def test_recommend_counts_only_the_last_max_history_items_but_excludes_all() -> None:
    m = example(max_history=1)
    # only b counts (total 1); a, its neighbour, is still never recommended
    assert rows(m.recommend(["a", "b"], k=2)) == approx(("d", 1 / SQRT2, CO), ("c", 1 / SQRT10, CO))
    assert m.score(["a", "b"], ["c", "a"]) == {"c": pytest.approx(1 / SQRT10),
                                               "a": pytest.approx(0.5)}  # fmt: skip


def test_recommend_excludes_and_fills_with_popular_items() -> None:
    m = example()
    out = rows(m.recommend(["a", "b"], k=4, exclude={"c"}))
    assert out == approx(("d", (1 / SQRT2) / 1.5, CO), ("e", 1 / 3, POP))  # nothing else left
    out = rows(m.recommend(["a"], k=5))
    # a's neighbours: c 3/√10, b 1/2; then popular d and e (1/3 each, by id)
    assert out == approx(("c", 3 / SQRT10, CO), ("b", 0.5, CO), ("d", 1 / 3, POP),
                         ("e", 1 / 3, POP))  # fmt: skip
    assert m.recommend(["a"], k=0) == m.recommend(["a"], k=-3) == []


def test_recommend_without_a_useful_history_is_popular() -> None:
    m = example()
    popular = approx(("c", 1.0, POP), ("a", 2 / 3, POP), ("b", 2 / 3, POP), ("d", 1 / 3, POP),
                     ("e", 1 / 3, POP))  # fmt: skip
    assert rows(m.popular()) == popular
    assert rows(m.recommend([])) == popular
    assert rows(m.recommend(["unknown"])) == popular
    assert rows(m.recommend(["e"], k=2)) == approx(("c", 1.0, POP), ("a", 2 / 3, POP))
    assert CoEngagement().recommend(["a"]) == []


def test_equal_scores_are_ordered_by_item_id() -> None:
    m = CoEngagement(half_life_ms=None, asymmetry=0.5)
    m.add_many([("p1", "z", 0, 1.0), ("p1", "h", 1, 1.0), ("p2", "y", 2, 1.0), ("p2", "h", 3, 1.0)])
    assert rows(m.recommend(["h"])) == approx(("y", 1 / SQRT2, CO), ("z", 1 / SQRT2, CO))
    assert rows(m.similar("h")) == approx(("y", 1 / SQRT2, CO), ("z", 1 / SQRT2, CO))
    assert rows(m.popular()) == approx(("h", 1.0, POP), ("y", 0.5, POP), ("z", 0.5, POP))
    assert [s.item for s in m.recommend(["h"], k=1)] == ["y"]


def test_recommend_for_uses_the_kept_history() -> None:
    m = example()
    assert m.history("p3") == ["b", "d"]
    # newest d leads only to b (its own history); b (×0.5) to a 1/2 and c 1/√10; total 1.5
    expected = approx(("a", 0.5 * 0.5 / 1.5, CO), ("c", 0.5 / SQRT10 / 1.5, CO), ("e", 1 / 3, POP))
    assert rows(m.recommend_for("p3", k=3)) == expected
    assert m.recommend_for("p3", k=3) == m.recommend(["b", "d"], k=3)
    assert rows(m.recommend_for("p3", k=3, exclude={"a"})) == approx(
        ("c", 0.5 / SQRT10 / 1.5, CO), ("e", 1 / 3, POP)
    )
    assert m.recommend_for("nobody") == m.popular()


def test_recommend_takes_only_the_strongest_candidates_and_score_takes_all() -> None:
    m = CoEngagement(half_life_ms=None, asymmetry=0.5, max_candidates=2)
    for person, other in (("p1", "c"), ("p2", "a"), ("p3", "b")):
        m.add(person, other, 0)
        m.add(person, "h", 1)
    # h's neighbours a, b, c all weigh 1: the strongest two, ties by id, are a and b
    sim = 1 / math.sqrt(3.0)  # n(h) = 3
    assert rows(m.recommend(["h"], k=3)) == approx(("a", sim, CO), ("b", sim, CO),
                                                   ("c", 1 / 3, POP))  # fmt: skip
    assert m.score(["h"], ["a", "b", "c"]) == {x: pytest.approx(sim) for x in "abc"}


# --- score -----------------------------------------------------------------------------------


def test_score_is_what_recommend_gives() -> None:
    m = example()
    for history in (["a", "b"], ["b", "a"], ["d"], ["a", "c", "d"], ["c"]):
        recommended = [s for s in m.recommend(history, k=10) if s.source == CO]
        assert recommended
        scores = m.score(history, [s.item for s in recommended])
        assert scores == {s.item: pytest.approx(s.score, rel=1e-12) for s in recommended}


def test_score_is_zero_for_items_the_history_does_not_lead_to() -> None:
    m = example()
    assert m.score(["a", "b"], ["c", "d", "e", "zz"]) == {
        "c": pytest.approx((1 + 0.5 * 3) / SQRT10 / 1.5),
        "d": pytest.approx((1 / SQRT2) / 1.5),
        "e": 0.0,
        "zz": 0.0,
    }
    assert m.score(["a", "b"], []) == {}


def test_score_falls_back_to_relative_popularity() -> None:
    m = example()
    relative = {"a": pytest.approx(2 / 3), "c": 1.0, "e": pytest.approx(1 / 3), "zz": 0.0}
    assert m.score(["e"], ["a", "c", "e", "zz"]) == relative  # e leads nowhere
    assert m.score(["a"], ["e", "d"]) == {"e": pytest.approx(1 / 3), "d": pytest.approx(1 / 3)}
    assert m.score([], ["a", "c", "e", "zz"]) == relative
    assert m.score(["unknown"], ["c"]) == {"c": 1.0}
    assert CoEngagement().score(["a"], ["a", "b"]) == {"a": 0.0, "b": 0.0}


# --- popular ---------------------------------------------------------------------------------


def test_popular_excludes_and_scores_relative_to_the_top() -> None:
    m = example()
    assert rows(m.popular(2, exclude={"c"})) == approx(("a", 2 / 3, POP), ("b", 2 / 3, POP))
    assert m.popular(0) == m.popular(-1) == []
    assert CoEngagement().popular() == []


def test_popular_beyond_the_cached_head() -> None:
    m = CoEngagement(half_life_ms=None)
    for i in range(300):
        m.add(f"p{i}", f"i{i:03d}", i, float(i + 1))
    top = [s.item for s in m.popular(3)]
    assert top == ["i299", "i298", "i297"]
    excluded = {f"i{i:03d}" for i in range(40, 300)}  # past the 256 kept sorted
    assert rows(m.popular(3, exclude=excluded)) == approx(
        ("i039", 40 / 300, POP), ("i038", 39 / 300, POP), ("i037", 38 / 300, POP)
    )
    assert len(m.popular(1000, exclude=excluded)) == 40


# --- time decay ------------------------------------------------------------------------------


def test_half_life_halves_weights_and_popularity() -> None:
    m = CoEngagement(half_life_ms=1000, asymmetry=0.5)
    m.add("p", "a", 0, 2.0)
    m.add("p", "b", 0, 3.0)
    assert m.weight("a", "b") == 6.0
    assert m.weight("a", "b", 1000) == pytest.approx(3.0)
    assert m.weight("b", "a", 3000) == pytest.approx(0.75)
    assert m.popularity("a", 2000) == pytest.approx(0.5)
    m.add("q", "a", 1000, 2.0)  # the clock moves to 1000: a is 2·½ + 2
    assert m.popularity("a") == pytest.approx(3.0)
    assert m.popularity("b") == pytest.approx(1.5)
    assert m.weight("a", "b") == pytest.approx(3.0)
    assert m.popularity("a", 0) == pytest.approx(6.0)
    m.add("q", "c", 1000, 1.0)
    # at 1000: w(a,b) 3, w(a,c) 2·1 = 2; n(a) 4·½ + 4 = 6, n(b) 9·½ = 4.5, n(c) 1
    assert m.weight("a", "c") == pytest.approx(2.0)
    assert rows(m.similar("a")) == approx(("c", 2 / math.sqrt(6), CO),
                                          ("b", 3 / math.sqrt(6 * 4.5), CO))  # fmt: skip
    assert rows(m.popular()) == approx(("a", 1.0, POP), ("b", 0.5, POP), ("c", 1 / 3, POP))


def test_decay_lets_newer_items_overtake() -> None:
    m = CoEngagement(half_life_ms=1000)
    m.add("p", "x", 0, 4.0)
    m.add("q", "y", 2000, 2.0)  # x has decayed to 1 by now
    assert rows(m.popular()) == approx(("y", 1.0, POP), ("x", 0.5, POP))
    assert m.popularity("x") == pytest.approx(1.0)


def test_no_half_life_means_no_decay() -> None:
    m = CoEngagement(half_life_ms=None)
    m.add("p", "a", 0, 2.0)
    m.add("p", "b", 10 * DAY_MS, 3.0)
    assert m.weight("a", "b", 10**15) == m.weight("a", "b") == 6.0
    assert m.popularity("a", 10**15) == 2.0


def test_horizon_limits_pairing() -> None:
    m = CoEngagement(half_life_ms=None, horizon_ms=100)
    m.add_many([("p", "a", 0, 1.0), ("p", "b", 100, 1.0)])  # exactly at the horizon: pairs
    m.add_many([("q", "c", 0, 1.0), ("q", "d", 101, 1.0)])  # just past it: does not
    m.add_many([("r", "e", 0, 1.0), ("r", "e", 90, 1.0), ("r", "f", 150, 1.0)])  # e refreshed
    assert m.weight("a", "b") == 1.0
    assert m.weight("c", "d") == 0.0
    assert m.weight("e", "f") == 1.0
    assert m.history("q") == ["d"]
    assert m.popularity("c") == 1.0  # popularity stays; only pairing ends
    assert m.popularity("e") == 1.0  # refreshing the same weight added nothing


def test_a_pair_counts_again_once_both_left_the_recent_items() -> None:
    m = CoEngagement(half_life_ms=None, horizon_ms=100)
    m.add_many([("p", "a", 0, 1.0), ("p", "b", 0, 1.0), ("p", "a", 200, 1.0), ("p", "b", 200, 1.0)])
    assert (m.weight("a", "b"), m.popularity("a"), m.popularity("b")) == (2.0, 2.0, 2.0)


def test_rescaling_past_two_to_the_64_changes_no_answer() -> None:
    m = CoEngagement(half_life_ms=1000, horizon_ms=1000)
    m.add_many([("p1", "a", 0, 1.0), ("p1", "b", 0, 1.0)])
    m.add_many([("p2", "c", 10_000, 1.0), ("p2", "d", 10_000, 1.0)])
    assert rows(m.popular()) == approx(("c", 1.0, POP), ("d", 1.0, POP), ("a", 2**-10, POP),
                                       ("b", 2**-10, POP))  # fmt: skip
    similar_before = rows(m.similar("a")) + rows(m.similar("c"))
    recommended_before = rows(m.recommend(["a"], k=1))
    m.add("p3", "e", 70_000)  # 70 half-lives after the landmark: stored values are rescaled
    assert m._landmark_ms == 70_000  # white box: the rescale really happened
    assert m.weight("a", "b", 0) == pytest.approx(1.0)
    assert m.weight("c", "d", 10_000) == pytest.approx(1.0)
    assert m.weight("a", "b") == pytest.approx(2**-70)
    assert m.popularity("c") == pytest.approx(2**-60)
    assert m.popularity("e") == 1.0
    assert rows(m.similar("a")) + rows(m.similar("c")) == approx(*similar_before)
    assert similar_before == approx(("b", 1.0, CO), ("d", 1.0, CO))
    assert rows(m.recommend(["a"], k=1)) == approx(*recommended_before)
    assert rows(m.popular()) == approx(("e", 1.0, POP), ("c", 2**-60, POP), ("d", 2**-60, POP),
                                       ("a", 2**-70, POP), ("b", 2**-70, POP))  # fmt: skip
    # learning goes on at the new landmark (p1's a and b are past the horizon: a counts anew)
    m.add_many([("p1", "a", 70_000, 1.0), ("p1", "f", 70_500, 2.0)])
    assert m.popularity("a") == pytest.approx((2**-70 + 1) * 2**-0.5)
    assert m.weight("a", "f") == pytest.approx(2.0)
    m.add("p4", "g", 140_000)  # and past the next landmark
    assert m._landmark_ms == 140_000
    assert m.weight("a", "f", 70_500) == pytest.approx(2.0)
    assert m.popularity("a", 0) == pytest.approx(1.0 + 2**70)
    # at 70_000: w(a,f) = 2·2^0.5, n(a) = 2^-70 + 1, n(f) = 4·2^0.5, w(a,b) = n(b) = 2^-70
    n_a = 2**-70 + 1
    assert rows(m.similar("a")) == approx(
        ("f", 2 * 2**0.5 / (n_a**0.8 * (4 * 2**0.5) ** 0.2), CO),
        ("b", 2**-70 / (n_a**0.8 * (2**-70) ** 0.2), CO),
    )


# --- bounds ----------------------------------------------------------------------------------


def hub(
    model: CoEngagement, neighbours: Sequence[str], *, start: int = 0, hub_last: bool = True
) -> None:
    """One person per neighbour ``n``, engaging with ``n`` and the hub ``h``, weight i + 1."""
    for i, n in enumerate(neighbours, start):
        order = (n, "h") if hub_last else ("h", n)
        for j, item in enumerate(order):
            model.add(f"p-{n}", item, 2 * i + j, float(i + 1))


def test_neighbours_are_pruned_past_a_quarter_more_to_the_strongest() -> None:
    names = ["n1", "n2", "n3", "n4", "n5", "n6"]
    for hub_last in (True, False):
        m = CoEngagement(half_life_ms=None, max_neighbours=4)  # pruned when past 4 + 1
        hub(m, names[:5], hub_last=hub_last)
        assert len(m.similar("h", k=100)) == 5 and m.edges == 10
        hub(m, names[5:], start=5, hub_last=hub_last)  # w(h, n_i) = i · i
        assert {s.item for s in m.similar("h", k=100)} == {"n3", "n4", "n5", "n6"}
        assert m.edges == 4 + 6
        # the relation may be asymmetric now
        assert m.weight("h", "n1") == 0.0 and m.weight("n1", "h") == 1.0
        assert [s.item for s in m.similar("n1")] == ["h"]


def test_compact_prunes_exactly() -> None:
    m = CoEngagement(half_life_ms=None, max_neighbours=4)
    hub(m, ["n1", "n2", "n3", "n4", "n5"])
    m.compact()
    assert [s.item for s in m.similar("h", k=100)] == ["n5", "n4", "n3", "n2"]
    assert m.edges == 4 + 5
    assert [s.item for s in m.recommend(["h"], k=4)] == ["n5", "n4", "n3", "n2"]


def test_pruning_ties_keep_the_smaller_ids() -> None:
    m = CoEngagement(half_life_ms=None, max_neighbours=2)  # pruned when past 3
    for i, n in enumerate("dcb"):
        m.add(f"p{n}", n, 2 * i)
        m.add(f"p{n}", "h", 2 * i + 1)
    assert [s.item for s in m.similar("h")] == ["b", "c", "d"]
    compacted = CoEngagement.load(m.dump())  # dump compacts: 3 -> 2 (m too)
    assert [s.item for s in compacted.similar("h")] == ["b", "c"]
    m = CoEngagement(half_life_ms=None, max_neighbours=2)
    for i, n in enumerate("dcb"):
        m.add(f"p{n}", n, 2 * i)
        m.add(f"p{n}", "h", 2 * i + 1)
    m.add("pa", "a", 10)
    m.add("pa", "h", 11)  # 4 > 3: pruned in one go
    assert [s.item for s in m.similar("h")] == ["a", "b"]


def test_the_default_neighbour_bound() -> None:
    m = CoEngagement(half_life_ms=None)
    for i in range(125):
        m.add(f"p{i}", f"n{i:03d}", 2 * i)
        m.add(f"p{i}", "h", 2 * i + 1)
    assert len(m.similar("h", k=1000)) == 125
    m.add("p125", "n125", 300)
    m.add("p125", "h", 301)
    assert [s.item for s in m.similar("h", k=1000)] == [f"n{i:03d}" for i in range(100)]


def test_max_recent_keeps_the_last_distinct_items() -> None:
    m = CoEngagement(half_life_ms=None, max_recent=2)
    m.add_many([("p", "a", 0, 1.0), ("p", "b", 1, 1.0), ("p", "c", 2, 1.0), ("p", "d", 3, 1.0)])
    assert m.history("p") == ["c", "d"]
    # c still paired with a (recent then); d came after a left
    assert (m.weight("a", "c"), m.weight("a", "d"), m.weight("b", "d")) == (1.0, 0.0, 1.0)
    m.add("p", "c", 4)  # c moves to the newest place, b is long gone
    m.add("p", "e", 5)
    assert m.history("p") == ["c", "e"]
    assert m.weight("d", "e") == 1.0


def test_max_people_forgets_the_least_recently_engaged() -> None:
    m = CoEngagement(half_life_ms=None, max_people=2)
    m.add_many([("p1", "a", 0, 1.0), ("p2", "b", 1, 1.0), ("p1", "c", 2, 1.0), ("p3", "d", 3, 1.0)])
    assert m.people == 2
    assert m.history("p2") == []
    assert m.history("p1") == ["a", "c"]
    m.add("p4", "e", 4)  # now p1 is the least recent
    assert m.history("p1") == []
    m.add("p1", "f", 5)  # p1 starts afresh: f pairs with nothing
    assert m.weight("a", "f") == m.weight("c", "f") == 0.0
    assert m.history("p1") == ["f"]


def test_people_idle_beyond_the_horizon_are_forgotten() -> None:
    m = CoEngagement(half_life_ms=None, horizon_ms=100)
    m.add_many([("p1", "a", 0, 1.0), ("p2", "b", 10, 1.0)])
    m.add("p3", "c", 100)  # p1 exactly at the horizon: kept
    assert m.people == 3
    m.add("p3", "c", 200)  # p1 (0) and p2 (10) idle for longer than 100
    assert m.people == 1
    assert m.history("p1") == m.history("p2") == []
    assert m.history("p3") == ["c"]


# --- dump and load ---------------------------------------------------------------------------


def stream(seed: int, start: int, n: int) -> list[tuple[str, str, int, float]]:
    rng = random.Random(seed)
    out, t = [], start
    for _ in range(n):
        t += rng.choice([0, 1, 10, 30, 200])
        out.append((f"p{rng.randrange(6)}", f"i{rng.randrange(9)}", t,
                    rng.choice([1.0, 1.5, 2.0, 4.0, 6.0])))  # fmt: skip
    return out


def answers(m: CoEngagement) -> tuple[object, ...]:
    items = [f"i{i}" for i in range(9)] + ["new"]
    people = [f"p{i}" for i in range(6)]
    histories = [m.history(p) for p in people] + [["i0", "i1"], ["i8"], []]
    return (
        (m.items, m.edges, m.people),
        [rows(m.similar(i, 20)) for i in items],
        [rows(m.recommend(h, 5, exclude={"i3"})) for h in histories],
        [rows(m.recommend_for(p, 5)) for p in people],
        [m.score(h, items) for h in histories],
        rows(m.popular(20)),
        histories,
        [[m.weight(a, b) for b in items] for a in items],
        [[m.weight(a, b, 123_456) for b in items] for a in items],
        [m.popularity(i) for i in items],
    )


def test_dump_and_load_round_trip_and_keep_learning_the_same() -> None:
    params: dict[str, Any] = {
        "half_life_ms": 1000, "horizon_ms": 700, "max_recent": 3, "max_neighbours": 3,
        "max_people": 4, "max_history": 4, "history_decay": 0.7, "asymmetry": 0.6,
        "max_candidates": 2,
    }  # fmt: skip
    original = feed(CoEngagement(**params), stream(1, 0, 60))
    original.add("p0", "i0", 100_000, 2)  # an int weight too, and a rescale (100 half-lives)
    feed(original, stream(4, 100_000, 60))
    clock = original._clock_ms
    assert clock is not None
    data = original.dump()  # with people in the middle of their recent items
    loaded = CoEngagement.load(data)
    for name, value in params.items():
        assert getattr(loaded, name) == value
    assert answers(loaded) == answers(original)
    assert msgspec.msgpack.decode(loaded.dump()) == msgspec.msgpack.decode(data)
    more = stream(2, clock, 150)
    for chunk in (more[:10], more[10:], [("p9", "new", 300_000, 1.0)], stream(3, 300_000, 50)):
        feed(original, chunk)
        feed(loaded, chunk)
        assert answers(loaded) == answers(original)
    assert msgspec.msgpack.decode(loaded.dump()) == msgspec.msgpack.decode(original.dump())


def test_an_empty_model_round_trips() -> None:
    loaded = CoEngagement.load(CoEngagement(half_life_ms=1000).dump())
    fresh = CoEngagement(half_life_ms=1000)
    for m in (loaded, fresh):
        m.add_many([("p", "a", 5000, 1.0), ("p", "b", 6000, 1.0), ("q", "a", 7000, 2.0)])
    assert answers(loaded) == answers(fresh)
    assert loaded.dump() == fresh.dump()


def test_dump_compacts_and_load_rejects_unknown_formats() -> None:
    m = CoEngagement(half_life_ms=None, max_neighbours=4)
    hub(m, ["n1", "n2", "n3", "n4", "n5"])
    assert m.edges == 10
    data = m.dump()
    assert m.edges == 9
    state = msgspec.msgpack.decode(data)
    state[0] = 99
    with pytest.raises(ValueError, match="unknown model format 99"):
        CoEngagement.load(msgspec.msgpack.encode(state))


# --- parameters ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "params",
    [
        {"half_life_ms": 0}, {"half_life_ms": -1}, {"horizon_ms": 0}, {"max_recent": 0},
        {"max_neighbours": 0}, {"max_people": 0}, {"max_history": 0}, {"max_candidates": -1},
        {"history_decay": 0.0}, {"history_decay": 1.5}, {"history_decay": math.nan},
        {"asymmetry": -0.1}, {"asymmetry": 1.1}, {"asymmetry": math.nan},
    ],
)  # fmt: skip
def test_invalid_parameters_raise(params: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        CoEngagement(**params)


def test_boundary_parameters_are_valid() -> None:
    for params in ({"half_life_ms": None}, {"history_decay": 1.0}, {"asymmetry": 0.0},
                   {"asymmetry": 1.0}, {"max_neighbours": 1, "max_recent": 1}):  # fmt: skip
        CoEngagement(**params)


# --- against a brute-force recomputation -----------------------------------------------------

engagements = st.lists(
    st.tuples(st.sampled_from("pqr"), st.sampled_from("abcde"), st.integers(0, 3),
              st.sampled_from([0.5, 1.0, 1.5, 2.0, 4.0])),
    max_size=30,
)  # fmt: skip


def timed(raw: list[tuple[str, str, int, float]]) -> list[tuple[str, str, int, float]]:
    """Make the times increasing: each engagement's ``t`` is a step after the previous one."""
    out, t = [], 0
    for person, item, step, weight in raw:
        t += step
        out.append((person, item, t, weight))
    return out


@settings(max_examples=200, deadline=None)
@given(engagements)
def test_weights_match_the_definition(raw: list[tuple[str, str, int, float]]) -> None:
    events = timed(raw)
    m = feed(CoEngagement(half_life_ms=None, asymmetry=0.5), events)
    # nothing leaves the recent items: each person's item weighs its highest weight, and
    # w(a, b) = Σ_p r_a · r_b, pop(a) = Σ_p r_a, n(a) = Σ_p r_a²
    best: dict[str, dict[str, float]] = defaultdict(dict)
    for person, item, _, weight in events:
        best[person][item] = max(best[person].get(item, 0.0), weight)
    items = "abcde"
    w = {(a, b): sum(r[a] * r[b] for r in best.values() if a in r and b in r)
         for a in items for b in items if a != b}  # fmt: skip
    norm = {a: sum(r[a] ** 2 for r in best.values() if a in r) for a in items}
    for (a, b), value in w.items():
        assert m.weight(a, b) == pytest.approx(value)
    for a in items:
        assert m.popularity(a) == pytest.approx(sum(r.get(a, 0.0) for r in best.values()))
        assert m.weight(a, a) == 0.0
        similar = {s.item: s.score for s in m.similar(a, k=10)}
        expected = {b: w[a, b] / math.sqrt(norm[a] * norm[b])
                    for b in items if b != a and w[a, b] > 0}  # fmt: skip
        assert similar == pytest.approx(expected)
        assert all(0.0 <= s <= 1.0 + 1e-12 for s in similar.values())


@settings(max_examples=200, deadline=None)
@given(engagements, st.sampled_from([2, 4, 8]), st.integers(1, 3))
def test_horizon_and_max_recent_match_the_definition(
    raw: list[tuple[str, str, int, float]], horizon: int, max_recent: int
) -> None:
    events = timed(raw)
    m = feed(CoEngagement(half_life_ms=None, horizon_ms=horizon, max_recent=max_recent), events)
    # the definition, step by step: recent items per person, oldest first
    recent: dict[str, dict[str, tuple[int, float]]] = defaultdict(dict)
    w: dict[tuple[str, str], float] = defaultdict(float)
    pop: dict[str, float] = defaultdict(float)
    for person, item, t, weight in events:
        mine = {i: v for i, v in recent[person].items() if v[0] >= t - horizon}
        old = mine.pop(item, (t, 0.0))[1]
        kept = max(old, weight)
        for other, (_, r) in mine.items():
            w[item, other] += (kept - old) * r
            w[other, item] += (kept - old) * r
        pop[item] += kept - old
        mine[item] = (t, kept)
        recent[person] = dict(list(mine.items())[-max_recent:])
    for a in "abcde":
        assert m.popularity(a) == pytest.approx(pop[a])
        for b in "abcde":
            assert m.weight(a, b) == pytest.approx(w[a, b])
    for person in "pqr":
        kept_history = m.history(person)
        assert kept_history in ([], list(recent[person]))  # [] once forgotten as idle


# --- scores for ranking, and far-away times ---------------------------------------------------


def test_the_default_similarity_is_the_asymmetric_cosine_and_may_pass_one() -> None:
    m = CoEngagement(half_life_ms=None)  # asymmetry 0.8
    m.add("p", "a", 0, 1.0)
    m.add("p", "b", 1, 2.0)  # w = 2, n(a) = 1, n(b) = 4: the cosine would be 1
    assert rows(m.similar("a")) == approx(("b", 2 / 4**0.2, CO))  # w / (n(a)^0.8 n(b)^0.2)


def test_decayed_similarity_is_a_ranking_score_not_bounded_by_one() -> None:
    m = CoEngagement(half_life_ms=1000, asymmetry=0.5)
    m.add("p", "a", 0, 1.0)
    m.add("p", "b", 1000, 1.0)  # w = 2·1, n(a) = 1, n(b) = 2 (stored): 2/√2
    assert m.similar("a")[0].score == pytest.approx(math.sqrt(2))


def test_an_item_that_comes_back_pairs_again() -> None:
    m = CoEngagement(half_life_ms=None, asymmetry=0.5, horizon_ms=100)
    m.add_many([("p", "a", 0, 1.0), ("p", "b", 1, 1.0), ("p", "a", 100, 1.0), ("p", "b", 102, 1.0)])
    assert m.weight("a", "b") == 2.0  # w = 2, n(a) = 1, n(b) = 2: √2
    assert m.similar("a")[0].score == pytest.approx(math.sqrt(2))


def test_rescaling_after_a_very_long_gap_keeps_working() -> None:
    m = CoEngagement(half_life_ms=DAY_MS)
    m.add_many([("p", "a", 0, 1.0), ("p", "b", 0, 1.0)])
    m.add("q", "c", 5 * 365 * DAY_MS)  # the old values decay to 0.0 in a float
    assert m.popularity("c") == 1.0
    assert [s.item for s in m.popular(1)] == ["c"]
    assert m.weight("a", "b") == pytest.approx(0.0)
    assert all(s.score == 0.0 for s in m.similar("a"))
    assert [s.item for s in m.recommend(["a"], 1)] == ["c"]  # popular fills


def test_a_very_late_engagement_is_learnt() -> None:
    m = CoEngagement(half_life_ms=DAY_MS)
    m.add("p", "a", 5 * 365 * DAY_MS)
    m.add("q", "b", 0)  # five years late: its weight decays to 0.0, nothing breaks
    assert m.items == 2
    assert m.score(["b"], ["a"]) == {"a": 1.0}
