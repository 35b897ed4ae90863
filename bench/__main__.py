"""``make bench``: every benchmark, each printing its figures and ratios against a baseline."""

from __future__ import annotations

import sys

from bench import (
    e2e,
    ingest,
    journeys,
    logic,
    nodered,
    process,
    profiles,
    push,
    segments,
    sessions,
    translate,
)

if __name__ == "__main__":
    argv = sys.argv
    for bench in (translate, logic, process):
        sys.argv = [argv[0]]
        bench.main()
    sys.argv = [argv[0], *argv[1:]]
    ingest.main()
    for bench in (e2e, profiles, segments, journeys, nodered, push, sessions):
        sys.argv = [argv[0]]
        bench.main()
