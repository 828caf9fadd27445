"""The layers import one way: core <- accel <- workflows <- cli. Read from the source with ast, so a lazy
import inside a function counts too."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "chanscope"
CORE = ["models", "attacks", "losses.py", "observe", "train", "data", "errors.py", "scales.py", "checkpoint.py",
        "io.py", "device.py"]


def _imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
    return out


def _files(*parts: str) -> list[Path]:
    files = []
    for p in parts:
        path = PKG / p
        files += sorted(path.rglob("*.py")) if path.is_dir() else [path]
    return files


def _offenders(files: list[Path], forbidden: tuple[str, ...]) -> list[str]:
    return [f"{f.relative_to(ROOT) if f.is_relative_to(ROOT) else f} imports {m}" for f in files
            for m in sorted(_imports(f)) if m.startswith(forbidden)]


def test_core_imports_neither_acceleration_nor_workflows_nor_cli():
    assert _offenders(_files(*CORE), ("chanscope.accel", "chanscope.workflows", "cli", "chanscope.cli")) == []


def test_acceleration_wraps_the_core_and_reads_no_run_folders():
    assert _offenders(_files("accel"), ("chanscope.workflows", "cli", "chanscope.cli")) == []


def test_the_library_never_imports_the_cli():
    assert _offenders(_files("."), ("cli", "chanscope.cli")) == []


@pytest.mark.parametrize("forbidden", ["chanscope.accel", "chanscope.workflows"])
def test_the_check_can_fail(tmp_path, forbidden):
    f = tmp_path / "m.py"
    f.write_text(f"def f():\n    from {forbidden} import x\n")
    assert _offenders([f], (forbidden,)) == [f"{f} imports {forbidden}", f"{f} imports {forbidden}.x"]
