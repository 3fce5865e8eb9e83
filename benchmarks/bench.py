"""``bench(config)``: accuracy, latency, size, memory and loop FPS of every exported file, side by side.

Rows come from the export format table (plus each row's extra backends, plus the PyTorch model when a
checkpoint is given). Each file is measured in its own process; a failure becomes a row with its error.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path

import cv2
import numpy as np

from benchmarks.measure import latency, metrics_from_logits
from edge_runtime.atomic import atomic_path
from edge_runtime.backends import BACKENDS, load
from edge_runtime.errors import FloraEdgeError
from edge_runtime.outdir import check_output, staged_output
from edge_runtime.preprocess import preprocess, read_image_bgr
from export.formats import FORMATS
from prepare.manifest import read_manifest

BENCH = "bench"  # the marker kind of a bench folder: only such a folder is replaced by a new run


@dataclass(frozen=True, kw_only=True)
class BenchConfig:
    models: str  # an export directory
    data: str  # a prepared dataset
    out: str
    split: str = "val"
    checkpoint: str | None = None
    threads: tuple[int, ...] = (1, 2, 4)
    limit: int | None = None  # at most this many evaluation images
    warmup: int = 10
    runs: int = 50
    loop_frames: int = 120
    timeout_s: int = 1800


def machine_info(threads: tuple[int, ...]) -> dict:
    versions = {}
    for name in ("numpy", *dict.fromkeys(entry.package for entry in BACKENDS.values()), "torch"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    cpu = (
        next(
            (
                line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")
            ),
            platform.processor(),
        )
        if Path("/proc/cpuinfo").exists()
        else platform.processor()
    )
    return {
        "machine": platform.machine(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "versions": versions,
        "threads": list(threads),
        "onnxruntime_providers": ["CPUExecutionProvider"],
        "litert_delegate": "XNNPACK (default CPU)",
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }


def bench_rows(models: Path) -> list[tuple]:
    """(format row, backend) for every file of the table present in ``models``."""
    rows = []
    for row in FORMATS:
        if (models / row.filename).is_file():
            rows += [(row, backend) for backend in (row.runtime, *row.also_runs_on)]
    if not rows:
        raise FloraEdgeError(
            f"{models} holds none of the exported files {[f.filename for f in FORMATS]}; run `floraedge export`"
        )
    return rows


def eval_images(data: Path, split: str, limit: int | None) -> list[dict]:
    rows = [r for r in read_manifest(data) if r["split"] == split]
    if not rows:
        raise FloraEdgeError(f"{data} has no {split!r} images to benchmark on")
    return rows[:limit] if limit else rows


def cached_batch(cache: Path, data: Path, rows: list[dict], spec) -> Path:
    """The evaluation images preprocessed for ``spec``, stored once per distinct spec."""
    key = hashlib.sha256((spec.to_json() + str(len(rows))).encode()).hexdigest()[:12]
    path = cache / f"eval-{key}.npz"
    if not path.exists():
        batch = np.concatenate([preprocess(read_image_bgr(data / r["path"]), spec) for r in rows])
        with atomic_path(path) as tmp, tmp.open("wb") as f:  # an interrupted run leaves no bad cache
            np.savez(f, batch=batch, targets=np.array([r["class_index"] for r in rows]))
    return path


def make_loop_video(path: Path, data: Path, rows: list[dict], frames: int) -> Path:
    """A 640x480 MJPEG clip of real evaluation images: the camera-loop FPS source."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30, (640, 480))
    for i in range(frames):
        writer.write(cv2.resize(read_image_bgr(data / rows[i % len(rows)]["path"]), (640, 480)))
    writer.release()
    return path


