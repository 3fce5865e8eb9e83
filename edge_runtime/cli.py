"""``floraedge classify`` and ``floraedge run``: options generated from ``ClassifyConfig`` and
``RunConfig`` (torch-free)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from edge_runtime.admission import IMAGE_SUFFIXES
from edge_runtime.backends import BACKENDS
from edge_runtime.foreign import OVERRIDE_OPTIONS, OverrideFields
from edge_runtime.live import SMOOTHING, LiveConfig
from edge_runtime.options import Option, add_command, config_from_args, number
from edge_runtime.sources import SOURCE_KINDS

BACKEND_CHOICES = ("auto", *BACKENDS)


@dataclass(frozen=True, kw_only=True)
class ModelConfig(OverrideFields):
    """The model file to run and how (the options ``classify``, ``run`` and ``inspect`` share); the inherited
    fields say how to run a file that does not say it itself (``edge_runtime.foreign``)."""

    model: Path
    backend: str = "auto"
    threads: int | None = None
    providers: tuple[str, ...] | None = None  # onnxruntime execution providers, in order of preference
    top_k: int = 5


@dataclass(frozen=True, kw_only=True)
class ClassifyConfig(ModelConfig):
    images: tuple[Path, ...]
    json: bool = False


@dataclass(frozen=True, kw_only=True)
class RunConfig(ModelConfig, LiveConfig):
    """``floraedge run``: the model, and the live loop's config (``threads`` is the budget of both)."""

    source: str = "0"  # the first camera
    top_k: int = 3
    model_threads: int | None = None  # the model's share of ``threads``; None: split_threads decides


MODEL_OPTIONS = {
    "model": Option(
        ".onnx or .tflite file (FloraEdge's export, or another tool's: see the options below), or an ncnn .param "
        "(its .bin and .param.json beside it)"
    ),
    "backend": Option(
        "runtime; auto picks by file type (.onnx: onnxruntime, .tflite: litert, .param: ncnn); opencv and openvino "
        "also run .onnx files (openvino: `pip install floraedge[edge-openvino]`, docs/runtimes.md)",
        choices=BACKEND_CHOICES,
    ),
    "threads": Option("inference threads (default: the runtime's)", parse=number(low=1)),
    "providers": Option(
        "onnxruntime execution providers, comma-separated, e.g. TensorrtExecutionProvider,CUDAExecutionProvider"
    ),
    "top_k": Option(parse=number(low=1)),
    **OVERRIDE_OPTIONS,
}

CLASSIFY_OPTIONS = {
    **MODEL_OPTIONS,
    "json": Option("one JSON object per image instead of a table"),
    "images": Option("image files or folders", positional=True),
}


def add_parser(subparsers) -> None:
    add_classify_parser(subparsers)
    add_run_parser(subparsers)


def add_classify_parser(subparsers) -> None:
    add_command(
        subparsers,
        "classify",
        ClassifyConfig,
        CLASSIFY_OPTIONS,
        run_classify,
        help="top-k classes for image files and folders (torch-free)",
        description="Classify images with an exported model; labels and preprocessing come "
        "from the model's own metadata.",
        epilog="example:\n  floraedge classify --model export/model_int8.onnx photos/ rose.jpg --json",
    )


def iter_images(paths: list[Path]):
    for path in paths:
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        else:
            yield path


def other_files(paths: tuple[Path, ...], shown: int = 3) -> list[Path]:
    """Up to ``shown`` files in the folders of ``paths`` that ``iter_images`` passes over (said, not skipped silently)."""
    found = []
    for folder in (p for p in paths if p.is_dir()):
        for path in folder.rglob("*"):
            if path.suffix.lower() not in IMAGE_SUFFIXES and not path.is_dir():
                found.append(path)
                if len(found) >= shown:
                    return found
    return found


