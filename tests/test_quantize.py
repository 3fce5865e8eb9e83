"""`floraedge quantize` on "foreign" float files (no FloraEdge metadata, a sidecar beside them), and `floraedge
bench` with files and folders mixed and a model file as --reference: real runtimes, real converters, real images."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest

import floraedge
from benchmarks.bench import BenchConfig, bench
from edge_runtime.backends import load
from edge_runtime.errors import FloraEdgeError
from edge_runtime.preprocess import preprocess, read_image_bgr
from edge_runtime.spec import PreprocessSpec
from export.quantize import QuantizeError, class_map, quantize_file
from export.quantize_cli import QuantizeConfig
from prepare.manifest import read_manifest
from tests.tiny_models import tiny_onnx

pytestmark = pytest.mark.torch  # the converters (export.converters) import torch
FAST = dict(calib_min=8, calib_n=32)
TINY_SPEC = PreprocessSpec(crop_size=32, resize_size=36)


def data_names(prepared: Path) -> list[str]:
    by_index = {r["class_index"]: r["class_name"] for r in read_manifest(prepared)}
    return [by_index[i] for i in sorted(by_index)]


def with_sidecar(folder: Path, spec: PreprocessSpec, labels: list[str]) -> Path:
    """``folder`` with a spec.json and labels.txt: how a user describes a file that carries nothing."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "spec.json").write_text(spec.to_json())
    (folder / "labels.txt").write_text("\n".join(labels) + "\n")
    return folder


def foreign_tiny_onnx(folder: Path, prepared: Path, **kwargs) -> Path:
    """A float ONNX without any metadata (as plain torch.onnx.export writes one), described by a sidecar."""
    with_sidecar(folder, TINY_SPEC, kwargs.pop("labels", None) or data_names(prepared))
    return tiny_onnx(folder / "model.onnx", embed=False, spec=TINY_SPEC, **kwargs)


def val_top1(backend, prepared: Path) -> tuple[float, np.ndarray]:
    """Top-1 on the val images through the device's own preprocess, computed here independently."""
    rows = [r for r in read_manifest(prepared) if r["split"] == "val"]
    spec = backend.info.spec
    predicted = np.array(
        [backend.predict(preprocess(read_image_bgr(prepared / r["path"]), spec))[0].argmax() for r in rows]
    )
    return float((predicted == np.array([r["class_index"] for r in rows])).mean()), predicted


def nothing_written(out: Path) -> bool:
    """No --out, and no staging folder of it left beside it."""
    return not out.exists() and not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]


def test_a_foreign_onnx_becomes_int8_carrying_its_labels_and_spec_and_passes_the_gate(tiny_prepared, tmp_path):
    model = foreign_tiny_onnx(tmp_path / "foreign", tiny_prepared)
    out = tmp_path / "q"
    # the arm preset: this two-layer model's every layer is one of the x86 preset's exact (float/uint8) layers
    result = quantize_file(
        QuantizeConfig(model=str(model), data=str(tiny_prepared), out=str(out), ort_preset="arm", **FAST)
    )
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["model_int8.onnx", "quantize.json"]
    graph = onnx.load(str(out / "model_int8.onnx")).graph
    assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in graph.node}  # really int8
    moved = tmp_path / "elsewhere" / "model_int8.onnx"  # no sidecar here: the file must carry its own
    moved.parent.mkdir()
    moved.write_bytes((out / "model_int8.onnx").read_bytes())
    int8 = load(moved)
    assert list(int8.info.labels) == data_names(tiny_prepared) and int8.info.spec == TINY_SPEC
    assert int8.info.info["precision"] == "int8" and int8.info.info["quantized_by"] == "floraedge quantize"
    assert int8.info.output == "logits"  # what the float file outputs, carried over
    assert result["passed"] and result["n"] == 16 and result["labels_mapping"] == ""
    float_top1, float_pred = val_top1(load(model), tiny_prepared)
    assert result["float_accuracy"] == pytest.approx(float_top1)  # gated against the float file itself
    int8_top1, int8_pred = val_top1(int8, tiny_prepared)
    assert result["top1_agreement"] == pytest.approx(float((int8_pred == float_pred).mean()), abs=1 / 16)
    assert json.loads((out / "quantize.json").read_text())["gate"] == result["gate"]


