"""Reading and checking the official annotation files of an Oxford-102 release.

``imagelabels.mat`` holds one label (1..102) per image id; ``setid.mat`` names the image ids
of the official ``trnid``/``valid``/``tstid`` splits. Image id ``i`` is ``jpg/image_{i:05d}.jpg``.
"""

from __future__ import annotations

import errno
import io
import shutil
import tarfile
import zlib
from pathlib import Path, PurePosixPath

import numpy as np
import scipy.io

from edge_runtime.admission import DEFAULT_LIMITS
from edge_runtime.bounded import TooLargeError, read_bounded
from edge_runtime.errors import FloraEdgeError
from prepare.categories import NUM_CLASSES

ARCHIVE, LABELS_MAT, SETID_MAT = "102flowers.tgz", "imagelabels.mat", "setid.mat"
OFFICIAL_SPLITS = {"train": "trnid", "val": "valid", "test": "tstid"}
SPLITS = tuple(OFFICIAL_SPLITS)
# The official .mat files are tens of kilobytes and the archive holds 8,189 JPEGs of under 1 MB
# (0.33 GB in all); the limits leave room for larger releases of the same layout, never for bombs.
MAT_MAX_BYTES = 16 * 1024 * 1024
MAT_MAX_VALUES = 10_000_000  # per variable: a compressed .mat could inflate to far more than it weighs
ARCHIVE_MAX_MEMBERS = 1_000_000
ARCHIVE_MAX_BYTES = 64 * 1024**3  # the sum of the extracted images


class ReleaseError(FloraEdgeError):
    """The raw release is missing a file or holds something malformed or unsafe."""


def image_name(image_id: int) -> str:
    return f"image_{image_id:05d}.jpg"


def _load_mat(path: Path, key: str) -> np.ndarray:
    """The 1-D values of ``key`` in a MATLAB file: read only after its size and the variable's shape are checked."""
    if not path.exists():
        raise ReleaseError(f"{path} is missing: copy it from the release next to the images, or use --download")
    hint = "re-download it (--download)"
    try:
        data = io.BytesIO(read_bounded(path, MAT_MAX_BYTES, "MATLAB file"))
        shapes = {name: shape for name, shape, _ in scipy.io.whosmat(data)}  # headers only: nothing inflated
        if key in shapes:
            check_mat_shape(path, key, shapes[key])
            data.seek(0)
            values = scipy.io.loadmat(data, variable_names=[key]).get(key)
    except ReleaseError:
        raise
    except TooLargeError as exc:
        raise ReleaseError(f"{exc}; is this the official {path.name}? {hint}") from exc
    except Exception as exc:  # scipy raises many unrelated types for a bad file
        raise ReleaseError(f"{path} is not a readable MATLAB file ({type(exc).__name__}: {exc}); {hint}") from exc
    if key not in shapes:
        raise ReleaseError(f"{path} has no key {key!r} (found {sorted(shapes)}); is this the official {path.name}?")
    return integer_values(path, key, values)


def check_mat_shape(path: Path, key: str, shape: tuple[int, ...]) -> None:
    """A vector (1 x N or N x 1) of at most ``MAT_MAX_VALUES`` values, as in the official files."""
    if len(shape) > 2 or (len(shape) == 2 and min(shape) > 1):
        raise ReleaseError(
            f"{path}: {key!r} is a {'x'.join(map(str, shape))} array; the official file holds a 1xN vector"
        )
    if int(np.prod(shape)) > MAT_MAX_VALUES:
        raise ReleaseError(
            f"{path}: {key!r} declares {int(np.prod(shape)):,} values, over the limit of {MAT_MAX_VALUES:,}"
        )


