"""Build a prepared dataset directory from a raw Oxford-102 release.

Everything is written into a temporary sibling directory that is renamed to ``--out`` only
when complete, so a crash or a refused input never leaves a dataset that looks finished.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import time
from collections import defaultdict
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path

import cv2
import numpy as np
import simplejpeg
from PIL import Image

from edge_runtime import __version__, console
from edge_runtime.admission import DEFAULT_LIMITS, admit
from edge_runtime.bounded import read_bounded
from edge_runtime.errors import FloraEdgeError
from edge_runtime.outdir import OutputError, check_output, staged_output
from edge_runtime.preprocess import resize_shorter_side
from edge_runtime.spec import IMAGENET_SPEC
from prepare.categories import NUM_CLASSES, class_names, folder_name
from prepare.config import PrepareConfig
from prepare.layouts import check_dataset_name, detect_layout, read_listing
from prepare.manifest import write_manifest
from prepare.oxford102 import (
    ARCHIVE,
    LABELS_MAT,
    SETID_MAT,
    SPLITS,
    ReleaseError,
    extract_images,
    image_name,
    load_labels,
    load_official_splits,
)
from prepare.splits import stratified_split
from prepare.synthetic import is_synthetic

CACHE_JPEG_QUALITY = 95
# EXIF orientation -> the transpose that shows the photo upright (Pillow's ImageOps.exif_transpose table)
EXIF_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


OutputExistsError = OutputError  # the output exists and may not be replaced (the old name)
DATASET = "prepare"  # the marker kind of a prepared dataset: only such a folder is replaced by --overwrite


@dataclass(frozen=True)
class ImageResult:
    image_id: int
    sha256: str = ""
    width: int = 0
    height: int = 0
    error: str = ""


def _place_file(src: Path, dst: Path) -> None:
    """Hard-link ``src`` to ``dst`` where the filesystem allows, else copy it."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def decode_strict(data: bytes) -> np.ndarray:
    """The upright RGB pixels of a release JPEG, refusing what libjpeg only warns about.

    Its size is admitted from the header first. A strict decode turns libjpeg's "corrupt data"
    warnings (garbage bytes in the middle of a file, a truncated scan) into errors: Pillow and
    OpenCV decode such files into corrupt pixels without a word."""
    admit(data)
    rgb = simplejpeg.decode_jpeg(data, colorspace="RGB", strict=True)
    with Image.open(io.BytesIO(data)) as im:
        method = EXIF_TRANSPOSE.get(im.getexif().get(0x0112))  # the Orientation tag, read from the header
    return rgb if method is None else np.asarray(Image.fromarray(rgb).transpose(method))


def process_image(task: tuple[int, Path, Path, Path, int]) -> ImageResult:
    """Check one JPEG fully decodes, hash it, place the original and write its resized cache copy."""
    image_id, src, dst, cache_dst, cache_size = task
    try:
        data = read_bounded(src, DEFAULT_LIMITS.max_bytes, "image")  # a huge or sparse file is refused unread
        rgb = decode_strict(data)
    except Exception as exc:  # decoders raise many types for bad files; each is reported by name
        return ImageResult(image_id, error=f"{type(exc).__name__}: {exc}")
    if src != dst:
        _place_file(src, dst)
    small = resize_shorter_side(np.ascontiguousarray(rgb[:, :, ::-1]), cache_size)
    ok, encoded = cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, CACHE_JPEG_QUALITY])
    if not ok:
        return ImageResult(image_id, error="could not encode the cached copy")
    cache_dst.write_bytes(encoded.tobytes())
    return ImageResult(image_id, hashlib.sha256(data).hexdigest(), rgb.shape[1], rgb.shape[0])


def _init_worker() -> None:
    cv2.setNumThreads(1)  # one process per core already uses every core


def locate_images(source: Path, work: Path) -> Path:
    """The folder of release JPEGs: ``source/jpg`` if extracted, else ``102flowers.tgz`` extracted into ``work``."""
    if (source / "jpg").is_dir():
        return source / "jpg"
    if (source / ARCHIVE).is_file():
        return extract_images(source / ARCHIVE, work)
    raise ReleaseError(
        f"{source} holds neither {ARCHIVE} nor an extracted jpg/ folder; point --source at the release "
        "folder, or fetch it with --download"
    )


