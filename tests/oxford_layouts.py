"""The Oxford-102 release's images laid out as your own photos would be (class folders, a split tree), for the
tests of `floraedge prepare` on those layouts and the study studies/prepare_layouts_bench.py."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from prepare.categories import class_names
from prepare.oxford102 import LABELS_MAT, SETID_MAT, load_labels, load_official_splits


def oxford_as_folders(release: Path, root: Path, *, split_tree: bool) -> Path:
    """The release's images as ``root/<name>/`` folders, or ``root/train/<name>/`` + ``root/valid/<name>/``
    (its official train and val splits), hard-linked where the filesystem allows, else copied."""
    labels = load_labels(release / LABELS_MAT)
    splits = load_official_splits(release / SETID_MAT, labels.size)
    folder_of = {int(i): "train" for i in splits["train"]} | {int(i): "valid" for i in splits["val"]}
    for jpg in sorted((release / "jpg").glob("image_*.jpg")):
        image_id = int(jpg.stem.split("_")[1])
        if image_id not in folder_of:
            continue
        parent = root / folder_of[image_id] if split_tree else root
        target = parent / class_names()[labels[image_id - 1]] / jpg.name
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(jpg, target)
        except OSError:
            shutil.copyfile(jpg, target)
    return root
