"""Prepare a labelled image source (class folders, a split tree or a CSV) into the same outputs as
the Oxford-102 path: ``manifest.csv``, ``labels.txt``, ``spec.json``, ``summary.json``, the resized
``cache/``, the originals and an ImageFolder tree.

Class ``i`` is the ``i``-th class name in code-point order (see ``prepare.layouts``); classes that end
with no readable image are dropped before numbering. Images are numbered 1..N in the order of their
source paths, so the same source always gives the same ids (and, with the same seed, the same split).
"""

from __future__ import annotations

import hashlib
import io
import re
import sys
import time
from collections import defaultdict
from dataclasses import asdict
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from edge_runtime import __version__
from edge_runtime.admission import DEFAULT_LIMITS, admit
from edge_runtime.preprocess import decode_bgr, read_file_bytes, resize_shorter_side
from prepare.build import CACHE_JPEG_QUALITY, ImageResult, _place_file, decode_strict, link_image_folder, run_workers
from prepare.config import PrepareConfig
from prepare.layouts import Item, LayoutError, Listing, check_classes, check_dataset_name
from prepare.oxford102 import SPLITS
from prepare.splits import stratified_split

FEW_IMAGES = 5  # a class with fewer images than this in a split is warned about
LISTED = 100  # the most paths summary.json lists per problem (counts are always complete)


def decode_checked(data: bytes) -> np.ndarray:
    """The upright BGR pixels of an image file, refusing truncated or damaged files.

    JPEG goes through the release's strict decode. Other formats are fully decoded by Pillow first
    (which raises on truncated or damaged data where OpenCV may return partial pixels), then by the
    runtime's own decoder, so that the cached pixels are those ``classify`` would see."""
    if data[:2] == b"\xff\xd8":
        return np.ascontiguousarray(decode_strict(data)[:, :, ::-1])
    admit(data)
    with Image.open(io.BytesIO(data)) as im:
        im.load()
    return decode_bgr(data)


def check_image(task: tuple[int, str, Path, Path, int]) -> ImageResult:
    """One image: read (bounded), fully decoded, hashed, placed, and its resized copy cached."""
    image_id, src, dst, cache_dst, cache_size = task
    try:
        data = read_file_bytes(src, DEFAULT_LIMITS).tobytes()
        bgr = decode_checked(data)
    except Exception as exc:  # decoders raise many types for bad files; each is reported by name
        return ImageResult(image_id, error=f"{type(exc).__name__}: {exc}")
    _place_file(src, dst)
    small = resize_shorter_side(bgr, cache_size)
    ok, encoded = cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, CACHE_JPEG_QUALITY])
    if not ok:
        return ImageResult(image_id, error="could not encode the cached copy")
    cache_dst.write_bytes(encoded.tobytes())
    return ImageResult(image_id, hashlib.sha256(data).hexdigest(), bgr.shape[1], bgr.shape[0])


def image_file(image_id: int, item: Item) -> str:
    """The name of an original in ``images/``: its id and its own suffix (the source name stays in the manifest)."""
    return f"{image_id:06d}{Path(item.source).suffix.lower()}"


def folder_name(index: int, name: str, width: int) -> str:
    """The ImageFolder directory of a class: its zero-padded index (sorting keeps class order), then
    the name with anything but letters, digits, ``-`` and ``.`` turned into ``_`` (filesystem-safe)."""
    safe = re.sub(r"[^\w.\-]+", "_", name).lstrip(".")[:80]
    return f"{index:0{width}d}_{safe}"


def assign_splits(config: PrepareConfig, items: list[Item], names: list[str]) -> tuple[dict[int, str], str]:
    """The split of each image id, and how it was made: as the source gives it, or class-stratified."""
    if items and items[0].split is not None and config.split == "official":
        return {i: item.split for i, item in enumerate(items, start=1)}, "given by the source"
    index = {n: k for k, n in enumerate(names)}
    labels = np.array([index[item.label] for item in items], dtype=np.int64)
    ids = np.arange(1, len(items) + 1, dtype=np.int64)
    splits = stratified_split(labels, ids, val_frac=config.val_frac, test_frac=config.test_frac, seed=config.seed)
    how = f"class-stratified (val {config.val_frac:g}, test {config.test_frac:g}, seed {config.seed})"
    return {int(i): split for split, chosen in splits.items() for i in chosen}, how


def plan(listing: Listing, work: Path, cache_size: int) -> tuple[list[Item], list[tuple]]:
    """The items in id order (1..N by source path) and one worker task per item."""
    items = sorted(listing.items, key=lambda item: item.source)
    tasks = [
        (i, item.file, work / "images" / image_file(i, item), work / "cache" / f"{i:06d}.jpg", cache_size)
        for i, item in enumerate(items, start=1)
    ]
    return items, tasks


def manifest_rows(
    items: list[Item], results: list[ImageResult], split_of: dict[int, str]
) -> tuple[list[dict], list[str]]:
    """Manifest rows of the readable images, and the class names left (classes with no readable image dropped)."""
    good = sorted((r for r in results if not r.error), key=lambda r: r.image_id)
    names = sorted({items[r.image_id - 1].label for r in good})
    index = {n: k for k, n in enumerate(names)}
    rows = []
    for r in good:
        item = items[r.image_id - 1]
        rows.append(
            dict(
                path=f"images/{image_file(r.image_id, item)}",
                cache_path=f"cache/{r.image_id:06d}.jpg",
                image_id=r.image_id,
                class_index=index[item.label],
                class_name=item.label,
                split=split_of[r.image_id],
                sha256=r.sha256,
                width=r.width,
                height=r.height,
                source=item.source,
            )
        )
    return rows, names


