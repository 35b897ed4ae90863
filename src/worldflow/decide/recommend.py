"""Item-to-item recommendations from co-engagement: a strategy of the decision API.

People who engage with two items close together in time make them neighbours. `CoEngagement`
learns incrementally from a stream of engagements ``(person, item, at_ms, weight)``, as the
processor sees object and product events, and answers three queries: the items most similar
to one item (`CoEngagement.similar`), the items to show a person given what they engaged with
recently (`CoEngagement.recommend`, `CoEngagement.recommend_for`) and the most popular items
(`CoEngagement.popular`), which is also the fallback when a history says too little.

The model, for items ``a`` and ``b`` and engagements of weight ``r``:

- each person's **recent items**: the last `max_recent` (50) distinct items they engaged with
  within `horizon_ms` (30 days) of their newest engagement, with the highest weight each had;
- **co-engagement** ``w(a, b) = Σ r_a · r_b``, symmetric, added when a person engages with
  ``b`` while ``a`` is among their recent items. A pair counts once per person while both
  stay recent: engaging again with a recent item adds nothing, or only the difference when
  the weight rises (a view, then a purchase), so heavy users do not dominate;
- **popularity** ``pop(a) = Σ r_a`` and the **norm** ``n(a) = Σ r_a²``, each engagement of a
  person with an item counted once likewise;
- **time decay** with a half-life (`half_life_ms`, 30 days): every weight is multiplied by
  ``2^(-age / half_life)``. It is applied lazily, by forward decay: an engagement at ``t``
  adds ``r · 2^((t - t0) / half_life)``, so nothing is rewritten as time passes; dividing by
  the same factor at the time of a query gives the decayed value, and ratios (similarities,
  rankings) need no division at all. When the factor grows past ``2^64`` every stored value
  is rescaled once and the landmark ``t0`` moves;
- **similarity** ``sim(a, b) = w(a, b) / (n(a)^α · n(b)^(1-α))`` with ``α`` the
  `asymmetry` (0.8): the asymmetric cosine of the two items' vectors of weights over people.
  At ``α = 0.5`` it is the cosine, which does not favour popular items the way raw counts do;
  a larger ``α`` lets a popular neighbour ``b`` weigh a little more, which ranks better on
  sparse engagement. It is a score for ranking, not a bounded measure: it may exceed 1 when
  ``α ≠ 0.5``, under time decay (a pair is dated by its later engagement, each norm by its
  own), and when an item that left a person's recent items comes back and pairs again;
- **recommendation** for a history ``h_0 … h_m`` (oldest first): the score of a candidate
  ``c`` is ``Σ d^i · sim(h_i, c) / Σ d^i``, with ``i`` counted from the newest item and the
  recency decay ``d`` (`history_decay`, 0.9), over the last `max_history` (50) items; the
  history and the excluded items are never recommended; popular items fill the list when it
  has fewer than ``k``.

Bounded memory: each item keeps at most `max_neighbours` (100) neighbours. When an item's
list grows past that by a quarter it is pruned back to the strongest by decayed co-engagement
in one go (so the work is amortised; ties go to the smaller item id), and `compact` prunes
every list to `max_neighbours` exactly (`dump` does). After pruning the relation may be
asymmetric: ``b`` may stay among ``a``'s neighbours after ``a`` left ``b``'s. At most
`max_people` (100,000) people's recent items are kept, the least recently engaged forgotten
first, and a person idle for longer than the horizon is forgotten too (their items could not
pair with a new engagement anyway). Memory is then about items × `max_neighbours` entries
plus active people × `max_recent`.

Weights are the caller's. Suggested, by event of the catalogue (`SUGGESTED_WEIGHTS`): a view
or a gaze dwell 1, selecting or grabbing 1.5, opening the product's details or configuring
it 2, a try-on 3, adding to the cart 4, a purchase 6; the item is the product's SKU when the
object carries one, its object id otherwise. Results are deterministic for a given stream:
equal scores are ordered by item id.
"""

from __future__ import annotations

import heapq
from collections.abc import Collection, Iterable, Mapping, Sequence
from operator import itemgetter, mul
from typing import Final, Literal

import msgspec

__all__ = ["SUGGESTED_WEIGHTS", "CoEngagement", "Engagement", "Scored"]

DAY_MS: Final = 86_400_000

