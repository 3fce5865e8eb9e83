"""``floraedge serve`` (web page + HTTP API) and ``floraedge space`` (a folder that runs as a hosted demo)."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from edge_runtime.cli import number

SPACE_APP = '''"""FloraEdge demo: `uvicorn app:app --host 0.0.0.0 --port 7860` (a hosted Space runs this file)."""
from pathlib import Path

from edge_runtime.serve.app import ServeConfig, create_app

app = create_app(ServeConfig(model=Path(__file__).parent / "{model}"))
'''
SPACE_REQUIREMENTS = """numpy
opencv-python-headless
{runtime}
starlette
uvicorn
python-multipart
"""


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "serve",
        help="the classifier as a web page and an HTTP API (torch-free)",
        description="Serve a web page (drop a photo, or use the camera) and a JSON API "
        "(POST /v1/classify, GET /v1/model, GET /healthz, GET /openapi.json).",
        epilog="example:\n  floraedge serve --model exports/lite0/model_int8.onnx --port 8000\n"
        "  curl -s --data-binary @rose.jpg -H 'content-type: image/jpeg' localhost:8000/v1/classify",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", required=True, type=Path, help=".onnx or .tflite file")
    p.add_argument("--backend", default="auto", help="(default: %(default)s)")
    p.add_argument("--threads", type=number(low=1), default=None, help="inference threads")
    p.add_argument("--host", default="127.0.0.1", help="(default: %(default)s; 0.0.0.0 exposes the API to the network)")
    p.add_argument("--port", type=number(low=0, high=65535), default=8000, help="(default: %(default)s)")
    p.add_argument("--token", default=None, help="require 'Authorization: Bearer TOKEN' on /v1/*")
    p.add_argument(
        "--max-body-mb", type=number(float, low=0, low_open=True), default=10.0, help="(default: %(default)s)"
    )
    p.add_argument("--max-pixels", type=number(low=1), default=40_000_000, help="(default: %(default)s)")
    p.add_argument("--workers", type=number(low=1), default=1, help="concurrent inferences (default: %(default)s)")
    p.add_argument(
        "--camera",
        type=Path,
        default=None,
        help="show the live camera: the --publish folder of a `floraedge run` on this device",
    )
    p.add_argument(
        "--queue", type=number(low=0), default=16, help="requests that may wait; more get 503 (default: %(default)s)"
    )
    p.add_argument(
        "--body-timeout",
        type=number(float, low=0, low_open=True),
        default=30.0,
        help="seconds a client has to send its whole upload; slower ones get 408 (default: %(default)s)",
    )
    p.add_argument(
        "--max-connections",
        type=number(low=1),
        default=100,
        help="open connections beyond which new requests get 503; bounds memory at this x --max-body-mb "
        "(default: %(default)s)",
    )
    p.set_defaults(func=run_serve)
    s = subparsers.add_parser("space", help="write a folder that runs as a hosted demo as-is (app.py, model, README)")
    s.add_argument("--model", required=True, type=Path)
    s.add_argument("--out", required=True, type=Path)
    s.set_defaults(func=run_space)


def serve_config(args: argparse.Namespace):
    """The server's config from its command line (every serving flag lands here)."""
    from edge_runtime.serve.app import ServeConfig

    return ServeConfig(
        model=args.model,
        backend=args.backend,
        threads=args.threads,
        token=args.token,
        max_body=int(args.max_body_mb * 1024 * 1024),
        max_pixels=args.max_pixels,
        workers=args.workers,
        queue=args.queue,
        camera=args.camera,
        body_timeout=args.body_timeout,
    )


# Connection-level limits (uvicorn + h11): they bound what a client can hold without sending a request.
UVICORN_LIMITS = dict(
    http="h11",  # the limits below are h11's; httptools, when installed, would ignore them
    h11_max_incomplete_event_size=64 * 1024,  # request line + headers
    timeout_keep_alive=5,  # an idle keep-alive connection is closed after this many seconds
    backlog=256,
    timeout_graceful_shutdown=5,  # SIGTERM/Ctrl-C: stop waiting for slow clients after this
)


def run_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from edge_runtime.serve.app import create_app

    if args.host not in ("127.0.0.1", "localhost", "::1") and not args.token:
        print(
            f"WARNING: serving on {args.host} without authentication: anyone on the network can use the API "
            "(pass --token to require a bearer token)",
            file=sys.stderr,
        )
    uvicorn.run(
        create_app(serve_config(args)),
        host=args.host,
        port=args.port,
        log_level="info",
        limit_concurrency=args.max_connections,
        **UVICORN_LIMITS,
    )
    return 0


def run_space(args: argparse.Namespace) -> int:
    from edge_runtime.backends import load
    from edge_runtime.errors import FloraEdgeError

    if args.out.exists():
        raise FloraEdgeError(f"{args.out} exists; choose another --out")
    backend = load(args.model)  # refuses a file without labels and spec before anything is written
    tmp = args.out.with_name(f".{args.out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    shutil.copy2(args.model, tmp / args.model.name)
    package = Path(__file__).resolve().parents[1]
    shutil.copytree(package, tmp / "edge_runtime", ignore=shutil.ignore_patterns("__pycache__"))
    (tmp / "app.py").write_text(SPACE_APP.format(model=args.model.name))
    runtime = "ai-edge-litert" if args.model.suffix == ".tflite" else "onnxruntime"
    (tmp / "requirements.txt").write_text(SPACE_REQUIREMENTS.format(runtime=runtime))
    (tmp / "labels.txt").write_text("\n".join(backend.info.labels) + "\n")
    (tmp / "README.md").write_text(space_readme(args.model, backend))
    tmp.rename(args.out)
    print(f"wrote {args.out}/ (app.py, requirements.txt without torch, {args.model.name}, labels.txt, README.md)")
    return 0


def space_readme(model: Path, backend) -> str:
    card = model.parent / "model_card.json"
    row = {}
    if card.is_file():
        row = next((f for f in json.loads(card.read_text())["files"] if f.get("file") == model.name), {})
    accuracy = (
        f"{row['accuracy']:.4f} top-1 on {row['n']} validation images" if "accuracy" in row else "see the model card"
    )
    return (
        f"# FloraEdge flower classifier\n\n`{model.name}` ({model.stat().st_size / 1e6:.2f} MB, "
        f"{backend.info.info.get('precision', '?')}, {backend.info.info.get('arch', '?')}): {accuracy}.\n"
        f"Dataset: {backend.info.info.get('dataset', {}).get('name', 'unknown')}.\n\n"
        "Run: `pip install -r requirements.txt && uvicorn app:app --host 0.0.0.0 --port 7860`\n"
    )
