"""Measure one exported file in its own process (``python -m benchmarks.measure``): accuracy, load
time, peak memory and end-to-end loop FPS, printed as one JSON line; then it stays up to time its
latency whenever ``bench`` asks (one JSON request per stdin line, one JSON answer per line), so that
``bench`` can alternate the files round by round. Torch-free, so it runs on a device with only
``.[edge]`` installed; a crash here becomes a failed row, not a failed benchmark."""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from edge_runtime.atomic import atomic_path
from edge_runtime.errors import FloraEdgeError
from edge_runtime.metrics import classification_metrics
from edge_runtime.options import comma_separated


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # not Linux: the closest there is


def rss_mb() -> float:
    return _status_mb("VmRSS")


def peak_rss_mb() -> float:
    """This process's peak RSS. Not ru_maxrss: Linux carries that over fork + exec from a (large) parent."""
    return _status_mb("VmHWM")


def timed_runs(backend, sample: np.ndarray, warmup: int, runs: int, clock=time.perf_counter) -> list[float]:
    """``runs`` batch-1 inference times (ms) after ``warmup`` untimed ones (``clock``: seconds)."""
    for _ in range(warmup):
        backend.predict(sample)
    times = []
    for _ in range(runs):
        t = clock()
        backend.predict(sample)
        times.append((clock() - t) * 1e3)
    return times


def summarize(times: list[float]) -> dict:
    p50, p90, p99 = np.percentile(times, [50, 90, 99])
    return {
        "median_ms": round(p50, 3),
        "p90_ms": round(p90, 3),
        "p99_ms": round(p99, 3),
        "throughput_ips": round(1000 / p50, 1),
    }


def latency(backend, sample: np.ndarray, warmup: int, runs: int) -> dict:
    return summarize(timed_runs(backend, sample, warmup, runs))


def write_stream(path: Path, arrays: Iterable[np.ndarray], count: int, shape: tuple[int, ...]) -> Path:
    """``count`` float32 arrays of ``shape`` into one .npy, written as they come: memory holds one at a time."""
    header = {
        "descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)),
        "fortran_order": False,
        "shape": (count, *shape),
    }
    written = 0
    with atomic_path(path) as tmp, tmp.open("wb") as f:  # an interrupted run leaves no bad file
        np.lib.format.write_array_header_1_0(f, header)
        for array in arrays:
            if array.shape[-len(shape) :] != shape:
                raise ValueError(f"{path.name}: an array of shape {array.shape}, expected {shape}")
            f.write(np.ascontiguousarray(array, np.float32).tobytes())
            written += 1
        if written != count:
            raise ValueError(f"{path.name}: {written} arrays written, {count} announced")
    return path


def iter_stream(path: Path, chunk: int = 1) -> Iterator[np.ndarray]:
    """The arrays of a .npy, ``chunk`` at a time (read, not memory-mapped: the pages read do not stay resident)."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read_header(f)
        for start in range(0, shape[0], chunk):
            batch = np.empty((min(chunk, shape[0] - start), *shape[1:]), dtype)
            if f.readinto(memoryview(batch).cast("B")) != batch.nbytes:
                raise ValueError(f"{path} is truncated")
            yield batch


def accuracy(backend, batches: Iterable[np.ndarray], targets: np.ndarray) -> tuple[dict, np.ndarray]:
    """Metrics over ``batches`` (streamed: one batch in memory at a time) against ``targets``."""
    logits = np.concatenate([backend.predict(batch) for batch in batches])
    return metrics_from_logits(logits, targets)


def metrics_from_logits(logits: np.ndarray, targets: np.ndarray) -> tuple[dict, np.ndarray]:
    """top-1, top-5 and mean per-class accuracy (over the classes present), and the top-1 predictions."""
    metrics = classification_metrics(logits, targets)
    return {k: metrics[k] for k in ("top1", "top5", "mean_per_class", "n")}, logits.argmax(1)


def measure(args, backend) -> dict:
    """Accuracy (one pass), memory and loop FPS of the loaded ``backend``; latency is timed later, on request."""
    from edge_runtime.classify import Classifier
    from edge_runtime.live import LiveConfig, run_live

    result = {}
    targets = np.load(args.targets)
    result["accuracy"], pred = accuracy(backend, iter_stream(args.data), targets)
    np.save(args.predictions, pred)
    result["peak_rss_mb"] = round(peak_rss_mb(), 1)  # the whole process, one evaluation image at a time
    if args.video:
        stats = run_live(
            Classifier(backend), LiveConfig(source=args.video, headless=True, smoothing="none"), emit=lambda line: None
        )
        # against the model alone: bench adds the ratios once the alternating rounds timed it
        result["loop"] = {k: stats[k] for k in ("fps", "frames", "latency_p50_ms", "latency_p99_ms")}
    return result


def serve_timings(args, loaded, sample: np.ndarray, requests, answers) -> None:
    """Answer each request ``{"threads", "warmup", "runs"}`` with ``{"ms": [...]}`` until the requests end."""
    from edge_runtime.backends import load

    runners = {max(args.threads): loaded}
    for line in requests:
        request = json.loads(line)
        threads = request["threads"]
        if threads not in runners:
            runners[threads] = load(args.model, args.backend, threads=threads)
        ms = timed_runs(runners[threads], sample, request["warmup"], request["runs"])
        answers.write(json.dumps({"ms": [round(t, 4) for t in ms]}) + "\n")
        answers.flush()


def main(argv: list[str] | None = None) -> int:

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", required=True)
    p.add_argument("--backend", default="auto")
    p.add_argument("--data", required=True, help=".npy of preprocessed images (bench's streamed store)")
    p.add_argument("--targets", required=True, help=".npy of their class indices")
    p.add_argument("--predictions", required=True, help=".npy to write the top-1 predictions to")
    p.add_argument("--threads", type=comma_separated(int), default=(1,))
    p.add_argument("--video", default=None)
    args = p.parse_args(argv)
    try:
        return run(args)
    except FloraEdgeError as exc:  # one line: `floraedge bench` reports the last stderr line as the row's error
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


def run(args) -> int:
    """Measure the file once, answer with the one-pass results, then answer timing requests until stdin ends."""
    from edge_runtime.backends import load

    # the protocol owns stdout; anything a runtime prints goes to stderr
    answers = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    sample = next(iter_stream(args.data))
    base_rss = rss_mb()
    t = time.perf_counter()
    backend = load(args.model, args.backend, threads=max(args.threads))
    result = {"load_ms": round((time.perf_counter() - t) * 1e3, 1)}
    if "inference_precision" in backend.info.info:  # a runtime that could compute in another precision says which
        result["inference_precision"] = backend.info.info["inference_precision"]
    for _ in range(10):
        backend.predict(sample)
    result["model_rss_mb"] = round(rss_mb() - base_rss, 1)  # runtime + weights + arenas after warm-up
    result |= measure(args, backend)
    answers.write(json.dumps(result) + "\n")
    answers.flush()
    serve_timings(args, backend, sample, sys.stdin, answers)
    return 0


if __name__ == "__main__":
    sys.exit(main())