@pytest.mark.parametrize("preset", ["x86", "arm"])
def test_a_fixed_batch_onnx_is_calibrated_ranked_and_gated(tiny_prepared, tmp_path, preset):
    """A plain torch.onnx.export file takes exactly the batch it was traced with (1): calibration, the x86
    preset's 7-bit sensitivity ranking and the gate all feed it in slices of that batch."""
    model = foreign_tiny_onnx(tmp_path / "foreign", tiny_prepared, batch=1)
    out = tmp_path / "q"
    result = quantize_file(
        QuantizeConfig(model=str(model), data=str(tiny_prepared), out=str(out), ort_preset=preset, **FAST)
    )
    assert result["passed"] and result["n"] == 16 and (out / "model_int8.onnx").is_file()
    free = tmp_path / "free" / "model_int8.onnx"  # the same weights with a free batch: the same int8 answers
    quantize_file(
        QuantizeConfig(
            model=str(foreign_tiny_onnx(tmp_path / "free-src", tiny_prepared)),
            data=str(tiny_prepared),
            out=str(free.parent),
            ort_preset=preset,
            **FAST,
        )
    )
    assert (
        val_top1(load(out / "model_int8.onnx"), tiny_prepared)[1].tolist()
        == val_top1(load(free), tiny_prepared)[1].tolist()
    )


def test_an_int8_file_is_refused_as_already_quantized(tiny_prepared, tmp_path):
    model = foreign_tiny_onnx(tmp_path / "foreign", tiny_prepared)
    config = dict(data=str(tiny_prepared), ort_preset="arm", **FAST)
    quantize_file(QuantizeConfig(model=str(model), out=str(tmp_path / "q"), **config))
    with pytest.raises(QuantizeError, match="is already quantized .*QuantizeLinear.*nothing to do"):
        quantize_file(QuantizeConfig(model=str(tmp_path / "q" / "model_int8.onnx"), out=str(tmp_path / "q2"), **config))
    assert nothing_written(tmp_path / "q2")


def test_a_gate_the_file_cannot_meet_is_a_clear_refusal_and_no_file(tiny_prepared, tmp_path):
    model = foreign_tiny_onnx(tmp_path / "foreign", tiny_prepared)
    out = tmp_path / "q"
    # no int8 file gains 100 points of top-1 over its float original
    with pytest.raises(QuantizeError, match=r"failed the gate \(accuracy drop .* \(limit -100\).*nothing written"):
        quantize_file(QuantizeConfig(model=str(model), data=str(tiny_prepared), out=str(out), max_drop=-100, **FAST))
    assert nothing_written(out)


def test_labels_that_do_not_fit_the_datas_classes_are_refused(tiny_prepared, tmp_path, capsys):
    model = foreign_tiny_onnx(
        tmp_path / "foreign", tiny_prepared, num_classes=6, labels=[f"other {i}" for i in range(6)]
    )
    out = tmp_path / "q"
    argv = ["quantize", "--model", str(model), "--data", str(tiny_prepared), "--out", str(out), "--calib-min", "8"]
    assert floraedge.main(argv) == 1
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "has 6 labels but" in error and "4 classes" in error, error
    assert nothing_written(out)


def test_labels_map_onto_the_datas_classes_by_name_else_index_for_index():
    classes = {0: "rose", 1: "tulip", 2: "daisy"}
    assert class_map(Path("m"), ("rose", "tulip", "daisy"), classes, Path("d")) == ({0: 0, 1: 1, 2: 2}, "")
    mapping, note = class_map(Path("m"), ("daisy", "iris", "rose", "tulip"), classes, Path("d"))
    assert mapping == {0: 2, 1: 3, 2: 0} and "by name" in note
    mapping, note = class_map(Path("m"), ("class_0", "class_1", "class_2"), classes, Path("d"))
    assert mapping == {0: 0, 1: 1, 2: 2} and "data class i is taken as model output i" in note
    with pytest.raises(QuantizeError, match="2 labels but d has 3 classes"):
        class_map(Path("m"), ("a", "b"), classes, Path("d"))


