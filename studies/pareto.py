"""Feeds docs/training.md (accuracy against int8 latency: the candidates' Pareto view).

Accuracy against int8 latency for model candidates, side by side in one run.

Each candidate is an exported file; its val top-1 is measured through the device ``preprocess()`` on the
prepared images, its latency at ``--threads`` in rounds that alternate between the candidates (so
that every ratio to the first candidate, the reference, is measured under the same load). Writes
pareto.json, pareto.csv and pareto.png to --out.

    python -m studies.pareto --data runs/flowers293 --out docs/results/pareto \\
        --candidate "224 px=exports/lite0-224/model_int8.tflite" \\
        --candidate "256 px=exports/lite0-256/model_int8.tflite"

``retarget`` writes a copy of a checkpoint whose spec asks for another input size (the same weights
evaluated at another test-time resolution; export it as usual):

    python -m studies.pareto retarget --checkpoint runs/lite0-256/best.pt --img-size 224 --out /tmp/at224.pt
"""

from __future__ import annotations

import argparse
import csv
import json
import tempfile
from pathlib import Path

import numpy as np

from benchmarks.bench import cached_batch, eval_images
from benchmarks.measure import accuracy, iter_stream, latency
from edge_runtime.atomic import write_json_atomic
from edge_runtime.backends import load
from train.checkpoint import retarget


def candidate(text: str) -> tuple[str, Path]:
    name, sep, path = text.partition("=")
    if not sep or not Path(path).is_file():
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME=PATH of an exported file")
    return name, Path(path)


def measure_candidates(candidates, data: Path, split: str, threads: int, rounds: int, runs: int) -> list[dict]:
    rows = eval_images(data, split, None)
    backends = [load(path, threads=threads) for _, path in candidates]  # a list: two candidates may share a name
    results, samples = [], []
    with tempfile.TemporaryDirectory() as cache:
        for (name, path), backend in zip(candidates, backends, strict=True):
            store = cached_batch(Path(cache), data, rows, backend.info.spec)
            metrics, _ = accuracy(backend, iter_stream(store), np.array([r["class_index"] for r in rows]))
            results.append({"name": name, "file": str(path), "mb": round(path.stat().st_size / 2**20, 2),
                            "input": backend.info.spec.crop_size, **metrics, "rounds_ms": []})  # fmt: skip
            samples.append(next(iter_stream(store)))
    for _ in range(rounds):  # alternate: each round sees every candidate under the same load
        for r, backend, sample in zip(results, backends, samples, strict=True):
            r["rounds_ms"].append(latency(backend, sample, 5, runs)["median_ms"])
    reference = float(np.median(results[0]["rounds_ms"]))
    for r in results:
        median = float(np.median(r["rounds_ms"]))  # the ratio from unrounded medians: the first is exactly 1.0
        r["median_ms"], r["latency_vs_first"] = round(median, 3), round(median / reference, 3)
    return results


def plot(results: list[dict], path: Path, threads: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for r in results:  # the bar: one standard error of the top-1 on n images
        se = 100 * np.sqrt(r["top1"] * (1 - r["top1"]) / r["n"])
        ax.errorbar(r["median_ms"], 100 * r["top1"], yerr=se, fmt="o", capsize=3, label=r["name"])
    ax.set_xlabel(f"int8 latency, median ms ({threads} thread{'s' * (threads > 1)})")
    ax.set_ylabel("val top-1 (%)")
    ax.set_title("accuracy (± 1 standard error) vs latency, side by side")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")  # a legend, not labels: candidates of one input size sit on top of each other
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write(results: list[dict], out: Path, threads: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "pareto.json", {"threads": threads, "candidates": results})
    fields = ["name", "input", "top1", "mean_per_class", "median_ms", "latency_vs_first", "mb", "file"]
    with (out / "pareto.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(results)
    plot(results, out / "pareto.png", threads)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command")
    r = sub.add_parser("retarget", help="a checkpoint copy with another input size")
    r.add_argument("--checkpoint", type=Path, required=True)
    r.add_argument("--img-size", type=int, required=True)
    r.add_argument("--out", type=Path, required=True)
    p.add_argument("--candidate", type=candidate, action="append", help="NAME=PATH; the first is the reference")
    p.add_argument("--data", type=Path, help="prepared dataset")
    p.add_argument("--split", default="val")
    p.add_argument("--out", type=Path)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--runs", type=int, default=50)
    args = p.parse_args(argv)
    if args.command == "retarget":
        retarget(args.checkpoint, args.img_size, args.out)
        return 0
    if not (args.candidate and args.data and args.out):
        p.error("--candidate (at least one), --data and --out are required")
    results = measure_candidates(args.candidate, args.data, args.split, args.threads, args.rounds, args.runs)
    write(results, args.out, args.threads)
    print(json.dumps([{k: r[k] for k in ("name", "top1", "median_ms", "latency_vs_first")} for r in results], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
