"""``bench(config)``: accuracy, latency, size, memory and loop FPS of every exported file, side by side.

Rows come from the export format table (plus each row's extra backends, plus the PyTorch model when a
checkpoint is given). Each file is measured in its own process; a failure becomes a row with its error.
Accuracy is one pass per file over the split, streamed image by image (memory does not grow with the
split). Latency is timed in rounds that visit every row once, in an order rotated each round, so that
a machine whose speed drifts (heat, other work) slows every row alike: each row's ratio to the
reference row is taken within a round, and the report gives its spread across rounds and the
machine's conditions before and after.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import select
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path

import cv2
import numpy as np

from benchmarks.conditions import changes, drift, read_conditions
from benchmarks.measure import iter_stream, metrics_from_logits, summarize, timed_runs, write_stream
from edge_runtime.backends import BACKENDS, load
from edge_runtime.errors import FloraEdgeError
from edge_runtime.modelfile import model_bytes
from edge_runtime.outdir import check_output, staged_output
from edge_runtime.preprocess import preprocess, read_image_bgr
from export.formats import FORMATS
from prepare.manifest import read_manifest

BENCH = "bench"  # the marker kind of a bench folder: only such a folder is replaced by a new run


@dataclass(frozen=True, kw_only=True)
class BenchConfig:
    models: tuple[str, ...]  # model files and export folders, mixed (one path: a str is taken as one)
    data: str  # a prepared dataset
    out: str
    split: str = "val"
    # the full model that agreement and top-1 drops are measured against: a model file or a floraedge checkpoint
    reference: str | None = None
    checkpoint: str | None = None  # the former name of a checkpoint ``reference``, kept for old scripts
    threads: tuple[int, ...] = (1, 2, 4)
    limit: int | None = None  # at most this many evaluation images
    warmup: int = 10  # untimed runs before a row's first round (later rounds: REWARM)
    rounds: int = 10  # every row timed once per round, the order rotated (short visits pair rows closely)
    runs: int = 5  # timed runs per row, thread count and round (rounds x runs: the 50 runs of earlier versions)
    loop_frames: int = 120
    timeout_s: int = 1800

    def __post_init__(self) -> None:
        if isinstance(self.models, (str, os.PathLike)):
            object.__setattr__(self, "models", (str(self.models),))
        if self.checkpoint and self.reference and self.checkpoint != self.reference:
            raise FloraEdgeError("--checkpoint is the former name of --reference: give one of them")

    @property
    def reference_model(self) -> str | None:
        """The model named by --reference, or by its former name --checkpoint."""
        return self.reference or self.checkpoint


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


@dataclass(frozen=True)
class Target:
    """One row to measure: a model file on one backend."""

    path: Path
    name: str
    backend: str
    format: str
    precision: str  # "" where the file's name does not say: its embedded info does, once loaded


MODEL_SUFFIXES = tuple(sorted({s for e in BACKENDS.values() for s in e.suffixes}))


def folder_targets(folder: Path) -> list[Target]:
    """Every file of the export format table present in ``folder``, on its runtime and its extra backends."""
    targets = [
        Target(folder / row.filename, row.name, backend, row.format, row.precision)
        for row in FORMATS
        if (folder / row.filename).is_file()
        for backend in (row.runtime, *row.also_runs_on)
    ]
    if not targets:
        raise FloraEdgeError(
            f"{folder} holds none of the exported files {[f.filename for f in FORMATS]}; run `floraedge export`, "
            "or name model files themselves in --models"
        )
    return targets


def file_targets(path: Path) -> list[Target]:
    """A model file named by itself: a file of the format table by its name (all its backends), else any
    .onnx or .tflite file on the runtime of its type."""
    suffix = path.suffix.lower()
    if suffix not in MODEL_SUFFIXES:
        raise FloraEdgeError(f"{path}: not a model file ({', '.join(MODEL_SUFFIXES)}) nor a folder of them")
    row = next((f for f in FORMATS if f.filename == path.name), None)
    if row is not None:
        return [Target(path, row.name, b, row.format, row.precision) for b in (row.runtime, *row.also_runs_on)]
    backend = next(n for n, e in BACKENDS.items() if suffix in e.suffixes)
    return [Target(path, path.name, backend, suffix[1:], "")]


def bench_rows(models: tuple[str, ...] | str | Path, reference: str | None = None) -> list[Target]:
    """The rows to measure for ``models`` (files and folders, mixed), the ``reference`` model file first;
    a file named twice is measured once, and rows of one name from different folders get the folder's name."""
    paths = [Path(models)] if isinstance(models, (str, Path)) else [Path(m) for m in models]
    if reference and is_model_file(reference):
        paths.insert(0, Path(reference))
    targets, seen = [], set()
    for path in paths:
        if not path.exists():
            raise FloraEdgeError(f"{path} does not exist (--models takes model files and export folders)")
        for target in folder_targets(path) if path.is_dir() else file_targets(path):
            key = (target.path.resolve(), target.backend)
            if key not in seen:
                seen.add(key)
                targets.append(target)
    names = [(t.name, t.backend) for t in targets]
    return [
        Target(t.path, f"{t.path.parent.name}/{t.name}", t.backend, t.format, t.precision)
        if names.count((t.name, t.backend)) > 1
        else t
        for t in targets
    ]


