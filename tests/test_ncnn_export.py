"""pnnx, the ncnn converter behind the format table's ncnn rows (the rows themselves round-trip in test_export)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

from edge_runtime.backends import load
from edge_runtime.spec import PreprocessSpec
from export.converters import ExportContext, ncnn_fp16, ncnn_fp32
from export.isolation import ConverterError, run_converter
from tests.tiny_models import tiny_onnx

pytest.importorskip("pnnx")
pytest.importorskip("ncnn")
pytestmark = pytest.mark.torch

SPEC = PreprocessSpec(crop_size=32, resize_size=36)


def context() -> ExportContext:
    return ExportContext(model=torch.nn.Linear(4, 4), sample=torch.zeros(SPEC.input_shape), calibration=None)


def with_sidecar(param, precision: str):
    labels = [f"flower {i}" for i in range(4)]
    sidecar = {"spec": SPEC.to_dict(), "labels": labels, "precision": precision, "output": "probabilities"}
    param.with_name(param.name + ".json").write_text(json.dumps(sidecar))
    return param


@pytest.mark.parametrize("convert, precision", [(ncnn_fp32, "fp32"), (ncnn_fp16, "fp16")])
def test_pnnx_converts_an_onnx_file_whose_weights_are_in_a_data_file_beside_it(tmp_path, convert, precision):
    """torch's ONNX exporter can write the weights to ``<model>.onnx.data``: pnnx must find them, and the base
    file need not end in .onnx (the exporter names it after the row's format)."""
    reference = tiny_onnx(tmp_path / "reference.onnx", spec=SPEC, output="probabilities", embed=False)
    model = onnx.load(str(reference))
    base = tmp_path / "work" / "base.ncnn"
    base.parent.mkdir()
    onnx.save(model, str(base), save_as_external_data=True, location="base.onnx.data", size_threshold=0)
    assert (base.parent / "base.onnx.data").stat().st_size > base.stat().st_size  # the weights are outside
    dest = tmp_path / "out" / f"model_{precision}.ncnn.param"
    dest.parent.mkdir()
    run_converter(convert, context(), dest, base)
    assert sorted(p.name for p in dest.parent.iterdir()) == sorted([dest.name, dest.with_suffix(".bin").name])
    backend = load(with_sidecar(dest, precision), "ncnn")
    batch = np.random.default_rng(0).normal(size=(8, *SPEC.input_shape[1:])).astype(np.float32)
    got, expected = (
        backend.predict(batch),
        load(tiny_onnx(tmp_path / "m.onnx", spec=SPEC, output="probabilities")).predict(batch),
    )
    np.testing.assert_array_equal(got.argmax(1), expected.argmax(1))
    assert np.abs(got - expected).max() <= (1e-4 if precision == "fp32" else 1e-2)


def test_a_failing_pnnx_is_one_line_and_leaves_no_partial_files(tmp_path):
    base = tmp_path / "base.onnx"
    base.write_bytes(b"\x08\x07not an onnx model")
    dest = tmp_path / "out" / "model_fp32.ncnn.param"
    dest.parent.mkdir()
    with pytest.raises(ConverterError, match="ncnn_fp32: ") as caught:
        run_converter(ncnn_fp32, context(), dest, base)
    assert "\n" not in str(caught.value)
    assert list(dest.parent.iterdir()) == []
