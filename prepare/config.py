"""The config of ``floraedge prepare``: the one declaration of every option's name, type and default
(the CLI is generated from these fields; light to import, so ``--help`` stays fast)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True, kw_only=True)
class PrepareConfig:
    """What ``floraedge prepare`` does; saved in ``summary.json`` of the output."""

    out: Path
    source: Path | None = None  # the raw release folder; with ``download``, where the download put it
    download: bool = False  # fetch the release into ``download_dir`` first (instead of reading ``source``)
    download_dir: Path = Path("data/oxford102-raw")
    mirror: str | None = None  # base URL to download from instead of the dataset's home page
    split: str = "official"
    val_frac: float = 0.1
    test_frac: float = 0.1
    seed: int = 0
    cache_size: int = 256
    overwrite: bool = False
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    layout: str = "auto"  # how --source is laid out (prepare.layouts.LAYOUTS); auto recognizes it
    name: str | None = None  # the dataset's name; default: the Oxford-102 name, or the source folder's