def open_classifier(config: ModelConfig, threads: int | None = None):
    """The classifier ``config`` names, on ``threads`` (default: ``config.threads``)."""
    from edge_runtime.backends import load
    from edge_runtime.classify import Classifier
    from edge_runtime.foreign import ModelOverrides

    providers = list(config.providers) if config.providers else None
    overrides = ModelOverrides.of(config)
    backend = load(
        config.model, config.backend, threads=threads or config.threads, providers=providers, overrides=overrides
    )
    say_notes(backend.info)
    return Classifier(backend, k=config.top_k)


def say_notes(info) -> None:
    """What the user's options replaced in what the model file says, on stderr (flags win, and say so)."""
    for note in info.notes:
        print(f"note: {note}", file=sys.stderr)


def run_classify(args: argparse.Namespace) -> int:
    from edge_runtime.errors import FloraEdgeError, InferenceError
    from edge_runtime.preprocess import ImageReadError, read_image_bgr

    config = config_from_args(args)
    paths = list(iter_images(config.images))
    if not paths:
        raise FloraEdgeError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {' '.join(map(str, config.images))}")
    not_images = other_files(config.images)
    if not_images:
        print(
            f"note: files whose names are not those of images were not classified (e.g. "
            f"{', '.join(map(str, not_images))}); FloraEdge reads {', '.join(sorted(IMAGE_SUFFIXES))}",
            file=sys.stderr,
        )
    classifier, failures = open_classifier(config), 0
    for path in paths:
        try:
            prediction = classifier(read_image_bgr(path))
        except ImageReadError as exc:
            print(f"skipped: {exc}", file=sys.stderr)
            failures += 1
            continue
        except InferenceError as exc:  # the model, not the image: the next image would fail too
            raise InferenceError(f"{path}: {exc}") from exc
        if config.json:
            print(json.dumps({"image": str(path), **prediction.to_dict()}))
        else:
            best = ", ".join(f"{name} {p:.3f}" for _, name, p in prediction.top)
            print(f"{path}: {best}  ({prediction.model_ms:.1f} ms)")
    return 1 if failures else 0


SOURCE_HELP = """where frames come from (the kind is decided once, said on stderr, and can be forced with --source-kind):
  0, 1, ...                      a camera index (V4L2 / USB webcam)
  /dev/video0                    a camera device
  clip.mp4                       a video file (ends cleanly at its end)
  photos/                        a folder of images, in name order (an error if it disappears mid-run)
  rtsp://user:pw@host/stream     a live RTSP or HTTP stream (reopened with backoff when it drops, at most
                                 --max-reconnects times in a row; credentials are never printed);
                                 a URL of a finite video (one that knows its length) ends at its end
  'libcamerasrc ! ... ! appsink' a GStreamer pipeline, with --source-kind gstreamer (never guessed: a file
                                 name may hold a '!'); Raspberry Pi camera, Jetson CSI camera, see docs/devices.md
where results go: a window with the overlay (q or Esc quits; needs an OpenCV with window support and a
display: see docs/devices.md, 'A window on the device'), --headless JSON lines, --record, --publish; where no window
can open and nothing else is asked for, run stops at once and says which of these work."""


RUN_OPTIONS = {
    **MODEL_OPTIONS,
    "threads": Option(
        "threads for the model and the frame pipeline together (default: the CPU count); "
        "split as 2 -> model 1 + pipeline 1, 4 -> 3 + 1, 8 -> 6 + 2",
        parse=number(low=1),
    ),
    "model_threads": Option("the model's share of --threads (default: as above)", parse=number(low=1)),
    "source": Option("camera index or device, video file, folder, URL, or GStreamer pipeline (see above)"),
    "source_kind": Option("what --source is; auto never picks gstreamer", choices=SOURCE_KINDS),
    "max_reconnects": Option(
        "reopen attempts in a row without a frame before a live source counts as lost (exit 1)", parse=number(low=0)
    ),
    "headless": Option("no window: one JSON line per classified frame on stdout (a headless Pi, SSH)"),
    "record": Option("write the annotated frames to this .mp4"),
    "publish": Option("keep the newest annotated frame + result in this folder for `floraedge serve --camera`"),
    "max_frames": Option("stop after this many classified frames", parse=number(low=1)),
    "threshold": Option("below this smoothed score say 'unsure'", parse=number(float, low=0, high=1)),
    "smoothing": Option(choices=SMOOTHING),
    "alpha": Option("EMA weight of the newest frame", parse=number(float, low=0, high=1, low_open=True)),
    "window": Option("frames averaged by --smoothing window", parse=number(low=1)),
    "width": Option("ask the camera for this frame width", parse=number(low=1)),
    "height": Option("ask the camera for this frame height", parse=number(low=1)),
}


