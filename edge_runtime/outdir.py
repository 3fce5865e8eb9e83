"""Output folders: never one that overlaps an input, ``--overwrite`` only replaces our own, and
nothing is lost when a run is killed, fails or races another one.

Every stage that writes a folder (``prepare``, ``train``, ``export``, ``bench``, ``space``, ...)
checks its ``--out`` here first. A folder FloraEdge wrote carries a small marker file naming its
kind; ``--overwrite`` deletes a folder only when that marker says it is of the same kind, so a
mistyped ``--out`` (a home directory, the raw release, a dataset) is never deleted.

``staged_output`` is the one way to write such a folder: the run fills a staging folder beside
``--out`` (same filesystem, so the final renames are atomic) while the old ``--out`` stays as it
was; at the end, under a lock on the parent folder, ``--out`` is checked again (it must still be
what the run was allowed to replace: nothing, an empty folder, or the very folder it saw at the
start) and swapped: old one renamed aside, new one renamed in, old one deleted. Whatever a kill
leaves (a staging folder, an old folder renamed aside) is found by the next run to the same
``--out``: staging folders of dead runs are deleted, an old folder whose swap never finished is
put back.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

try:
    import fcntl
except ImportError:  # not on Windows: runs there are not protected against each other
    fcntl = None

from edge_runtime.errors import FloraEdgeError

MARKER = ".floraedge-output.json"


class OutputError(FloraEdgeError):
    """An output folder that would overlap an input, or that ``--overwrite`` may not replace."""


def overlaps(a: Path, b: Path) -> bool:
    """True when ``a`` and ``b`` are the same path or one is inside the other (after resolving links)."""
    a, b = a.resolve(), b.resolve()
    return a == b or a in b.parents or b in a.parents


MARKER_MAX_BYTES = 4096  # the marker is one short JSON line; anything larger is not ours


def marker_kind(folder: Path) -> str | None:
    from edge_runtime.bounded import read_bounded

    try:
        return json.loads(read_bounded(Path(folder) / MARKER, MARKER_MAX_BYTES, "output marker")).get("kind")
    except (OSError, ValueError, AttributeError, FloraEdgeError):
        return None


def check_disjoint(out: Path, inputs: Iterable[Path | str | None]) -> None:
    """Refuse an ``out`` that is, contains or lies inside one of ``inputs``."""
    for source in inputs:
        if source is not None and overlaps(Path(out), Path(source)):
            raise OutputError(
                f"--out {out} overlaps the input {source} (the same folder, or one inside the other); "
                "choose an --out outside your inputs"
            )


def check_output(out: Path, kind: str | None, *, overwrite: bool, inputs: Iterable[Path | str | None] = ()) -> bool:
    """Refuse an ``out`` that overlaps an input, or exists and may not be replaced; True if it will be replaced.
    ``kind=None``: a folder without a marker, whose replacement the caller has checked by other means."""
    out = Path(out)
    check_disjoint(out, inputs)
    if not out.exists() and not out.is_symlink():
        return False
    if out.is_dir() and not out.is_symlink() and not any(out.iterdir()):
        return False  # an empty folder: nothing to lose
    if not overwrite:
        raise OutputError(f"{out} already exists; choose another --out or pass --overwrite to replace it")
    if not out.is_dir() or out.is_symlink() or (kind is not None and marker_kind(out) != kind):
        raise OutputError(
            f"--overwrite refused: {out} is not a folder written by `floraedge {kind}` (it has no {MARKER} "
            f"saying so); delete it yourself if you mean it, or choose another --out"
        )
    return True


def claim(folder: Path, kind: str) -> None:
    """Write ``folder``'s marker, refusing if one is already there: of two runs that found the folder
    absent or empty and start writing into it in place, only the first goes on."""
    try:
        fd = os.open(Path(folder) / MARKER, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        raise OutputError(f"{folder} was taken by another run that started meanwhile; choose another --out") from None
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(json.dumps({"kind": kind}) + "\n")


def write_marker(folder: Path, kind: str) -> None:
    (Path(folder) / MARKER).write_text(json.dumps({"kind": kind}) + "\n", encoding="utf-8")


# ---------------------------------------------------------------- building aside, publishing at the end

STAGING, OLD = "floraedge-new", "floraedge-old"  # the hidden siblings of --out: .<name>.<tag>-<random>


def _siblings(out: Path, tag: str) -> list[Path]:
    prefix = f".{out.name}.{tag}-"
    try:
        return sorted(p for p in out.parent.iterdir() if p.name.startswith(prefix))
    except FileNotFoundError:
        return []


def _identity(path: Path) -> tuple[int, int, int] | None:
    """What is at ``path`` (not following a link): device, inode and change time; None when nothing is.

    The change time moves when entries are added to or removed from a folder, so a folder someone
    wrote into during the run no longer counts as the one the run was allowed to replace."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino, st.st_ctime_ns


