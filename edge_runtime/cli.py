"""``floraedge classify``: top-k for image files and folders (torch-free)."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from edge_runtime.sources import IMAGE_SUFFIXES

BACKEND_CHOICES = ("auto", "onnxruntime", "litert", "opencv")


def number(kind=int, *, low=None, high=None, low_open: bool = False):
    """An argparse ``type=`` that parses ``kind`` and refuses values outside [low, high] ((low, high] if low_open)."""
    name = "an integer" if kind is int else "a number"
    bounds = f"{'(' if low_open else '['}{'-inf' if low is None else low}, {'inf' if high is None else high}]"

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {name}") from None
        below = low is not None and (value <= low if low_open else value < low)
        if below or (high is not None and value > high) or value != value:  # value != value: NaN
            raise argparse.ArgumentTypeError(f"{text} is outside {bounds}")
        return value

    return parse


def add_model_arguments(
    p: argparse.ArgumentParser, threads_help: str = "inference threads (default: the runtime's)"
) -> None:
    p.add_argument("--model", required=True, type=Path, help=".onnx or .tflite file (labels + spec inside)")
    p.add_argument(
        "--backend",
        choices=BACKEND_CHOICES,
        default="auto",
        help="runtime; auto picks by file type (default: %(default)s)",
    )
    p.add_argument("--threads", type=number(low=1), default=None, help=threads_help)
    p.add_argument(
        "--providers",
        default=None,
        help="onnxruntime execution providers, comma-separated, e.g. TensorrtExecutionProvider,CUDAExecutionProvider",
    )
    p.add_argument("--top-k", type=number(low=1), default=5, help="(default: %(default)s)")


def add_parser(subparsers) -> None:
    add_classify_parser(subparsers)
    add_run_parser(subparsers)


def add_classify_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "classify",
        help="top-k classes for image files and folders (torch-free)",
        description="Classify images with an exported model; labels and preprocessing come "
        "from the model's own metadata.",
        epilog="example:\n  floraedge classify --model export/model_int8.onnx photos/ rose.jpg --json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_arguments(p)
    p.add_argument("--json", action="store_true", help="one JSON object per image instead of a table")
    p.add_argument("images", nargs="+", type=Path, help="image files or folders")
    p.set_defaults(func=run_classify)


def iter_images(paths: list[Path]):
    for path in paths:
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        else:
            yield path


def open_classifier(args):
    from edge_runtime.backends import load
    from edge_runtime.classify import Classifier

    providers = args.providers.split(",") if args.providers else None
    return Classifier(load(args.model, args.backend, threads=args.threads, providers=providers), k=args.top_k)


def run_classify(args: argparse.Namespace) -> int:
    from edge_runtime.errors import FloraEdgeError
    from edge_runtime.preprocess import ImageReadError, read_image_bgr

    paths = list(iter_images(args.images))
    if not paths:
        raise FloraEdgeError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {' '.join(map(str, args.images))}")
    classifier, failures = open_classifier(args), 0
    for path in paths:
        try:
            prediction = classifier(read_image_bgr(path))
        except ImageReadError as exc:
            print(f"skipped: {exc}", file=sys.stderr)
            failures += 1
            continue
        if args.json:
            print(json.dumps({"image": str(path), **prediction.to_dict()}))
        else:
            best = ", ".join(f"{name} {p:.3f}" for _, name, p in prediction.top)
            print(f"{path}: {best}  ({prediction.model_ms:.1f} ms)")
    return 1 if failures else 0


SOURCE_HELP = """where frames come from:
  0, 1, ...                      a camera index (V4L2 / USB webcam)
  clip.mp4                       a video file (ends cleanly at its end)
  photos/                        a folder of images, in name order
  rtsp://user:pw@host/stream     an RTSP or HTTP stream (reopened with backoff when it drops)
  'libcamerasrc ! ... ! appsink' a GStreamer pipeline (Raspberry Pi camera, Jetson CSI camera; see README)"""


def add_run_parser(subparsers) -> None:
    from edge_runtime.live import SMOOTHING

    p = subparsers.add_parser(
        "run",
        help="the live camera loop (torch-free): classify frames, overlay or JSON lines",
        description="Classify live frames on the device. " + SOURCE_HELP,
        epilog="examples:\n  floraedge run --model model_int8.tflite --source 0\n"
        "  floraedge run --model model.onnx --source clip.mp4 --headless --max-frames 100",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_arguments(
        p,
        threads_help="threads for the model and the frame pipeline together (default: the CPU count); "
        "split as 2 -> model 1 + pipeline 1, 4 -> 3 + 1, 8 -> 6 + 2",
    )
    p.add_argument(
        "--model-threads", type=number(low=1), default=None, help="the model's share of --threads (default: as above)"
    )
    p.add_argument("--source", default="0", help="camera index, video file, folder, URL or GStreamer pipeline")
    p.add_argument("--headless", action="store_true", help="no window: one JSON line per classified frame on stdout")
    p.add_argument("--record", type=Path, default=None, help="write the annotated frames to this .mp4")
    p.add_argument(
        "--publish",
        type=Path,
        default=None,
        help="keep the newest annotated frame + result in this folder for `floraedge serve --camera`",
    )
    p.add_argument("--max-frames", type=number(low=1), default=None, help="stop after this many classified frames")
    p.add_argument(
        "--threshold",
        type=number(float, low=0, high=1),
        default=0.5,
        help="below this smoothed score say 'unsure' (default: %(default)s)",
    )
    p.add_argument("--smoothing", choices=SMOOTHING, default="ema", help="(default: %(default)s)")
    p.add_argument(
        "--alpha",
        type=number(float, low=0, high=1, low_open=True),
        default=0.3,
        help="EMA weight of the newest frame (default: %(default)s)",
    )
    p.add_argument(
        "--window", type=number(low=1), default=5, help="frames averaged by --smoothing window (default: %(default)s)"
    )
    p.add_argument("--width", type=number(low=1), default=None, help="ask the camera for this frame width")
    p.add_argument("--height", type=number(low=1), default=None, help="ask the camera for this frame height")
    p.set_defaults(func=run_live_command, top_k=3)


def check_live_paths(args: argparse.Namespace) -> None:
    """Refuse, before the model loads, a source folder without images and outputs that cannot be written."""
    from edge_runtime.errors import FloraEdgeError

    source = Path(args.source)
    if source.is_dir() and not any(p.suffix.lower() in IMAGE_SUFFIXES for p in source.iterdir()):
        raise FloraEdgeError(f"--source {source} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    for flag, folder in (("--record", args.record and args.record.parent), ("--publish", args.publish)):
        if folder is None:
            continue
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=folder):
                pass
        except OSError as exc:
            raise FloraEdgeError(
                f"{flag}: cannot write to {folder} ({exc.strerror}); choose a writable folder"
            ) from exc


def run_live_command(args: argparse.Namespace) -> int:
    import os

    from edge_runtime.live import LiveConfig, run_live, split_threads

    check_live_paths(args)
    model_threads, pipeline_threads = split_threads(args.threads or os.cpu_count() or 1)
    if args.model_threads:
        model_threads, pipeline_threads = args.model_threads, max(1, (args.threads or 0) - args.model_threads)
    args.threads = model_threads
    config = LiveConfig(
        source=args.source,
        headless=args.headless,
        record=args.record,
        publish=args.publish,
        max_frames=args.max_frames,
        threshold=args.threshold,
        smoothing=args.smoothing,
        alpha=args.alpha,
        window=args.window,
        top_k=args.top_k,
        width=args.width,
        height=args.height,
        pipeline_threads=None if args.backend == "opencv" else pipeline_threads,  # OpenCV DNN shares cv2's threads
    )
    stats = run_live(open_classifier(args), config, emit=lambda line: print(line, flush=True))
    print(json.dumps({"summary": stats}), file=sys.stderr)
    return 0
