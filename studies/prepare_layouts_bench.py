"""Feeds docs/training.md (preparing your own layouts: throughput).

`prepare` throughput on your own layouts: the Oxford-102 images read as the official release and as a
class-folder tree, alternated in one run (same machine, same load), and a source of many tiny files.

python -m studies.prepare_layouts_bench --source ../shared/data/oxford102-trainval --rounds 2
python -m studies.prepare_layouts_bench --tiny-files 100000 --image-share 0.02

The folder tree is made of hard links (copies where the filesystem cannot link) in a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from prepare.build import PrepareConfig, prepare_dataset
from tests.oxford_layouts import oxford_as_folders


def tiny_tree(root: Path, files: int, image_share: float, classes: int = 10, seed: int = 0) -> Path:
    """``files`` entries in ``classes`` class folders: 8x8 JPEGs (``image_share`` of them) and 1-byte .txt files."""
    rng = np.random.default_rng(seed)
    images = round(files * image_share)
    for k in range(files):
        folder = root / f"class {k % classes}"
        folder.mkdir(parents=True, exist_ok=True)
        if k < images:
            ok, data = cv2.imencode(".jpg", rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8))
            (folder / f"{k}.jpg").write_bytes(data.tobytes())
        else:
            (folder / f"{k}.txt").write_bytes(b"x")
    return root


def timed_prepare(source: Path, out: Path, workers: int, cache_size: int) -> dict:
    start = time.perf_counter()
    summary = prepare_dataset(PrepareConfig(source=source, out=out, workers=workers, cache_size=cache_size))
    seconds = time.perf_counter() - start
    shutil.rmtree(out)
    images = sum(summary["counts"].values()) + len(summary["corrupt"])
    return {
        "listing_s": summary.get("listing_s"),
        "layout": summary["layout"],
        "images": images,
        "seconds": round(seconds, 2),
        "images_per_s": round(images / seconds, 1),
    }


def compare_layouts(release: Path, rounds: int, workers: int, cache_size: int) -> dict:
    """Official release and class folders, alternated ``rounds`` times."""
    with tempfile.TemporaryDirectory() as tmp:
        folders = oxford_as_folders(release, Path(tmp) / "folders", split_tree=False)
        runs = {"oxford102": [], "folders": []}
        for _ in range(rounds):
            for name, source in (("oxford102", release), ("folders", folders)):
                runs[name].append(timed_prepare(source, Path(tmp) / "out", workers, cache_size))
    median = {name: statistics.median(r["images_per_s"] for r in rs) for name, rs in runs.items()}
    return {
        "workers": workers,
        "cache_size": cache_size,
        "runs": runs,
        "median_images_per_s": median,
        "folders_vs_oxford102": round(median["folders"] / median["oxford102"], 3),
    }


def many_files(files: int, image_share: float, workers: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        source = tiny_tree(Path(tmp) / "tiny", files, image_share)
        made = time.perf_counter() - start
        result = timed_prepare(source, Path(tmp) / "out", workers, 32)
    return {"entries": files, "image_share": image_share, "make_s": round(made, 1), **result}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", type=Path, help="an Oxford-102 release: compare it with its class-folder tree")
    p.add_argument("--rounds", type=int, default=2, help="alternations of the two layouts")
    p.add_argument("--tiny-files", type=int, default=0, help="also time a source of this many tiny files")
    p.add_argument("--image-share", type=float, default=0.02, help="share of the tiny files that are JPEGs")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--cache-size", type=int, default=256)
    args = p.parse_args(argv)
    result = {"machine": f"{os.cpu_count()} cores", "date": time.strftime("%Y-%m-%d %H:%M %Z")}
    if args.source:
        result["layouts"] = compare_layouts(args.source, args.rounds, args.workers, args.cache_size)
    if args.tiny_files:
        result["tiny_files"] = many_files(args.tiny_files, args.image_share, args.workers)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
