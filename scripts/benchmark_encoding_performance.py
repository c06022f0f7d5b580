#!/usr/bin/env python3
"""A short compare, then an async sweep over 1, 2 and 4 workers: `recorder benchmark demo`.

    python scripts/benchmark_encoding_performance.py --episode-time 5
"""

import sys
from pathlib import Path

# Run from a checkout without installing it: the checkout's packages come first.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from recorder.cli import main

if __name__ == "__main__":
    sys.exit(main(["benchmark", "demo", *sys.argv[1:]]))