def run_measure(model: Path, backend: str, npz: Path, pred_path: Path, video: Path, config: BenchConfig) -> dict:
    model, npz, pred_path, video = (Path(p).resolve() for p in (model, npz, pred_path, video))  # it runs elsewhere
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.measure",
        "--model",
        str(model),
        "--backend",
        backend,
        "--data",
        str(npz),
        "--predictions",
        str(pred_path),
        "--threads",
        ",".join(map(str, config.threads)),
        "--warmup",
        str(config.warmup),
        "--runs",
        str(config.runs),
        "--video",
        str(video),
    ]
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=config.timeout_s, cwd=Path(__file__).resolve().parents[1]
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {config.timeout_s} s"}
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def torch_row(
    checkpoint: str, data: Path, rows: list[dict], config: BenchConfig, cache: Path
) -> tuple[dict, np.ndarray]:
    """The PyTorch model as the reference row (needs torch: skipped on an edge-only device)."""
    import torch

    from train.checkpoint import load_bundle, model_from_bundle

    t = time.perf_counter()
    model, spec = model_from_bundle(load_bundle(checkpoint))
    row = {
        "name": "pytorch-fp32",
        "backend": "torch",
        "file": Path(checkpoint).name,
        "bytes": Path(checkpoint).stat().st_size,
        "load_ms": round((time.perf_counter() - t) * 1e3, 1),
    }
    npz = np.load(cached_batch(cache, data, rows, spec))
    batch, targets = torch.from_numpy(npz["batch"]), npz["targets"]
    with torch.no_grad():
        logits = torch.cat([model(batch[i : i + 32]) for i in range(0, len(batch), 32)]).numpy()
    row["accuracy"], pred = metrics_from_logits(logits, targets)
    row["latency"] = {}
    for threads in config.threads:
        torch.set_num_threads(threads)
        with torch.no_grad():
            row["latency"][str(threads)] = _torch_latency(model, batch[:1], config)
    return row, pred


def _torch_latency(model, sample, config: BenchConfig) -> dict:
    class Runner:
        def predict(self, x):
            return model(x)

    return latency(Runner(), sample, config.warmup, config.runs)


def bench(config: BenchConfig) -> dict:
    """Benchmark every exported file; writes report.md, results.csv, results.json and plots into ``config.out``."""
    cores = os.cpu_count() or 1
    config = BenchConfig(**{**asdict(config), "threads": tuple(sorted({min(t, cores) for t in config.threads}))})
    models, data, out = Path(config.models), Path(config.data), Path(config.out)
    check_output(out, BENCH, overwrite=True, inputs=[models, data, config.checkpoint])
    images, rows = eval_images(data, config.split, config.limit), bench_rows(models)  # checked before writing
    # built aside: a previous report at --out stays whole until this one is complete (its cache is reused)
    with staged_output(out, BENCH, overwrite=True, inputs=[models, data, config.checkpoint]) as stage:
        cache = reuse_cache(out / ".cache", stage / ".cache")
        report = bench_into(stage, cache, config, models, data, images, rows)
    return report


def reuse_cache(old: Path, new: Path) -> Path:
    """``new``, holding hard links to (else copies of) the preprocessed batches of a previous run's cache
    ``old``. Those are only ever written whole under a new name (``atomic_path``), never changed in place,
    so sharing them leaves the previous folder intact; the other cache files are rewritten each run."""
    new.mkdir()
    if old.is_dir() and not old.is_symlink():
        for f in old.glob("eval-*.npz"):
            if f.is_file() and not f.is_symlink():
                try:
                    os.link(f, new / f.name)
                except OSError:
                    shutil.copy2(f, new / f.name)
    return new


def bench_into(out: Path, cache: Path, config: BenchConfig, models: Path, data: Path, images, rows) -> dict:
    """Every row measured, the report written into the folder ``out``."""
    from benchmarks.report import write_report

    video = make_loop_video(cache / "loop.avi", data, images, config.loop_frames)
    results, reference = [], None
    if config.checkpoint:
        try:
            row, reference = torch_row(config.checkpoint, data, images, config, cache)
            results.append(row)
        except ImportError as exc:
            results.append({"name": "pytorch-fp32", "backend": "torch", "error": f"torch not installed ({exc})"})
    for fmt, backend in rows:
        path = models / fmt.filename
        print(f"== {fmt.name} on {backend}", flush=True)
        row = {
            "name": fmt.name,
            "backend": backend,
            "file": fmt.filename,
            "bytes": path.stat().st_size,
            "format": fmt.format,
            "precision": fmt.precision,
        }
        try:
            npz = cached_batch(cache, data, images, load(path, fmt.runtime).info.spec)
            pred_path = cache / f"pred-{fmt.name}-{backend}.npy"
            row |= run_measure(path, backend, npz, pred_path, video, config)
            if "error" not in row:
                pred = np.load(pred_path)
                reference = pred if reference is None else reference  # no checkpoint: the first row is the reference
                row["agreement"] = float((pred == reference).mean())
        except Exception as exc:  # a broken artifact is a failed row, the others still run
            row["error"] = f"{type(exc).__name__}: {exc}"
        print(f"   {row.get('error') or json.dumps(row.get('accuracy'))}", flush=True)
        results.append(row)
    report = {"machine": machine_info(config.threads), "config": asdict(config), "rows": results}
    write_report(out, report)
    return report
