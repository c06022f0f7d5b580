#!/usr/bin/env python3
"""Summary tables and charts of benchmark results files: `recorder analyze`.

    python scripts/analyze_benchmark_results.py benchmark_results/*.json
"""

import sys
from pathlib import Path

# Run from a checkout without installing it: the checkout's packages come first.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from recorder.cli import main

if __name__ == "__main__":
    sys.exit(main(["analyze", *sys.argv[1:]]))
