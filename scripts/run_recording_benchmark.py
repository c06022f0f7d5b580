#!/usr/bin/env python3
"""The sync/async recording benchmark from a checkout: `recorder benchmark`.

    python scripts/run_recording_benchmark.py --compare --episodes 2 --episode-time 10 --fps 30
"""

import sys
from pathlib import Path

# Run from a checkout without installing it: the checkout's packages come first.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from recorder.cli import main

if __name__ == "__main__":
    sys.exit(main(["benchmark", *sys.argv[1:]]))
