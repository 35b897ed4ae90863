"""``make bench``: every benchmark, each printing its figures and ratios against a baseline."""

from __future__ import annotations

import sys

from bench import ingest, translate

if __name__ == "__main__":
    argv = sys.argv
    sys.argv = [argv[0]]
    translate.main()
    sys.argv = [argv[0], *argv[1:]]
    ingest.main()
