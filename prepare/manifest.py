"""The manifest of a prepared dataset (standard library only: the torch-free device reads it too)."""

from __future__ import annotations

import csv
from pathlib import Path

from edge_runtime.errors import FloraEdgeError

MANIFEST_FIELDS = ("path", "cache_path", "image_id", "class_index", "class_name", "split", "sha256", "width", "height")


def write_manifest(path: Path, rows: list[dict]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=MANIFEST_FIELDS)
        writer.writeheader()
        writer.writerows(rows)


def read_manifest(prepared: str | Path) -> list[dict]:
    """The manifest rows of a prepared dataset, with integer fields as ints."""
    path = Path(prepared) / "manifest.csv"
    if not path.is_file():
        raise FloraEdgeError(f"{prepared} is not a prepared dataset (no manifest.csv); run `floraedge prepare` first")
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        for key in ("image_id", "class_index", "width", "height"):
            row[key] = int(row[key])
    return rows
