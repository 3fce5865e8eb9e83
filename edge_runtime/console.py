"""What the pipeline's commands print: our own step lines and tables by default, everything with --verbose.

The one place that decides it. A command runs inside ``output(verbose)``; library noise that we understand
is silenced where it arises with ``harmless(...)`` (each call says why it is harmless), and loops report
through ``progress(...)``: a bar on a terminal, a plain line every few seconds in a log. With ``--verbose``
nothing is filtered and every bar is drawn. Standard library only: the edge commands import it too.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import logging
import os
import re
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from typing import Protocol

VERBOSE_HELP = "show every library's warnings, native log lines and progress bars (default: FloraEdge's own lines)"
# for add_command(own=...): --verbose steers the output, it is no field of a command's config
VERBOSE_OWN = {"verbose": "console output (edge_runtime.console), not part of the config"}
PROGRESS_EVERY_S = 10.0  # a log (no terminal) gets one progress line per this many seconds

# Read by the libraries when they log, set only where the user has not: the TensorFlow runtime inside
# LiteRT's converter logs its oneDNN notice ("slightly different numerical results": float summation
# order) and an op count at INFO, which say how it runs, not what our files compute (level 2 keeps its
# errors); litert-torch prints a timed line per conversion stage ("[START] ... [ DONE]") on stdout.
QUIET_ENV = {"TF_CPP_MIN_LOG_LEVEL": "2", "LITERT_TORCH_SHOW_PROGRESS": "n"}

VERBOSE_ENV = "FLORAEDGE_VERBOSE"  # "1": a parent command runs with --verbose (floraedge release's steps)
_verbose = False
_native_passthrough = False


def is_verbose() -> bool:
    return _verbose


def pass_native_stderr() -> None:
    """Leave file descriptor 2 alone in ``native_stderr`` blocks: for a process whose whole stderr its parent
    reads (export's converter child), where a native fatal exit would take a captured last line with it."""
    global _native_passthrough
    _native_passthrough = True


def add_verbose_flag(parser):
    """``--verbose`` on a subcommand made by ``add_command(..., own=VERBOSE_OWN)``; returns the parser."""
    parser.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)
    return parser


def quiet_unless_verbose(run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """A subcommand's ``run(args)``, inside ``output(args.verbose)``."""

    @functools.wraps(run)
    def wrapped(args: argparse.Namespace) -> int:
        with output(args.verbose):
            return run(args)

    return wrapped


@contextlib.contextmanager
def output(verbose: bool) -> Iterator[None]:
    """Run a command's body with the console policy: quiet unless ``verbose`` (or a parent command's
    ``--verbose``, handed down to the commands it starts through VERBOSE_ENV)."""
    global _verbose
    verbose = verbose or os.environ.get(VERBOSE_ENV) == "1"
    previous, _verbose = _verbose, verbose
    saved_env = {k: os.environ.get(k) for k in (*QUIET_ENV, VERBOSE_ENV)}
    if verbose:
        os.environ[VERBOSE_ENV] = "1"
    else:
        for key, value in QUIET_ENV.items():
            os.environ.setdefault(key, value)  # a value the user set wins
    try:
        yield
    finally:
        _verbose = previous
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def harmless(*, category: type[Warning] = Warning, message: str = "", module: str = "", loggers: tuple = ()):
    """Silence, in this block and unless --verbose, the Python warnings that match (``message``: a regex the
    warning's text starts with, ``module``: the warning's module) and, of the Python ``loggers`` named
    ("root": the root logger), the records below ERROR whose text starts with ``message``. The caller's
    comment says why they are harmless."""
    if _verbose:
        yield
        return
    pattern = re.compile(message)
    drop = logging.Filter()
    drop.filter = lambda record: record.levelno >= logging.ERROR or not pattern.match(record.getMessage())
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=message, category=category, module=module)
        for name in loggers:
            logging.getLogger(name).addFilter(drop)
        try:
            yield
        finally:
            for name in loggers:
                logging.getLogger(name).removeFilter(drop)


@contextlib.contextmanager
def native_stderr(*patterns: str) -> Iterator[None]:
    """Unless --verbose, drop the lines of file descriptor 2 written in this block (by native code, which
    Python's warnings and loggers cannot reach) that start with one of ``patterns`` (regexes); every other
    line is written to stderr after the block. The caller's comment says why the dropped lines are harmless."""
    if _verbose or _native_passthrough:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = [
                line
                for line in captured.read().decode(errors="replace").splitlines(keepends=True)
                if not any(re.match(p, line) for p in patterns)
            ]
            sys.stderr.write("".join(kept))
            sys.stderr.flush()


