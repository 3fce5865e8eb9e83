"""The config of ``floraedge serve``: the one declaration of every serving option's name, type and
default (the CLI is generated from these fields; no web framework imported, so ``--help`` stays fast)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, kw_only=True)
class ServeConfig:
    model: Path
    backend: str = "auto"
    threads: int | None = None
    top_k: int = 5
    max_body: int = 10 * 1024 * 1024  # bytes (the command line takes MiB: --max-body-mb)
    max_pixels: int = 40_000_000
    workers: int = 1  # concurrent inferences
    queue: int = 16  # requests allowed to wait for a worker
    token: str | None = None
    camera: Path | None = None  # the --publish folder of a `floraedge run` on this device
    body_timeout: float = 30.0  # seconds to receive a whole upload; a client trickling its body is cut off