def integer_values(path: Path, key: str, values) -> np.ndarray:
    """The values as int64, refusing what a cast would silently change: fractions, NaN, text, cells, structs."""
    values = np.asarray(values)
    if values.dtype.kind not in "iuf":
        raise ReleaseError(
            f"{path}: {key!r} holds {values.dtype} values, not numbers; is this the official {path.name}?"
        )
    if values.dtype.kind == "f" and not np.all(np.isfinite(values)):
        raise ReleaseError(
            f"{path}: {key!r} holds NaN or infinite values; the file is damaged or not an Oxford-102 file"
        )
    values = values.ravel()
    if values.dtype.kind == "f" and np.any(values != np.round(values)):
        bad = values[values != np.round(values)]
        raise ReleaseError(
            f"{path}: {key!r} holds {bad.size} non-integer values (e.g. {bad[:5].tolist()}); "
            "labels and image ids are whole numbers: the file is damaged or not an Oxford-102 file"
        )
    return values.astype(np.int64)


def load_labels(path: Path) -> np.ndarray:
    """0-based class index per image; ``labels[i - 1]`` belongs to image id ``i``."""
    labels = _load_mat(path, "labels")
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
    splits = {split: _load_mat(path, key) for split, key in OFFICIAL_SPLITS.items()}
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
    """The archive's image files, after refusing any member that could escape, is not a plain file, or
    is over a size limit; members are counted as they are read, so a huge listing stops at the limit."""
    images, total = [], 0
    for count, member in enumerate(archive, start=1):
        if count > ARCHIVE_MAX_MEMBERS:
            raise ReleaseError(f"the archive holds over {ARCHIVE_MAX_MEMBERS:,} members; it is not an image release")
        path = PurePosixPath(member.name)
        if path.is_absolute() or ".." in path.parts:
            raise ReleaseError(f"unsafe archive member {member.name!r}: absolute or '..' paths are refused")
        if member.issym() or member.islnk():
            raise ReleaseError(f"unsafe archive member {member.name!r}: links are refused")
        if member.isdev() or member.isfifo():
            raise ReleaseError(f"unsafe archive member {member.name!r}: devices and pipes are refused")
        if member.isfile() and path.suffix.lower() == ".jpg":
            if member.size > DEFAULT_LIMITS.max_bytes:
                raise ReleaseError(
                    f"archive member {member.name!r} declares {member.size:,} bytes, over the "
                    f"{DEFAULT_LIMITS.max_bytes:,}-byte limit of an image"
                )
            total += member.size
            images.append(member)
    if total > ARCHIVE_MAX_BYTES:
        raise ReleaseError(f"the archive's images add up to {total:,} bytes, over the {ARCHIVE_MAX_BYTES:,}-byte limit")
    return images


def check_free_space(dest: Path, needed: int) -> None:
    free = shutil.disk_usage(dest).free
    if needed > free:
        raise ReleaseError(
            f"extracting the archive needs {needed:,} bytes but {dest} has {free:,} free; free some space "
            "or extract it yourself elsewhere and pass the folder holding jpg/"
        )


def extract_images(archive_path: Path, dest: Path) -> Path:
    """Extract the JPEGs of ``102flowers.tgz`` into ``dest/jpg`` safely; returns that folder."""
    hint = "re-download it (--download checks its md5) or extract it yourself and pass the folder holding jpg/"
    try:
        with tarfile.open(archive_path, "r:*") as archive:
            members = check_archive_members(archive)
            if not members:
                raise ReleaseError(f"{archive_path} holds no .jpg images; is it the official {ARCHIVE}?")
            check_free_space(dest, sum(m.size for m in members))
            for member in members:
                member.name = str(PurePosixPath("jpg") / PurePosixPath(member.name).name)
            archive.extractall(dest, members=members, filter="data")
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            raise ReleaseError(f"{archive_path} is truncated or corrupt ({exc}); {hint}") from exc
        raise ReleaseError(
            f"the disk filled up while extracting {archive_path}; free some space and run again"
        ) from exc
    except (tarfile.TarError, EOFError, ValueError, zlib.error) as exc:
        why = " ".join(str(exc).split())  # tarfile's "r:*" error lists every method tried, one per line
        raise ReleaseError(
            f"{archive_path} is not a readable tar archive, or is truncated or corrupt ({why}); {hint}"
        ) from exc
    return dest / "jpg"