def test_a_folder_that_is_not_prepared_and_an_op_no_runtime_runs_are_refused(tiny_prepared, tmp_path):
    model = foreign_tiny_onnx(tmp_path / "foreign", tiny_prepared)
    with pytest.raises(FloraEdgeError, match="is not a prepared dataset"):
        quantize_file(QuantizeConfig(model=str(model), data=str(tmp_path / "foreign"), out=str(tmp_path / "q")))
    custom = onnx.load(str(model))
    custom.graph.node[1].op_type, custom.graph.node[1].domain = "Mystery", "com.example"
    custom.opset_import.add(domain="com.example", version=1)
    onnx.save(custom, str(model))
    with pytest.raises(FloraEdgeError, match="not a model onnxruntime can load.*Mystery"):
        quantize_file(QuantizeConfig(model=str(model), data=str(tiny_prepared), out=str(tmp_path / "q"), **FAST))
    assert nothing_written(tmp_path / "q")


# ---------------------------------------------------------------- files `floraedge export` wrote, made foreign


def strip_onnx(source: Path, dest: Path) -> Path:
    model = onnx.load(str(source))
    del model.metadata_props[:]
    model.doc_string = ""
    onnx.save(model, str(dest))
    return dest


def strip_tflite(source: Path, dest: Path) -> Path:
    """The model flatbuffer alone: the zip appended after it (labels.txt, floraedge.json) cut off."""
    raw = source.read_bytes()
    with zipfile.ZipFile(source) as z:
        start = min(info.header_offset for info in z.infolist())
    dest.write_bytes(raw[:start])
    assert not zipfile.is_zipfile(dest)
    return dest


@pytest.fixture(scope="module")
def exported_fp32_int8(tiny_checkpoint, tiny_prepared, tmp_path_factory):
    from export.exporter import ExportConfig, export_all

    out = tmp_path_factory.mktemp("quantize_exports") / "exports"
    export_all(
        ExportConfig(
            checkpoint=str(tiny_checkpoint),
            data=str(tiny_prepared),
            out=str(out),
            precisions=("fp32", "int8"),
            allow_drop=True,
            **FAST,
        )
    )
    return out


@pytest.mark.slow
@pytest.mark.parametrize("suffix", [".onnx", ".tflite"])
def test_a_stripped_export_quantizes_like_export_itself(exported_fp32_int8, tiny_prepared, tmp_path, suffix):
    """The fp32 file of `floraedge export`, stripped of its metadata and given a sidecar, quantized by `quantize`:
    an int8 file that runs, carries the labels and spec, passed the gate, and predicts as export's own int8 file."""
    ours = load(exported_fp32_int8 / f"model_fp32{suffix}")
    folder = with_sidecar(tmp_path / "foreign", ours.info.spec, list(ours.info.labels))
    strip = strip_onnx if suffix == ".onnx" else strip_tflite
    model = strip(exported_fp32_int8 / f"model_fp32{suffix}", folder / f"theirs{suffix}")
    # foreign: none of FloraEdge's metadata is left (the runtime sees the softmax that ends the graph)
    assert not {"arch", "format", "precision", "dataset"} & set(load(model).info.info)
    out = tmp_path / "q"
    result = quantize_file(QuantizeConfig(model=str(model), data=str(tiny_prepared), out=str(out), **FAST))
    assert result["passed"], result["gate"]
    int8 = load(out / f"model_int8{suffix}")
    assert int8.info.labels == ours.info.labels and int8.info.spec == ours.info.spec
    assert int8.info.info["precision"] == "int8" and int8.info.output == "probabilities"
    _, predicted = val_top1(int8, tiny_prepared)
    _, by_export = val_top1(load(exported_fp32_int8 / f"model_int8{suffix}"), tiny_prepared)
    assert (predicted == by_export).mean() >= 0.9  # the same converter, calibration images and spec
    again = QuantizeConfig(model=str(out / f"model_int8{suffix}"), data=str(tiny_prepared), out=str(tmp_path / "q2"))
    with pytest.raises(QuantizeError, match="is already quantized"):  # int8 inside, float32 edges: still int8
        quantize_file(again)
    assert nothing_written(tmp_path / "q2")


