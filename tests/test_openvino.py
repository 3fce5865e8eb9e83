"""The openvino backend: the exported ONNX files as they are, against onnxruntime, with its precision pinned.

Torch-free except the exported-files test (marked): runs in the device environment (.venv-edge).
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper

from edge_runtime.backends import BACKENDS, BackendError, load
from edge_runtime.preprocess import preprocess, read_image_bgr
from tests.conftest import REAL_DATA, REPO, write_jpeg
from tests.tiny_models import tiny_onnx

pytest.importorskip("openvino", reason="the openvino backend's tests need `pip install floraedge[edge-openvino]`")

RELEASED_INT8 = REPO / "models" / "oxford102-lite0" / "model_int8.onnx"
FP32_ATOL = 1e-4  # both runtimes compute in f32: only the order of float sums differs


def both(path: Path, images: list[Path]) -> tuple[np.ndarray, np.ndarray, dict]:
    """onnxruntime's and openvino's outputs on the JPEG files, each preprocessed by the file's own spec."""
    ort, ov = load(path, "onnxruntime", threads=1), load(path, "openvino", threads=1)
    batch = np.concatenate([preprocess(read_image_bgr(p), ort.info.spec) for p in images])
    return ort.predict(batch), np.concatenate([ov.predict(x[None]) for x in batch]), ov.info.info


def jpegs(folder: Path, n: int = 12) -> list[Path]:
    rng = np.random.default_rng(3)
    folder.mkdir(exist_ok=True)
    for i in range(n):
        write_jpeg(folder / f"{i}.jpg", rng, shape=(48 + 4 * i, 64))
    return sorted(folder.glob("*.jpg"))


def test_fp32_onnx_gives_onnxruntimes_outputs_in_f32(tmp_path):
    model = tiny_onnx(tmp_path / "model_fp32.onnx", num_classes=6, output="probabilities")
    reference, outputs, info = both(model, jpegs(tmp_path / "jpg"))
    assert info["inference_precision"] == "f32"
    np.testing.assert_allclose(outputs, reference, rtol=0, atol=FP32_ATOL)
    assert np.array_equal(outputs.argmax(1), reference.argmax(1))


def test_the_precision_is_pinned_where_the_cpu_would_pick_bf16(tmp_path):
    """On a CPU with bf16 OpenVINO's default would be bf16: the backend asks for f32 and reads back what ran."""
    import openvino as ov

    model = tiny_onnx(tmp_path / "m.onnx")
    core = ov.Core()
    default = core.compile_model(core.read_model(str(model)), "CPU").get_property("INFERENCE_PRECISION_HINT")
    if "BF16" in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        assert default.get_type_name() == "bf16"  # what the pin prevents
    assert load(model, "openvino").info.info["inference_precision"] == "f32"


def test_threads_predicting_at_once_each_get_their_own_answers(tmp_path):
    """serve runs up to --workers inferences at once on one backend: no request may be shared between them."""
    from concurrent.futures import ThreadPoolExecutor

    backend = load(tiny_onnx(tmp_path / "m.onnx", num_classes=6), "openvino", threads=1)
    inputs = [np.random.default_rng(i).normal(size=(1, 3, 32, 32)).astype(np.float32) for i in range(64)]
    alone = [backend.predict(x) for x in inputs]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(backend.predict, inputs))
    for a, b in zip(alone, together, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.realdata
@pytest.mark.slow
def test_the_released_int8_onnx_classifies_real_photos_as_onnxruntime_does():
    if not REAL_DATA.is_dir():
        pytest.skip(f"real data not present at {REAL_DATA}")
    photos = sorted((REAL_DATA / "jpg").glob("*.jpg"))[::200][:24]
    reference, outputs, info = both(RELEASED_INT8, photos)
    assert info["precision"] == "int8" and info["inference_precision"] == "f32"
    assert np.array_equal(outputs.argmax(1), reference.argmax(1))
    assert np.abs(outputs - reference).max() < 0.05  # two runtimes' int8 kernels: a few quantization steps


def test_a_file_openvino_cannot_read_fails_in_one_line(tmp_path):
    """A well-formed ONNX file with an operator OpenVINO does not know: its multi-line error, as one line."""
    model = onnx.load(tiny_onnx(tmp_path / "good.onnx"))
    model.graph.node.insert(0, helper.make_node("NoSuchOp", ["input"], ["odd"], domain="ai.example"))
    model.graph.node[1].input[0] = "odd"  # the convolution reads it: the graph cannot be built without it
    model.opset_import.append(helper.make_opsetid("ai.example", 1))
    bad = tmp_path / "model_fp32.onnx"
    onnx.save(model, bad)
    with pytest.raises(BackendError) as caught:
        load(bad, "openvino")
    message = str(caught.value)
    assert "\n" not in message and "is not a model OpenVINO can load" in message and str(bad) in message


def test_garbage_named_onnx_is_refused_before_openvino_reads_it(tmp_path):
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"not an onnx file" * 64)
    with pytest.raises(Exception) as caught:  # the one model-file check's error, whichever its type
        load(bad, "openvino")
    assert "\n" not in str(caught.value) and "model.onnx" in str(caught.value)


def test_without_the_runtime_the_error_names_the_extra(tmp_path, monkeypatch):
    model = tiny_onnx(tmp_path / "m.onnx")
    real = importlib.import_module

    def no_openvino(name, *args):
        if name == "openvino":
            raise ImportError("No module named 'openvino'")
        return real(name, *args)

    monkeypatch.setattr(importlib, "import_module", no_openvino)
    with pytest.raises(BackendError, match=r"pip install openvino .*floraedge\[edge-openvino\]"):
        load(model, "openvino")
    assert BACKENDS["openvino"].extra == "edge-openvino"


@pytest.mark.torch
@pytest.mark.slow
def test_exported_fp32_fp16_int8_onnx_agree_with_onnxruntime(tiny_checkpoint, tiny_prepared, tmp_path_factory):
    """The exporter's own files of a trained Lite0, on the prepared val JPEGs."""
    from export.exporter import ExportConfig, export_all

    out = tmp_path_factory.mktemp("openvino") / "exports"
    config = ExportConfig(
        checkpoint=str(tiny_checkpoint),
        data=str(tiny_prepared),
        out=str(out),
        formats=("onnx",),
        precisions=("fp32", "fp16", "int8"),
        calib_min=8,
        calib_n=32,
        allow_drop=True,
    )
    export_all(config)
    images = sorted(tiny_prepared.rglob("*.jpg"))[:32]
    assert len(images) >= 16
    seen = {}
    for name in ("model_fp32.onnx", "model_fp16.onnx", "model_int8.onnx"):
        reference, outputs, info = both(out / name, images)
        seen[info["precision"]] = float(np.abs(outputs - reference).max())
        assert info["inference_precision"] == "f32", name
        assert np.array_equal(outputs.argmax(1), reference.argmax(1)), name
        if info["precision"] in ("fp32", "fp16"):  # fp16 weights, f32 compute in both runtimes
            np.testing.assert_allclose(outputs, reference, rtol=0, atol=FP32_ATOL, err_msg=name)
    assert set(seen) == {"fp32", "fp16", "int8"}, json.dumps(seen)
