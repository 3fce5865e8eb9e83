"""Feeds docs/serving.md (the loop and the server at the model's speed: the runtime's pixel path).

The runtime's pixel path (crop-window resize, reduced-size JPEG decoding) against the plain one
(full decode, resize the whole image, then centre-crop) on a prepared dataset's images, with a model:
top-1 of both, their agreement, and how far the model inputs differ.

    python -m studies.decode_parity --model exports/lite0/model_fp32.onnx --data data/flowers --split val
    python -m studies.decode_parity ... --upscale 2   # the images re-encoded 2x larger: reduced decoding at work
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import cv2
import numpy as np

from edge_runtime.admission import header_size
from edge_runtime.backends import load
from edge_runtime.preprocess import center_crop, decode_bgr, decode_factor, preprocess, resize_shorter_side
from edge_runtime.spec import PreprocessSpec


def plain_preprocess(image: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """The reference: resize the whole image, then crop (what torchvision's eval transform does)."""
    square = center_crop(resize_shorter_side(image, spec.resize_size, spec.interpolation), spec.crop_size)
    return preprocess(square, spec.replace(resize_size=spec.crop_size))  # only colour, normalization, layout


def jpeg_bytes(path: Path, upscale: float) -> bytes:
    data = path.read_bytes()
    if upscale == 1:
        return data
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    big = cv2.resize(image, None, fx=upscale, fy=upscale, interpolation=cv2.INTER_CUBIC)
    return cv2.imencode(".jpg", big, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()


def compare(backend, rows: list[dict], data: Path, upscale: float) -> dict:
    spec = backend.info.spec
    targets, plain, runtime, diffs, factors = [], [], [], [], []
    for r in rows:
        raw = jpeg_bytes(data / r["path"], upscale)
        a = plain_preprocess(decode_bgr(raw), spec)
        b = preprocess(decode_bgr(raw, spec), spec)
        factors.append(decode_factor(header_size(raw), np.frombuffer(raw, np.uint8), spec))
        diffs.append((float(np.abs(a - b).max()), float(np.abs(a - b).mean())))
        plain.append(int(backend.predict(a).argmax()))
        runtime.append(int(backend.predict(b).argmax()))
        targets.append(int(r["class_index"]))
    t, p, q = np.array(targets), np.array(plain), np.array(runtime)
    return {
        "n": len(rows),
        "upscale": upscale,
        "decode_factors": {str(f): factors.count(f) for f in sorted(set(factors))},
        "top1_plain": round(float((p == t).mean()), 4),
        "top1_runtime": round(float((q == t).mean()), 4),
        "agreement": round(float((p == q).mean()), 4),
        "input_max_abs_diff": round(max(d[0] for d in diffs), 4),
        "input_mean_abs_diff": round(float(np.mean([d[1] for d in diffs])), 5),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, type=Path)
    p.add_argument("--data", required=True, type=Path, help="a prepared dataset (manifest.csv)")
    p.add_argument("--split", default="val")
    p.add_argument("--upscale", type=float, default=1.0, help="re-encode each image this much larger first")
    p.add_argument("--every", type=int, default=1, help="use every N-th image (default: all)")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    with (args.data / "manifest.csv").open() as f:
        rows = [r for r in csv.DictReader(f) if r["split"] == args.split][:: args.every]
    result = {"model": str(args.model), "split": args.split} | compare(
        load(args.model, threads=args.threads), rows, args.data, args.upscale
    )
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