def is_model_file(path: str | Path) -> bool:
    """A --reference that a runtime runs (else it is a floraedge checkpoint, run by PyTorch)."""
    return Path(path).suffix.lower() in MODEL_SUFFIXES


def eval_images(data: Path, split: str, limit: int | None) -> list[dict]:
    rows = [r for r in read_manifest(data) if r["split"] == split]
    if not rows:
        raise FloraEdgeError(f"{data} has no {split!r} images to benchmark on")
    return rows[:limit] if limit else rows


def cached_batch(cache: Path, data: Path, rows: list[dict], spec) -> Path:
    """The evaluation images preprocessed for ``spec`` into one .npy, written image by image and stored
    once per distinct spec (memory holds one image, whatever the split's size)."""
    images = "\n".join(r["path"] for r in rows)
    key = hashlib.sha256((spec.to_json() + images).encode()).hexdigest()[:12]
    path = cache / f"eval-{key}.npy"
    if not path.exists():
        arrays = (preprocess(read_image_bgr(data / r["path"]), spec) for r in rows)
        write_stream(path, arrays, len(rows), tuple(spec.input_shape[1:]))
    return path


def cached_targets(cache: Path, rows: list[dict]) -> Path:
    path = cache / "targets.npy"
    np.save(path, np.array([r["class_index"] for r in rows]))
    return path


def make_loop_video(path: Path, data: Path, rows: list[dict], frames: int) -> Path:
    """A 640x480 MJPEG clip of real evaluation images: the camera-loop FPS source."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30, (640, 480))
    for i in range(frames):
        writer.write(cv2.resize(read_image_bgr(data / rows[i % len(rows)]["path"]), (640, 480)))
    writer.release()
    return path


REWARM = 2  # untimed runs when a row's turn comes round again: its caches, not its first-call set-up
REPO = Path(__file__).resolve().parents[1]


class MeasureError(Exception):
    """A row's measuring process failed, timed out or was cut off."""


