"""The config of ``floraedge serve``: the one declaration of every serving option's name, type and
default (the CLI is generated from these fields; no web framework imported, so ``--help`` stays fast)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from edge_runtime.errors import FloraEdgeError
from edge_runtime.foreign import OverrideFields

# RFC 6750's token characters: what fits in an `Authorization: Bearer` header as the browser and curl send it
TOKEN = re.compile(r"[A-Za-z0-9._~+/-]+=*")


def check_token(token: str | None) -> None:
    """Refuse a token no client could send: empty (nothing would authenticate) or with other characters."""
    if token is None:
        return
    if not token:
        raise FloraEdgeError("--token is empty: no request could authenticate; pass a long random token")
    if not TOKEN.fullmatch(token):
        raise FloraEdgeError(
            "--token may hold only ASCII letters, digits and - . _ ~ + / (then = signs): "
            "other characters cannot travel in an HTTP header as written (e.g. `openssl rand -hex 24`)"
        )


@dataclass(frozen=True, kw_only=True)
class ServeConfig(OverrideFields):  # how to run a model that does not say it itself
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
    max_connections: int = 100  # requests in progress past their upload; uploads hold at most this x max_body bytes
    head_timeout: float = 10.0  # seconds a connection has to send a complete request head
    max_open_connections: int = 512  # open TCP connections; past it the one with the least progress is closed
    allowed_hosts: tuple[str, ...] = ()  # Host names answered besides IP addresses, localhost and this machine's

    def __post_init__(self):
        check_token(self.token)
