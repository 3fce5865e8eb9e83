"""Output folders: never one that overlaps an input, and ``--overwrite`` only replaces our own.

Every stage that writes a folder (``prepare``, ``train``, ``export``, ``bench``) checks its
``--out`` here first. A folder FloraEdge wrote carries a small marker file naming its kind;
``--overwrite`` deletes a folder only when that marker says it is of the same kind, so a
mistyped ``--out`` (a home directory, the raw release, a dataset) is never deleted.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

from edge_runtime.errors import FloraEdgeError

MARKER = ".floraedge-output.json"


class OutputError(FloraEdgeError):
    """An output folder that would overlap an input, or that ``--overwrite`` may not replace."""


def overlaps(a: Path, b: Path) -> bool:
    """True when ``a`` and ``b`` are the same path or one is inside the other (after resolving links)."""
    a, b = a.resolve(), b.resolve()
    return a == b or a in b.parents or b in a.parents


def marker_kind(folder: Path) -> str | None:
    try:
        return json.loads((folder / MARKER).read_text()).get("kind")
    except (OSError, ValueError, AttributeError):
        return None


def check_disjoint(out: Path, inputs: Iterable[Path | str | None]) -> None:
    """Refuse an ``out`` that is, contains or lies inside one of ``inputs``."""
    for source in inputs:
        if source is not None and overlaps(Path(out), Path(source)):
            raise OutputError(
                f"--out {out} overlaps the input {source} (the same folder, or one inside the other); "
                "choose an --out outside your inputs"
            )


def check_output(out: Path, kind: str, *, overwrite: bool, inputs: Iterable[Path | str | None] = ()) -> bool:
    """Refuse an ``out`` that overlaps an input, or exists and may not be replaced; True if it will be replaced."""
    out = Path(out)
    check_disjoint(out, inputs)
    if not out.exists() and not out.is_symlink():
        return False
    if out.is_dir() and not out.is_symlink() and not any(out.iterdir()):
        return False  # an empty folder: nothing to lose
    if not overwrite:
        raise OutputError(f"{out} already exists; choose another --out or pass --overwrite to replace it")
    if not out.is_dir() or out.is_symlink() or marker_kind(out) != kind:
        raise OutputError(
            f"--overwrite refused: {out} is not a folder written by `floraedge {kind}` (it has no {MARKER} "
            f"saying so); delete it yourself if you mean it, or choose another --out"
        )
    return True


def write_marker(folder: Path, kind: str) -> None:
    (Path(folder) / MARKER).write_text(json.dumps({"kind": kind}) + "\n", encoding="utf-8")


def shareable(folder: Path) -> None:
    """Give a folder made by ``tempfile.mkdtemp`` (mode 0700) the permissions of a plain ``mkdir``."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(folder, 0o777 & ~umask)
