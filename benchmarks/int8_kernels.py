"""Does this CPU's ONNX Runtime compute an int8 ONNX file as the file means?

Each file runs through the fused integer kernels and through its exact QDQ emulation in float (graph
optimizations off: what an ARM64 or VNNI CPU computes, to rounding), on a prepared split: accuracy of
both, their top-1 agreement and max abs difference, and the kernels' batch-1 latency, the files
alternated round by round so that their latencies share the machine's state (docs/results.md, "int8
ONNX on x86 CPUs without VNNI").

    python -m benchmarks.int8_kernels --data runs/flowers293 --models exp-a/model_int8.onnx exp-b/model_int8.onnx
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from benchmarks.measure import latency
from edge_runtime.backends import VNNI_FLAGS, linux_cpu_flags, load
from export.calibration import verification_set
from export.formats import FORMATS
from export.verify import run_file

ONNX_INT8 = next(f for f in FORMATS if f.converter == "onnx_int8")


def flips_beyond_rounding(fused: np.ndarray, exact: np.ndarray) -> int:
    """Images whose top-1 differs although the emulation's top-2 margin exceeds twice that image's largest
    difference: a flip that rounding cannot explain (kernels and emulation round differently, so near-ties
    may flip either way on any CPU)."""
    top2 = np.sort(exact, axis=1)[:, -2:]
    margin = top2[:, 1] - top2[:, 0]
    diff = np.abs(fused - exact).max(axis=1)
    return int(((fused.argmax(1) != exact.argmax(1)) & (margin > 2 * diff)).sum())


def kernels_vs_emulation(path: Path, data: Path, split: str, limit: int | None) -> tuple[dict, object]:
    kernels = load(path, "onnxruntime", threads=1)
    batch, targets, _ = verification_set(data, kernels.info.spec, split=split, limit=limit)
    fused = run_file(path, ONNX_INT8, batch, threads=1)
    exact = run_file(path, ONNX_INT8, batch, threads=1, qdq_emulation=True)
    return {
        "kernels_top1": float((fused.argmax(1) == targets).mean()),
        "emulation_top1": float((exact.argmax(1) == targets).mean()),
        "top1_agreement": float((fused.argmax(1) == exact.argmax(1)).mean()),
        "flips_beyond_rounding": flips_beyond_rounding(fused, exact),
        "max_abs_diff": float(np.abs(fused - exact).max()),
        "weights": kernels.info.info.get("onnx_int8"),
        "n": len(targets),
    }, (kernels, np.ascontiguousarray(batch[:1]))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", type=Path, required=True, help="int8 ONNX files")
    parser.add_argument("--data", type=Path, required=True, help="prepared dataset (floraedge prepare)")
    parser.add_argument("--split", default="val")
    parser.add_argument("--limit", type=int, default=None, help="class-balanced subset of the split")
    parser.add_argument("--rounds", type=int, default=5, help="latency rounds, the files alternated")
    parser.add_argument("--runs", type=int, default=30, help="timed inferences per file and round")
    args = parser.parse_args(argv)
    results, timing = {}, {}
    for path in args.models:
        results[str(path)], timing[str(path)] = kernels_vs_emulation(path, args.data, args.split, args.limit)
    rounds = {name: [] for name in timing}
    for _ in range(args.rounds):
        for name, (backend, sample) in timing.items():
            rounds[name].append(latency(backend, sample, warmup=3, runs=args.runs)["median_ms"])
    for name, values in rounds.items():
        results[name] |= {"median_ms": float(np.median(values)), "rounds_ms": values}
    flags = linux_cpu_flags()
    report = {"vnni_flags": sorted(flags & set(VNNI_FLAGS)), "files": results}
    print(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
