"""Measure one exported file in its own process (``python -m benchmarks.measure``): accuracy, latency
per thread count, load time, peak memory, end-to-end loop FPS. Torch-free, so it runs on a device
with only ``.[edge]`` installed; a crash here becomes a failed row, not a failed benchmark."""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time

import numpy as np

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


def latency(backend, sample: np.ndarray, warmup: int, runs: int) -> dict:
    for _ in range(warmup):
        backend.predict(sample)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        backend.predict(sample)
        times.append((time.perf_counter() - t) * 1e3)
    p50, p90, p99 = np.percentile(times, [50, 90, 99])
    return {
        "median_ms": round(p50, 3),
        "p90_ms": round(p90, 3),
        "p99_ms": round(p99, 3),
        "throughput_ips": round(1000 / p50, 1),
    }


def accuracy(backend, batch: np.ndarray, targets: np.ndarray) -> tuple[dict, np.ndarray]:
    logits = np.concatenate([backend.predict(batch[i : i + 1]) for i in range(len(batch))])
    return metrics_from_logits(logits, targets)


def metrics_from_logits(logits: np.ndarray, targets: np.ndarray) -> tuple[dict, np.ndarray]:
    """top-1, top-5 and mean per-class accuracy (over the classes present), and the top-1 predictions."""
    metrics = classification_metrics(logits, targets)
    return {k: metrics[k] for k in ("top1", "top5", "mean_per_class", "n")}, logits.argmax(1)


def measure(args) -> dict:
    from edge_runtime.backends import load
    from edge_runtime.classify import Classifier
    from edge_runtime.live import LiveConfig, run_live

    data = np.load(args.data)
    first = np.ascontiguousarray(data["batch"][:1])
    del data  # the evaluation batch must not count as the model's memory
    base_rss = rss_mb()
    t = time.perf_counter()
    backend = load(args.model, args.backend, threads=max(args.threads))
    result = {"load_ms": round((time.perf_counter() - t) * 1e3, 1)}
    for _ in range(10):
        backend.predict(first)
    result["model_rss_mb"] = round(rss_mb() - base_rss, 1)  # runtime + weights + arenas after warm-up
    data = np.load(args.data)
    batch, targets = data["batch"], data["targets"]
    result["accuracy"], pred = accuracy(backend, batch, targets)
    np.save(args.predictions, pred)
    result["peak_rss_mb"] = round(peak_rss_mb(), 1)  # the whole process, evaluation batch included
    result["latency"] = {}
    for threads in args.threads:
        runner = load(args.model, args.backend, threads=threads)
        result["latency"][str(threads)] = latency(runner, batch[:1], args.warmup, args.runs)
        del runner
    if args.video:
        stats = run_live(
            Classifier(backend), LiveConfig(source=args.video, headless=True, smoothing="none"), emit=lambda line: None
        )
        model = result["latency"][str(max(args.threads))]
        model_fps = 1000 / model["median_ms"]
        result["loop"] = {
            "fps": stats["fps"],
            "frames": stats["frames"],
            "model_only_fps": round(model_fps, 1),
            "ratio": round(stats["fps"] / model_fps, 3),
            "latency_p50_ms": stats["latency_p50_ms"],  # capture to result: what a user of the camera feels
            "latency_p99_ms": stats["latency_p99_ms"],
            "latency_p99_over_model_p99": round(stats["latency_p99_ms"] / model["p99_ms"], 3),
        }
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", required=True)
    p.add_argument("--backend", default="auto")
    p.add_argument("--data", required=True, help=".npz with 'batch' and 'targets'")
    p.add_argument("--predictions", required=True, help=".npy to write the top-1 predictions to")
    p.add_argument("--threads", type=comma_separated(int), default=(1,))
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--runs", type=int, default=50)
    p.add_argument("--video", default=None)
    args = p.parse_args(argv)
    try:
        print(json.dumps(measure(args)))
    except FloraEdgeError as exc:  # one line: `floraedge bench` reports the last stderr line as the row's error
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
