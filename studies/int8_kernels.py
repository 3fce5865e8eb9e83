"""Feeds docs/export.md (int8 ONNX on x86 CPUs without VNNI).

Does this CPU's ONNX Runtime compute an int8 ONNX file as the file means, and how far is it from PyTorch?

Each file runs through the fused integer kernels and through its exact QDQ emulation in float (graph
optimizations off: what an ARM64 or VNNI CPU computes, to rounding), on a prepared split: accuracy of
both, their top-1 agreement and max abs difference, and the kernels' batch-1 latency, the files
alternated round by round so that their latencies share the machine's state (docs/results.md, "int8
ONNX on x86 CPUs without VNNI"). ``--checkpoint`` adds the PyTorch model's top-1 and each result's drop
against it and top-1 agreement with it. ``--no-vnni-cpu Haswell`` also runs the fused kernels under
QEMU's user-mode emulation of that x86 CPU model, which has no VNNI (``apt-get install qemu-user``,
QEMU >= 7.2 for AVX2): there ONNX Runtime picks the int16 pair-summing kernel that can saturate.

    python -m studies.int8_kernels --data runs/flowers293 --models exp-a/model_int8.onnx exp-b/model_int8.onnx
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
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


def top1_figures(name: str, outputs: np.ndarray, targets: np.ndarray, torch_logits: np.ndarray | None) -> dict:
    """top-1 of ``outputs``; with a PyTorch reference, the drop against it (points) and the agreement."""
    top1 = float((outputs.argmax(1) == targets).mean())
    figures = {f"{name}_top1": top1}
    if torch_logits is not None:
        figures[f"{name}_drop_points"] = round((float((torch_logits.argmax(1) == targets).mean()) - top1) * 100, 3)
        figures[f"{name}_agreement_with_torch"] = float((outputs.argmax(1) == torch_logits.argmax(1)).mean())
    return figures


def kernels_vs_emulation(path: Path, batch: np.ndarray, targets: np.ndarray, torch_logits, no_vnni_cpu) -> dict:
    fused = run_file(path, ONNX_INT8, batch, threads=1)
    exact = run_file(path, ONNX_INT8, batch, threads=1, qdq_emulation=True)
    result = {
        **top1_figures("kernels", fused, targets, torch_logits),
        **top1_figures("emulation", exact, targets, torch_logits),
        "top1_agreement": float((fused.argmax(1) == exact.argmax(1)).mean()),
        "flips_beyond_rounding": flips_beyond_rounding(fused, exact),
        "max_abs_diff": float(np.abs(fused - exact).max()),
        "weights": load(path, "onnxruntime").info.info.get("onnx_int8"),
        "n": len(targets),
    }
    if no_vnni_cpu:
        emulated_cpu = kernels_on_emulated_cpu(path, batch, no_vnni_cpu)
        result |= {
            **top1_figures(f"kernels_{no_vnni_cpu}", emulated_cpu, targets, torch_logits),
            f"kernels_{no_vnni_cpu}_vs_emulation_agreement": float((emulated_cpu.argmax(1) == exact.argmax(1)).mean()),
            f"kernels_{no_vnni_cpu}_vs_emulation_max_abs_diff": float(np.abs(emulated_cpu - exact).max()),
        }
    return result


def kernels_on_emulated_cpu(path: Path, batch: np.ndarray, cpu: str) -> np.ndarray:
    """The file's fused kernels run by QEMU as the x86 CPU model ``cpu`` (only onnxruntime is imported there)."""
    qemu = shutil.which("qemu-x86_64")
    if not qemu:
        raise SystemExit("--no-vnni-cpu needs QEMU's user-mode emulator: apt-get install qemu-user")
    with tempfile.TemporaryDirectory() as tmp:
        inputs, outputs = Path(tmp) / "batch.npy", Path(tmp) / "outputs.npy"
        np.save(inputs, batch)
        code = (
            "import sys, numpy as np, onnxruntime as ort\n"
            "o = ort.SessionOptions(); o.intra_op_num_threads = 1\n"
            "s = ort.InferenceSession(sys.argv[1], o, providers=['CPUExecutionProvider'])\n"
            "b = np.load(sys.argv[2]); n = s.get_inputs()[0].name\n"
            "np.save(sys.argv[3], np.concatenate([s.run(None, {n: b[i:i + 32]})[0] for i in range(0, len(b), 32)]))\n"
        )
        cmd = [qemu, "-cpu", cpu, sys.executable, "-c", code, str(path), str(inputs), str(outputs)]
        subprocess.run(cmd, check=True, stderr=subprocess.DEVNULL)  # QEMU lists every CPUID bit TCG lacks
        return np.load(outputs)


def torch_reference(checkpoint: Path | None, batch: np.ndarray) -> np.ndarray | None:
    if checkpoint is None:
        return None
    from export.exporter import reference
    from train.checkpoint import load_bundle, model_from_bundle

    model, _ = model_from_bundle(load_bundle(str(checkpoint)))
    return reference(model.eval(), batch, np.zeros(len(batch), dtype=int)).logits


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", type=Path, required=True, help="int8 ONNX files")
    parser.add_argument("--data", type=Path, required=True, help="prepared dataset (floraedge prepare)")
    parser.add_argument("--split", default="val")
    parser.add_argument("--limit", type=int, default=None, help="class-balanced subset of the split")
    parser.add_argument("--rounds", type=int, default=5, help="latency rounds, the files alternated")
    parser.add_argument("--runs", type=int, default=30, help="timed inferences per file and round")
    parser.add_argument("--checkpoint", type=Path, help="the PyTorch model the files were exported from")
    parser.add_argument("--no-vnni-cpu", help="also run the kernels on this QEMU x86 CPU model (e.g. Haswell)")
    args = parser.parse_args(argv)
    spec = load(args.models[0], "onnxruntime").info.spec
    batch, targets, _ = verification_set(args.data, spec, split=args.split, limit=args.limit)
    torch_logits = torch_reference(args.checkpoint, batch)
    results = {str(p): kernels_vs_emulation(p, batch, targets, torch_logits, args.no_vnni_cpu) for p in args.models}
    timing = {str(p): (load(p, "onnxruntime", threads=1), np.ascontiguousarray(batch[:1])) for p in args.models}
    rounds = {name: [] for name in timing}
    for _ in range(args.rounds):
        for name, (backend, sample) in timing.items():
            rounds[name].append(latency(backend, sample, warmup=3, runs=args.runs)["median_ms"])
    for name, values in rounds.items():
        results[name] |= {"median_ms": float(np.median(values)), "rounds_ms": values}
    report = {"vnni_flags": sorted(linux_cpu_flags() & set(VNNI_FLAGS)), "files": results}
    if torch_logits is not None:
        report["torch_top1"] = float((torch_logits.argmax(1) == targets).mean())
    print(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
