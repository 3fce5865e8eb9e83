"""Write a file so that it is either complete or absent: a temporary file beside it, then a rename.

Torch-free, used by every stage (checkpoints, the synthetic release, ...): a crash, a full disk or
Ctrl-C mid-write never leaves a half-written file under the real name.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from edge_runtime.outdir import OutputError, staged_output


@contextlib.contextmanager
def atomic_path(path: str | Path, *, replace: bool = True) -> Iterator[Path]:
    """A temporary path in ``path``'s folder to write to; renamed to ``path`` when the block succeeds, removed
    if not. ``replace=False``: a file that appeared at ``path`` meanwhile is never replaced (refused)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; these are ordinary shareable files
        if replace:
            os.replace(tmp, path)
        else:
            publish_new(Path(tmp), path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def publish_new(tmp: Path, path: Path) -> None:
    """Rename ``tmp`` to ``path`` unless something is there: a hard link fails atomically if it is."""
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise OutputError(
            f"{path} appeared while this run was writing it; it is left untouched and this run's output is "
            "discarded; choose another --out or pass --overwrite"
        ) from None
    except OSError:  # a filesystem without hard links (FAT): checked, then renamed
        if os.path.lexists(path):
            raise OutputError(f"{path} appeared while this run was writing it; choose another --out") from None
        os.rename(tmp, path)
        return
    os.unlink(tmp)


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(path: str | Path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | Path, obj) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2) + "\n")


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """A temporary folder beside ``path`` to fill; renamed to ``path`` (which must not exist, or be an empty
    folder) when the block succeeds, removed with its contents if not. ``outdir.staged_output`` does the
    work: a folder that appears at ``path`` meanwhile is never replaced, and a killed run's leftovers are
    removed by the next one."""
    with staged_output(path, None, overwrite=False) as tmp:
        yield tmp
