"""`floraedge demo` end to end on a reduced setting: every stage runs and the report names each one."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from edge_runtime import console
from floraedge import main as cli_main


@pytest.mark.slow
def test_demo_runs_every_stage_and_writes_its_report(tmp_path, capsys):
    out = tmp_path / "demo"
    code = cli_main(
        [
            "demo",
            "--out",
            str(out),
            "--classes",
            "4",
            "--epochs",
            "2",
            "--img-size",
            "32",
            "--calib-min",
            "16",
            "--runs",
            "3",
        ]
    )
    printed = capsys.readouterr().out
    assert code == 0
    report = (out / "report.md").read_text()
    for stage in ("synthetic release", "prepare", "train", "export", "bench", "run --headless"):
        assert f"| {stage} |" in report, stage
    assert "SYNTHETIC" in report and "model_int8.tflite" in report and "![accuracy_vs_latency.png]" in report
    assert f"report: {(out / 'report.md').resolve()}" in printed
    frames = [json.loads(line) for line in (out / "run_headless.jsonl").read_text().splitlines()]
    assert len(frames) == 60 and all("label" in f for f in frames)


@pytest.mark.slow
def test_the_demo_keeps_every_file_and_prints_no_library_warnings(tmp_path):
    """Issue 38: run as a user would (a real stderr, not a terminal), every row of the export gate is kept and
    nothing on stderr is another library's warning, log line or progress-bar redraw."""
    out = tmp_path / "demo"
    env = {k: v for k, v in os.environ.items() if k not in (console.VERBOSE_ENV, "TF_CPP_MIN_LOG_LEVEL")}
    args = [
        "--out",
        str(out),
        "--classes",
        "4",
        "--epochs",
        "2",
        "--img-size",
        "32",
        "--calib-min",
        "16",
        "--runs",
        "3",
    ]
    proc = subprocess.run(
        [sys.executable, "-m", "floraedge", "demo", *args], capture_output=True, text=True, env=env, timeout=1800
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    gate_rows = re.findall(r"^\| `(model_[^`]+)` \| (\w+) \|", (out / "report.md").read_text(), flags=re.M)
    assert len(gate_rows) == 7 and all(kept == "True" for _, kept in gate_rows), gate_rows
    assert "export gate: 7 of 7 files kept" in proc.stdout
    warnings_shown = [line for line in proc.stderr.splitlines() if "Warning" in line or "WARNING" in line]
    assert not warnings_shown, warnings_shown
    assert "\r" not in proc.stdout + proc.stderr  # no progress bar redrawn into a log
    lines = proc.stdout.splitlines()
    first_next = lines[lines.index("next:") + 1]  # the console ends with the next commands to try
    assert "floraedge run --model models/oxford102-lite0/model_int8.tflite" in first_next, lines[-6:]
    report = (out / "report.md").read_text().splitlines()
    assert report[4] == "What to look at first:" and "## Next" in report[-10:]
