"""The house drawn from its imports (torch-free: the files are parsed, never imported).

The stages are floors: the runtime at the bottom (what a device installs), then prepare, train, export and, on
top, benchmarks (which alone may run every stage: its pipelines). A module imports from its own floor or below,
never from above; the one-off studies/ are no part of the package: nothing in it or in its tests imports them.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FLOORS = ("edge_runtime", "prepare", "train", "export", "benchmarks")  # bottom to top
PACKAGE_AND_TESTS = (*FLOORS, "tests")


def python_files(folder: str) -> list[Path]:
    return sorted(p for p in (REPO / folder).rglob("*.py") if "__pycache__" not in p.parts)


def imported(path: Path) -> list[tuple[int, str]]:
    """(line, top-level name) of every import in ``path``, function-level and TYPE_CHECKING ones included."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name.split(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module.split(".")[0]))
    return found


def upward_imports(folder: str) -> list[str]:
    floor = FLOORS.index(folder)
    above = set(FLOORS[floor + 1 :]) | {"floraedge", "studies", "tests"}
    return [
        f"{path.relative_to(REPO)}:{line} imports {name}"
        for path in python_files(folder)
        for line, name in imported(path)
        if name in above and not (name == "floraedge" and path.name == "__main__.py")  # `python -m <stage>`: the door
    ]


@pytest.mark.parametrize("folder", FLOORS)
def test_no_stage_imports_a_stage_above_it(folder):
    assert upward_imports(folder) == []


@pytest.mark.parametrize("folder", PACKAGE_AND_TESTS)
def test_nothing_in_the_package_or_its_tests_imports_a_study(folder):
    found = [
        f"{p.relative_to(REPO)}:{line}" for p in python_files(folder) for line, name in imported(p) if name == "studies"
    ]
    assert found == []


def test_studies_are_not_installed():
    text = (REPO / "pyproject.toml").read_text()
    include = next(line for line in text.splitlines() if line.startswith("include = "))
    assert "studies" not in include and all(f'"{floor}*"' in include for floor in FLOORS)


def test_only_the_console_draws_progress_bars():
    """A bar on a terminal, plain lines in a log: edge_runtime/console.py decides, so nothing else imports tqdm."""
    found = [
        f"{p.relative_to(REPO)}:{line}"
        for folder in FLOORS
        for p in python_files(folder)
        for line, name in imported(p)
        if name == "tqdm" and p != REPO / "edge_runtime" / "console.py"
    ]
    assert found == []


def test_the_walk_sees_an_upward_import_where_it_hides(tmp_path):
    """The check itself: an import inside a function and a ``from`` import are both found."""
    module = tmp_path / "m.py"
    module.write_text("from edge_runtime import atomic\n\ndef f():\n    from train.checkpoint import load_bundle\n")
    assert imported(module) == [(1, "edge_runtime"), (4, "train")]