SUGGESTED_WEIGHTS: Final[Mapping[str, float]] = {
    "object.viewed": 1.0,
    "object.gaze_dwell": 1.0,
    "object.selected": 1.5,
    "object.grabbed": 1.5,
    "product.detail_opened": 2.0,
    "product.configured": 2.0,
    "product.tried_on": 3.0,
    "cart.item_added": 4.0,
    "order.completed": 6.0,
}
"""Suggested weight per kind of engagement, by the catalogue's event names."""

_RESCALE_EXPONENT: Final = 64.0  # rescale stored values once they carry a factor of 2^64
_POPULAR_CACHE: Final = 256  # popular items kept sorted between changes of popularity
_FORMAT: Final = 1

Engagement = tuple[str, str, int, float]
"""``(person, item, at_ms, weight)``."""


class Scored(msgspec.Struct, frozen=True, array_like=True):
    """One recommended item: its score (higher is better; popular items' in [0, 1], relative
    to the most popular) and where it came from."""

    item: str
    score: float
    source: Literal["co_engagement", "popular"]


class _State(msgspec.Struct, array_like=True):
    """What `CoEngagement.dump` writes: parameters, clock and every stored value."""

    format: int
    half_life_ms: int | None
    horizon_ms: int
    max_recent: int
    max_neighbours: int
    max_people: int
    max_history: int
    history_decay: float
    asymmetry: float
    max_candidates: int
    landmark_ms: int
    clock_ms: int | None
    popularity: dict[str, float]
    norms: dict[str, float]
    neighbours: dict[str, dict[str, float]]
    people: dict[str, list[tuple[str, int, float]]]


def _order(entry: tuple[str, float]) -> tuple[float, str]:
    """Sort key: highest score first, then smallest item id (deterministic ties)."""
    return (-entry[1], entry[0])


_value = itemgetter(1)


def _power(norm: float, exponent: float) -> float:
    """``norm ** exponent`` for a negative exponent; 0 for a norm decayed to nothing (beyond
    about a thousand half-lives a float's decay factor is 0)."""
    return float(norm**exponent) if norm > 0.0 else 0.0


def _top(entries: Collection[tuple[str, float]], k: int) -> list[tuple[str, float]]:
    """The ``k`` highest-scored entries, best first, equal scores by item id.

    Selecting on the float alone runs in C; only the few entries at or above the ``k``-th
    score are then sorted with the tie-break.
    """
    if len(entries) > k:
        cut = heapq.nlargest(k, entries, key=_value)[-1][1]
        entries = [e for e in entries if e[1] >= cut]
    return sorted(entries, key=_order)[:k]


