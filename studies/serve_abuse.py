"""Feeds docs/serving.md (the server under connection attacks).

`floraedge serve` under connection attacks: does a legitimate client still get answered, and how fast?

Three attacks, each by N loopback connections that reopen whenever the server closes them:
``idle`` connections send nothing, ``slow-head`` ones dribble a request head a byte at a time and
never finish it, ``slow-body`` ones send a complete head declaring a large body and trickle the
body. Meanwhile one legitimate client posts a real JPEG at a steady rate (a new connection per
request). Reports its success rate and p50/p99 latency with no attack and under each attack, and
how many attacker connections the server closed. Every loop is bounded (requests per phase).

    python -m studies.serve_abuse --model exports/lite0/model_int8.onnx --attacks idle,slow-head --n 100,300,600
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from tests.serve_clients import (
    HeldConnections,
    SlowBodies,
    legitimate_client,
    raise_open_files_limit,
    sample_jpeg,
    serve_process,
    summarize,
)


def start_attack(kind: str, port: int, n: int):
    if kind == "slow-body":
        return SlowBodies(port, n)
    return HeldConnections(port, n, slow=kind == "slow-head")


def attack_row(kind: str, n: int, attack, results: list, idle: dict) -> dict:
    row = {"attack": kind, "connections": n, **summarize(results)}
    row["p99_over_no_attack"] = round(row["p99_ms"] / idle["p99_ms"], 2) if row["p99_ms"] and idle["p99_ms"] else None
    if isinstance(attack, HeldConnections):
        row["closed_by_server"], row["first_close_s"] = attack.closed_by_server, attack.first_close_s
    else:
        row["closed_by_server"] = attack.reconnects
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, type=Path)
    p.add_argument("--image", type=Path, default=None, help="default: a synthetic 640x480 JPEG")
    p.add_argument(
        "--attacks", type=lambda t: t.split(","), default=["idle", "slow-head", "slow-body"],
        help="comma-separated, of idle, slow-head, slow-body (default: all three)",
    )  # fmt: skip
    p.add_argument("--n", type=lambda t: [int(x) for x in t.split(",")], default=[50], help="attacker connections, "
                   "comma-separated: one phase per count (default: 50)")  # fmt: skip
    p.add_argument("--requests", type=int, default=200, help="legitimate requests per phase (default: %(default)s)")
    p.add_argument("--interval", type=float, default=0.05, help="seconds between them (default: %(default)s)")
    p.add_argument("--settle", type=float, default=2.0, help="seconds between opening the attack and measuring")
    p.add_argument(
        "--server-flags", default="--body-timeout 10", help="more `floraedge serve` flags (default: %(default)s)"
    )
    args = p.parse_args(argv)
    unknown = set(args.attacks) - {"idle", "slow-head", "slow-body"}
    if unknown:
        p.error(f"unknown attack(s) {sorted(unknown)}; choose from idle, slow-head, slow-body")
    raise_open_files_limit(max(args.n) + 256)
    body = args.image.read_bytes() if args.image else sample_jpeg()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "serve.log"
        with serve_process(args.model, *args.server_flags.split(), log=log) as (base, _):
            port = int(base.rsplit(":", 1)[1])
            legitimate_client(base, body, 20, 0.0)  # warm-up
            idle = summarize(legitimate_client(base, body, args.requests, args.interval))
            for kind in args.attacks:
                for n in args.n:
                    attack = start_attack(kind, port, n)
                    time.sleep(args.settle)
                    results = legitimate_client(base, body, args.requests, args.interval)
                    attack.stop()
                    rows.append(attack_row(kind, n, attack, results, idle))
                    time.sleep(1.0)
        text = log.read_text()
    result = {
        "server_flags": args.server_flags,
        "no_attack": idle,
        "rows": rows,
        "server_tracebacks": text.count("Traceback"),
    }
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
