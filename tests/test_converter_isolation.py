"""Converters run in a child process: their failure, even a native exit on a full disk, is one line of
ours, and nothing they wrote is left behind. The full disk is a real, small tmpfs (needs root)."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from export import converters, isolation
from export.converters import ExportContext, WithSoftmax
from export.isolation import ConverterError, check_free_space, run_converter

pytestmark = pytest.mark.torch


def context(hidden: int = 16) -> ExportContext:
    """A small classifier; ``hidden`` sets its size (1024: about 4 MB of fp32 weights)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, hidden),
        torch.nn.ReLU(), torch.nn.Linear(hidden, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 5),
    )  # fmt: skip
    return ExportContext(model=WithSoftmax(model).eval(), sample=torch.zeros(1, 3, 32, 32), calibration=None)


@contextlib.contextmanager
def small_disk(path: Path, size: str):
    """A tmpfs of ``size`` mounted at ``path`` (skips the test where mounting is not allowed)."""
    path.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


def test_a_converter_that_raises_is_one_line_and_leaves_nothing(tmp_path):
    (tmp_path / "base.onnx").write_bytes(b"not an onnx file")
    dest = tmp_path / "out.onnx"
    with pytest.raises(ConverterError, match="^onnx_fp16: .*Error") as caught:
        run_converter(converters.onnx_fp16, context(), dest, tmp_path / "base.onnx")
    assert "\n" not in str(caught.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base.onnx"]  # no dest, no scratch folder


def test_a_converter_runs_and_writes_its_file(tmp_path):
    run_converter(converters.export_onnx_base, context(), tmp_path / "base.onnx")
    assert (tmp_path / "base.onnx").stat().st_size > 1000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base.onnx"]


def test_too_little_free_space_is_refused_before_anything_runs(tmp_path):
    free = shutil.disk_usage(tmp_path).free
    with pytest.raises(ConverterError, match=f"needs about .* MiB free in {tmp_path}"):
        check_free_space(tmp_path, free + 2**30, "the test converter")
    with small_disk(tmp_path / "disk", "2M") as disk:
        with pytest.raises(ConverterError, match="needs about .* MiB free"):
            run_converter(converters.export_tflite_base, context(1024), disk / "base.tflite")
        assert list(disk.iterdir()) == []


@pytest.mark.slow
def test_a_full_disk_during_tflite_conversion_is_our_error_and_leaves_no_file(tmp_path, monkeypatch):
    """litert-torch's LLVM ends its process on a full disk (exit 1, no exception): only the child ends, the parent
    says so in one line and removes the half-written file. (The free-space guard is turned off to get there.)"""
    monkeypatch.setattr(isolation, "SPACE_FACTOR", 0)
    monkeypatch.setattr(isolation, "SPACE_MARGIN", 0)
    with small_disk(tmp_path / "disk", "2M") as disk:
        with pytest.raises(ConverterError) as caught:
            run_converter(converters.export_tflite_base, context(1024), disk / "base.tflite")
        message = str(caught.value)
        assert "\n" not in message and message.startswith("export_tflite_base: ")
        assert "No space left on device" in message, message
        assert list(disk.iterdir()) == []  # no partial base.tflite, no scratch folder
        assert shutil.disk_usage(disk).used < 64 * 1024
