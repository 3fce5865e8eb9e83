"""Feeds docs/export.md ("ONNX Runtime 1.21 to 1.24 on AMX CPUs").

Which onnxruntime versions compute an int8 ONNX file as the file means, on this CPU?

Each version is installed apart (``pip install --no-deps --target``, kept under ``--cache``) and runs the
file's fused integer kernels in a child process, batch 1, twice over the images (a kernel that varies from
run to run shows there), as any program would: without FloraEdge's work-around. The reference is the
file's exact QDQ emulation (graph optimizations off) in this environment's onnxruntime. ``--deny-amx``
runs the children with an ``LD_PRELOAD`` shim, compiled with ``cc``, that refuses the AMX tile-data
permission (``arch_prctl(ARCH_REQ_XCOMP_PERM)``), so that onnxruntime's MLAS falls back to its AVX-512
kernels: the way to tell an AMX kernel's fault on an AMX CPU. Linux x86_64 with a C compiler; pip needs
the package index.

    python -m studies.onnxruntime_versions --data data/flowers --limit 204 --versions 1.20.1 1.23.2 1.32.0 \
        --models runs/r37/x86/model_int8.onnx runs/r37/all7/model_int8.onnx [--deny-amx]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from edge_runtime.backends import linux_cpu_flags, load
from export.calibration import verification_set

DENY_AMX = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdarg.h>
#include <sys/syscall.h>
long syscall(long number, ...) {
    va_list ap; va_start(ap, number);
    long a[6]; for (int i = 0; i < 6; i++) a[i] = va_arg(ap, long);
    va_end(ap);
    if (number == SYS_arch_prctl && a[0] == 0x1023) { errno = EPERM; return -1; }  /* ARCH_REQ_XCOMP_PERM */
    long (*real)(long, ...) = (long (*)(long, ...))dlsym(RTLD_NEXT, "syscall");
    return real(number, a[0], a[1], a[2], a[3], a[4], a[5]);
}
"""

# the child: only numpy and the version under test are imported; outputs of two passes, batch 1, 1 thread
CHILD = """
import sys, numpy as np, onnxruntime as ort
o = ort.SessionOptions(); o.intra_op_num_threads = 1
s = ort.InferenceSession(sys.argv[1], o, providers=["CPUExecutionProvider"])
b = np.load(sys.argv[2]); n = s.get_inputs()[0].name
runs = [np.concatenate([s.run(None, {n: b[i : i + 1]})[0] for i in range(len(b))]) for _ in range(2)]
np.save(sys.argv[3], np.stack(runs))
"""


def installed(version: str, cache: Path) -> Path:
    target = cache / f"onnxruntime-{version}"
    if not (target / "onnxruntime").is_dir():
        pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target)]
        subprocess.run([*pip, f"onnxruntime=={version}"], check=True)
    return target


def amx_denial_shim(cache: Path) -> Path:
    source, library = cache / "deny_amx.c", cache / "deny_amx.so"
    if not library.exists():
        source.write_text(DENY_AMX)
        subprocess.run(["cc", "-shared", "-fPIC", "-O2", "-o", str(library), str(source), "-ldl"], check=True)
    return library


def kernels(version_dir: Path, model: Path, batch_file: Path, preload: Path | None) -> np.ndarray:
    env = dict(os.environ, PYTHONPATH=str(version_dir)) | ({"LD_PRELOAD": str(preload)} if preload else {})
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "outputs.npy"
        subprocess.run([sys.executable, "-c", CHILD, str(model), str(batch_file), str(out)], env=env, check=True)
        return np.load(out)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    parser.add_argument("--models", nargs="+", type=Path, required=True, help="int8 ONNX files")
    parser.add_argument("--data", type=Path, required=True, help="prepared dataset (floraedge prepare)")
    parser.add_argument("--split", default="val")
    parser.add_argument("--limit", type=int, default=204, help="class-balanced subset of the split")
    parser.add_argument("--versions", nargs="+", required=True, help="onnxruntime versions, e.g. 1.20.1 1.23.2")
    parser.add_argument("--deny-amx", action="store_true", help="refuse the children AMX (LD_PRELOAD shim)")
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "floraedge" / "onnxruntime-versions")
    args = parser.parse_args(argv)
    args.cache.mkdir(parents=True, exist_ok=True)
    preload = amx_denial_shim(args.cache) if args.deny_amx else None
    spec = load(args.models[0], "onnxruntime").info.spec
    batch, targets, _ = verification_set(args.data, spec, split=args.split, limit=args.limit)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        batch_file = Path(tmp) / "batch.npy"
        np.save(batch_file, batch)
        exact = {m: load(m, "onnxruntime", qdq_emulation=True).predict(batch) for m in args.models}
        for version in args.versions:
            version_dir = installed(version, args.cache)
            for model in args.models:
                first, second = kernels(version_dir, model, batch_file, preload)
                rows.append(
                    {
                        "onnxruntime": version,
                        "model": str(model),
                        "amx": "denied" if preload else ("amx_int8" in linux_cpu_flags()),
                        "images": len(targets),
                        "kernels_top1": float((first.argmax(1) == targets).mean()),
                        "emulation_top1": float((exact[model].argmax(1) == targets).mean()),
                        "agreement_with_emulation": float((first.argmax(1) == exact[model].argmax(1)).mean()),
                        "max_abs_diff": float(np.abs(first - exact[model]).max()),
                        "run_to_run_max_abs_diff": float(np.abs(first - second).max()),
                    }
                )
                print(json.dumps(rows[-1]), flush=True)
    return rows


if __name__ == "__main__":
    main()
