"""Feeds docs/export.md (int8 TFLite with float32 input and output: what the edges cost).

What the float32 edges of the int8 TFLite file cost: latency and size, old file vs new, in one run.

old: ai-edge-quantizer ``static_wi8_ai8`` on the logits graph (int8 input, int8 logits);
new: the export's ``int8_float_edges_recipe`` on the softmax graph (float32 input, float32 probabilities).
Both from one ImageNet-initialised Lite0 with a 102-class head at 224 px, calibrated on the same real
images; latency alternates between the two files (batch 1, median of ``--runs``) so load on the
machine hits both alike.

python -m studies.int8_edges_bench --data runs/real/flowers [--threads 1 2] [--runs 200]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from edge_runtime.backends import load
from edge_runtime.spec import PreprocessSpec
from export.calibration import calibration_set
from export.converters import (
    ExportContext,
    WithSoftmax,
    _quantize_tflite,
    embed_tflite_metadata,
    export_tflite_base,
    int8_float_edges_recipe,
)
from prepare.categories import class_names
from train.models import build_model, get_entry


def build_files(data: Path, work: Path, calib_n: int) -> dict[str, Path]:
    from ai_edge_quantizer import recipe

    torch.manual_seed(0)
    model = build_model("efficientnet_lite0", len(class_names())).eval()
    spec = get_entry("efficientnet_lite0").spec
    calibration, _ = calibration_set(data, spec, n=calib_n, minimum=1, seed=0)
    sample = torch.from_numpy(calibration[:1])
    files = {}
    for name, graph, quantization in (
        ("old", model, recipe.static_wi8_ai8()),
        ("new", WithSoftmax(model).eval(), int8_float_edges_recipe()),
    ):
        base, bare, path = work / f"{name}_base.tflite", work / f"{name}_bare.tflite", work / f"{name}.tflite"
        export_tflite_base(ExportContext(model=graph, sample=sample, calibration=None), base)
        _quantize_tflite(base, bare, quantization, calibration, nhwc=True)
        info = {
            "arch": "efficientnet_lite0",
            "precision": "int8",
            "output": "probabilities" if name == "new" else "logits",
        }
        embed_tflite_metadata(bare, path, labels=list(class_names()), spec=spec.replace(layout="NHWC"), info=info)
        files[name] = path
    return files


def alternate(backends: dict, sample: np.ndarray, runs: int) -> dict[str, float]:
    times = {name: [] for name in backends}
    for backend in backends.values():
        for _ in range(20):
            backend.predict(sample)
    for _ in range(runs):
        for name, backend in backends.items():
            start = time.perf_counter()
            backend.predict(sample)
            times[name].append((time.perf_counter() - start) * 1e3)
    return {name: round(float(np.median(t)), 3) for name, t in times.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True, help="a prepared dataset (calibration images)")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--runs", type=int, default=200)
    p.add_argument("--calib-n", type=int, default=100)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        files = build_files(args.data, Path(tmp), args.calib_n)
        spec: PreprocessSpec = load(files["new"]).info.spec
        sample = np.random.default_rng(0).uniform(-1, 1, spec.input_shape).astype(np.float32)
        result = {"bytes": {name: path.stat().st_size for name, path in files.items()}}
        for threads in args.threads:
            backends = {name: load(path, "litert", threads=threads) for name, path in files.items()}
            ms = alternate(backends, sample, args.runs)
            result[f"{threads}_thread_ms"] = ms | {"new/old": round(ms["new"] / ms["old"], 3)}
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
