"""``floraedge serve`` (web page + HTTP API) and ``floraedge space`` (a folder that runs as a hosted demo)."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from edge_runtime.cli import BACKEND_CHOICES, number
from edge_runtime.options import Option, add_command, add_config_options, config_from_args
from edge_runtime.serve.config import ServeConfig

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


MIB = 1024 * 1024

SERVE_OPTIONS = {
    "model": Option(".onnx or .tflite file"),
    "backend": Option(choices=BACKEND_CHOICES),
    "threads": Option("inference threads", parse=number(low=1)),
    "token": Option("require 'Authorization: Bearer TOKEN' on /v1/*"),
    "max_pixels": Option(parse=number(low=1)),
    "workers": Option("concurrent inferences", parse=number(low=1)),
    "camera": Option("show the live camera: the --publish folder of a `floraedge run` on this device"),
    "queue": Option("requests that may wait; more get 503", parse=number(low=0)),
    "body_timeout": Option(
        "seconds a client has to send its whole upload; slower ones get 408", parse=number(float, low=0, low_open=True)
    ),
}
# the server's own options: where it listens and how many connections it holds (uvicorn's, not the app's)
SERVE_OWN = {
    "host": "the address uvicorn listens on",
    "port": "the port uvicorn listens on",
    "max_connections": "uvicorn's limit_concurrency",
}


@dataclass(frozen=True, kw_only=True)
class SpaceConfig:
    model: Path
    out: Path


def add_parser(subparsers) -> None:
    add_serve_parser(subparsers)
    s = subparsers.add_parser("space", help="write a folder that runs as a hosted demo as-is (app.py, model, README)")
    add_config_options(s, SpaceConfig, {"model": Option(".onnx or .tflite file"), "out": Option("the new folder")})
    s.set_defaults(func=run_space)


def add_serve_parser(subparsers) -> None:
    p = add_command(
        subparsers,
        "serve",
        ServeConfig,
        SERVE_OPTIONS,
        run_serve,
        help="the classifier as a web page and an HTTP API (torch-free)",
        description="Serve a web page (drop a photo, or use the camera) and a JSON API "
        "(POST /v1/classify, GET /v1/model, GET /healthz, GET /openapi.json).",
        epilog="example:\n  floraedge serve --model exports/lite0/model_int8.onnx --port 8000\n"
        "  curl -s --data-binary @rose.jpg -H 'content-type: image/jpeg' localhost:8000/v1/classify",
        converted={"max_body_mb": ("max_body", lambda mb: int(mb * MIB))},
        own=SERVE_OWN,
    )
    p.add_argument("--host", default="127.0.0.1", help="(default: %(default)s; 0.0.0.0 exposes the API to the network)")
    p.add_argument("--port", type=number(low=0, high=65535), default=8000, help="(default: %(default)s)")
    p.add_argument(
        "--max-body-mb",
        type=number(float, low=0, low_open=True),
        default=ServeConfig.max_body / MIB,
        help="largest upload, in MiB (default: %(default)s)",
    )
    p.add_argument(
        "--max-connections",
        type=number(low=1),
        default=100,
        help="open connections beyond which new requests get 503; bounds memory at this x --max-body-mb "
        "(default: %(default)s)",
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

    config = config_from_args(args)  # host, port and max_connections stay in args: they are uvicorn's
    if args.host not in ("127.0.0.1", "localhost", "::1") and not config.token:
        print(
            f"WARNING: serving on {args.host} without authentication: anyone on the network can use the API "
            "(pass --token to require a bearer token)",
            file=sys.stderr,
        )
    uvicorn.run(
        create_app(config),
        host=args.host,
        port=args.port,
        log_level="info",
        limit_concurrency=args.max_connections,
        **UVICORN_LIMITS,
    )
    return 0


def run_space(args: argparse.Namespace) -> int:
    from edge_runtime.atomic import atomic_dir
    from edge_runtime.backends import BACKENDS, load
    from edge_runtime.errors import FloraEdgeError

    config = config_from_args(args)
    if config.out.exists():
        raise FloraEdgeError(f"{config.out} exists; choose another --out")
    backend = load(config.model)  # refuses a file without labels and spec before anything is written
    with atomic_dir(config.out) as tmp:
        shutil.copy2(config.model, tmp / config.model.name)
        package = Path(__file__).resolve().parents[1]
        shutil.copytree(package, tmp / "edge_runtime", ignore=shutil.ignore_patterns("__pycache__"))
        (tmp / "app.py").write_text(SPACE_APP.format(model=config.model.name))
        runtime = BACKENDS[backend.name].package
        (tmp / "requirements.txt").write_text(SPACE_REQUIREMENTS.format(runtime=runtime))
        (tmp / "labels.txt").write_text("\n".join(backend.info.labels) + "\n")
        (tmp / "README.md").write_text(space_readme(config.model, backend))
    print(f"wrote {config.out}/ (app.py, requirements.txt without torch, {config.model.name}, labels.txt, README.md)")
    return 0


def space_readme(model: Path, backend) -> str:
    from edge_runtime.bounded import read_text_bounded

    card = model.parent / "model_card.json"
    row = {}
    if card.is_file():
        files = json.loads(read_text_bounded(card, what="model card"))["files"]
        row = next((f for f in files if f.get("file") == model.name), {})
    accuracy = (
        f"{row['accuracy']:.4f} top-1 on {row['n']} validation images" if "accuracy" in row else "see the model card"
    )
    return (
        f"# FloraEdge flower classifier\n\n`{model.name}` ({model.stat().st_size / 1e6:.2f} MB, "
        f"{backend.info.info.get('precision', '?')}, {backend.info.info.get('arch', '?')}): {accuracy}.\n"
        f"Dataset: {backend.info.info.get('dataset', {}).get('name', 'unknown')}.\n\n"
        "Run: `pip install -r requirements.txt && uvicorn app:app --host 0.0.0.0 --port 7860`\n"
    )