def resolve_splits(config: PrepareConfig, labels: np.ndarray, present: set[int]) -> dict[str, np.ndarray]:
    if config.split == "official":
        return load_official_splits(config.source / SETID_MAT, labels.size)
    ids = np.array(sorted(present), dtype=np.int64)
    return stratified_split(labels, ids, val_frac=config.val_frac, test_frac=config.test_frac, seed=config.seed)


def run_workers(tasks: list, workers: int, worker=process_image) -> list[ImageResult]:
    progress = dict(total=len(tasks), desc="checking + caching images", unit="img")
    if workers <= 1:
        return [worker(t) for t in console.progress(tasks, **progress)]
    # spawn, not fork: a caller may already run threads (torch, OpenCV) that a forked child would deadlock on
    with get_context("spawn").Pool(workers, initializer=_init_worker) as pool:
        return list(console.progress(pool.imap_unordered(worker, tasks, chunksize=8), **progress))


def link_image_folder(out: Path, rows: list[dict], folders: list[str] | None = None) -> str:
    """``<split>/<class folder>/<image>`` pointing at the cached copy; ``folders`` names each class's folder
    (default: the Oxford-102 ``NNN_name``). Returns how ("symlink" or "copy")."""
    folders = folders or [folder_name(k) for k in range(NUM_CLASSES)]
    how = "symlink"
    for row in rows:
        folder = out / row["split"] / folders[row["class_index"]]
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / Path(row["path"]).name
        try:
            target.symlink_to(os.path.relpath(out / row["path"], folder))
        except OSError:  # e.g. Windows without symlink rights
            _place_file(out / row["path"], target)
            how = "copy"
    return how


def find_duplicates(rows: list[dict]) -> list[list[str]]:
    by_hash = defaultdict(list)
    for row in rows:
        by_hash[row["sha256"]].append(row["path"])
    return sorted(paths for paths in by_hash.values() if len(paths) > 1)


def plan_tasks(images_dir: Path, work: Path, splits: dict[str, np.ndarray], cache_size: int):
    """Per split, the ids whose file is missing; and one worker task per present image."""
    missing, tasks = {}, []
    for split, ids in splits.items():
        present = [i for i in ids.tolist() if (images_dir / image_name(i)).is_file()]
        missing[split] = sorted(set(ids.tolist()) - set(present))
        tasks += [
            (i, images_dir / image_name(i), work / "jpg" / image_name(i), work / "cache" / image_name(i), cache_size)
            for i in present
        ]
    return missing, sorted(tasks)


def manifest_rows(results: list[ImageResult], labels: np.ndarray, split_of: dict[int, str]) -> list[dict]:
    names = class_names()
    rows = []
    for r in sorted(results, key=lambda r: r.image_id):
        if r.error:
            continue
        cls = int(labels[r.image_id - 1])
        name = image_name(r.image_id)
        rows.append(
            dict(
                path=f"jpg/{name}",
                cache_path=f"cache/{name}",
                image_id=r.image_id,
                class_index=cls,
                class_name=names[cls],
                split=split_of[r.image_id],
                sha256=r.sha256,
                width=r.width,
                height=r.height,
            )
        )
    return rows


