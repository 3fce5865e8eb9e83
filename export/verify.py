"""The verification gate: every exported file, run by its own runtime, against the PyTorch model.

Every file outputs softmax probabilities, so the gate compares probabilities: the file's output
against the softmax of PyTorch's logits, computed by the same float32 op as in the exported graph.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from edge_runtime import console
from edge_runtime.backends import load
from edge_runtime.metadata import PROBABILITIES
from export.formats import Format

# fp32 gate: |p - p_torch| <= prob_atol + LOGIT_RTOL / 2 * max |PyTorch logit|. The softmax moves no
# probability by more than half the largest change of a logit, so this is the former logit gate
# (|dz| <= 2 * prob_atol + LOGIT_RTOL * max |z|) as far as probabilities can show it.
LOGIT_RTOL = 1e-5


@dataclass(frozen=True)
class Reference:
    """What the PyTorch model says on the verification images."""

    batch: np.ndarray  # NCHW float32, preprocessed
    targets: np.ndarray
    logits: np.ndarray

    @cached_property
    def probabilities(self) -> np.ndarray:
        import torch  # the op of the exported graph (export.converters.WithSoftmax)

        return torch.softmax(torch.from_numpy(self.logits), dim=-1).numpy()

    @property
    def accuracy(self) -> float:
        return float((self.logits.argmax(1) == self.targets).mean())


def run_file(
    path: Path, row: Format, batch: np.ndarray, threads: int | None = None, qdq_emulation: bool = False, overrides=None
) -> np.ndarray:
    """``path``'s outputs on the NCHW ``batch``; ``overrides``: the user's description of a foreign file."""
    # LiteRT logs "INFO: Created TensorFlow Lite XNNPACK delegate for CPU." from native code the first time
    # an interpreter runs: XNNPACK is its default CPU path, the one every TFLite file is meant to run on
    with console.native_stderr(r"INFO: Created TensorFlow Lite XNNPACK delegate"):
        backend = load(path, row.runtime, threads=threads, qdq_emulation=qdq_emulation, overrides=overrides)
        if backend.info.spec.layout == "NHWC":
            batch = batch.transpose(0, 2, 3, 1)
        return np.concatenate(
            [backend.predict(np.ascontiguousarray(batch[i : i + 32])) for i in range(0, len(batch), 32)]
        )


def fp32_limit(row: Format, ref: Reference) -> float:
    """float32 rounding grows with the logits' magnitude (an untrained net's can be in the hundreds)."""
    return row.prob_atol + LOGIT_RTOL / 2 * float(np.abs(ref.logits).max())


def verify(
    path: Path,
    row: Format,
    ref: Reference,
    *,
    max_drop: float,
    qdq_emulation: bool = False,
    output: str = PROBABILITIES,
) -> dict:
    """Metrics and the verdict: fp32 rows within ``fp32_limit`` and 100% top-1 agreement; the others
    within ``max_drop`` accuracy points of PyTorch. ``qdq_emulation``: an int8 ONNX file made for another
    CPU's integer kernels runs as its exact float emulation (export.formats.ORT_PRESETS). ``output``: what
    the file outputs (a foreign file given to ``floraedge quantize`` may output logits: they are softmaxed)."""
    probabilities = run_file(path, row, ref.batch, qdq_emulation=qdq_emulation)
    if output != PROBABILITIES:
        import torch

        probabilities = torch.softmax(torch.from_numpy(probabilities), dim=-1).numpy()
    agreement = float((probabilities.argmax(1) == ref.logits.argmax(1)).mean())
    accuracy = float((probabilities.argmax(1) == ref.targets).mean())
    drop = (ref.accuracy - accuracy) * 100
    result = {
        "max_abs_prob_diff": float(np.abs(probabilities - ref.probabilities).max()),
        "top1_agreement": agreement,
        "accuracy": accuracy,
        "torch_accuracy": ref.accuracy,
        "accuracy_drop_points": drop,
        "n": len(ref.targets),
    }
    if row.prob_atol is not None:
        limit = fp32_limit(row, ref)
        passed = result["max_abs_prob_diff"] <= limit and agreement == 1.0
        why = (
            f"max abs probability diff {result['max_abs_prob_diff']:.2e} (limit {limit:.2g}), agreement {agreement:.2%}"
        )
    else:
        passed = drop <= max_drop
        why = f"accuracy drop {drop:.2f} points (limit {max_drop:g}), agreement {agreement:.2%}"
        why += " (QDQ emulation: this CPU's int8 kernels are not the file's target)" if qdq_emulation else ""
    return result | {"passed": passed, "gate": why}
