"""Every converter runs in a child process, after a free-space check, so that its crash is our error.

The converters are native code: litert-torch's LLVM, for one, ends the whole process on a full disk
("LLVM ERROR: IO failure on output stream", exit 1, no Python exception), and with it every
``finally`` that would have removed its half-written file. Run in a child, such an exit ends only
the child: the parent reports it as one line (the child's last words included), removes the partial
file and the child's temporary folder, and the other rows of the export go on.
"""

from __future__ import annotations

import os
import pickle
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from edge_runtime import console
from edge_runtime.errors import FloraEdgeError
from edge_runtime.modelfile import model_files

MIB = 1024 * 1024
# A converter writes its file (at most the fp32 model's size) and may hold a temporary copy of it;
# the margin covers the MLIR/flatbuffer scratch of a small model.
SPACE_FACTOR = 2
SPACE_MARGIN = 32 * MIB
FAILED = "floraedge-converter-failed: "  # the child's last stderr line when a converter raised
STDERR_TAIL = 64 * 1024  # bytes of the child's stderr kept for the error message


class ConverterError(FloraEdgeError):
    """A converter that failed, crashed or would not fit on the disk."""


def model_bytes(model) -> int:
    """The bytes of a torch module's parameters and buffers: about the size of its fp32 file."""
    return sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))


def check_free_space(folder: Path, needed: int, what: str) -> None:
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise ConverterError(
            f"{what} needs about {needed / MIB:,.0f} MiB free in {folder}, which has {free / MIB:,.0f} MiB: "
            "free some space or choose an --out on another disk"
        )


def run_converter(convert: Callable, ctx, dest: Path, base: Path | None = None, size: int | None = None) -> None:
    """``convert`` (a function of ``export.converters``, or any importable one) writing ``dest`` (from ``base``,
    for a derived file), in a child process; the child imports it by its module and name. ``size``: the bytes
    of the fp32 model (default: those of ``ctx.model``; ``floraedge quantize`` has a file, not a module).

    On any failure ``dest`` is removed and a ``ConverterError`` says what happened in one line.
    """
    name, dest = convert.__name__, Path(dest).resolve()
    size = model_bytes(ctx.model) if size is None else size
    check_free_space(dest.parent, SPACE_FACTOR * size + SPACE_MARGIN, f"the {name} converter")
    scratch = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{name}.", suffix=".tmp"))
    job = pickle.dumps((convert, ctx, dest, base and Path(base).resolve()))
    repo = str(Path(__file__).resolve().parents[1])
    env = os.environ | {
        "TMPDIR": str(scratch),
        "PYTHONPATH": os.pathsep.join(filter(None, [repo, os.environ.get("PYTHONPATH")])),
    }
    child = subprocess.Popen(
        [sys.executable, "-m", "export.isolation"], stdin=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    )
    try:
        _, stderr = child.communicate(job)
    except BaseException:  # Ctrl-C or SIGTERM: the child goes too, and takes nothing with it
        child.kill()
        child.wait()
        remove(dest)
        raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if child.returncode != 0:
        remove(dest)
        raise ConverterError(f"{name}: {last_words(stderr[-STDERR_TAIL:], child.returncode)}")
    if console.is_verbose():  # --verbose shows everything, the converter's own lines included
        sys.stderr.write(stderr.decode(errors="replace"))


def remove(dest: Path) -> None:
    """A converter's partial output: the file and the files it comes with (an ncnn .param's .bin)."""
    for path in model_files(dest):
        path.unlink(missing_ok=True)


def last_words(stderr: bytes, returncode: int) -> str:
    """The child's own error (the line it printed on an exception), else its last stderr line and how it ended."""
    lines = [line.strip() for line in stderr.decode(errors="replace").splitlines() if line.strip()]
    raised = next((line[len(FAILED) :] for line in reversed(lines) if line.startswith(FAILED)), None)
    if raised:
        return raised
    how = f"signal {signal.Signals(-returncode).name}" if returncode < 0 else f"exit code {returncode}"
    said = f": {lines[-1]}" if lines else ""
    return f"the converter ended its process ({how}){said}; a full disk or too little memory are the usual causes"


def child_main() -> int:
    """Run the job the parent pickled on stdin; an exception becomes one line on stderr and exit code 1."""
    console.pass_native_stderr()  # the parent reads this stderr whole: a fatal exit's last line must reach it
    try:
        convert, ctx, dest, base = pickle.load(sys.stdin.buffer)
        convert(ctx, dest) if base is None else convert(base, dest, ctx)
    except Exception as exc:  # noqa: BLE001 (any converter error is reported, as one line, by the parent)
        message = " ".join(f"{type(exc).__name__}: {exc}".split())
        print(f"{FAILED}{message}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(child_main())