def _note(message: str) -> None:
    print(f"note: {message}", file=sys.stderr, flush=True)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _try_lock(fd: int, *, blocking: bool = False) -> bool:
    """Take an exclusive ``flock`` on ``fd`` (released when it is closed); False when another process holds it.
    Without ``fcntl`` (Windows) or on a filesystem that refuses locks it returns True: unprotected, not stuck."""
    if fcntl is None:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
    except BlockingIOError:
        return False
    except OSError:  # e.g. a network filesystem without flock
        return True
    return True


@contextlib.contextmanager
def _parent_lock(out: Path) -> Iterator[None]:
    """Serialize, among runs writing into ``out``'s folder, the start (recovery, staging) and the final swap."""
    fd = os.open(out.parent, os.O_RDONLY)
    try:
        _try_lock(fd, blocking=True)
        yield
    finally:
        os.close(fd)  # releases the lock


ALIVE = ".floraedge-building"  # inside a staging folder, locked by its run (removed before the swap)


def _owner_alive(stage: Path) -> bool:
    """True while the run that created the staging folder still holds its lock on the file inside it.
    (A file, not the folder itself: a nested output built inside the folder locks the folder as its parent.)"""
    try:
        fd = os.open(stage / ALIVE, os.O_RDONLY)
    except OSError:
        return False
    try:
        return not _try_lock(fd)
    finally:
        os.close(fd)


def recover_leftovers(out: Path | str) -> None:
    """Clean up after killed runs to ``out``: delete their staging folders, and finish or undo their swaps."""
    out = Path(out)
    if out.parent.is_dir():
        with _parent_lock(out):
            _recover(out)


def _recover(out: Path) -> None:
    """``recover_leftovers`` for a caller holding ``_parent_lock``. A live run holds the lock on its
    staging folder, and swaps only under the parent lock, so what is found here belongs to dead runs."""
    for stage in _siblings(out, STAGING):
        if not _owner_alive(stage):
            _remove(stage)
            _note(f"removed {stage}, the unfinished output of an interrupted run")
    for old in _siblings(out, OLD):
        if os.path.lexists(out):  # the swap finished; only deleting the old folder did not
            _remove(old)
            _note(f"removed {old}, the previous {out.name} that an interrupted run had replaced")
        else:  # killed between the two renames: the old folder is the last complete one
            os.rename(old, out)
            _note(f"restored {out} from {old}, where an interrupted run had moved it aside")


def _check_replaceable(out: Path, kind: str | None, seen, *, overwrite: bool) -> None:
    """Refuse, at publish time, whatever is at ``out`` now unless the run was allowed to replace it."""
    now = _identity(out)
    if now is None:
        return
    if now != seen:
        raise OutputError(
            f"{out} appeared or changed while this run was writing its output; it is left untouched and this "
            "run's output is discarded (another run to the same --out?); choose another --out or run again"
        )
    empty = out.is_dir() and not out.is_symlink() and not any(out.iterdir())
    if not empty and not (overwrite and (kind is None or marker_kind(out) == kind)):
        raise OutputError(f"{out} may not be replaced; choose another --out or pass --overwrite")


def publish(stage: Path, out: Path, kind: str | None, seen, *, overwrite: bool) -> None:
    """Swap the complete ``stage`` in at ``out``: the old folder aside, the new one in, the old one deleted."""
    if kind is not None:
        write_marker(stage, kind)
    shareable(stage)
    with _parent_lock(out):
        _check_replaceable(out, kind, seen, overwrite=overwrite)
        (stage / ALIVE).unlink()  # the lock stays on the open file: no recovery runs while this lock is held
        old = None
        if os.path.lexists(out):
            old = stage.with_name(stage.name.replace(STAGING, OLD, 1))
            os.rename(out, old)
        os.rename(stage, out)
        if old is not None:
            _remove(old)


@contextlib.contextmanager
def staged_output(
    out: Path | str, kind: str | None, *, overwrite: bool, inputs: Iterable[Path | str | None] = ()
) -> Iterator[Path]:
    """A staging folder to fill; published at ``out`` (see ``publish``) when the block succeeds, deleted if not.

    ``out`` is checked now (``check_output``) and again at publish time: a folder that appears there
    meanwhile, or changes, is never replaced."""
    out = Path(out)
    recover_leftovers(out)  # first: an interrupted swap may put the previous folder back at --out
    check_output(out, kind, overwrite=overwrite, inputs=inputs)
    out.parent.mkdir(parents=True, exist_ok=True)
    with _parent_lock(out):
        _recover(out)  # again, under the lock: a run killed since
        seen = _identity(out)
        stage = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.{STAGING}-"))
        fd = os.open(stage / ALIVE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        _try_lock(fd)  # held until fd closes: the next run knows this one is alive
    try:
        yield stage
        publish(stage, out, kind, seen, overwrite=overwrite)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    finally:
        os.close(fd)


def shareable(folder: Path) -> None:
    """Give a folder made by ``tempfile.mkdtemp`` (mode 0700) the permissions of a plain ``mkdir``."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(folder, 0o777 & ~umask)
