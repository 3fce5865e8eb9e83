"""Classification metrics from logits, in numpy: the one implementation that training, evaluation and
the benchmarks report (torch-free, so a device measures its accuracy the same way)."""

from __future__ import annotations

import numpy as np


def classification_metrics(logits: np.ndarray, targets: np.ndarray, num_classes: int | None = None) -> dict:
    """top-1, top-5, mean per-class accuracy (over the classes present), per-class accuracy and the confusion matrix.

    ``logits`` is N x C, ``targets`` N class indices; ``num_classes`` defaults to C (or more where a
    target lies beyond the model's classes).
    """
    logits, targets = np.asarray(logits), np.asarray(targets).astype(np.int64)
    if num_classes is None:
        num_classes = max(logits.shape[1], int(targets.max(initial=-1)) + 1)
    pred = logits.argmax(1)
    top5 = np.argsort(-logits, axis=1, kind="stable")[:, :5]
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(confusion, (targets, pred), 1)
    support = confusion.sum(1)
    per_class = np.divide(np.diag(confusion), support, out=np.zeros(num_classes), where=support > 0)
    return {
        "top1": float((pred == targets).mean()),
        "top5": float((top5 == targets[:, None]).any(1).mean()),
        "mean_per_class": float(per_class[support > 0].mean()),
        "n": int(len(targets)),
        "per_class": per_class.tolist(),
        "confusion": confusion.tolist(),
    }
