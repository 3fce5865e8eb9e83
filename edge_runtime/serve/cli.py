"""``floraedge serve`` (web page + HTTP API) and ``floraedge space`` (a folder that runs as a hosted demo)."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from edge_runtime.bounded import read_text_bounded
from edge_runtime.cli import BACKEND_CHOICES, number
from edge_runtime.errors import FloraEdgeError
from edge_runtime.foreign import OVERRIDE_OPTIONS, ModelOverrides
from edge_runtime.metadata import describe
from edge_runtime.options import Option, add_command, add_config_options, config_from_args
from edge_runtime.serve.config import ServeConfig

# uvicorn's --http takes this class: the head deadline and connection cap that `floraedge serve` runs with
GUARDED_PROTOCOL = "edge_runtime.serve.connections:GuardedH11Protocol"
SPACE_APP = '''"""FloraEdge demo (a hosted Space runs this file). By hand, with the head deadline and connection cap of
`floraedge serve`: `uvicorn app:app --host 0.0.0.0 --port 7860 --http {protocol} --ws none`."""
from pathlib import Path

from edge_runtime.serve.app import ServeConfig, create_app

# allowed_hosts "*": a hosted Space answers under the platform's own domain names, which check the Host
app = create_app(ServeConfig(model=Path(__file__).parent / {model}, allowed_hosts=("*",)))
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
    "model": Option(".onnx, .tflite or ncnn .param file"),
    "backend": Option(choices=BACKEND_CHOICES),
    "threads": Option("inference threads", parse=number(low=1)),
    "token": Option(
        "require 'Authorization: Bearer TOKEN' on /v1/* and the camera (letters, digits, - . _ ~ + /); "
        "the web page asks for it"
    ),
    "max_pixels": Option(parse=number(low=1)),
    "workers": Option("inferences run at once", parse=number(low=1), flag="--concurrency", old_flag="--workers"),
    "camera": Option("show the live camera: the --publish folder of a `floraedge run` on this device"),
    "queue": Option("requests that may wait; more get 503", parse=number(low=0)),
    "body_timeout": Option(
        "seconds a client has to send its whole upload; slower ones get 408", parse=number(float, low=0, low_open=True)
    ),
    "max_connections": Option(
        "requests in progress beyond which new ones get 503. Connections still sending a head do not count, "
        "and uploads still arriving count by their bytes: all together hold at most this x --max-body-mb",
        parse=number(low=1),
    ),
    "head_timeout": Option(
        "seconds a connection has to send a complete request head (after opening or after its previous answer); "
        "then it is closed, so idle or stalled connections hold nothing",
        parse=number(float, low=0, low_open=True),
    ),
    "max_open_connections": Option(
        "open TCP connections; a new one past this closes the idle, stalled or trickling connection that has "
        "made the least progress (a request past its upload is never closed); must exceed --max-connections",
        parse=number(low=1),
    ),
    "allowed_hosts": Option(
        "more host names the server answers to, comma-separated (by default only IP addresses, localhost and this "
        "machine's name: other Host headers get 400, against DNS rebinding); '*' allows any (behind a proxy)"
    ),
    **OVERRIDE_OPTIONS,
}
# the server's own options: where it listens and how many connections it holds (uvicorn's, not the app's)
SERVE_OWN = {
    "host": "the address uvicorn listens on",
    "port": "the port uvicorn listens on",
}


@dataclass(frozen=True, kw_only=True)
class SpaceConfig:
    model: Path
    out: Path


def add_parser(subparsers) -> None:
    add_serve_parser(subparsers)
    s = subparsers.add_parser("space", help="write a folder that runs as a hosted demo as-is (app.py, model, README)")
    add_config_options(
        s, SpaceConfig, {"model": Option(".onnx, .tflite or ncnn .param file"), "out": Option("the new folder")}
    )
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


# Connection-level limits (uvicorn + h11): they bound what a client can hold without sending a request.
# The request-head deadline and the open-connection cap are the protocol's (connections.py): run_serve
# passes it as `http`. No limit_concurrency: uvicorn would count idle connections (the app counts requests).
UVICORN_LIMITS = dict(
    h11_max_incomplete_event_size=64 * 1024,  # request line + headers
    timeout_keep_alive=5,  # an idle keep-alive connection is closed after this many seconds
    backlog=256,
    timeout_graceful_shutdown=5,  # SIGTERM/Ctrl-C: stop waiting for slow clients after this
    ws="none",  # no WebSocket routes: an Upgrade request stays HTTP, under the limits above
)


def run_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from edge_runtime.serve.app import create_app
    from edge_runtime.serve.connections import guarded_protocol

    config = config_from_args(args)  # host and port stay in args: they are uvicorn's
    ModelOverrides.of(config)  # refuses contradictory or malformed model options before anything starts
    if config.max_connections >= config.max_open_connections:  # else requests in progress could fill every place
        raise FloraEdgeError(
            f"--max-connections ({config.max_connections}) must be below --max-open-connections "
            f"({config.max_open_connections}): a new client takes the place of an idle connection, never of a request"
        )
    ensure_open_files(config.max_open_connections)
    if args.host not in ("127.0.0.1", "localhost", "::1") and config.token is None:
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
        http=guarded_protocol(head_timeout=config.head_timeout, max_open=config.max_open_connections),
        **UVICORN_LIMITS,
    )
    return 0


FILES_BESIDES_CONNECTIONS = 128  # the model, the runtime's libraries, the log, the listening socket


def ensure_open_files(connections: int) -> None:
    """Lift the soft limit on open files so that ``connections`` sockets fit (within the hard limit), or refuse."""
    import resource

    needed = connections + FILES_BESIDES_CONNECTIONS
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            raise FloraEdgeError(
                f"--max-open-connections {connections} needs {needed} open files but this process may open {hard}: "
                f"lower it to {max(1, hard - FILES_BESIDES_CONNECTIONS)} or raise the limit (ulimit -Hn)"
            )
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


def run_space(args: argparse.Namespace) -> int:
    from edge_runtime.atomic import atomic_dir
    from edge_runtime.backends import BACKENDS, load
    from edge_runtime.errors import FloraEdgeError
    from edge_runtime.modelfile import model_files

    config = config_from_args(args)
    if config.out.exists():
        raise FloraEdgeError(f"{config.out} exists; choose another --out")
    if not config.model.name.isprintable():  # a newline or undecodable byte would garble the README and labels
        raise FloraEdgeError(f"the model's file name {config.model.name!r} has unprintable characters; rename it")
    backend = load(config.model)  # refuses a file without labels and spec before anything is written
    with atomic_dir(config.out) as tmp:
        card = config.model.with_name(
            config.model.name + ".json"
        )  # a sidecar: an ncnn model's only labels and spec, or how to run a file that does not say it
        for part in (*model_files(config.model), *([card] if card.is_file() else [])):
            shutil.copy2(part, tmp / part.name)
        package = Path(__file__).resolve().parents[1]
        shutil.copytree(package, tmp / "edge_runtime", ignore=shutil.ignore_patterns("__pycache__"))
        (tmp / "app.py").write_text(
            SPACE_APP.format(model=repr(config.model.name), protocol=GUARDED_PROTOCOL)
        )  # a literal, never code
        runtime = BACKENDS[backend.name].package
        (tmp / "requirements.txt").write_text(SPACE_REQUIREMENTS.format(runtime=runtime))
        (tmp / "labels.txt").write_text("\n".join(backend.info.labels) + "\n")
        (tmp / "README.md").write_text(space_readme(config.model, backend))
    print(f"wrote {config.out}/ (app.py, requirements.txt without torch, {config.model.name}, labels.txt, README.md)")
    return 0


def card_row(card: Path, name: str) -> dict:
    """The card's entry for file ``name``: an export's card lists its files, a release's card maps names to
    entries; a card of another shape, or none, gives {} (the README then points to the card)."""
    if not card.exists():
        return {}
    try:  # the project's bounded read: size checked first, a FIFO or device refused without blocking
        files = json.loads(read_text_bounded(card, what="model card"))["files"]
    except (OSError, ValueError, KeyError, TypeError):  # TooLargeError is a ValueError
        return {}
    if isinstance(files, dict):
        row = files.get(name)
    elif isinstance(files, list):
        row = next((f for f in files if isinstance(f, dict) and f.get("file") == name), None)
    else:
        row = None
    return row if isinstance(row, dict) and isinstance(row.get("accuracy"), float) and "n" in row else {}


def space_readme(model: Path, backend) -> str:
    from edge_runtime.modelfile import model_bytes

    row = card_row(model.parent / "model_card.json", model.name)
    accuracy = (
        f"{row['accuracy']:.4f} top-1 on {row['n']} validation images" if "accuracy" in row else "see the model card"
    )
    return (
        f"# FloraEdge: {describe(backend.info)}\n\n`{model.name}` ({model_bytes(model) / 1e6:.2f} MB, "
        f"{backend.info.info.get('precision', '?')}, {backend.info.info.get('arch', '?')}): {accuracy}.\n"
        f"Dataset: {backend.info.info.get('dataset', {}).get('name', 'unknown')}.\n\n"
        f"Run: `pip install -r requirements.txt && uvicorn app:app --host 0.0.0.0 --port 7860 --http {GUARDED_PROTOCOL} --ws none`\n"
    )
