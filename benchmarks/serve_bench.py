"""`floraedge serve` under load over loopback: requests/s and p50/p99 for 1, 4 and 16 concurrent
clients with a real JPEG, next to the model-only latency of the same file and threads. Each client
keeps its connection alive, as a browser or an HTTP client library does.

    python -m benchmarks.serve_bench --model exports/lite0/model_int8.tflite --image some.jpg --threads 1
"""

from __future__ import annotations

import argparse
import http.client
import json
import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import uvicorn

from benchmarks.measure import latency
from edge_runtime.backends import load
from edge_runtime.options import comma_separated
from edge_runtime.preprocess import preprocess, read_image_bgr
from edge_runtime.serve.app import ServeConfig, create_app
from edge_runtime.serve.cli import UVICORN_LIMITS
from edge_runtime.serve.connections import guarded_protocol


def start_server(model: Path, threads: int, workers: int) -> tuple[int, uvicorn.Server]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = ServeConfig(model=model, threads=threads, workers=workers, queue=64)
    protocol = guarded_protocol(head_timeout=config.head_timeout, max_open=config.max_open_connections)
    uvicorn_config = uvicorn.Config(
        create_app(config), host="127.0.0.1", port=port, log_level="warning", http=protocol, **UVICORN_LIMITS
    )  # the connection limits of `floraedge serve`
    server = uvicorn.Server(uvicorn_config)
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    return port, server


class Client:
    """One keep-alive connection; ``post`` returns (client-side ms, JSON answer)."""

    def __init__(self, port: int):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    def post(self, body: bytes) -> tuple[float, dict]:
        start = time.perf_counter()
        self.conn.request("POST", "/v1/classify", body=body, headers={"content-type": "image/jpeg"})
        result = json.loads(self.conn.getresponse().read())
        return (time.perf_counter() - start) * 1e3, result


def load_test(port: int, body: bytes, clients: int, requests: int) -> dict:
    """``requests`` requests (bounded) from ``clients`` concurrent keep-alive clients."""
    local = threading.local()

    def post(_):
        if not hasattr(local, "client"):
            local.client = Client(port)
        return local.client.post(body)

    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(post, range(clients)))  # connect and warm up each client
        start = time.perf_counter()
        results = list(pool.map(post, range(requests)))
        wall = time.perf_counter() - start
    client_ms = np.array([r[0] for r in results])
    server_ms = np.array([r[1]["total_ms"] for r in results])
    stage = {k: round(float(np.median([r[1][k] for r in results])), 2) for k in STAGES if k in results[0][1]}
    return {
        "clients": clients,
        "requests": requests,
        "rps": round(requests / wall, 1),
        "p50_ms": round(float(np.percentile(client_ms, 50)), 2),
        "p99_ms": round(float(np.percentile(client_ms, 99)), 2),
        "server_total_p50_ms": round(float(np.median(server_ms)), 2),
        "stages_p50_ms": stage,
    }


STAGES = ("decode_ms", "preprocess_ms", "queue_ms", "model_ms", "total_ms")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, type=Path)
    p.add_argument("--image", required=True, type=Path)
    p.add_argument("--threads", type=int, default=1, help="model threads (default: %(default)s)")
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--clients", type=comma_separated(int), default=(1, 4, 16), help="comma-separated (default: 1,4,16)")
    args = p.parse_args(argv)
    backend = load(args.model, threads=args.threads)
    sample = preprocess(read_image_bgr(args.image, backend.info.spec), backend.info.spec)
    port, server = start_server(args.model, args.threads, workers=1)
    body = args.image.read_bytes()
    for _ in range(20):
        Client(port).post(body)  # warm-up
    rows = []
    for clients in args.clients:
        model_only = latency(backend, sample, warmup=10, runs=200)  # next to each row: a ratio in one run
        row = load_test(port, body, clients, args.requests)
        row["model_only_p50_ms"], row["model_only_ips"] = model_only["median_ms"], model_only["throughput_ips"]
        row["p50_over_model_p50"] = round(row["p50_ms"] / model_only["median_ms"], 3)
        row["rps_over_model_ips"] = round(row["rps"] / model_only["throughput_ips"], 3)
        rows.append(row)
    server.should_exit = True
    result = {"model": str(args.model), "image": str(args.image), "threads": args.threads, "rows": rows}
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
