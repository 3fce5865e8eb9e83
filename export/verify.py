"""The verification gate: every exported file, run by its own runtime, against the PyTorch model."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_runtime.backends import load
from export.formats import Format

LOGIT_RTOL = 1e-5  # fp32 gate: |diff| <= logit_atol + LOGIT_RTOL * max |PyTorch logit|


@dataclass(frozen=True)
class Reference:
    """What the PyTorch model says on the verification images."""

    batch: np.ndarray  # NCHW float32, preprocessed
    targets: np.ndarray
    logits: np.ndarray

    @property
    def accuracy(self) -> float:
        return float((self.logits.argmax(1) == self.targets).mean())


def run_file(path: Path, row: Format, batch: np.ndarray, threads: int | None = None) -> np.ndarray:
    backend = load(path, row.runtime, threads=threads)
    if backend.info.spec.layout == "NHWC":
        batch = batch.transpose(0, 2, 3, 1)
    return np.concatenate([backend.predict(np.ascontiguousarray(batch[i : i + 32])) for i in range(0, len(batch), 32)])


def verify(path: Path, row: Format, ref: Reference, *, max_drop: float) -> dict:
    """Metrics and the verdict: fp32 rows within ``row.logit_atol`` and 100% top-1 agreement; the others
    within ``max_drop`` accuracy points of PyTorch."""
    logits = run_file(path, row, ref.batch)
    agreement = float((logits.argmax(1) == ref.logits.argmax(1)).mean())
    accuracy = float((logits.argmax(1) == ref.targets).mean())
    drop = (ref.accuracy - accuracy) * 100
    result = {
        "max_abs_logit_diff": float(np.abs(logits - ref.logits).max()),
        "top1_agreement": agreement,
        "accuracy": accuracy,
        "torch_accuracy": ref.accuracy,
        "accuracy_drop_points": drop,
        "n": len(ref.targets),
    }
    if row.logit_atol is not None:
        # float32 rounding grows with the logits' magnitude (an untrained net's can be in the hundreds)
        limit = row.logit_atol + LOGIT_RTOL * float(np.abs(ref.logits).max())
        passed = result["max_abs_logit_diff"] <= limit and agreement == 1.0
        why = f"max abs logit diff {result['max_abs_logit_diff']:.2e} (limit {limit:.2g}), agreement {agreement:.2%}"
    else:
        passed = drop <= max_drop
        why = f"accuracy drop {drop:.2f} points (limit {max_drop:g}), agreement {agreement:.2%}"
    return result | {"passed": passed, "gate": why}