def add_run_parser(subparsers) -> None:
    add_command(
        subparsers,
        "run",
        RunConfig,
        RUN_OPTIONS,
        run_live_command,
        help="the live camera loop (torch-free): classify frames, overlay or JSON lines",
        description="Classify live frames on the device. " + SOURCE_HELP,
        epilog="examples:\n  floraedge run --model model_int8.tflite --source 0                 # a window (desktop)\n"
        "  floraedge run --model model_int8.tflite --source 0 --headless      # JSON lines (headless Pi)\n"
        "  floraedge run --model model.onnx --source clip.mp4 --headless --max-frames 100\n"
        "  floraedge run --model model_int8.tflite --source-kind gstreamer --source 'libcamerasrc ! ... ! appsink'",
    )


def check_live_paths(config: LiveConfig) -> None:
    """Refuse, before the model loads, a source that is not what it seems, a source folder without images and
    outputs that cannot be written."""
    from edge_runtime.errors import FloraEdgeError
    from edge_runtime.sources import resolve_source

    source = resolve_source(config.source, config.source_kind)
    if source.kind == "gstreamer" and not cv2_has_gstreamer():
        raise FloraEdgeError(
            "--source-kind gstreamer: this OpenCV has no GStreamer (PyPI's wheels have none); use Debian's "
            "python3-opencv (docs/devices.md, 'Installing on a Raspberry Pi': the Camera Module) or JetPack's OpenCV"
        )
    folder_images = source.kind == "folder" and any(
        p.suffix.lower() in IMAGE_SUFFIXES for p in Path(source.target).iterdir()
    )
    if source.kind == "folder" and not folder_images:
        raise FloraEdgeError(f"--source {source.target} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    for flag, folder in (("--record", config.record and config.record.parent), ("--publish", config.publish)):
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


def cv2_has_gstreamer() -> bool:
    import cv2

    return cv2.videoio_registry.hasBackend(cv2.CAP_GSTREAMER)


def thread_split(config: RunConfig) -> tuple[int, int]:
    """(model, pipeline) threads: ``--model-threads`` of ``--threads``, or split_threads' split of it."""
    import os

    from edge_runtime.live import split_threads

    if config.model_threads:
        return config.model_threads, max(1, (config.threads or 0) - config.model_threads)
    return split_threads(config.threads or os.cpu_count() or 1)


def run_live_command(args: argparse.Namespace) -> int:
    from edge_runtime.live import plan_window, run_live, stderr_line
    from edge_runtime.sources import SourceError, redact

    config = config_from_args(args)
    check_live_paths(config)
    # the window is decided before the model loads: with none possible and nothing else asked for, stop now
    config = dataclasses.replace(config, window_title=f"FloraEdge: {config.model.name}")
    config = dataclasses.replace(config, show_window=plan_window(config, stderr_line))
    model_threads, pipeline_threads = thread_split(config)
    if config.backend == "opencv":  # OpenCV DNN shares cv2's threads
        pipeline_threads = None
    classifier = open_classifier(config, threads=model_threads)
    config = dataclasses.replace(config, pipeline_threads=pipeline_threads)
    stats = run_live(classifier, config, emit=lambda line: print(line, flush=True), report=stderr_line)
    print(json.dumps({"summary": stats}), file=sys.stderr)
    if stats["ended"] == "source lost":
        raise SourceError(
            f"{redact(config.source)!r} gave no frame after {config.max_reconnects} reconnect(s) in a row "
            "(--max-reconnects): check the camera or stream"
        )
    return 0
