"""`floraedge bench` on tiny exports: every output with its columns; a broken file is a failed row."""

from __future__ import annotations

import csv
import json
import os

import pytest

from benchmarks.bench import BenchConfig, bench
from export.exporter import ExportConfig, export_all


@pytest.fixture(scope="module")
def onnx_exports(tiny_checkpoint, tiny_prepared, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench_models") / "exports"
    export_all(
        ExportConfig(
            checkpoint=str(tiny_checkpoint),
            data=str(tiny_prepared),
            out=str(out),
            formats=("onnx",),
            precisions=("fp32", "int8"),
            calib_min=8,
            calib_n=32,
            allow_drop=True,
        )
    )
    (out / "model_fp16.onnx").write_bytes(b"this is not an onnx file")  # a broken artifact
    return out


@pytest.mark.slow
def test_bench_writes_every_output_and_survives_a_broken_file(onnx_exports, tiny_checkpoint, tiny_prepared, tmp_path):
    out = tmp_path / "bench"
    report = bench(
        BenchConfig(
            models=str(onnx_exports),
            data=str(tiny_prepared),
            out=str(out),
            checkpoint=str(tiny_checkpoint),
            threads=(1, 2, 4),
            rounds=2,
            runs=5,
            warmup=2,
            loop_frames=10,
        )
    )
    rows = {(r["name"], r["backend"]): r for r in report["rows"]}
    assert set(rows) == {
        ("pytorch-fp32", "torch"),
        ("onnx-fp32", "onnxruntime"),
        ("onnx-fp32", "opencv"),
        ("onnx-fp32", "openvino"),
        ("onnx-fp16", "onnxruntime"),
        ("onnx-fp16", "openvino"),
        ("onnx-int8", "onnxruntime"),
        ("onnx-int8", "openvino"),
    }
    assert "error" in rows[("onnx-fp16", "onnxruntime")] and "error" in rows[("onnx-fp16", "openvino")]
    good = rows[("onnx-fp32", "onnxruntime")]
    assert good["agreement"] == 1.0 and good["accuracy"]["n"] == 16
    assert set(good["latency"]) == {str(min(t, os.cpu_count())) for t in (1, 2, 4)}  # capped at the cores present
    assert good["loop"]["frames"] == 10 and good["peak_rss_mb"] > good["model_rss_mb"] > 0
    for name in ("report.md", "results.csv", "results.json", "accuracy_vs_latency.png", "latency_by_threads.png"):
        assert (out / name).is_file(), name
    with (out / "results.csv").open() as f:
        table = list(csv.DictReader(f))
    assert {
        "name",
        "backend",
        "size_mb",
        "top1",
        "mean_per_class",
        "median_ms_t1",
        "p99_ms_t2",
        "loop_fps",
        "error",
    } <= set(table[0])
    md = (out / "report.md").read_text()
    assert "| onnx-fp16 | onnxruntime |" in md and "FAILED" in md and "![accuracy_vs_latency.png]" in md
    assert json.loads((out / "results.json").read_text())["machine"]["cores"] >= 1


@pytest.mark.slow
def test_pareto_measures_each_candidate_side_by_side_and_retarget_changes_only_the_input_size(
    onnx_exports, tiny_checkpoint, tiny_prepared, tmp_path
):
    from benchmarks import pareto
    from edge_runtime.backends import load
    from train.checkpoint import load_bundle

    at48 = tmp_path / "at48.pt"
    assert pareto.main(["retarget", "--checkpoint", str(tiny_checkpoint), "--img-size", "48", "--out", str(at48)]) == 0
    before, after = load_bundle(tiny_checkpoint), load_bundle(at48)
    assert after["spec"]["crop_size"] == 48 and after["spec"]["resize_size"] == 55  # round(48 / 0.875)
    assert all(before["model"][k].equal(after["model"][k]) for k in before["model"])
    fp32, int8 = onnx_exports / "model_fp32.onnx", onnx_exports / "model_int8.onnx"
    args = ["--data", str(tiny_prepared), "--out", str(tmp_path / "p"), "--rounds", "2", "--runs", "3"]
    assert pareto.main([*args, "--candidate", f"fp32={fp32}", "--candidate", f"int8={int8}"]) == 0
    found = json.loads((tmp_path / "p" / "pareto.json").read_text())["candidates"]
    assert [c["name"] for c in found] == ["fp32", "int8"] and found[0]["latency_vs_first"] == 1.0
    assert all(len(c["rounds_ms"]) == 2 and c["n"] == 16 and c["input"] == 32 for c in found)
    assert (tmp_path / "p" / "pareto.png").stat().st_size > 0
    assert found[0]["top1"] == pytest.approx(bench_top1(load(fp32), tiny_prepared))


def bench_top1(backend, data) -> float:
    """The fp32 file's val top-1 through the device preprocess, computed here independently."""
    import numpy as np

    from edge_runtime.preprocess import preprocess, read_image_bgr
    from prepare.manifest import read_manifest

    rows = [r for r in read_manifest(data) if r["split"] == "val"]
    hits = [
        backend.predict(preprocess(read_image_bgr(data / r["path"]), backend.info.spec))[0].argmax() == r["class_index"]
        for r in rows
    ]
    return float(np.mean(hits))


def test_int8_kernels_bench_reports_the_x86_presets_file_computed_as_it_means(onnx_exports, tiny_prepared, capsys):
    from benchmarks import int8_kernels

    path = onnx_exports / "model_int8.onnx"
    report = int8_kernels.main(
        ["--models", str(path), "--data", str(tiny_prepared), "--limit", "16", "--rounds", "2", "--runs", "3"]
    )
    result = report["files"][str(path)]
    assert result["n"] == 16 and result["weights"]["weight_abs_max"] == 64
    # near-ties may flip with the rounding of a CPU's kernels; nothing else may
    assert result["flips_beyond_rounding"] == 0 and result["max_abs_diff"] < 0.05, result
    assert result["top1_agreement"] >= 0.9, result
    assert len(result["rounds_ms"]) == 2 and result["median_ms"] > 0
    assert json.loads(capsys.readouterr().out) == report
