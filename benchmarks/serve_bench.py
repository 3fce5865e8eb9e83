"""`floraedge serve` under load over loopback: requests/s and p50/p99 for 1, 4 and 16 concurrent
clients with a real JPEG, next to the model-only latency of the same file and threads.

    python -m benchmarks.serve_bench --model exports/lite0/model_int8.onnx --image some.jpg --threads 2
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import uvicorn

from benchmarks.measure import latency
from edge_runtime.backends import load
from edge_runtime.preprocess import preprocess, read_image_bgr
from edge_runtime.serve.app import ServeConfig, create_app


def start_server(model: Path, threads: int, workers: int) -> tuple[str, uvicorn.Server]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = create_app(ServeConfig(model=model, threads=threads, workers=workers, queue=64))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    return f"http://127.0.0.1:{port}/v1/classify", server


def post(url: str, body: bytes) -> tuple[float, dict]:
    request = urllib.request.Request(url, data=body, headers={"content-type": "image/jpeg"})
    start = time.perf_counter()
    with urllib.request.urlopen(request, timeout=30) as response:
        result = json.loads(response.read())
    return (time.perf_counter() - start) * 1e3, result


def load_test(url: str, body: bytes, clients: int, requests: int) -> dict:
    """``requests`` requests (bounded) from ``clients`` concurrent clients."""
    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(lambda _: post(url, body), range(requests)))
    wall = time.perf_counter() - start
    client_ms = np.array([r[0] for r in results])
    server_ms = np.array([r[1]["total_ms"] for r in results])
    return {
        "clients": clients,
        "requests": requests,
        "rps": round(requests / wall, 1),
        "p50_ms": round(float(np.percentile(client_ms, 50)), 2),
        "p99_ms": round(float(np.percentile(client_ms, 99)), 2),
        "server_total_p50_ms": round(float(np.median(server_ms)), 2),
        "model_p50_ms": round(float(np.median([r[1]["model_ms"] for r in results])), 2),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, type=Path)
    p.add_argument("--image", required=True, type=Path)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--requests", type=int, default=200)
    args = p.parse_args(argv)
    backend = load(args.model, threads=args.threads)
    model_only = latency(backend, preprocess(read_image_bgr(args.image), backend.info.spec), warmup=20, runs=200)
    url, server = start_server(args.model, args.threads, workers=1)
    body = args.image.read_bytes()
    for _ in range(20):
        post(url, body)  # warm-up
    rows = [load_test(url, body, clients, args.requests) for clients in (1, 4, 16)]
    server.should_exit = True
    one = rows[0]
    result = {
        "model": str(args.model),
        "threads": args.threads,
        "model_only_p50_ms": model_only["median_ms"],
        "rows": rows,
        "overhead_vs_model_at_1": round((one["p50_ms"] - model_only["median_ms"]) / model_only["median_ms"], 3),
        "http_overhead_at_1_ms": round(one["p50_ms"] - one["server_total_p50_ms"], 2),
    }
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
