"""The arm64 check's top-1 rule (tests/arm64/agreement.py), on made-up outputs: which flips it admits."""

from __future__ import annotations

import numpy as np

from tests.arm64.agreement import MAX_FLIP_SHARE, compare, runs, top1_agrees
from tests.tiny_models import tiny_ncnn


def outputs(n: int = 100, classes: int = 5, gap: float = 0.3) -> np.ndarray:
    """``n`` rows whose top class is row % classes, ``gap`` above the second."""
    x = np.full((n, classes), 0.1, np.float32)
    x[np.arange(n), np.arange(n) % classes] += gap
    return x


def flip(x: np.ndarray, rows, by: float) -> np.ndarray:
    """The same outputs with ``rows``' runner-up raised ``by`` above their top."""
    y = x.copy()
    for r in rows:
        top = int(y[r].argmax())
        y[r, (top + 1) % y.shape[1]] = y[r, top] + by
    return y


def test_identical_top1_passes_whatever_the_file():
    x = outputs()
    assert top1_agrees(x, x + 0.01, limit=0.05, may_flip=False) == (True, [])


def test_a_flip_fails_a_file_that_must_keep_its_top1():
    x = outputs(gap=0.01)
    ok, gaps = top1_agrees(x, flip(x, [3], by=0.005), limit=0.05, may_flip=False)
    assert not ok and gaps == [0.01]


def test_a_rare_near_tie_flip_passes_where_flips_are_allowed():
    x = outputs(gap=0.01)
    assert top1_agrees(x, flip(x, [3], by=0.005), limit=0.05, may_flip=True) == (True, [0.01])


def test_a_flip_that_is_not_a_near_tie_fails():
    x = outputs(gap=0.3)
    ok, gaps = top1_agrees(x, flip(x, [3], by=0.005), limit=0.05, may_flip=True)
    assert not ok and gaps == [0.3]


def test_many_near_tie_flips_fail_as_a_wrong_kernel_would():
    x = outputs(n=100, gap=0.01)
    allowed = max(1, int(MAX_FLIP_SHARE * 100))
    assert top1_agrees(x, flip(x, range(allowed), by=0.005), limit=0.05, may_flip=True)[0]
    assert not top1_agrees(x, flip(x, range(allowed + 1), by=0.005), limit=0.05, may_flip=True)[0]
    assert top1_agrees(outputs(n=10, gap=0.01), flip(outputs(n=10, gap=0.01), [0], by=0.005), 0.05, may_flip=True)[0]


def test_the_ncnn_files_are_compared_with_the_bounds_of_their_precision(tmp_path):
    """Every ncnn file of an export is in the check (the format table's rows, found by name), run by ncnn, and held
    to its precision's bound: fp32 within 1e-4 of x86, fp16 by top-1 agreement."""
    (tmp_path / "exports").mkdir()
    for name in ("model_fp32.ncnn.param", "model_fp16.ncnn.param"):
        tiny_ncnn(tmp_path / "exports" / name)
    found = {key: (row, backend) for key, _, row, backend in runs(tmp_path)}
    assert set(found) == {"exports/model_fp32.ncnn.param:ncnn", "exports/model_fp16.ncnn.param:ncnn"}
    x = outputs(gap=0.3)
    fp32_row, _ = found["exports/model_fp32.ncnn.param:ncnn"]
    assert compare("fp32", tmp_path, fp32_row, "ncnn", x, x + 5e-5)["passed"]
    assert not compare("fp32", tmp_path, fp32_row, "ncnn", x, x + 2e-4)["passed"]
    fp16_row, _ = found["exports/model_fp16.ncnn.param:ncnn"]
    assert compare("fp16", tmp_path, fp16_row, "ncnn", x, x + 2e-3)["passed"]
