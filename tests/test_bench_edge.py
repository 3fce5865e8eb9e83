"""`floraedge bench` on a device with only `.[edge]` installed: no torch, no prepare extras."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

import cv2
import numpy as np
import pytest

from prepare.manifest import write_manifest
from tests.conftest import REPO
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


def snapshot(*roots) -> dict:
    return {
        str(p): (p.stat().st_mtime_ns, p.read_bytes()) for root in roots for p in sorted(root.rglob("*")) if p.is_file()
    }


@pytest.mark.slow  # a bench over two backends in a child process
def test_bench_runs_torch_free_and_reports_every_backend_of_the_file(tmp_path):
    data = fake_prepared(tmp_path / "prepared")
    models = tmp_path / "exports"
    models.mkdir()
    tiny_onnx(models / "model_fp32.onnx")
    before = snapshot(data, models)
    # relative paths, run from tmp_path: the measuring processes run from another folder
    config = dict(models="exports", data="prepared", out="bench", threads=(1,), runs=3, warmup=1)
    # torch blocked: in this process, and in the per-file processes it starts (through PYTHONPATH)
    blocker = tmp_path / "no_torch"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text("import sys\nsys.modules.update(torch=None, torchvision=None)\n")
    code = f"import json\nfrom benchmarks.bench import BenchConfig, bench\nprint(json.dumps(bench(BenchConfig(**{config!r}, loop_frames=5))))"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(blocker), str(REPO), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    rows = {r["backend"]: r for r in report["rows"]}
    assert set(rows) == {"onnxruntime", "opencv", "openvino"}
    assert all("error" not in r for r in rows.values()), rows
    assert rows["opencv"]["agreement"] == rows["openvino"]["agreement"] == 1.0
    assert rows["onnxruntime"]["accuracy"]["n"] == 8
    assert rows["openvino"]["inference_precision"] == "f32" and "inference_precision" not in rows["onnxruntime"]
    loop = rows["onnxruntime"]["loop"]
    # capture to result, in ms: above zero, and no frame longer than the whole loop (frames / fps)
    assert loop["frames"] == 5 and 0 < loop["latency_p50_ms"] <= loop["latency_p99_ms"] <= wall_ms(loop) + 1
    # latency in alternating rounds (10 by default), each row's ratio to the first row taken per round
    first, second = rows["onnxruntime"]["latency"]["1"], rows["opencv"]["latency"]["1"]
    assert len(first["round_medians_ms"]) == len(second["round_ratios"]) == 10
    assert first["ratio"] == 1.0 and first["ratio_iqr"] == 0.0 and second["ratio"] > 0
    assert rows["opencv"]["reference"] == "onnx-fp32 (onnxruntime)"
    assert report["conditions"]["before"]["load_avg"] and isinstance(report["conditions"]["changed"], list)
    md = (tmp_path / "bench" / "report.md").read_text()
    assert "x ref @1T [IQR]" in md and "## Conditions" in md and "load average" in md
    assert "| onnx-fp32 | openvino (f32) |" in md  # the precision that ran, beside the backend
    assert md.splitlines()[2].startswith(("Conditions steady", "**Conditions changed"))  # the first word on trust
    assert (tmp_path / "bench" / "results.csv").is_file()
    assert snapshot(data, models) == before  # nothing outside --out is changed


def test_loop_bench_reports_the_loop_against_the_model_alone_and_beside_the_pipeline(tmp_path):
    from benchmarks import loop_bench

    model = tiny_onnx(tmp_path / "model_fp32.onnx")
    out = tmp_path / "loop.json"
    args = ["--model", str(model), "--rounds", "2", "--video-frames", "12", "--soak-frames", "24", "--out", str(out)]
    assert loop_bench.main(args) == 0
    report = json.loads(out.read_text())
    assert len(report["rounds"]) == 2 and report["backend"] == "onnxruntime"
    for r in report["rounds"]:
        assert r["model_only_fps"] > 0 and r["model_beside_pipeline_fps"] > 0 and r["loop_fps"] > 0
        # the worker prepared frames, at most at the model's own pace
        assert 0 < r["pipeline_fps_beside_model"] <= 1.1 * r["model_only_fps"]
        # no frame longer than the whole loop over the clip (at most its 12 frames, at loop_fps)
        assert 0 < r["loop_latency_p50_ms"] <= r["loop_latency_p99_ms"] <= 1.01 * 1000 * 12 / r["loop_fps"] + 1
    assert report["soak"]["frames"] == 24  # the 12-frame clip twice, counted across repeats
    assert [n for n, _ in report["soak"]["rss_samples_mb"]] == list(range(1, 25))  # every 24 // 20 = 1 frame
    assert not [t for t in threading.enumerate() if t.name == "pipeline-work"]  # its worker is joined


def test_loop_bench_raises_what_its_pipeline_worker_hit(tmp_path):
    from benchmarks import loop_bench
    from edge_runtime.backends import load

    backend = load(tiny_onnx(tmp_path / "model_fp32.onnx"))
    sample = np.zeros(backend.info.spec.input_shape, np.float32)
    with pytest.raises(OSError, match="cannot open"):
        loop_bench.model_beside_pipeline(backend, sample, tmp_path / "missing.avi", rate=100.0)
    assert not [t for t in threading.enumerate() if t.name == "pipeline-work"]


def wall_ms(loop: dict) -> float:
    """The loop's whole run in ms, from its frame count and FPS (the FPS rounded to 2 decimals: 1% slack)."""
    return 1.01 * 1000 * loop["frames"] / loop["fps"]
