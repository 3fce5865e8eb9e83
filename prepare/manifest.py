"""The manifest of a prepared dataset (standard library only: the torch-free device reads it too)."""

from __future__ import annotations

import csv
from pathlib import Path

from edge_runtime.errors import FloraEdgeError

MANIFEST_FIELDS = ("path", "cache_path", "image_id", "class_index", "class_name", "split", "sha256", "width", "height")


def write_manifest(path: Path, rows: list[dict]) -> None:
    """The rows as CSV: the ``MANIFEST_FIELDS``, then any extra column the rows carry (e.g. ``source``)."""
    extra = [key for key in (rows[0] if rows else {}) if key not in MANIFEST_FIELDS]
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=[*MANIFEST_FIELDS, *extra])
        writer.writeheader()
        writer.writerows(rows)


def read_manifest(prepared: str | Path) -> list[dict]:
    """The manifest rows of a prepared dataset, with integer fields as ints."""
    path = Path(prepared) / "manifest.csv"
    if not path.is_file():
        raise FloraEdgeError(f"{prepared} is not a prepared dataset (no manifest.csv); run `floraedge prepare` first")
    try:
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            missing = sorted(set(MANIFEST_FIELDS) - set(reader.fieldnames or ()))
            if missing:
                raise ValueError(f"its header lacks the columns {missing}")
            rows = [_typed(row, line) for line, row in enumerate(reader, start=2)]
    except (ValueError, csv.Error) as exc:  # UnicodeDecodeError is a ValueError too
        raise FloraEdgeError(
            f"{path} is malformed ({exc}); re-create the dataset with `floraedge prepare --overwrite`"
        ) from exc
    return rows


def _typed(row: dict, line: int) -> dict:
    if None in row or any(row[key] is None for key in MANIFEST_FIELDS):
        raise ValueError(f"line {line} does not have the {len(MANIFEST_FIELDS)} columns of the header")
    for key in ("image_id", "class_index", "width", "height"):
        try:
            row[key] = int(row[key])
        except ValueError:
            raise ValueError(f"line {line}: {key} {row[key]!r} is not an integer") from None
    return row
