"""`floraedge demo` end to end on a reduced setting: every stage runs and the report names each one."""

from __future__ import annotations

import json

import pytest

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