def leakage(rows: list[dict]) -> list[dict]:
    """Groups of byte-identical images that sit in more than one split."""
    by_hash = defaultdict(list)
    for row in rows:
        by_hash[row["sha256"]].append(row)
    groups = [g for g in by_hash.values() if len({r["split"] for r in g}) > 1]
    return sorted(
        ({"splits": sorted({r["split"] for r in g}), "sources": [r["source"] for r in g]} for g in groups),
        key=lambda g: g["sources"],
    )


def class_report(rows: list[dict], names: list[str]) -> tuple[dict[str, list[int]], list[str]]:
    """Images per class and split, and a warning line per class with fewer than ``FEW_IMAGES`` in a used split."""
    per_class = {s: [0] * len(names) for s in SPLITS}
    for row in rows:
        per_class[row["split"]][row["class_index"]] += 1
    warnings = []
    for split, counts in per_class.items():
        if not any(counts):
            continue
        absent = [names[k] for k, n in enumerate(counts) if n == 0]
        few = [f"{names[k]} ({n})" for k, n in enumerate(counts) if 0 < n < FEW_IMAGES]
        if absent:
            warnings.append(f"{len(absent)} classes have no {split} image: {', '.join(absent[:5])}")
        if few:
            warnings.append(f"{len(few)} classes have fewer than {FEW_IMAGES} {split} images: {', '.join(few[:5])}")
    return per_class, warnings


def dataset_name(config: PrepareConfig, listing: Listing) -> str:
    """``--name``, else the name of the source folder (for a CSV: of the folder it lies in), else "dataset"."""
    if config.name:
        return config.name
    try:
        return check_dataset_name(listing.root.resolve().name)
    except LayoutError:  # a folder name that cannot title a card (empty, a line break, too long): --name can
        return "dataset"


def labelled_summary(config, listing, rows, names, results, items, split_how, elapsed) -> dict:
    per_class, warnings = class_report(rows, names)
    corrupt = sorted(
        ({"file": items[r.image_id - 1].source, "error": r.error} for r in results if r.error), key=lambda c: c["file"]
    )
    dropped = sorted({items[r.image_id - 1].label for r in results} - set(names))
    by_hash = defaultdict(list)
    for row in rows:
        by_hash[row["sha256"]].append(row["source"])
    duplicates = sorted(paths for paths in by_hash.values() if len(paths) > 1)
    return {
        "dataset": dataset_name(config, listing),
        "synthetic": False,
        "source": str(config.source.resolve()),
        "layout": listing.layout,
        "split_from": split_how,
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items()},
        "num_classes": len(names),
        "class_names": names,
        "counts": {s: sum(per_class[s]) for s in SPLITS},
        "classes_present": {s: sum(1 for n in per_class[s] if n) for s in SPLITS},
        "per_class": per_class,
        "class_warnings": warnings,
        "missing": {s: 0 for s in SPLITS},
        "missing_files": len(listing.missing_files),
        "missing_files_listed": listing.missing_files[:LISTED],
        "partial_release": bool(listing.missing_files),
        "skipped": dict(sorted(listing.skipped.items())),
        "skipped_examples": listing.skipped_examples,
        "empty_classes": listing.empty_classes,
        "dropped_classes": dropped,
        "duplicate_rows": listing.duplicate_rows,
        "corrupt": corrupt,
        "duplicates": duplicates,
        "leakage": leakage(rows),
        "unassigned_images": 0,
        "elapsed_s": round(elapsed, 2),
        "listing_s": round(listing.seconds, 2),  # before elapsed_s started: listing comes before --out is checked
        "entries_listed": listing.entries,
        "images_per_s": round(len(results) / max(elapsed, 1e-9), 1),
        "floraedge_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def class_folders(names: list[str]) -> list[str]:
    """Each class's ImageFolder folder: ``NNN_name``, zero-padded so that sorting keeps the class order."""
    width = max(3, len(str(len(names) - 1)))
    return [folder_name(k, n, width) for k, n in enumerate(names)]


def prepare_labelled(
    config: PrepareConfig, listing: Listing, work: Path, start: float
) -> tuple[dict, list[dict], list[str]]:
    """Check, cache and split the images of ``listing`` into ``work``; the summary, manifest rows and class names."""
    where = f"--source {config.source}"
    check_classes({item.label for item in listing.items}, where)  # before any image is read
    items, tasks = plan(listing, work, config.cache_size)
    split_of, split_how = assign_splits(config, items, sorted({item.label for item in items}))
    (work / "images").mkdir()
    (work / "cache").mkdir()
    print(f"layout: {listing.layout} ({len(items)} image files; split {split_how})", file=sys.stderr, flush=True)
    results = run_workers(tasks, config.workers, worker=check_image)
    for r in results:
        if r.error:
            (work / "images" / image_file(r.image_id, items[r.image_id - 1])).unlink(missing_ok=True)
    rows, names = manifest_rows(items, results, split_of)
    try:
        check_classes(set(names), where)
    except LayoutError as exc:
        raise LayoutError(f"{exc} (after skipping {sum(bool(r.error) for r in results)} unreadable images)") from None
    summary = labelled_summary(config, listing, rows, names, results, items, split_how, time.perf_counter() - start)
    summary["image_folder"] = link_image_folder(work, rows, class_folders(names))
    return summary, rows, names
