"""Feeds docs/runtimes-ncnn.md: ncnn's own pixel functions against ``preprocess()`` (input difference, top-1).

The ncnn backend feeds the array ``preprocess()`` makes. An app written against ncnn alone would use
``Mat.from_pixels_resize`` + ``substract_mean_normalize``; this measures two such routes on real photos,
through an exported ncnn file: the whole frame resized to the crop size (ncnn's examples), and the spec's
geometry (shorter side to ``resize_size`` with ncnn's bilinear resize, then the centre crop).

    python -m studies.ncnn_pixels --model exports/model_fp32.ncnn.param --data data/flowers --split val --limit 200
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from edge_runtime.backends import load
from edge_runtime.preprocess import preprocess, read_image_bgr
from prepare.manifest import read_manifest


def ncnn_whole_frame(ncnn, bgr: np.ndarray, spec, mean, norm) -> np.ndarray:
    h, w = bgr.shape[:2]
    pixels = ncnn.Mat.PixelType.PIXEL_BGR2RGB if spec.color_order == "RGB" else ncnn.Mat.PixelType.PIXEL_BGR
    mat = ncnn.Mat.from_pixels_resize(bgr, pixels, w, h, spec.crop_size, spec.crop_size)
    mat.substract_mean_normalize(mean, norm)
    return np.array(mat)


def ncnn_spec_geometry(ncnn, bgr: np.ndarray, spec, mean, norm) -> np.ndarray:
    h, w = bgr.shape[:2]
    scale = spec.resize_size / min(h, w)
    rw, rh = round(w * scale), round(h * scale)
    pixels = ncnn.Mat.PixelType.PIXEL_BGR2RGB if spec.color_order == "RGB" else ncnn.Mat.PixelType.PIXEL_BGR
    mat = ncnn.Mat.from_pixels_resize(bgr, pixels, w, h, rw, rh)
    mat.substract_mean_normalize(mean, norm)
    top, left, s = (rh - spec.crop_size) // 2, (rw - spec.crop_size) // 2, spec.crop_size
    return np.ascontiguousarray(np.array(mat)[:, top : top + s, left : left + s])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="an exported .ncnn.param file")
    p.add_argument("--data", required=True, help="a prepared dataset")
    p.add_argument("--split", default="val")
    p.add_argument("--limit", type=int, default=200)
    args = p.parse_args(argv)
    backend = load(args.model, "ncnn", threads=1)
    spec, ncnn = backend.info.spec, backend.ncnn
    mean = [m * 255 for m in spec.mean]
    norm = [1 / (s * 255) for s in spec.std]
    rows = [r for r in read_manifest(args.data) if r["split"] == args.split][: args.limit]
    routes = {"whole_frame": ncnn_whole_frame, "spec_geometry": ncnn_spec_geometry}
    diffs = {name: [] for name in routes}
    top1 = {name: [] for name in ["preprocess", *routes]}
    targets = []
    for row in rows:
        bgr = read_image_bgr(f"{args.data}/{row['path']}")
        ours = preprocess(bgr, spec)
        top1["preprocess"].append(int(backend.predict(ours).argmax()))
        for name, route in routes.items():
            x = route(ncnn, bgr, spec, mean, norm)[None]
            diffs[name].append((float(np.abs(x - ours).max()), float(np.abs(x - ours).mean())))
            top1[name].append(int(backend.predict(x).argmax()))
        targets.append(int(row["class_index"]))
    report = {"images": len(rows), "model": args.model}
    for name in ["preprocess", *routes]:
        report[name] = {"accuracy": round(float(np.mean(np.array(top1[name]) == targets)), 4)}
        if name in routes:
            largest, mean_abs = np.array(diffs[name]).T
            same = float(np.mean(np.array(top1[name]) == top1["preprocess"]))
            report[name] |= {
                "input_max_abs_diff_median": round(float(np.median(largest)), 3),
                "input_mean_abs_diff": round(float(mean_abs.mean()), 4),
                "top1_same_as_preprocess": round(same, 4),
            }
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
