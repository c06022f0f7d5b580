"""Rewrite results files made before they kept paths portable (run once; kept to show how).

`recorder benchmark` used to store where each run went as this machine's absolute path
(`file:///tmp/bench/g1/runs/sync-1795795520/dataset`, the checkout's
`/work/main/benchmark_results/...`) and a replayed camera by its path (`/tmp/real_clip.mp4`).
Results files now keep them as recorder/benchmark/portable.py does: a run's folder relative
to the output dir it was made in (`runs/sync-1795795520/dataset`), a file by its name.
Only those values change: each is replaced where it stands in the file's text, so the rest
of the file stays byte for byte what the run wrote.

    python benchmarks/migrate_paths.py benchmarks/results/*_benchmark_*.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path, PurePosixPath
from typing import Any

from recorder.benchmark.portable import portable_location
from recorder.benchmark.results import load

RUNS = "runs"  # every run's folder is <output dir>/runs/<run name>/dataset


def portable_storage(location: str) -> str:
    """A run's storage relative to the output dir it was made in, which is not recorded:
    the path from its `runs/` folder on."""
    path = PurePosixPath(location.removeprefix("file://"))
    if location.startswith(("/", "file://")) and RUNS in path.parts:
        index = len(path.parts) - 1 - path.parts[::-1].index(RUNS)
        return str(PurePosixPath(*path.parts[index:]))
    return portable_location(location)


def replacements(data: dict[str, Any]) -> dict[str, str]:
    """old value -> new value, for every path that the file keeps."""
    values = {data["raw_storage"]: portable_storage(data["raw_storage"]),
              data["output_storage"]: portable_storage(data["output_storage"]),
              data["config"]["storage"]: portable_storage(data["config"]["storage"])}
    for source in data["config"].get("camera_sources", []):
        values[source] = portable_location(source)
    return {old: new for old, new in values.items() if old != new}


def migrate(path: Path) -> bool:
    """Rewrite one file in place; False when it had nothing to change.

    Raises:
        ValueError: a value to replace is not where the file's text can be changed alone.
    """
    text = path.read_text()
    data = json.loads(text)
    changes = replacements(data)
    for old, new in changes.items():
        if text.count(json.dumps(old)) < 1:
            raise ValueError(f"{path}: {old!r} not found as a JSON string")
        text = text.replace(json.dumps(old), json.dumps(new))
    if not changes:
        return False
    data["raw_storage"] = portable_storage(data["raw_storage"])
    data["output_storage"] = portable_storage(data["output_storage"])
    data["config"]["storage"] = portable_storage(data["config"]["storage"])
    data["config"]["camera_sources"] = [portable_location(source) for source in
                                        data["config"].get("camera_sources", [])]
    if json.loads(text) != data:  # a value also stood somewhere it should not change
        raise ValueError(f"{path}: replacing the paths changed other values; not written")
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(text)
    tmp.replace(path)
    load(path)  # still a results file `recorder analyze` reads
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="+", type=Path)
    args = parser.parse_args(argv)
    for path in args.files:
        print(f"{path}: {'rewritten' if migrate(path) else 'nothing to change'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
