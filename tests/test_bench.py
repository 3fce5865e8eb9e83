"""`floraedge bench` on tiny exports: every output with its columns; a broken file is a failed row."""

from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest
import torch

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
    machine = json.loads((out / "results.json").read_text())["machine"]
    assert machine["cores"] == os.cpu_count() and machine["threads"] == sorted(
        {min(t, os.cpu_count()) for t in (1, 2, 4)}
    )
    assert machine["versions"]["numpy"] == np.__version__ and torch.__version__.startswith(machine["versions"]["torch"])
