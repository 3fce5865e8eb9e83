"""edge_runtime.console: quiet by default, everything with --verbose."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings

import pytest

from edge_runtime import console


def warn_like_a_library():
    warnings.warn("the float32 number 1e-09 will be truncated to 1e-07", UserWarning, stacklevel=1)


@pytest.mark.parametrize("verbose", [False, True], ids=["quiet", "verbose"])
def test_a_harmless_warning_is_silenced_only_when_quiet(verbose):
    with console.output(verbose), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with console.harmless(category=UserWarning, message="the float32 number"):
            warn_like_a_library()
            warnings.warn("something else", UserWarning, stacklevel=1)  # not named: always shown
    assert [str(w.message) for w in caught] == (
        ["the float32 number 1e-09 will be truncated to 1e-07", "something else"] if verbose else ["something else"]
    )


NATIVE = """
import os, sys
from edge_runtime import console
with console.output(verbose=sys.argv[1] == "1"):
    with console.native_stderr(r"INFO: Created TensorFlow Lite XNNPACK"):
        os.write(2, b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\\n")
        os.write(2, b"E0000 something native went wrong\\n")
        print("python's own stderr line", file=sys.stderr)
"""


@pytest.mark.parametrize("verbose", [False, True], ids=["quiet", "verbose"])
def test_native_log_lines_we_understand_are_dropped_and_the_rest_kept(verbose):
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    env.pop(console.VERBOSE_ENV, None)
    proc = subprocess.run(
        [sys.executable, "-c", NATIVE, "1" if verbose else "0"], capture_output=True, text=True, env=env, check=True
    )
    lines = proc.stderr.splitlines()
    assert "E0000 something native went wrong" in lines and "python's own stderr line" in lines
    assert ("INFO: Created TensorFlow Lite XNNPACK delegate for CPU." in lines) == verbose


def test_quiet_mode_sets_the_libraries_switches_the_user_has_not_set_and_verbose_is_handed_down(monkeypatch):
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
    monkeypatch.setenv("LITERT_TORCH_SHOW_PROGRESS", "y")  # the user's choice wins
    monkeypatch.delenv(console.VERBOSE_ENV, raising=False)
    with console.output(False):
        assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "2" and os.environ["LITERT_TORCH_SHOW_PROGRESS"] == "y"
        assert not console.is_verbose()
    assert "TF_CPP_MIN_LOG_LEVEL" not in os.environ
    with console.output(True):
        assert "TF_CPP_MIN_LOG_LEVEL" not in os.environ and os.environ[console.VERBOSE_ENV] == "1"
        with console.output(False):  # a command started by a --verbose one
            assert console.is_verbose()
    assert console.VERBOSE_ENV not in os.environ


def test_progress_off_a_terminal_prints_plain_periodic_lines_not_bars(monkeypatch, capsys):
    monkeypatch.setattr(console, "PROGRESS_EVERY_S", 0.0)
    bar = console.progress(range(3), desc="calibration images", unit="img")
    bar.set_postfix(loss="0.5")
    assert list(bar) == [0, 1, 2]
    captured = capsys.readouterr()
    lines = [f"   calibration images: {i}/3 img loss=0.5" for i in (1, 2, 3)]
    assert captured.err.splitlines() == ["   calibration images: 0/3 img", *lines]  # the start, then each period
    assert captured.out == ""  # stdout keeps only results
    assert "\r" not in captured.out + captured.err
    assert list(console.progress(range(3), desc="x", enabled=False)) == [0, 1, 2]
    assert capsys.readouterr().err == ""


def test_every_pipeline_command_takes_verbose():
    from floraedge import build_parser

    subcommands = build_parser()._subparsers._group_actions[0].choices
    for name in ("demo", "export", "train", "bench", "release"):
        assert "--verbose" in subcommands[name].format_help(), name


def test_a_counter_off_a_terminal_prints_plain_periodic_lines_not_bars(monkeypatch, capsys):
    """A download's bytes or a listing's entries: in a log, plain lines (no carriage-return redraws)."""
    monkeypatch.setattr(console, "PROGRESS_EVERY_S", 0.0)
    with console.counter(desc="102flowers.tgz", total=3072, initial=1024, unit="B", unit_scale=True) as bar:
        bar.update(1024)
        bar.update(1024)
    assert bar.n == 3072
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [f"   102flowers.tgz: {n}/3072 B" for n in (1024, 2048, 3072)]
    assert captured.out == "" and "\r" not in captured.err
    with console.counter(desc="listing", enabled=False) as quiet:
        quiet.update(1000)
    assert quiet.n == 1000 and capsys.readouterr().err == ""
