"""A classifier = a backend + the spec's ``preprocess()`` + probabilities + top-k."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from edge_runtime.metadata import PROBABILITIES, ModelInfo
from edge_runtime.preprocess import preprocess


@dataclass(frozen=True)
class Prediction:
    top: list[tuple[int, str, float]]  # (class index, name, probability), best first
    probabilities: np.ndarray
    preprocess_ms: float
    model_ms: float

    def to_dict(self) -> dict:
        return {
            "top": [{"index": i, "label": name, "score": round(p, 5)} for i, name, p in self.top],
            "preprocess_ms": round(self.preprocess_ms, 3),
            "model_ms": round(self.model_ms, 3),
        }


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def to_probabilities(outputs: np.ndarray, info: ModelInfo) -> np.ndarray:
    """The model's own scores when it ends in a softmax (``"output": "probabilities"``), else the softmax
    of its logits: a score is never squashed twice."""
    return outputs if info.output == PROBABILITIES else softmax(outputs)


def top_k(probabilities: np.ndarray, labels: tuple[str, ...], k: int) -> list[tuple[int, str, float]]:
    order = np.argsort(-probabilities)[:k]
    return [(int(i), labels[i], float(probabilities[i])) for i in order]


class Classifier:
    """Classify BGR frames with any backend, using the model's own spec and labels."""

    def __init__(self, backend, *, k: int = 5):
        self.backend, self.k = backend, k
        self.spec, self.labels = backend.info.spec, backend.info.labels

    def __call__(self, frame_bgr: np.ndarray) -> Prediction:
        t0 = time.perf_counter()
        batch = preprocess(frame_bgr, self.spec)
        return self.predict_batch(batch, preprocess_ms=(time.perf_counter() - t0) * 1e3)

    def predict_batch(self, batch: np.ndarray, *, preprocess_ms: float = 0.0) -> Prediction:
        """Classify an input that ``preprocess()`` already made (in another thread, say)."""
        t0 = time.perf_counter()
        outputs = self.backend.predict(batch)[0]
        model_ms = (time.perf_counter() - t0) * 1e3
        probs = to_probabilities(outputs, self.backend.info)
        return Prediction(top_k(probs, self.labels, self.k), probs, preprocess_ms, model_ms)