@pytest.mark.slow
def test_bench_takes_files_and_folders_mixed_against_a_reference_file(tiny_prepared, tmp_path):
    foreign = foreign_tiny_onnx(tmp_path / "foreign", tiny_prepared)
    quantized = tmp_path / "q"
    quantize_file(
        QuantizeConfig(model=str(foreign), data=str(tiny_prepared), out=str(quantized), ort_preset="arm", **FAST)
    )
    folder = tmp_path / "exports"
    folder.mkdir()
    tiny_onnx(folder / "model_fp32.onnx", spec=TINY_SPEC, seed=1)  # another model, as an export folder holds it
    models = (str(quantized / "model_int8.onnx"), str(folder), str(foreign))  # the reference named twice: once run
    report = bench(
        BenchConfig(
            models=models,
            reference=str(foreign),
            data=str(tiny_prepared),
            out=str(tmp_path / "bench"),
            threads=(1,),
            rounds=2,
            runs=3,
            warmup=1,
            loop_frames=5,
        )
    )
    rows = report["rows"]
    assert [(r["name"], r["backend"]) for r in rows] == [
        ("model.onnx", "onnxruntime"),  # the reference first: agreement, drops and latency ratios are to it
        ("onnx-int8", "onnxruntime"),
        ("onnx-int8", "openvino"),
        ("onnx-fp32", "onnxruntime"),
        ("onnx-fp32", "opencv"),
        ("onnx-fp32", "openvino"),
    ]
    assert not [r for r in rows if "error" in r]
    reference_top1, reference_pred = val_top1(load(foreign), tiny_prepared)
    other_top1, other_pred = val_top1(load(folder / "model_fp32.onnx"), tiny_prepared)
    assert rows[0]["agreement"] == 1.0 and rows[0]["top1_drop_points"] == 0
    assert rows[3]["agreement"] == pytest.approx((other_pred == reference_pred).mean())
    assert rows[3]["top1_drop_points"] == pytest.approx((reference_top1 - other_top1) * 100, abs=1e-3)
    assert rows[0]["latency"]["1"]["ratio"] == 1.0 and rows[1]["precision"] == "int8"
    assert "drop pts" in (tmp_path / "bench" / "report.md").read_text()


def test_bench_refuses_a_checkpoint_and_a_different_reference(tmp_path):
    with pytest.raises(FloraEdgeError, match="former name of --reference"):
        BenchConfig(models="x", data="d", out="o", checkpoint="a.pt", reference="b.onnx")
    assert BenchConfig(models="x", data="d", out="o", checkpoint="a.pt").reference_model == "a.pt"
    assert BenchConfig(models="x", data="d", out="o").models == ("x",)


def test_a_file_described_by_options_alone_is_quantized_and_the_int8_file_needs_none(tiny_prepared, tmp_path):
    """--spec and --labels (the options `classify` takes) for a float file with no metadata and no sidecar."""
    described = with_sidecar(tmp_path / "description", TINY_SPEC, data_names(tiny_prepared))
    (tmp_path / "bare").mkdir()
    model = tiny_onnx(tmp_path / "bare" / "model.onnx", embed=False, spec=TINY_SPEC)
    with pytest.raises(FloraEdgeError, match="--labels|--spec"):  # a file that says nothing and is given nothing
        quantize_file(QuantizeConfig(model=str(model), data=str(tiny_prepared), out=str(tmp_path / "q"), **FAST))
    config = QuantizeConfig(
        model=str(model),
        data=str(tiny_prepared),
        out=str(tmp_path / "q"),
        spec=described / "spec.json",
        labels=described / "labels.txt",
        output="logits",
        ort_preset="arm",
        **FAST,
    )
    assert quantize_file(config)["passed"]
    int8 = load(tmp_path / "q" / "model_int8.onnx")
    assert list(int8.info.labels) == data_names(tiny_prepared) and int8.info.spec == TINY_SPEC


@pytest.mark.parametrize("seed", [0, 1])
def test_the_7_bit_sensitivity_ranking_reads_logits_as_probabilities(tmp_path, seed):
    """A foreign file that ends in logits (its info says so) is ranked as the same graph ending in a softmax: the
    KL compares distributions (read as probabilities, logits gave NaN scores and the graph's order, so `quantize`
    of a plain ONNX kept other layers exact than `export` of the same weights)."""
    from edge_runtime.metadata import LOGITS
    from export.converters import most_sensitive_to_7_bit_weights

    logits = tiny_onnx(tmp_path / "logits.onnx", seed=seed, embed=False)
    probabilities = tiny_onnx(tmp_path / "probabilities.onnx", seed=seed, embed=False, output="probabilities")
    batch = np.random.default_rng(seed).normal(size=(8, 3, 32, 32)).astype(np.float32)
    expected = most_sensitive_to_7_bit_weights(probabilities, batch, 2)
    assert [w for _, w in expected] == ["fc_w", "conv_w"]  # not the graph's order: a real ranking
    assert most_sensitive_to_7_bit_weights(logits, batch, 2, LOGITS) == expected