class Worker:
    """One file's measuring process (``benchmarks.measure``): its one-pass results, then latency on request."""

    def __init__(self, cmd: list[str], log: Path, timeout_s: float):
        self.timeout_s, self.log = timeout_s, log
        with log.open("wb") as err:  # a file, not a pipe: a chatty runtime cannot fill it and stall the process
            self.proc = subprocess.Popen(
                cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, bufsize=0, cwd=REPO
            )
        try:
            self.result = self._answer()
        except BaseException:  # Ctrl-C, SIGTERM: no measuring process outlives the bench
            self.kill()
            raise

    def time(self, threads: int, warmup: int, runs: int) -> list[float]:
        try:
            self.proc.stdin.write((json.dumps({"threads": threads, "warmup": warmup, "runs": runs}) + "\n").encode())
        except OSError as exc:
            self.close()
            raise MeasureError(self._last_words(f"its process is gone ({exc})")) from None
        return self._answer()["ms"]

    def _answer(self) -> dict:
        deadline, line = time.monotonic() + self.timeout_s, b""
        while not line.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.proc.stdout], [], [], left)[0]:
                self.close()
                raise MeasureError(f"timed out after {self.timeout_s:g} s")
            chunk = self.proc.stdout.readline()
            if not chunk:
                self.close()
                raise MeasureError(self._last_words(f"exit code {self.proc.returncode}"))
            line += chunk
        return json.loads(line)

    def _last_words(self, otherwise: str) -> str:
        with self.log.open("rb") as f:  # its last line, read from the end: a log can be long
            f.seek(max(0, self.log.stat().st_size - 4096))
            lines = f.read().decode(errors="replace").strip().splitlines()
        return lines[-1] if lines else otherwise

    def close(self) -> None:
        """End an idle process: its request loop ends with its input."""
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc.stdout.close()

    def kill(self) -> None:
        """End it now, whatever it is doing (the bench was interrupted)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for pipe in (self.proc.stdin, self.proc.stdout):
            pipe.close()


@dataclass
class InProcess:
    """A row timed in this process (the PyTorch model, a test's stand-in): ``predict`` on one sample."""

    predict: Callable
    sample: object
    set_threads: Callable[[int], None] = lambda threads: None
    clock: Callable[[], float] = time.perf_counter  # seconds; a test's modelled machine brings its own

    def time(self, threads: int, warmup: int, runs: int) -> list[float]:
        self.set_threads(threads)
        return timed_runs(self, self.sample, warmup, runs, clock=self.clock)

    def close(self) -> None:
        pass

    def kill(self) -> None:
        pass


def start_worker(model: Path, backend: str, npz: Path, targets: Path, pred_path: Path, video: Path, config) -> Worker:
    paths = (Path(p).resolve() for p in (model, npz, targets, pred_path, video))  # it runs elsewhere
    model, npz, targets, pred_path, video = paths
    cmd = [sys.executable, "-m", "benchmarks.measure", "--model", str(model), "--backend", backend]
    cmd += ["--data", str(npz), "--targets", str(targets), "--predictions", str(pred_path), "--video", str(video)]
    cmd += ["--threads", ",".join(map(str, config.threads))]
    return Worker(cmd, pred_path.with_suffix(".log"), config.timeout_s)


def latency_rounds(timers: list, threads: tuple[int, ...], *, rounds: int, warmup: int, runs: int):
    """Each row's run times (ms) per thread count and round, and the rows that failed (index -> error).

    Round ``r`` visits every row once per thread count, the rows' order rotated by ``r``: drift in the
    machine's speed lands on every row alike, and the rows of one round share its conditions."""
    times = [{t: [] for t in threads} for _ in timers]
    failed: dict[int, str] = {}
    for r in range(rounds):
        order = [(r + k) % len(timers) for k in range(len(timers))]
        for t in threads:
            for i in order:
                if i in failed:
                    continue
                try:
                    times[i][t].append(timers[i].time(t, warmup if r == 0 else min(REWARM, warmup), runs))
                except MeasureError as exc:
                    failed[i] = str(exc)
    return times, failed


def latency_summary(rounds_ms: list[list[float]], reference: list[list[float]] | None) -> dict:
    """Median, p90, p99 over every run; the spread (IQR) of the round medians; the per-round ratio to
    ``reference`` (its median and IQR across rounds)."""
    medians = [float(np.median(r)) for r in rounds_ms]
    q1, q3 = np.percentile(medians, [25, 75])
    out = summarize([t for r in rounds_ms for t in r]) | {
        "iqr_ms": round(float(q3 - q1), 3),
        "round_medians_ms": [round(m, 3) for m in medians],
    }
    if reference:
        ratios = [m / float(np.median(ref)) for m, ref in zip(medians, reference, strict=True)]
        q1, q2, q3 = np.percentile(ratios, [25, 50, 75])
        out |= {
            "ratio": round(float(q2), 4),
            "ratio_iqr": round(float(q3 - q1), 4),
            "round_ratios": [round(x, 4) for x in ratios],
        }
    return out


def torch_row(checkpoint: str, data: Path, rows: list[dict], cache: Path, targets: np.ndarray):
    """The PyTorch model as the reference row (needs torch: skipped on an edge-only device): the row,
    its top-1 predictions and its timer."""
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

    def predict(batch):
        with torch.no_grad():
            return model(batch)

    store = cached_batch(cache, data, rows, spec)
    logits = np.concatenate([predict(torch.from_numpy(b)).numpy() for b in iter_stream(store, chunk=32)])
    row["accuracy"], pred = metrics_from_logits(logits, targets)
    return row, pred, InProcess(predict, torch.from_numpy(next(iter_stream(store))), torch.set_num_threads)


def file_row(target: Target, index: int, data: Path, images: list[dict], cache: Path, video: Path, config):
    """One model file's row after its one pass (accuracy, memory, loop), and its measuring process."""
    info = load(target.path, target.backend).info
    row = target_row(target) | {"precision": target.precision or info.info.get("precision", "")}
    store = cached_batch(cache, data, images, info.spec)
    pred_path = cache / f"pred-{index:03d}-{target.backend}.npy"  # names may hold a folder's: the index is safe
    worker = start_worker(target.path, target.backend, store, cache / "targets.npy", pred_path, video, config)
    try:
        return row | worker.result, np.load(pred_path), worker
    except Exception:
        worker.close()
        raise


def target_row(target: Target) -> dict:
    return {
        "name": target.name,
        "backend": target.backend,
        "file": str(target.path),
        "bytes": model_bytes(target.path),  # an ncnn pair counts both its files
        "format": target.format,
        "precision": target.precision,
    }


def add_latency(results: list[dict], times: dict[int, dict], failed: dict[int, str], threads: tuple[int, ...]) -> list:
    """Each timed row's latency per thread count, with its ratios to the reference (the first row timed
    in full); returns the reference's round medians at the highest thread count."""
    for i, error in failed.items():
        results[i]["error"] = f"latency: {error}"
    ok = sorted(i for i in times if i not in failed)
    if not ok:
        return []
    reference = times[ok[0]]
    for i in ok:
        row = results[i]
        row["latency"] = {str(t): latency_summary(times[i][t], reference[t]) for t in threads}
        row["reference"] = f"{results[ok[0]]['name']} ({results[ok[0]]['backend']})"
        if "loop" in row:
            add_loop_ratios(row["loop"], row["latency"][str(max(threads))])
    return [float(np.median(r)) for r in reference[max(threads)]]


def add_loop_ratios(loop: dict, model: dict) -> None:
    model_fps = 1000 / model["median_ms"]
    loop |= {
        "model_only_fps": round(model_fps, 1),
        "ratio": round(loop["fps"] / model_fps, 3),
        "latency_p99_over_model_p99": round(loop["latency_p99_ms"] / model["p99_ms"], 3),
    }


def measure_rows(config: BenchConfig, rows, images: list[dict], cache: Path, video: Path, timers: list) -> list[dict]:
    """One pass per row (accuracy, memory, loop FPS); each row's timer is appended to ``timers`` as
    (row index, timer), as soon as it exists, so that an interruption can end every process."""
    data = Path(config.data)
    targets = np.load(cached_targets(cache, images))
    results, reference = [], None
    if config.reference_model and not is_model_file(config.reference_model):
        try:
            row, reference, timer = torch_row(config.reference_model, data, images, cache, targets)
            timers.append((len(results), timer))
            results.append(row)
        except ImportError as exc:
            results.append({"name": "pytorch-fp32", "backend": "torch", "error": f"torch not installed ({exc})"})
    for index, target in enumerate(rows):
        print(f"== {target.name} on {target.backend}", flush=True)
        row = target_row(target)
        try:
            row, pred, worker = file_row(target, index, data, images, cache, video, config)
            timers.append((len(results), worker))
            reference = pred if reference is None else reference  # no reference given: the first row is it
            row["agreement"] = float((pred == reference).mean())
        except Exception as exc:  # a broken artifact is a failed row, the others still run
            row["error"] = f"{type(exc).__name__}: {exc}"
        print(f"   {row.get('error') or json.dumps(row.get('accuracy'))}", flush=True)
        reference_file = config.reference_model and is_model_file(config.reference_model)
        if index == 0 and "error" in row and reference_file:
            raise FloraEdgeError(f"the --reference file {config.reference_model} does not run: {row['error']}")
        results.append(row)
    add_top1_drops(results)
    return results


def add_top1_drops(results: list[dict]) -> None:
    """Each row's top-1 drop in points from the reference row (the first, whose predictions agreement counts)."""
    reference = results[0].get("accuracy", {}).get("top1") if results else None
    if reference is None:
        return
    for row in results:
        if "accuracy" in row:
            row["top1_drop_points"] = round((reference - row["accuracy"]["top1"]) * 100, 3)
        row["agreement_reference"] = f"{results[0]['name']} ({results[0]['backend']})"


def bench(config: BenchConfig) -> dict:
    """Benchmark every exported file; writes report.md, results.csv, results.json and plots into ``config.out``."""
    cores = os.cpu_count() or 1
    config = BenchConfig(**{**asdict(config), "threads": tuple(sorted({min(t, cores) for t in config.threads}))})
    data, out = Path(config.data), Path(config.out)
    inputs = [*config.models, data, config.reference_model]
    check_output(out, BENCH, overwrite=True, inputs=inputs)
    images = eval_images(data, config.split, config.limit)  # checked before writing
    rows = bench_rows(config.models, config.reference_model)
    # built aside: a previous report at --out stays whole until this one is complete (its cache is reused)
    with staged_output(out, BENCH, overwrite=True, inputs=inputs) as stage:
        cache = reuse_cache(out / ".cache", stage / ".cache")
        report = bench_into(stage, cache, config, data, images, rows)
    return report


def reuse_cache(old: Path, new: Path) -> Path:
    """``new``, holding hard links to (else copies of) the preprocessed batches of a previous run's cache
    ``old``. Those are only ever written whole under a new name (``atomic_path``), never changed in place,
    so sharing them leaves the previous folder intact; the other cache files are rewritten each run."""
    new.mkdir()
    if old.is_dir() and not old.is_symlink():
        for f in old.glob("eval-*.npy"):
            if f.is_file() and not f.is_symlink():
                try:
                    os.link(f, new / f.name)
                except OSError:
                    shutil.copy2(f, new / f.name)
    return new


def bench_into(out: Path, cache: Path, config: BenchConfig, data: Path, images, rows) -> dict:
    """Every row measured, the report written into the folder ``out``."""
    from benchmarks.report import write_report

    video = make_loop_video(cache / "loop.avi", data, images, config.loop_frames)
    before, timers = read_conditions(), []
    try:
        results = measure_rows(config, rows, images, cache, video, timers)
        print(f"== latency: {config.rounds} rounds x {config.runs} runs per row and thread count, rows alternated")
        times, failed = latency_rounds(
            [t for _, t in timers], config.threads, rounds=config.rounds, warmup=config.warmup, runs=config.runs
        )
    except BaseException:  # Ctrl-C, SIGTERM: no measuring process outlives the bench
        for _, timer in timers:
            timer.kill()
        raise
    for _, timer in timers:
        timer.close()
    after = read_conditions()
    index = [i for i, _ in timers]  # timer k times row index[k]
    by_row, failed = dict(zip(index, times, strict=True)), {index[k]: error for k, error in failed.items()}
    reference_medians = add_latency(results, by_row, failed, config.threads)
    changed = changes(before, after, max(config.threads)) + [line for line in [drift(reference_medians)] if line]
    report = {
        "machine": machine_info(config.threads),
        "config": asdict(config),
        "conditions": {"before": before, "after": after, "changed": changed},
        "rows": results,
    }
    write_report(out, report)
    return report
