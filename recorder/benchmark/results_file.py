"""Results files on disk: one JSON document per run, a pydantic model each. Every kind
(`recorder benchmark`'s, the LeRobot comparisons', benchmarks/*.py's) is written and read
here, so a half-written, foreign or newer file is refused alike, with what to do."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel

M = TypeVar("M", bound=BaseModel)


class ResultsFileError(Exception):
    """A file is not a results file of the kind asked for, in a schema this reads."""


def save(result: BaseModel, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(result.model_dump_json(indent=2) + "\n")
    tmp.replace(path)  # a reader never sees half a file
    return path


def load(path: Path, model: type[M], *, what: str, newest: int, upgrade: str) -> M:
    """Read path as model. what: the kind in words ("a benchmark results file"); newest:
    the schema version this code reads up to; upgrade: what to update for a newer one.
    A model with a `benchmark` field (a default) takes only files of that benchmark.

    Raises:
        ResultsFileError: missing, not JSON of the model, another benchmark's, or newer.
    """
    try:
        text = path.read_text()
    except OSError as exc:
        raise ResultsFileError(f"cannot read {path}: {exc.strerror}") from exc
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ResultsFileError(f"{path} is not {what}: not JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise ResultsFileError(f"{path} is not {what}: not a JSON object")
    kind = model.model_fields.get("benchmark")
    wanted = kind.default if kind is not None else None
    if wanted is not None and data.get("benchmark") != wanted:
        if "benchmark" not in data:
            raise ResultsFileError(f"{path} is not {what}: it names no benchmark")
        raise ResultsFileError(f"{path} holds {data['benchmark']} results, not {wanted}")
    version = data.get("schema_version")
    if isinstance(version, int) and version > newest:
        raise ResultsFileError(f"{path} has schema_version {version}; this version reads up "
                               f"to {newest}: {upgrade}")
    try:
        return model.model_validate(data)
    except ValueError as exc:
        raise ResultsFileError(f"{path} is not {what}: {str(exc).splitlines()[0]}") from exc