@contextlib.contextmanager
def third_party_progress() -> Iterator[None]:
    """Unless --verbose, hide the progress bars a library draws on Python's stderr in this block (its
    warnings still show: they are written after the block). For libraries with no switch for their bars."""
    if _verbose:
        yield
        return
    with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stderr(io.StringIO()):
        yield  # the filters in force still apply: ``caught`` holds only the warnings that would have shown
    for w in caught:
        warnings.showwarning(w.message, w.category, w.filename, w.lineno)


def on_terminal(stream=None) -> bool:
    stream = stream or sys.stderr
    return hasattr(stream, "isatty") and stream.isatty()


def progress(items: Iterable, *, desc: str, total: int | None = None, unit: str = "it", enabled: bool = True):
    """``items``, reported as they go: a tqdm bar on a terminal (or with --verbose), else a plain
    ``desc: done/total unit`` line every PROGRESS_EVERY_S seconds (a log gets no carriage-return redraws);
    nothing when not ``enabled``. Either way the result has tqdm's ``set_postfix``."""
    total = total if total is not None else (len(items) if hasattr(items, "__len__") else None)
    if enabled and (on_terminal() or _verbose):
        from tqdm import tqdm

        return tqdm(items, desc=desc, total=total, unit=unit, leave=False)
    return PlainProgress(items, desc=desc, total=total, unit=unit, every_s=PROGRESS_EVERY_S if enabled else None)


class PlainProgress:
    """A progress report for a log: one line per ``every_s`` seconds (never, with None), no redraws; on
    stderr, where tqdm draws, so that stdout keeps only results (a command's JSON stays parseable)."""

    def __init__(self, items: Iterable, *, desc: str, total: int | None, unit: str, every_s: float | None):
        self.items, self.desc, self.total, self.unit, self.every_s = items, desc, total, unit, every_s
        self.postfix = ""

    def set_postfix(self, **values) -> None:
        self.postfix = " ".join(f"{k}={v}" for k, v in values.items())

    def __iter__(self) -> Iterator:
        if self.every_s is not None:  # the step's start, so that a log shows what is running now
            print(f"   {self.desc}: 0{f'/{self.total}' if self.total else ''} {self.unit}", file=sys.stderr, flush=True)
        last = time.monotonic()
        for done, item in enumerate(self.items, 1):
            yield item
            if self.every_s is not None and time.monotonic() - last >= self.every_s:
                last = time.monotonic()
                of = f"/{self.total}" if self.total else ""
                print(f"   {self.desc}: {done}{of} {self.unit} {self.postfix}".rstrip(), file=sys.stderr, flush=True)


class Counting(Protocol):
    """What ``counter`` returns, a tqdm bar or a PlainCounter: a count that grows by ``update(n)``."""

    n: int

    def update(self, n: int = 1) -> object: ...


def counter(*, desc: str, total: int | None = None, initial: int = 0, unit: str = "it", enabled: bool = True, **bar):
    """A count that grows by ``update(n)`` (bytes downloaded, entries listed), reported like ``progress``: a
    tqdm bar on a terminal (or with --verbose; ``bar`` are its display options), else a plain line every
    PROGRESS_EVERY_S seconds; nothing when not ``enabled``. A context manager, with tqdm's ``n``."""
    if enabled and (on_terminal() or _verbose):
        from tqdm import tqdm

        return tqdm(desc=desc, total=total, initial=initial, unit=unit, **bar)
    every_s = PROGRESS_EVERY_S if enabled else None
    return PlainCounter(desc=desc, total=total, initial=initial, unit=unit, every_s=every_s)


class PlainCounter:
    """``counter``'s report for a log: one ``desc: n/total unit`` line on stderr per ``every_s`` (never, with None)."""

    def __init__(self, *, desc: str, total: int | None, initial: int, unit: str, every_s: float | None):
        self.desc, self.total, self.n, self.unit, self.every_s = desc, total, initial, unit, every_s
        self.last = time.monotonic()
        self.report()  # the step's start, so that a log shows what is running now

    def report(self) -> None:
        if self.every_s is not None:
            of = f"/{self.total}" if self.total else ""
            print(f"   {self.desc}: {self.n}{of} {self.unit.strip()}", file=sys.stderr, flush=True)

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.every_s is not None and time.monotonic() - self.last >= self.every_s:
            self.last = time.monotonic()
            self.report()

    def close(self) -> None:
        pass

    def __enter__(self) -> PlainCounter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
