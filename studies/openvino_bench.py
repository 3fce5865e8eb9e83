"""Feeds docs/runtimes.md: the two measurements behind the openvino backend's choices, each printed as JSON.

``ir``: OpenVINO's own format (IR, ``.xml`` + ``.bin``, converted here from the ONNX file) against reading the
ONNX file as it is: load time (read + compile + first inference, each in a fresh process, so no load warms
the next) and batch-1 latency at each thread count, the two alternated in rounds whose order is rotated, so
that the ratio is taken under the same load. The format table gets an IR row only if it earns one.

``precision``: an fp32 ONNX file through OpenVINO with its precision pinned to f32 (the backend's setting) and
with the CPU's default (bf16 where the CPU has it), each against the PyTorch checkpoint it was exported from,
on prepared images: max |probability difference| and top-1 agreement.

    python -m studies.openvino_bench ir --model models/oxford102-lite0/model_int8.onnx --threads 1 2
    python -m studies.openvino_bench precision --model exports/model_fp32.onnx --checkpoint run/best.pt \\
        --data prepared --limit 64
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

LOAD_CODE = """
import sys, time
import numpy as np
import openvino as ov
t = time.perf_counter()
core = ov.Core()
compiled = core.compile_model(core.read_model(sys.argv[1]), "CPU", {"INFERENCE_PRECISION_HINT": "f32",
    "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1, "INFERENCE_NUM_THREADS": 1})
compiled.create_infer_request().infer({0: np.zeros([d.get_length() if d.is_static else 1
    for d in compiled.inputs[0].get_partial_shape()], np.float32)})
print((time.perf_counter() - t) * 1e3)
"""


def to_ir(onnx_path: Path, folder: Path) -> Path:
    """The ONNX file as OpenVINO IR, weights kept as they are (no fp16 compression)."""
    import openvino as ov

    xml = folder / (onnx_path.stem + ".xml")
    ov.save_model(ov.Core().read_model(str(onnx_path)), str(xml), compress_to_fp16=False)
    return xml


def load_ms(path: Path) -> float:
    done = subprocess.run([sys.executable, "-c", LOAD_CODE, str(path)], capture_output=True, text=True, timeout=300)
    if done.returncode:
        raise SystemExit(f"loading {path} failed: {done.stderr.strip().splitlines()[-1]}")
    return float(done.stdout.strip().splitlines()[-1])


def compiled(path: Path, threads: int, precision: str | None = "f32"):
    import openvino as ov

    config = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1, "INFERENCE_NUM_THREADS": threads}
    if precision:
        config["INFERENCE_PRECISION_HINT"] = precision
    core = ov.Core()
    return core.compile_model(core.read_model(str(path)), "CPU", config)


def timed(request, sample: np.ndarray, runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        request.infer({0: sample})
        times.append((time.perf_counter() - t) * 1e3)
    return times


def alternate(variants: dict[str, Path], threads: tuple[int, ...], rounds: int, runs: int, loads: int) -> dict:
    """Load times and latencies of every variant, the variants alternated (order rotated each round); the
    ratios of the others to the first variant are taken per round."""
    names = list(variants)
    load_times = {n: [] for n in names}
    for r in range(loads):
        for n in names[r % len(names) :] + names[: r % len(names)]:
            load_times[n].append(load_ms(variants[n]))
    result = {
        "load_ms": {
            n: {"median": round(float(np.median(v)), 1), "all": [round(x, 1) for x in v]} for n, v in load_times.items()
        }
    }
    first = names[0]
    result["load_ratio"] = {
        n: round(float(np.median(np.array(load_times[n]) / np.array(load_times[first]))), 3) for n in names
    }
    for t in threads:
        models = {n: compiled(p, t) for n, p in variants.items()}
        shape = [d.get_length() if d.is_static else 1 for d in models[first].inputs[0].get_partial_shape()]
        sample = np.random.default_rng(0).random(shape, dtype=np.float32)
        requests = {n: m.create_infer_request() for n, m in models.items()}
        outputs = {n: np.array(q.infer({0: sample})[0]) for n, q in requests.items()}
        for q in requests.values():
            timed(q, sample, 10)  # warm-up
        medians, every = {n: [] for n in names}, {n: [] for n in names}
        for r in range(rounds):
            for n in names[r % len(names) :] + names[: r % len(names)]:
                ms = timed(requests[n], sample, runs)
                medians[n].append(float(np.median(ms)))
                every[n] += ms
        result[f"threads_{t}"] = {
            n: {
                "median_ms": round(float(np.median(every[n])), 3),
                "p99_ms": round(float(np.percentile(every[n], 99)), 3),
                "ratio": round(float(np.median(np.array(medians[n]) / np.array(medians[first]))), 3),
                "max_abs_diff_vs_first": float(np.abs(outputs[n] - outputs[first]).max()),
            }
            for n in names
        }
    return result


def ir(args) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        xml = to_ir(args.model, Path(tmp))
        sizes = {
            "onnx_bytes": args.model.stat().st_size,
            "ir_bytes": xml.stat().st_size + xml.with_suffix(".bin").stat().st_size,
        }
        return {
            "model": str(args.model),
            **sizes,
            **alternate({"onnx": args.model, "ir": xml}, tuple(args.threads), args.rounds, args.runs, args.loads),
        }


def precision(args) -> dict:
    """OpenVINO's f32 and default-precision outputs against PyTorch's softmax on the prepared images."""
    import torch

    from edge_runtime.preprocess import preprocess, read_image_bgr
    from prepare.manifest import read_manifest
    from train.checkpoint import load_bundle, model_from_bundle

    model, spec = model_from_bundle(load_bundle(args.checkpoint))
    rows = [r for r in read_manifest(args.data) if r["split"] == args.split][: args.limit]
    batch = np.concatenate([preprocess(read_image_bgr(args.data / r["path"]), spec) for r in rows])
    with torch.no_grad():
        reference = torch.softmax(model.eval()(torch.from_numpy(batch)), -1).numpy()
    out = {"model": str(args.model), "checkpoint": str(args.checkpoint), "images": len(rows)}
    for name, hint in (("f32", "f32"), ("default", None)):
        model_ov = compiled(args.model, args.threads[0], hint)
        request = model_ov.create_infer_request()
        probabilities = np.concatenate([np.array(request.infer({0: x[None]})[0]) for x in batch])
        out[name] = {
            "inference_precision": model_ov.get_property("INFERENCE_PRECISION_HINT").get_type_name(),
            "max_abs_prob_diff_vs_torch": float(np.abs(probabilities - reference).max()),
            "top1_agreement_vs_torch": float((probabilities.argmax(1) == reference.argmax(1)).mean()),
        }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m studies.openvino_bench", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    a = sub.add_parser("ir", help="IR against the ONNX file: load time and latency")
    a.add_argument("--model", type=Path, required=True, help="an exported .onnx file")
    a.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    a.add_argument("--rounds", type=int, default=10)
    a.add_argument("--runs", type=int, default=10, help="timed runs per variant and round")
    a.add_argument("--loads", type=int, default=6, help="fresh-process loads per variant")
    p = sub.add_parser("precision", help="OpenVINO f32 and its default precision against PyTorch")
    p.add_argument("--model", type=Path, required=True, help="an fp32 .onnx file exported from --checkpoint")
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--data", type=Path, required=True, help="a prepared dataset")
    p.add_argument("--split", default="val")
    p.add_argument("--limit", type=int, default=64)
    p.add_argument("--threads", type=int, nargs="+", default=[2])
    args = parser.parse_args(argv)
    print(json.dumps(ir(args) if args.command == "ir" else precision(args), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