class CoEngagement:
    """An incremental item-to-item model of co-engagement; see the module's docstring."""

    def __init__(
        self,
        *,
        half_life_ms: int | None = 30 * DAY_MS,
        horizon_ms: int = 30 * DAY_MS,
        max_recent: int = 50,
        max_neighbours: int = 100,
        max_people: int = 100_000,
        max_history: int = 50,
        history_decay: float = 0.9,
        asymmetry: float = 0.8,
        max_candidates: int = 50,
    ) -> None:
        if half_life_ms is not None and half_life_ms <= 0:
            raise ValueError("half_life_ms must be positive (or None for no decay)")
        bounds = (horizon_ms, max_recent, max_neighbours, max_people, max_history, max_candidates)
        if min(bounds) <= 0:
            raise ValueError("horizon and bounds must be positive")
        if not 0.0 < history_decay <= 1.0:
            raise ValueError("history_decay must be in (0, 1]")
        if not 0.0 <= asymmetry <= 1.0:
            raise ValueError("asymmetry must be in [0, 1]")
        self.half_life_ms = half_life_ms
        self.horizon_ms = horizon_ms
        self.max_recent = max_recent
        self.max_neighbours = max_neighbours
        self.max_people = max_people
        self.max_history = max_history
        self.history_decay = history_decay
        self.asymmetry = asymmetry
        self.max_candidates = max_candidates
        self._prune_at = max_neighbours + max(1, max_neighbours // 4)
        self._landmark_ms = 0
        self._landmark_set = False
        self._clock_ms: int | None = None
        self._pop: dict[str, float] = {}
        self._norm: dict[str, float] = {}
        self._nbrs: dict[str, dict[str, float]] = {}
        self._damp: dict[str, float] = {}  # n(item)^(asymmetry - 1), what a candidate's score takes
        # the strongest max_candidates neighbours of an item, dropped whenever its list changes
        self._heads: dict[str, list[tuple[str, float]]] = {}
        # person -> {item: (at_ms, weight)}, items in the order engaged, people least recent first
        self._people: dict[str, dict[str, tuple[int, float]]] = {}
        self._popular: list[tuple[str, float]] | None = None

    # learning

    def add(self, person: str, item: str, at_ms: int, weight: float = 1.0) -> None:
        """Learn one engagement of ``person`` with ``item`` at ``at_ms``, of ``weight`` > 0."""
        if not weight > 0.0:
            return
        g = self._growth(at_ms)
        people = self._people
        recent = people.pop(person, None)
        if recent is None:
            recent = {}
        people[person] = recent  # least recently engaged first
        self._forget_idle(at_ms)
        horizon = at_ms - self.horizon_ms
        while recent:
            oldest = next(iter(recent))
            if recent[oldest][0] >= horizon:
                break
            del recent[oldest]
        previous = recent.pop(item, None)
        old = 0.0 if previous is None else previous[1]
        kept = max(old, weight)
        delta = kept - old
        if delta > 0.0:
            norm = self._norm[item] = self._norm.get(item, 0.0) + (kept * kept - old * old) * g
            self._damp[item] = _power(norm, self.asymmetry - 1.0)
            self._pop[item] = self._pop.get(item, 0.0) + delta * g
            self._popular = None
            nbrs, heads = self._nbrs, self._heads
            mine = nbrs.get(item)
            if mine is None:
                mine = nbrs[item] = {}
            heads.pop(item, None)
            scaled = delta * g
            for other, (_, w) in recent.items():
                add = scaled * w
                mine[other] = mine.get(other, 0.0) + add
                theirs = nbrs.get(other)
                if theirs is None:
                    theirs = nbrs[other] = {}
                theirs[item] = theirs.get(item, 0.0) + add
                heads.pop(other, None)
                if len(theirs) > self._prune_at:
                    self._prune(theirs)
            if len(mine) > self._prune_at:
                self._prune(mine)
        recent[item] = (at_ms, kept)
        if len(recent) > self.max_recent:
            del recent[next(iter(recent))]
        if len(people) > self.max_people:
            del people[next(iter(people))]

    def add_many(self, engagements: Iterable[Engagement]) -> None:
        """Learn engagements ``(person, item, at_ms, weight)`` in the order given."""
        add = self.add
        for person, item, at_ms, weight in engagements:
            add(person, item, at_ms, weight)

    def _growth(self, at_ms: int) -> float:
        """The forward-decay factor of an engagement at ``at_ms``; advances the clock."""
        if self._clock_ms is None or at_ms > self._clock_ms:
            self._clock_ms = at_ms
        if self.half_life_ms is None:
            return 1.0
        if not self._landmark_set:
            self._landmark_ms, self._landmark_set = at_ms, True
        exponent = (at_ms - self._landmark_ms) / self.half_life_ms
        if exponent > _RESCALE_EXPONENT:
            self._rescale(at_ms)
            exponent = 0.0
        return float(2.0**exponent)

    def _rescale(self, landmark_ms: int) -> None:
        """Move the landmark to ``landmark_ms``, dividing every stored value by its factor."""
        assert self.half_life_ms is not None
        factor = 2.0 ** (-(landmark_ms - self._landmark_ms) / self.half_life_ms)
        for values in (self._pop, self._norm, *self._nbrs.values()):
            for key in values:
                values[key] *= factor
        self._landmark_ms = landmark_ms
        self._reset_derived()

    def _reset_derived(self) -> None:
        """Recompute what is derived from the stored values (after a rescale or a load)."""
        beta = self.asymmetry - 1.0
        self._damp = {item: _power(norm, beta) for item, norm in self._norm.items()}
        self._heads.clear()
        self._popular = None

    def _candidates(self, item: str) -> Collection[tuple[str, float]]:
        """The item's strongest `max_candidates` neighbours with their weights (cached)."""
        head = self._heads.get(item)
        if head is not None:
            return head
        neighbours = self._nbrs.get(item)
        if not neighbours:
            return ()
        if len(neighbours) <= self.max_candidates:
            return neighbours.items()
        head = self._heads[item] = _top(neighbours.items(), self.max_candidates)
        return head

    def _prune(self, neighbours: dict[str, float]) -> None:
        """Keep the `max_neighbours` strongest of one item's neighbours, in place."""
        cut = heapq.nlargest(self.max_neighbours, neighbours.values())[-1]
        keep = {b: w for b, w in neighbours.items() if w >= cut}
        if len(keep) > self.max_neighbours:  # ties at the cut: the smaller item ids stay
            ties = sorted(b for b, w in keep.items() if w == cut)
            for b in ties[self.max_neighbours - len(keep) :]:
                del keep[b]
        neighbours.clear()
        neighbours.update(keep)

    def _forget_idle(self, at_ms: int) -> None:
        """Forget people (least recent first) whose newest engagement is beyond the horizon."""
        people = self._people
        horizon = at_ms - self.horizon_ms
        for _ in range(2):  # amortised: each engagement retires at most two idle people
            if len(people) < 2:
                return
            person = next(iter(people))
            recent = people[person]
            if recent and next(reversed(recent.values()))[0] >= horizon:
                return
            del people[person]

    def compact(self) -> None:
        """Prune every item's neighbours to `max_neighbours` exactly."""
        for item, neighbours in self._nbrs.items():
            if len(neighbours) > self.max_neighbours:
                self._prune(neighbours)
                self._heads.pop(item, None)

    # queries

    def similar(self, item: str, k: int = 10) -> list[Scored]:
        """The ``k`` items most similar to ``item`` (``sim``, above), best first."""
        neighbours = self._nbrs.get(item)
        if not neighbours or k <= 0:
            return []
        base = _power(self._norm[item], -self.asymmetry)
        damp = self._damp
        scores = [(b, w * base * damp[b]) for b, w in neighbours.items()]
        return [Scored(b, s, "co_engagement") for b, s in _top(scores, k)]

    def recommend(
        self, history: Sequence[str], k: int = 10, exclude: Collection[str] = ()
    ) -> list[Scored]:
        """``k`` items for someone whose recent items are ``history`` (oldest first).

        Candidates are the neighbours of the last `max_history` items, scored by their
        similarities weighted by recency; neither the history nor ``exclude`` is recommended.
        Popular items fill the list when the history yields fewer than ``k``.
        """
        if k <= 0:
            return []
        recent = history[-self.max_history :]
        decay = self.history_decay
        n = len(recent)
        total = float(n) if decay == 1.0 else (1.0 - decay**n) / (1.0 - decay)
        # scores are accumulated negated, so that C-level tuple order (-score, item) ranks them
        acc: dict[str, float] = {}
        get, candidates, norm = acc.get, self._candidates, self._norm
        alpha = -self.asymmetry
        recency = -1.0 / total if n else 0.0
        for seen_item in reversed(recent):
            head = candidates(seen_item)
            if head:
                factor = recency * _power(norm[seen_item], alpha)
                for b, w in head:
                    acc[b] = get(b, 0.0) + w * factor
            recency *= decay
        seen = set(history)
        seen.update(exclude)
        out: list[Scored] = []
        if acc:
            for item in seen:
                acc.pop(item, None)
            scores = map(mul, acc.values(), map(self._damp.__getitem__, acc))
            best = heapq.nsmallest(k, zip(scores, acc, strict=True))
            # (a neighbour whose weight decayed to nothing is no recommendation)
            out = [Scored(b, -s, "co_engagement") for s, b in best if s < 0.0]
            seen.update(s.item for s in out)
        if len(out) < k:
            out.extend(self.popular(k - len(out), exclude=seen))
        return out

    def score(self, history: Sequence[str], items: Collection[str]) -> dict[str, float]:
        """How strongly ``history`` (oldest first) recommends each of ``items``: the score
        `recommend` gives a candidate, from every stored neighbour (not only the strongest
        `max_candidates`); an item none of the recent items leads to scores 0. When the
        history leads to none of them, their popularity relative to the most popular item,
        so that a newcomer is shown what most people engage with."""
        recent = history[-self.max_history :]
        decay, n = self.history_decay, len(recent)
        total = float(n) if decay == 1.0 else (1.0 - decay**n) / (1.0 - decay)
        wanted = set(items)
        acc = dict.fromkeys(wanted, 0.0)
        recency = 1.0 / total if n else 0.0
        alpha, nbrs, norm = -self.asymmetry, self._nbrs, self._norm
        for seen_item in reversed(recent):
            neighbours = nbrs.get(seen_item)
            if neighbours:
                factor = recency * _power(norm[seen_item], alpha)
                for item in wanted.intersection(neighbours):
                    acc[item] += neighbours[item] * factor
            recency *= decay
        if any(acc.values()):
            return {item: value * self._damp.get(item, 0.0) for item, value in acc.items()}
        ranked = self.popular(1)
        top = self._pop.get(ranked[0].item, 0.0) if ranked else 0.0
        return {item: (self._pop.get(item, 0.0) / top if top else 0.0) for item in wanted}

    def recommend_for(
        self, person: str, k: int = 10, exclude: Collection[str] = ()
    ) -> list[Scored]:
        """`recommend` over the person's recent items as the model keeps them."""
        return self.recommend(self.history(person), k, exclude)

    def popular(self, k: int = 10, exclude: Collection[str] = ()) -> list[Scored]:
        """The ``k`` most popular items (decayed) not in ``exclude``, scored relative to the top."""
        if k <= 0 or not self._pop:
            return []
        ranked = self._popular
        if ranked is None:
            ranked = self._popular = _top(self._pop.items(), _POPULAR_CACHE)
        top = ranked[0][1]
        out: list[Scored] = []
        for item, value in ranked:
            if item not in exclude:
                out.append(Scored(item, value / top, "popular"))
                if len(out) == k:
                    return out
        if len(ranked) < len(self._pop):  # the exclusions went past the cached head: sort all
            out = []
            for item, value in sorted(self._pop.items(), key=_order):
                if item not in exclude:
                    out.append(Scored(item, value / top, "popular"))
                    if len(out) == k:
                        break
        return out

    def history(self, person: str) -> list[str]:
        """The person's recent items, oldest first (empty for someone unknown or forgotten)."""
        recent = self._people.get(person)
        return list(recent) if recent else []

    def weight(self, a: str, b: str, at_ms: int | None = None) -> float:
        """The co-engagement ``w(a, b)`` decayed to ``at_ms`` (default: the newest engagement)."""
        value = self._nbrs.get(a, {}).get(b, 0.0)
        return value * self._decay_to(at_ms)

    def popularity(self, item: str, at_ms: int | None = None) -> float:
        """The popularity ``pop(item)`` decayed to ``at_ms`` (default: the newest engagement)."""
        return self._pop.get(item, 0.0) * self._decay_to(at_ms)

    def _decay_to(self, at_ms: int | None) -> float:
        if self.half_life_ms is None:
            return 1.0
        at = self._clock_ms if at_ms is None else at_ms
        if at is None:
            return 1.0
        return float(2.0 ** (-(at - self._landmark_ms) / self.half_life_ms))

    @property
    def items(self) -> int:
        """How many items have been engaged with."""
        return len(self._pop)

    @property
    def edges(self) -> int:
        """How many (item, neighbour) entries are stored."""
        return sum(len(n) for n in self._nbrs.values())

    @property
    def people(self) -> int:
        """How many people's recent items are kept."""
        return len(self._people)

    # storage

    def dump(self) -> bytes:
        """The whole model as MessagePack bytes (after `compact`), for `load`."""
        self.compact()
        return msgspec.msgpack.encode(
            _State(
                format=_FORMAT,
                half_life_ms=self.half_life_ms,
                horizon_ms=self.horizon_ms,
                max_recent=self.max_recent,
                max_neighbours=self.max_neighbours,
                max_people=self.max_people,
                max_history=self.max_history,
                history_decay=self.history_decay,
                asymmetry=self.asymmetry,
                max_candidates=self.max_candidates,
                landmark_ms=self._landmark_ms,
                clock_ms=self._clock_ms,
                popularity=self._pop,
                norms=self._norm,
                neighbours=self._nbrs,
                people={
                    p: [(item, at, w) for item, (at, w) in recent.items()]
                    for p, recent in self._people.items()
                },
            )
        )

    @classmethod
    def load(cls, data: bytes) -> CoEngagement:
        """A model from `dump`'s bytes; it answers and learns as the dumped one would."""
        state = msgspec.msgpack.decode(data, type=_State)
        if state.format != _FORMAT:
            raise ValueError(f"unknown model format {state.format}")
        model = cls(
            half_life_ms=state.half_life_ms,
            horizon_ms=state.horizon_ms,
            max_recent=state.max_recent,
            max_neighbours=state.max_neighbours,
            max_people=state.max_people,
            max_history=state.max_history,
            history_decay=state.history_decay,
            asymmetry=state.asymmetry,
            max_candidates=state.max_candidates,
        )
        model._landmark_ms = state.landmark_ms
        model._landmark_set = state.clock_ms is not None
        model._clock_ms = state.clock_ms
        model._pop = state.popularity
        model._norm = state.norms
        model._nbrs = state.neighbours
        model._people = {
            p: {item: (at, w) for item, at, w in recent} for p, recent in state.people.items()
        }
        model._reset_derived()
        return model