def build_summary(config: PrepareConfig, rows, missing, corrupt, duplicates, unassigned, elapsed) -> dict:
    per_class = {s: [0] * NUM_CLASSES for s in SPLITS}
    for row in rows:
        per_class[row["split"]][row["class_index"]] += 1
    synthetic = is_synthetic(config.source)
    return {
        "dataset": "SYNTHETIC Oxford-102-format release (procedurally drawn, not real flowers)"
        if synthetic
        else "Oxford 102 Flowers (Nilsback & Zisserman, 2008)",
        "synthetic": synthetic,
        "source": str(config.source.resolve()),
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items()},
        "num_classes": NUM_CLASSES,
        "counts": {s: sum(per_class[s]) for s in SPLITS},
        "classes_present": {s: sum(1 for n in per_class[s] if n) for s in SPLITS},
        "per_class": per_class,
        "missing": {s: len(ids) for s, ids in missing.items()},
        "partial_release": any(missing.values()),
        "corrupt": corrupt,
        "duplicates": duplicates,
        "unassigned_images": unassigned,
        "elapsed_s": round(elapsed, 2),
        "images_per_s": round((len(rows) + len(corrupt)) / max(elapsed, 1e-9), 1),
        "floraedge_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def write_outputs(
    work: Path, config: PrepareConfig, rows: list[dict], summary: dict, missing: dict, names=None
) -> None:
    write_manifest(work / "manifest.csv", rows)
    (work / "labels.txt").write_text("\n".join(names or class_names()) + "\n", encoding="utf-8")
    spec = IMAGENET_SPEC.replace(
        resize_size=config.cache_size, crop_size=min(IMAGENET_SPEC.crop_size, config.cache_size)
    )
    (work / "spec.json").write_text(json.dumps(spec.to_dict(), indent=2) + "\n", encoding="utf-8")
    (work / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    (work / "missing.json").write_text(json.dumps(missing) + "\n", encoding="utf-8")


def prepare_dataset(config: PrepareConfig) -> dict:
    """Label, split, validate and cache a raw release into ``config.out``; returns the summary."""
    if not 32 <= config.cache_size <= 4096:
        raise FloraEdgeError(f"--cache-size {config.cache_size} must be between 32 and 4096 pixels")
    if config.name is not None:
        check_dataset_name(config.name)
    csv_folder = config.source.parent if config.source.is_file() else None  # a CSV's images lie beside it
    check_output(config.out, DATASET, overwrite=config.overwrite, inputs=[config.source, csv_folder])
    layout = detect_layout(config.source, config.layout)
    if layout == "oxford102" and not config.source.is_dir():
        raise ReleaseError(f"--source {config.source} is not a directory; point it at the release folder")
    listing = None if layout == "oxford102" else read_listing(config.source, layout)  # before anything is written
    start = time.perf_counter()
    inputs = [config.source, csv_folder]
    with staged_output(config.out, DATASET, overwrite=config.overwrite, inputs=inputs) as work:
        if listing is not None:  # class folders, a split tree or a CSV: prepare/labelled.py
            from prepare.labelled import prepare_labelled  # it imports this module

            summary, rows, names = prepare_labelled(config, listing, work, start)
            write_outputs(work, config, rows, summary, {"files": listing.missing_files}, names)
            return summary
        labels = load_labels(config.source / LABELS_MAT)
        images_dir = locate_images(config.source, work)
        present = {int(p.stem.split("_")[-1]) for p in images_dir.glob("image_*.jpg") if p.stem[6:].isdigit()}
        present = {i for i in present if 1 <= i <= labels.size}
        splits = resolve_splits(config, labels, present)
        (work / "jpg").mkdir(exist_ok=True)
        (work / "cache").mkdir()
        missing, tasks = plan_tasks(images_dir, work, splits, config.cache_size)
        results = run_workers(tasks, config.workers)
        split_of = {i: s for s, ids in splits.items() for i in ids.tolist()}
        corrupt = [{"file": image_name(r.image_id), "error": r.error} for r in results if r.error]
        for item in corrupt:
            (work / "jpg" / item["file"]).unlink(missing_ok=True)
        rows = manifest_rows(results, labels, split_of)
        summary = build_summary(
            config,
            rows,
            missing,
            sorted(corrupt, key=lambda c: c["file"]),
            find_duplicates(rows),
            len(present - set(split_of)),
            time.perf_counter() - start,
        )
        summary |= unassigned_ids(labels.size, split_of)
        summary["image_folder"] = link_image_folder(work, rows)
        summary["layout"] = "oxford102"
        summary["dataset"] = config.name or summary["dataset"]
        write_outputs(work, config, rows, summary, missing)
    return summary


def unassigned_ids(num_labelled: int, split_of: dict[int, str], shown: int = 20) -> dict:
    """How many labelled image ids no split names, and the first ``shown`` of them (the official
    setid.mat names every one of the 8,189; a damaged or foreign split file may not)."""
    ids = sorted(set(range(1, num_labelled + 1)) - set(split_of))
    return {"labelled_in_no_split": len(ids), "labelled_in_no_split_first": ids[:shown]}
