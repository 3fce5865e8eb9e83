"""The config of ``floraedge export``: the one declaration of every option's name, type and default
(the CLI is generated from these fields; torch-free, so ``--help`` stays fast)."""

from __future__ import annotations

from dataclasses import dataclass

from export.formats import FORMAT_NAMES, PRECISIONS


@dataclass(frozen=True, kw_only=True)
class ExportConfig:
    checkpoint: str
    data: str  # prepared dataset: calibration (train split) and verification (val split) images
    out: str
    formats: tuple[str, ...] = FORMAT_NAMES
    precisions: tuple[str, ...] = PRECISIONS
    calib_n: int = 300
    calib_min: int = 100
    calib_seed: int = 0
    calib_method: str = "minmax"  # a key of export.formats.CALIB_METHODS
    per_channel: bool = True
    ort_preset: str = "x86"  # a key of export.formats.ORT_PRESETS
    verify_split: str = "val"
    verify_n: int | None = None
    max_drop: float = 1.0
    allow_drop: bool = False
    nhwc: bool = True
    overwrite: bool = False
