"""Split modes: the official ``setid.mat`` splits, or a reproducible class-stratified random split."""

from __future__ import annotations

import numpy as np

from edge_runtime.errors import FloraEdgeError

SPLIT_MODES = ("official", "stratified")


class SplitError(FloraEdgeError):
    """Split fractions that cannot produce a usable split."""


def stratified_split(
    labels: np.ndarray, image_ids: np.ndarray, *, val_frac: float, test_frac: float, seed: int
) -> dict[str, np.ndarray]:
    """Per class, shuffle its images with ``seed`` and cut test, val, then train.

    Each class keeps at least one training image; the same inputs always give the same split.
    """
    if not (0 <= val_frac < 1 and 0 <= test_frac < 1 and val_frac + test_frac < 1):
        raise SplitError(
            f"--val-frac {val_frac} and --test-frac {test_frac} must each be in [0, 1) and sum to less than 1"
        )
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {"train": [], "val": [], "test": []}
    for cls in np.unique(labels[image_ids - 1]):
        ids = rng.permutation(np.sort(image_ids[labels[image_ids - 1] == cls]))
        n_test = min(round(ids.size * test_frac), ids.size - 1)
        n_val = min(round(ids.size * val_frac), ids.size - 1 - n_test)
        parts["test"].append(ids[:n_test])
        parts["val"].append(ids[n_test : n_test + n_val])
        parts["train"].append(ids[n_test + n_val :])
    return {split: np.sort(np.concatenate(chunks)).astype(np.int64) for split, chunks in parts.items()}
