"""The calibration and verification images, read through the edge runtime's own ``preprocess()``."""

from __future__ import annotations

import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np

from edge_runtime import console
from edge_runtime.errors import FloraEdgeError
from edge_runtime.preprocess import preprocess, read_image_bgr
from edge_runtime.spec import PreprocessSpec
from prepare.manifest import read_manifest


class CalibrationError(FloraEdgeError):
    """Too few images to calibrate int8 quantization reliably."""


def balanced_sample(rows: list[dict], n: int, seed: int) -> list[dict]:
    """Up to ``n`` rows, round-robin over classes in a seeded random order (class-balanced)."""
    rng = np.random.default_rng(seed)
    by_class = defaultdict(list)
    for row in rows:
        by_class[row["class_index"]].append(row)
    queues = [list(rng.permutation(by_class[c])) for c in sorted(by_class)]
    picked = []
    while len(picked) < n and any(queues):
        for queue in queues:
            if queue and len(picked) < n:
                picked.append(queue.pop())
    return picked


def load_batch(prepared: Path, rows: list[dict], spec: PreprocessSpec, desc: str) -> np.ndarray:
    """The original JPEGs, preprocessed exactly as on the device, into one float32 batch (filled in
    place: its peak memory is the batch, not a list of images plus their concatenation)."""
    batch = np.empty((len(rows), *spec.input_shape[1:]), np.float32)
    for i, r in enumerate(console.progress(rows, desc=desc, unit="img")):
        batch[i] = preprocess(read_image_bgr(prepared / r["path"]), spec)[0]
    return batch


def calibration_set(prepared: Path, spec: PreprocessSpec, *, n: int, minimum: int, seed: int, split: str = "train"):
    """(batch, info) for int8 calibration: a class-balanced sample of ``split``."""
    rows = [r for r in read_manifest(prepared) if r["split"] == split]
    picked = balanced_sample(rows, n, seed)
    if len(picked) < minimum:
        raise CalibrationError(
            f"only {len(picked)} {split} images for calibration, fewer than the minimum {minimum}; "
            "int8 scales from so few images are unreliable. Use a larger prepared dataset or lower --calib-min"
        )
    info = {
        "split": split,
        "n": len(picked),
        "seed": seed,
        "classes": len({r["class_index"] for r in picked}),
        "image_ids": [r["image_id"] for r in picked],
    }
    return load_batch(prepared, picked, spec, "calibration images"), info


def mapped_batch(prepared: Path, rows: list[dict], spec: PreprocessSpec, desc: str, scratch: Path) -> np.ndarray:
    """``load_batch``'s images in a file-backed array: written one image at a time into a .npy under
    ``scratch`` that is unlinked at once (the mapping lives on), so the batch is page cache the kernel can
    drop, not this process's memory, whatever the split's size. ``scratch`` should be on a disk (beside the
    output), not a RAM-backed /tmp."""
    with tempfile.TemporaryDirectory(dir=scratch, prefix=".verification-") as tmp:
        batch = np.lib.format.open_memmap(
            Path(tmp) / "batch.npy", mode="w+", dtype=np.float32, shape=(len(rows), *spec.input_shape[1:])
        )
        for i, r in enumerate(console.progress(rows, desc=desc, unit="img")):
            batch[i] = preprocess(read_image_bgr(prepared / r["path"]), spec)[0]
        batch.flush()
    return batch


def verification_set(
    prepared: Path, spec: PreprocessSpec, *, split: str, limit: int | None, scratch: Path | None = None
):
    """(batch, targets, info): the images every exported file is checked on; with ``scratch``, a
    file-backed batch there (``mapped_batch``: memory flat in the split's size), else one in memory."""
    rows = [r for r in read_manifest(prepared) if r["split"] == split]
    if not rows:
        raise FloraEdgeError(f"{prepared} has no {split!r} images to verify the exports on")
    rows = balanced_sample(rows, limit, seed=0) if limit else rows
    targets = np.array([r["class_index"] for r in rows])
    desc = f"{split} images"
    batch = (
        load_batch(prepared, rows, spec, desc) if scratch is None else mapped_batch(prepared, rows, spec, desc, scratch)
    )
    return batch, targets, {"split": split, "n": len(rows)}
