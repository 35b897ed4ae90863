"""``make bench``: every benchmark, each printing its figures and ratios against a baseline."""

from __future__ import annotations

import sys

from bench import ingest

if __name__ == "__main__":
    sys.argv = [sys.argv[0], *sys.argv[1:]]
    ingest.main()
