"""The architecture as a rule: every import points down, and the recorder takes from the
worker side only the contract both sides share (docs/architecture.md, "Layout")."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# What each part of the recorder may import of the recorder, besides itself. Capture and
# farm are the ground floor; the dataset stands on them; the commands on the dataset.
USE_CASE = {"recorder.dataset", "recorder.capture", "recorder.farm", "recorder.settings",
            "recorder.progress", "recorder.interrupts"}
RECORDER_LAYERS: dict[str, set[str]] = {
    "recorder.capture": set(),
    "recorder.farm": set(),
    "recorder.progress": set(),
    "recorder.interrupts": set(),
    "recorder.dataset": {"recorder.capture", "recorder.farm"},
    "recorder.settings": {"recorder.dataset", "recorder.farm"},
    "recorder.session": USE_CASE,
    "recorder.pending": USE_CASE,
    # The benchmark measures the use cases: `recorder record`'s session, and lerobot-record
    # on the farm against LeRobot's own (recorder benchmark lerobot | lerobot-record).
    "recorder.benchmark": USE_CASE | {"recorder.session", "recorder.lerobot"},
    "recorder.lerobot": USE_CASE | {"recorder.session"},
    "recorder.cli": {"recorder"},
}
# The worker side's modules that are the contract both sides share: the job and raw
# formats and sinks, the storage backends and broker URLs, the app jobs are sent with, the ledger
# (the farm client's read-only queries and the capture announcement), the encode function
# that inline encoding calls, and the one flag/environment naming convention.
CONTRACT = {"encoder_worker.jobs", "encoder_worker.raw_episode", "encoder_worker.raw_layout",
            "encoder_worker.raw_frames", "encoder_worker.raw_sinks", "encoder_worker.storage",
            "encoder_worker.broker",
            "encoder_worker.celery_app", "encoder_worker.ledger", "encoder_worker.encode",
            "encoder_worker.cli_settings"}


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def part_of(module: str, parts: set[str] | dict[str, set[str]]) -> str | None:
    """The longest of parts that module is, or is inside of."""
    matches = [p for p in parts if module == p or module.startswith(p + ".")]
    return max(matches, key=len, default=None)


def test_recorder_imports_point_down_and_take_only_the_contract_of_the_worker_side():
    wrong = []
    for path in sorted((REPO / "recorder").rglob("*.py")):
        module = module_name(path)
        layer = part_of(module, RECORDER_LAYERS)
        if layer is None:
            continue  # recorder/__init__.py
        allowed = RECORDER_LAYERS[layer] | {layer}
        for imported in imports_of(path):
            if imported.startswith("recorder"):
                if part_of(imported, allowed | {"recorder"} if layer == "recorder.cli"
                           else allowed) is None:
                    wrong.append(f"{module} imports {imported}")
            elif imported.startswith("encoder_worker") and part_of(imported, CONTRACT) is None:
                wrong.append(f"{module} imports the worker's {imported}, not the contract")
    assert wrong == []


def test_the_worker_side_never_imports_the_recorder():
    wrong = [f"{module_name(path)} imports {imported}"
             for path in sorted((REPO / "encoder_worker").rglob("*.py"))
             for imported in imports_of(path) if imported.startswith("recorder")]
    assert wrong == []
