"""`floraedge demo` end to end on a reduced setting, run once as a user would (a real process whose stderr is
not a terminal): every stage runs, the report names each one, every export is kept and nothing on screen is
another library's noise."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from edge_runtime import console
from export.formats import FORMATS

REDUCED = ["--classes", "4", "--epochs", "2", "--img-size", "32", "--calib-min", "16", "--runs", "3"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "demo"
    env = {k: v for k, v in os.environ.items() if k not in (console.VERBOSE_ENV, "TF_CPP_MIN_LOG_LEVEL")}
    proc = subprocess.run(
        [sys.executable, "-m", "floraedge", "demo", "--out", str(out), *REDUCED],
        capture_output=True,
        text=True,
        env=env,
        timeout=1800,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc


@pytest.mark.slow
def test_demo_runs_every_stage_and_writes_its_report(demo):
    out, proc = demo
    report = (out / "report.md").read_text()
    for stage in ("synthetic release", "prepare", "train", "export", "bench", "run --headless"):
        assert f"| {stage} |" in report, stage
    assert "SYNTHETIC" in report and "model_int8.tflite" in report and "![accuracy_vs_latency.png]" in report
    assert f"report: {(out / 'report.md').resolve()}" in proc.stdout
    frames = [json.loads(line) for line in (out / "run_headless.jsonl").read_text().splitlines()]
    assert len(frames) == 60 and all("label" in f for f in frames)
    assert not [p.name for p in out.parent.iterdir() if p.name.startswith(".")]  # built aside, nothing left over


@pytest.mark.slow
def test_the_demo_keeps_every_file_and_prints_no_library_warnings(demo):
    """Every row of the export gate is kept; nothing on stderr is another library's warning, log line or
    progress-bar redraw; the report opens with what to look at and both end with the next commands."""
    out, proc = demo
    gate_rows = re.findall(r"^\| `(model_[^`]+)` \| (\w+) \|", (out / "report.md").read_text(), flags=re.M)
    assert len(gate_rows) == len(FORMATS) and all(kept == "True" for _, kept in gate_rows), gate_rows
    assert f"export gate: {len(FORMATS)} of {len(FORMATS)} files kept" in proc.stdout
    warnings_shown = [line for line in proc.stderr.splitlines() if "Warning" in line or "WARNING" in line]
    assert not warnings_shown, warnings_shown
    assert "\r" not in proc.stdout + proc.stderr  # no progress bar redrawn into a log
    lines = proc.stdout.splitlines()
    first_next = lines[lines.index("next:") + 1]  # the console ends with the next commands to try
    assert "floraedge run --model models/oxford102-lite0/model_int8.tflite" in first_next, lines[-6:]
    report = (out / "report.md").read_text().splitlines()
    assert report[4] == "What to look at first:" and "## Next" in report[-10:]
    assert ".floraedge-new" not in "\n".join(report[-10:])  # the next commands name the final folder
