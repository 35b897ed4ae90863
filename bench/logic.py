"""The boolean core of segment conditions: compiled rules against a reference interpreter.

    python -m bench.logic [--rules 1000] [--profiles 200] [--repeat 5]

1,000 rules of realistic variety (trait equality and membership, numeric thresholds on
counters and per-world statistics, nested and/or/not, a between, consent) are evaluated
against profile-shaped documents. The figure is µs per evaluation with
``worldflow.segments.logic`` (each rule compiled once); the baseline, in the same run, is the
reference implementation from PyPI (``panzi-json-logic``, which passes the same 277 official
cases) evaluating the same rules on the same documents. Results are checked to agree.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from typing import Any

from json_logic import jsonLogic

from worldflow.segments.logic import compile_logic

PLANS = ["free", "plus", "vip"]
WORLDS = ["paris-showroom", "neo-tokyo-store", "concert-hall"]
ZONES = ["lobby", "sneakers", "jackets", "bags", "stage"]


def profile(rng: random.Random) -> dict[str, Any]:
    return {
        "traits": {"plan": rng.choice(PLANS), "locale": rng.choice(["fr-FR", "de-DE", "ja-JP"]),
                   "age": rng.randint(16, 70), "email": f"p{rng.randint(0, 10**6)}@example.com"},
        "counters": {"events": rng.randint(1, 500), "orders": rng.randint(0, 5),
                     "try_ons": rng.randint(0, 20)},
        "worlds": {w: {"sessions": rng.randint(0, 9), "active_ms": rng.randint(0, 10**7),
                       "zones": {z: {"visits": rng.randint(0, 5)} for z in rng.sample(ZONES, 2)}}
                   for w in rng.sample(WORLDS, rng.randint(1, 3))},
        "consent": {"personalisation": rng.random() < 0.7, "marketing_contact": rng.random() < 0.5},
    }  # fmt: skip


def condition(rng: random.Random) -> dict[str, Any]:
    kind = rng.randrange(6)
    world = rng.choice(WORLDS)
    if kind == 0:
        return {"==": [{"var": "traits.plan"}, rng.choice(PLANS)]}
    if kind == 1:
        return {"in": [{"var": "traits.locale"}, rng.sample(["fr-FR", "de-DE", "ja-JP"], 2)]}
    if kind == 2:
        return {">=": [{"var": f"counters.{rng.choice(['orders', 'try_ons'])}"}, rng.randint(1, 3)]}
    if kind == 3:
        return {">": [{"var": [f"worlds.{world}.sessions", 0]}, rng.randint(0, 5)]}
    if kind == 4:
        return {"<=": [18, {"var": "traits.age"}, rng.randint(25, 60)]}
    return {"!": {"var": "consent.marketing_contact"}}


def rule(rng: random.Random) -> dict[str, Any]:
    parts = [condition(rng) for _ in range(rng.randint(2, 4))]
    if rng.random() < 0.3:
        parts.append({"or": [condition(rng), condition(rng)]})
    return {"and": parts} if rng.random() < 0.7 else {"or": parts}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rules", type=int, default=1000)
    parser.add_argument("--profiles", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    rng = random.Random(4)
    rules = [rule(rng) for _ in range(args.rules)]
    docs = [profile(rng) for _ in range(args.profiles)]
    started = time.perf_counter()
    compiled = [compile_logic(r) for r in rules]
    compile_us = (time.perf_counter() - started) / len(rules) * 1e6
    pairs = len(rules) * len(docs)
    ours, theirs = [], []
    for _ in range(args.repeat):
        start = time.perf_counter()
        mine = [fn(doc) for fn in compiled for doc in docs]
        ours.append((time.perf_counter() - start) / pairs * 1e6)
        start = time.perf_counter()
        reference = [jsonLogic(r, doc) for r in rules for doc in docs]
        theirs.append((time.perf_counter() - start) / pairs * 1e6)
        assert mine == reference, "the compiled rules disagree with the reference"
    a, b = statistics.median(ours), statistics.median(theirs)
    print(f"{args.rules:,} rules × {args.profiles:,} profiles, median of {args.repeat} runs; "
          f"compiling takes {compile_us:.0f} µs per rule")  # fmt: skip
    print(f"worldflow.segments.logic (compiled): {a:.2f} µs per evaluation")
    print(f"baseline panzi-json-logic (interpreted): {b:.2f} µs per evaluation")
    print(f"ratio: {b / a:.1f}× faster")


if __name__ == "__main__":
    main()
