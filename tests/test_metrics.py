"""`edge_runtime.metrics`: the one classification-metrics function, checked by hand-counted cases (torch-free)."""

from __future__ import annotations

import numpy as np

from edge_runtime.metrics import classification_metrics


def one_hot_logits(ranked: list[list[int]], num_classes: int) -> np.ndarray:
    """Logits whose class order per row is ``ranked[i]`` (first = top-1), the other classes below."""
    logits = np.zeros((len(ranked), num_classes), dtype=np.float32)
    for i, order in enumerate(ranked):
        for rank, c in enumerate(order):
            logits[i, c] = 10.0 - rank
    return logits


def test_counts_match_a_hand_computed_example():
    # class 0: 2 images, 1 right; class 1: 1 image, right; class 2: 1 image, wrong but 2nd
    logits = one_hot_logits([[0], [1], [1], [0, 2]], num_classes=4)
    m = classification_metrics(logits, np.array([0, 0, 1, 2]))
    assert m["top1"] == 0.5 and m["n"] == 4
    assert m["per_class"] == [0.5, 1.0, 0.0, 0.0]
    assert m["mean_per_class"] == (0.5 + 1.0 + 0.0) / 3  # class 3 has no images: not averaged in
    assert m["confusion"][0] == [1, 1, 0, 0] and m["confusion"][2] == [1, 0, 0, 0]


def test_top5_counts_ranks_two_to_five_and_not_six():
    ranked = [[1, 2, 3, 4, 0], [1, 2, 3, 4, 5, 0]]  # the target 0 ranks 5th, then 6th
    m = classification_metrics(one_hot_logits(ranked, num_classes=7), np.array([0, 0]))
    assert m["top1"] == 0.0 and m["top5"] == 0.5


def test_mean_per_class_weighs_classes_not_images():
    logits = one_hot_logits([[0]] * 9 + [[0]], num_classes=2)  # 9 of class 0 right, the one class-1 image wrong
    m = classification_metrics(logits, np.array([0] * 9 + [1]))
    assert m["top1"] == 0.9 and m["mean_per_class"] == 0.5
