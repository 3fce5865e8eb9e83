"""`serve --concurrency N` runs up to N inferences at once on one loaded backend: each must get its own answer.

ONNX Runtime's session, OpenVINO's per-thread requests and ncnn's per-call extractors run calls side by side;
a TFLite interpreter and an OpenCV DNN net hold one input and one output buffer each, so two calls at once
would read each other's tensors. Torch-free: runs in the device environment.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from edge_runtime.backends import load
from tests.conftest import REPO
from tests.tiny_models import tiny_onnx

RELEASED_TFLITE = REPO / "models" / "oxford102-lite0" / "model_int8.tflite"
CALLS = 48


def answers_alone_and_together(backend, shape) -> tuple[list, list]:
    inputs = [np.random.default_rng(i).normal(size=shape).astype(np.float32) for i in range(CALLS)]
    alone = [backend.predict(x) for x in inputs]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(backend.predict, inputs))
    return alone, together


@pytest.mark.parametrize("backend_name", ["onnxruntime", "opencv"])
def test_onnx_backends_answer_each_of_several_calls_at_once(tmp_path, backend_name):
    backend = load(tiny_onnx(tmp_path / "m.onnx", num_classes=6), backend_name, threads=1)
    alone, together = answers_alone_and_together(backend, (1, 3, 32, 32))
    for a, b in zip(alone, together, strict=True):
        np.testing.assert_array_equal(a, b)


def test_litert_answers_each_of_several_calls_at_once():
    backend = load(RELEASED_TFLITE, "litert", threads=1)
    alone, together = answers_alone_and_together(backend, backend.info.spec.input_shape)
    for a, b in zip(alone, together, strict=True):
        np.testing.assert_array_equal(a, b)
