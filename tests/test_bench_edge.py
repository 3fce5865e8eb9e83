"""`floraedge bench` on a device with only `.[edge]` installed: no torch, no prepare extras."""

from __future__ import annotations

import sys

import cv2
import numpy as np

from benchmarks.bench import BenchConfig, bench
from prepare.manifest import write_manifest
from tests.tiny_models import tiny_onnx


def fake_prepared(root):
    """A prepared-dataset folder as `floraedge prepare` writes it (manifest + JPEGs), made with OpenCV only."""
    (root / "jpg").mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(1, 9):
        cv2.imwrite(str(root / "jpg" / f"image_{i:05d}.jpg"), rng.integers(0, 255, (48, 64, 3), dtype=np.uint8))
        rows.append(
            {
                "path": f"jpg/image_{i:05d}.jpg",
                "cache_path": "",
                "image_id": i,
                "class_index": i % 4,
                "class_name": f"flower {i % 4}",
                "split": "val",
                "sha256": "",
                "width": 64,
                "height": 48,
            }
        )
    write_manifest(root / "manifest.csv", rows)
    return root


def test_bench_runs_torch_free_and_reports_every_backend_of_the_file(tmp_path):
    data = fake_prepared(tmp_path / "prepared")
    models = tmp_path / "exports"
    models.mkdir()
    tiny_onnx(models / "model_fp32.onnx")
    report = bench(
        BenchConfig(
            models=str(models),
            data=str(data),
            out=str(tmp_path / "bench"),
            threads=(1,),
            runs=3,
            warmup=1,
            loop_frames=5,
        )
    )
    rows = {r["backend"]: r for r in report["rows"]}
    assert set(rows) == {"onnxruntime", "opencv"}
    assert all("error" not in r for r in rows.values()), rows
    assert rows["opencv"]["agreement"] == 1.0 and rows["onnxruntime"]["accuracy"]["n"] == 8
    loop = rows["onnxruntime"]["loop"]
    assert loop["frames"] == 5 and loop["latency_p99_ms"] >= loop["latency_p50_ms"] > 0  # capture to result
    assert (tmp_path / "bench" / "report.md").is_file() and (tmp_path / "bench" / "results.csv").is_file()
    assert "torch" not in sys.modules or report["machine"]["versions"]["torch"]  # torch only where installed
