"""Reads whose size the input controls, bounded by a limit checked before anything is read.

A file's ``st_size``, a zip member's declared ``file_size`` and a tar member's ``size`` are
checked first, so a refused input costs no memory; the read itself then stops one byte past the
limit, so a file that grows meanwhile or a zip member that inflates past what it declares is
refused too, never held whole. Only regular files are read: a FIFO or a device (``/dev/zero``
posing as an image) is refused without blocking on it.
"""

from __future__ import annotations

import contextlib
import os
import stat
import zipfile
from pathlib import Path

from edge_runtime.errors import FloraEdgeError

SMALL_FILE_BYTES = 16 * 1024 * 1024  # sidecar JSON, labels, specs, markers, model cards: kilobytes in practice


class TooLargeError(FloraEdgeError, ValueError):
    """An input over its size limit, or not a regular file; refused before it is read."""


def open_regular(path: str | Path, limit: int, what: str) -> int:
    """A read-only descriptor of ``path``, after checking it is a regular file of at most ``limit`` bytes."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO with no writer would block a plain open()
    except OSError as exc:
        raise TooLargeError(f"{path}: cannot open the {what} ({exc.strerror})") from exc
    info = os.fstat(fd)
    problem = None
    if not stat.S_ISREG(info.st_mode):
        problem = "is not a regular file (a FIFO, device or folder)"
    elif info.st_size > limit:
        problem = f"is {info.st_size:,} bytes, over the {limit:,}-byte limit"
    if problem:
        os.close(fd)
        raise TooLargeError(f"{path}: the {what} {problem}")
    return fd


def read_bounded(path: str | Path, limit: int = SMALL_FILE_BYTES, what: str = "file") -> bytes:
    """The bytes of the regular file ``path``, refused unread when over ``limit`` bytes."""
    with os.fdopen(open_regular(path, limit, what), "rb") as f:
        # ask for the size the file has (read(n) allocates n bytes up front, whatever the file holds), plus
        # one byte that tells whether it grew meanwhile; a grown file is read on, never past limit + 1
        size = os.fstat(f.fileno()).st_size
        data = f.read(size + 1)
        if len(data) > size:
            data += f.read(max(0, limit + 1 - len(data)))
    if len(data) > limit:
        raise TooLargeError(f"{path}: the {what} grew past the {limit:,}-byte limit while being read")
    return data


def read_text_bounded(path: str | Path, limit: int = SMALL_FILE_BYTES, what: str = "file") -> str:
    return read_bounded(path, limit, what).decode("utf-8")


def open_zip(file, max_members: int) -> zipfile.ZipFile:
    """``zipfile.ZipFile(file)``, refused when its end record declares more than ``max_members`` entries
    (``ZipFile`` builds an object per entry of the central directory as it opens)."""
    with open(file, "rb") if isinstance(file, (str, Path)) else contextlib.nullcontext(file) as f:
        end = zipfile._EndRecData(f)  # the end-of-central-directory record; private but stable since Python 2
        if end is not None and end[zipfile._ECD_ENTRIES_TOTAL] > max_members:
            raise TooLargeError(
                f"{getattr(f, 'name', 'the zip')}: declares {end[zipfile._ECD_ENTRIES_TOTAL]:,} members, "
                f"over the limit of {max_members:,}"
            )
    return zipfile.ZipFile(file)


def read_member(archive: zipfile.ZipFile, name: str, limit: int, where: str = "the zip") -> bytes:
    """One zip member's bytes: its declared size checked first, and never more than ``limit`` inflated."""
    info = archive.getinfo(name)
    if info.file_size > limit:
        raise TooLargeError(
            f"{where}: member {name!r} declares {info.file_size:,} bytes, over the {limit:,}-byte limit"
        )
    with archive.open(info) as member:
        data = member.read(info.file_size + 1)  # asking for more than declared would inflate that much at once
    if len(data) > limit:
        raise TooLargeError(f"{where}: member {name!r} inflates past the {limit:,}-byte limit")
    return data
