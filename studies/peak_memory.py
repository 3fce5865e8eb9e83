"""Feeds docs/benchmarking.md (peak memory at two dataset sizes).

Peak memory of every command that walks a dataset, at dataset sizes 10x apart (issue 32, class 8).

For each size N, a release of N images (whole classes of the raw release, picked in class order) is
made with symlinks, prepared with a stratified half-train / half-val split, and each command runs on
it in a child process whose peak RSS comes from the kernel (``wait4``: the largest process of the
child's tree): ``prepare``, ``evaluate``, ``bench``, ``classify DIR``, and export's two image sets
(int8 calibration and the verification gate's images). Flat = the command holds what it needs for
one image (or one batch), not the split.

    python -m studies.peak_memory --source /work/shared/data/oxford102-trainval \\
        --checkpoint runs/lite0/best.pt --models models/oxford102-lite0 --work /tmp/peak --sizes 100,1000

``--code DIR`` runs the commands from another checkout (e.g. the commit before a fix) for a before/after.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from prepare.oxford102 import LABELS_MAT, SETID_MAT, image_name

REPO = Path(__file__).resolve().parents[1]
# export's image sets, as export_all reads them, for the spec of an exported file (no torch needed)
IMAGE_SET = """
import sys
from pathlib import Path
from edge_runtime.backends import load
from export.calibration import calibration_set, verification_set
kind, model, data, n = sys.argv[1], sys.argv[2], Path(sys.argv[3]), int(sys.argv[4])
spec = load(model).info.spec.replace(layout="NCHW")
if kind == "calibration":
    batch, _ = calibration_set(data, spec, n=n, minimum=1, seed=0)
else:
    batch, _, _ = verification_set(data, spec, split="val", limit=None, scratch=data)
print(len(batch))
"""


def subset_release(source: Path, out: Path, n: int) -> Path:
    """A release folder of the first ``n`` images (in class order, whole classes first) of ``source``."""
    from prepare.oxford102 import load_labels

    labels = load_labels(source / LABELS_MAT)
    present = [i for i in range(1, labels.size + 1) if (source / "jpg" / image_name(i)).is_file()]
    ids = sorted(present, key=lambda i: (labels[i - 1], i))[:n]
    if len(ids) < n:
        raise SystemExit(f"{source} has only {len(ids)} images, fewer than {n}")
    (out / "jpg").mkdir(parents=True, exist_ok=True)
    for name in (LABELS_MAT, SETID_MAT):
        if not (out / name).exists():
            (out / name).symlink_to((source / name).resolve())
    for i in ids:
        if not (out / "jpg" / image_name(i)).exists():
            (out / "jpg" / image_name(i)).symlink_to((source / "jpg" / image_name(i)).resolve())
    return out


def peak_rss(cmd: list[str], code: Path, log: Path) -> dict:
    """Run ``cmd`` from ``code``; its tree's peak RSS (MB, from wait4) and exit code."""
    env = {**os.environ, "PYTHONPATH": str(code)}
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=code, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
    # ru_maxrss is in KiB on Linux (the machines this runs on)
    return {"peak_rss_mb": round(usage.ru_maxrss / 1024, 1), "exit_code": os.waitstatus_to_exitcode(status)}


def commands(args, n: int, prepared: Path, work: Path) -> dict[str, list[str]]:
    py = [sys.executable]
    tflite = str(args.models / "model_int8.tflite")
    return {
        "prepare": [*py, "-m", "floraedge", "prepare", "--source", str(work / "release"), "--out", str(prepared),
                    "--split", "stratified", "--val-frac", "0.5", "--test-frac", "0", "--cache-size", "293",
                    "--workers", "1", "--overwrite"],
        "evaluate": [*py, "-m", "floraedge", "evaluate", "--checkpoint", str(args.checkpoint), "--data", str(prepared),
                     "--split", "val"],  # batches of 64: compare sizes whose val split fills them (130, 1300)
        "bench": [*py, "-m", "floraedge", "bench", "--models", str(args.models), "--data", str(prepared),
                  "--split", "val", "--out", str(work / "bench"), "--threads", "1", "--loop-frames", "10"],
        "calibration (--calib-n 50)": [*py, "-c", IMAGE_SET, "calibration", tflite, str(prepared), "50"],
        "calibration (--calib-n 300, default)": [*py, "-c", IMAGE_SET, "calibration", tflite, str(prepared), "300"],
        "export verification images (val)": [*py, "-c", IMAGE_SET, "verification", tflite, str(prepared), "0"],
        "classify DIR (val)": [*py, "-m", "floraedge", "classify", "--model", tflite, str(prepared / "val")],
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", type=Path, required=True, help="raw Oxford-102 release folder (jpg/ + .mat files)")
    p.add_argument("--checkpoint", type=Path, required=True, help="for evaluate")
    p.add_argument("--models", type=Path, required=True, help="export folder with model_int8.tflite (bench, classify)")
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--sizes", default="100,1000")
    p.add_argument("--code", type=Path, default=REPO, help="the checkout whose commands run")
    p.add_argument("--only", default=None, help="comma-separated command names (default: all)")
    args = p.parse_args(argv)
    results = {}
    for n in (int(s) for s in args.sizes.split(",")):
        work = args.work / f"n{n}"
        subset_release(args.source, work / "release", n)
        prepared = work / "prepared"
        for name, cmd in commands(args, n, prepared, work).items():
            wanted = not args.only or name.split(" ")[0] in args.only.split(",")
            if not wanted and not (name == "prepare" and not prepared.exists()):  # later commands need it
                continue
            log = work / f"{name.split(' ')[0]}-{len(results)}.log"
            results[f"{name} @ {n}"] = peak_rss(cmd, args.code.resolve(), log) | {"log": str(log)}
            print(f"{name:40s} N={n:5d}: {results[f'{name} @ {n}']}", flush=True)
    summary = json.loads((args.work / f"n{n}" / "prepared" / "summary.json").read_text())["counts"]
    print(json.dumps({"code": str(args.code), "last_counts": summary, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
