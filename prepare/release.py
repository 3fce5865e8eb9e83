"""Reading and checking the official annotation files of an Oxford-102 release.

``imagelabels.mat`` holds one label (1..102) per image id; ``setid.mat`` names the image ids
of the official ``trnid``/``valid``/``tstid`` splits. Image id ``i`` is ``jpg/image_{i:05d}.jpg``.
"""

from __future__ import annotations

import tarfile
from pathlib import Path, PurePosixPath

import numpy as np
import scipy.io

from edge_runtime.errors import FloraEdgeError
from prepare.categories import NUM_CLASSES

ARCHIVE, LABELS_MAT, SETID_MAT = "102flowers.tgz", "imagelabels.mat", "setid.mat"
OFFICIAL_SPLITS = {"train": "trnid", "val": "valid", "test": "tstid"}
SPLITS = tuple(OFFICIAL_SPLITS)


class ReleaseError(FloraEdgeError):
    """The raw release is missing a file or holds something malformed or unsafe."""


def image_name(image_id: int) -> str:
    return f"image_{image_id:05d}.jpg"


def _load_mat(path: Path, key: str) -> np.ndarray:
    if not path.is_file():
        raise ReleaseError(f"{path} is missing: copy it from the release next to the images, or use --download")
    try:
        data = scipy.io.loadmat(path)
    except Exception as exc:  # scipy raises several unrelated types for a bad file
        raise ReleaseError(f"{path} is not a readable MATLAB file ({exc}); re-download it (--download)") from exc
    if key not in data:
        found = sorted(k for k in data if not k.startswith("__"))
        raise ReleaseError(f"{path} has no key {key!r} (found {found}); is this the official {path.name}?")
    return np.asarray(data[key]).ravel()


def load_labels(path: Path) -> np.ndarray:
    """0-based class index per image; ``labels[i - 1]`` belongs to image id ``i``."""
    labels = _load_mat(path, "labels").astype(np.int64)
    if labels.size == 0:
        raise ReleaseError(f"{path}: 'labels' is empty")
    bad = labels[(labels < 1) | (labels > NUM_CLASSES)]
    if bad.size:
        raise ReleaseError(
            f"{path}: {bad.size} labels outside 1..{NUM_CLASSES} (e.g. {bad[:5].tolist()}); "
            "the file is not an Oxford-102 label file or is damaged"
        )
    return labels - 1


def load_official_splits(path: Path, num_images: int) -> dict[str, np.ndarray]:
    """The official image ids per split, checked to be disjoint and to name labelled images."""
    splits = {split: _load_mat(path, key).astype(np.int64) for split, key in OFFICIAL_SPLITS.items()}
    for split, ids in splits.items():
        unknown = ids[(ids < 1) | (ids > num_images)]
        if unknown.size:
            raise ReleaseError(
                f"{path}: split {split!r} names {unknown.size} image ids outside 1..{num_images} "
                f"(e.g. {unknown[:5].tolist()}), but {LABELS_MAT} labels only {num_images} images: "
                "the two files do not belong together"
            )
        if np.unique(ids).size != ids.size:
            raise ReleaseError(f"{path}: split {split!r} lists some image ids twice")
    names = list(splits)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            both = np.intersect1d(splits[a], splits[b])
            if both.size:
                raise ReleaseError(
                    f"{path}: splits {a!r} and {b!r} overlap in {both.size} images "
                    f"(e.g. {both[:5].tolist()}); a split file must assign each image once"
                )
    return splits


def check_archive_members(archive: tarfile.TarFile) -> list[tarfile.TarInfo]:
    """The archive's image files, after refusing any member that could escape or is not a plain file."""
    images = []
    for member in archive.getmembers():
        path = PurePosixPath(member.name)
        if path.is_absolute() or ".." in path.parts:
            raise ReleaseError(f"unsafe archive member {member.name!r}: absolute or '..' paths are refused")
        if member.issym() or member.islnk():
            raise ReleaseError(f"unsafe archive member {member.name!r}: links are refused")
        if member.isdev() or member.isfifo():
            raise ReleaseError(f"unsafe archive member {member.name!r}: devices and pipes are refused")
        if member.isfile() and path.suffix.lower() == ".jpg":
            images.append(member)
    return images


def extract_images(archive_path: Path, dest: Path) -> Path:
    """Extract the JPEGs of ``102flowers.tgz`` into ``dest/jpg`` safely; returns that folder."""
    hint = "re-download it (--download checks its md5) or extract it yourself and pass the folder holding jpg/"
    try:
        with tarfile.open(archive_path, "r:*") as archive:
            members = check_archive_members(archive)
            if not members:
                raise ReleaseError(f"{archive_path} holds no .jpg images; is it the official {ARCHIVE}?")
            for member in members:
                member.name = str(PurePosixPath("jpg") / PurePosixPath(member.name).name)
            archive.extractall(dest, members=members, filter="data")
    except (tarfile.TarError, EOFError, OSError, ValueError) as exc:
        raise ReleaseError(f"{archive_path} is truncated or corrupt ({exc}); {hint}") from exc
    return dest / "jpg"
