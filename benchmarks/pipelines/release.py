"""``floraedge release``: the released Oxford-102 model, from the raw release to ``models/oxford102-lite0/``,
or the same folder of ready files for any photos ``floraedge prepare`` reads (``--source``, ``--name``).

The recipe is a fixed list of ``floraedge`` commands, recorded verbatim in the model card:

1. ``prepare`` the raw release (cache at the resolution the model resizes to);
2. ``train`` twice, side by side: on the train split (its val figures are the recipe's honest
   numbers) and on train + val (the model that ships; val is inside its training data);
3. ``export`` both to the int8 TFLite and int8 ONNX files, each verified against PyTorch;
4. the card: recipe, commit, data, seeds, versions, sizes, the val figures of the train-split
   model (PyTorch and int8 files), its most confused classes, and the independent test figures.

Every step is skipped when its output is complete (a training resumes from ``last.pt``), so an
interrupted release picks up where it stopped. A finished training is reused only where it ran with the
options the release gives it (another ``--epochs`` or ``--seed`` is refused, not silently ignored); an
export is made again where its options or its checkpoint changed. The folder is built beside ``--out``
and renamed into place; a previous release there is first compared with the new one (top-1 on every image).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from edge_runtime import console
from edge_runtime.cli import number
from edge_runtime.errors import FloraEdgeError
from edge_runtime.metadata import classifier_title, file_sha256
from edge_runtime.options import Option, add_command, config_from_args
from edge_runtime.outdir import staged_output
from export.formats import FORMATS
from train.config import PRECISIONS
from train.models import ARCH_NAMES, input_spec

# The released files: the int8 rows of the format table, the TFLite file first (what a device or app runs)
RELEASE_FILES = tuple(
    sorted((f.filename for f in FORMATS if f.precision == "int8"), key=lambda n: not n.endswith(".tflite"))
)
RELEASE_TFLITE = RELEASE_FILES[0]
MEASUREMENTS = Path(__file__).resolve().parents[2] / "docs" / "independent_test_measurements.json"
DEFAULT_NAME = "oxford102-lite0"
DEFAULT_OUT = f"models/{DEFAULT_NAME}"  # the committed Oxford-102 release
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


@dataclass(frozen=True, kw_only=True)
class ReleaseConfig:
    source: str = "../shared/data/oxford102-trainval"
    name: str = DEFAULT_NAME
    download: bool = False
    work: str | None = None  # None: runs/release (the default name), else runs/release-<name> (with_folders)
    out: str | None = None  # None: models/<name> (with_folders)
    arch: str = "efficientnet_lite0"
    img_size: int = 256
    epochs: int = 30
    seed: int = 0
    threads: int = 1  # per training; the two trainings run side by side
    precision: str = "auto"  # of the training steps; auto: the fastest this machine trains at (training_precision)
    max_drop: float = 1.0  # export gate: most int8 accuracy drop (points) a file may have
    example: str = "image_01147.jpg"
    example_png: str = "docs/release_example.png"
    note: str = ""  # how this cut departs from the recorded commands (a resumed run, another thread count)

    def __post_init__(self):
        if not SAFE_NAME.fullmatch(self.name):
            raise FloraEdgeError(
                f"--name {self.name!r} must be a folder name: letters, digits, '.', '_' or '-', at most 64 "
                "characters, starting with a letter or digit"
            )

    @property
    def data(self) -> Path:
        """The prepared dataset inside ``work`` (its folder keeps the Oxford release's recorded name)."""
        assert self.work is not None, "resolve the folders with with_folders() first"
        return Path(self.work) / ("flowers" if self.name == DEFAULT_NAME else "data")

    @property
    def resize_size(self) -> int:
        return input_spec(self.arch, self.img_size).resize_size


def with_folders(config: ReleaseConfig) -> ReleaseConfig:
    """--out and --work made concrete from --name where they were not given."""
    default_work = "runs/release" if config.name == DEFAULT_NAME else f"runs/release-{config.name}"
    return replace(config, out=config.out or f"models/{config.name}", work=config.work or default_work)


RELEASE_OPTIONS = {
    "source": Option(
        "the photos: the raw Oxford-102 release or any layout `floraedge prepare` reads (class folders, a split "
        "tree, a CSV)"
    ),
    "name": Option("the release's name, on its card; --out and --work follow it unless given"),
    "download": Option("fetch the raw Oxford-102 release first instead of reading --source (needs internet)"),
    "work": Option(
        "intermediate runs and exports (default: runs/release for the Oxford-102 release, else runs/release-NAME)"
    ),
    "out": Option("the release folder (default: models/NAME)"),
    "arch": Option(choices=ARCH_NAMES),
    "img_size": Option("training and input resolution", parse=number(low=16)),
    "epochs": Option(parse=number(low=1)),
    "seed": Option("training and calibration seed"),
    "threads": Option("torch threads per training (the two trainings run side by side)", parse=number(low=1)),
    "precision": Option(
        "training arithmetic (`floraedge train --precision`); auto: fp16 on CUDA, bf16 on a CPU with native "
        "bfloat16 (faster training steps than fp32, the same val top-1: docs/training.md), fp32 elsewhere; "
        "the card records the one that ran",
        choices=PRECISIONS,
    ),
    "max_drop": Option("int8 export gate: most accuracy drop, in points", parse=number(float, low=0)),
    "example": Option("val image shown in the example picture"),
    "example_png": Option("where the example picture goes"),
    "note": Option("a sentence for the card: how this cut departs from the recorded commands, if it does"),
}


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = add_command(
        subparsers,
        "release",
        ReleaseConfig,
        RELEASE_OPTIONS,
        run,
        help="train, export and package a model: the released Oxford-102 one (models/oxford102-lite0/) or yours",
        description="Run the release recipe from the raw Oxford-102 release (or your own photos, --source and "
        "--name) to a folder of ready model files (int8 TFLite + int8 ONNX, labels, model card). Hours on a small CPU (the times "
        "measured: docs/training.md; bf16, chosen by default where the CPU has it, trains faster); "
        "each finished step and epoch is reused when the command is run again.",
        epilog="examples:\n  floraedge release --source ../shared/data/oxford102-trainval\n"
        "  floraedge release --source ~/photos/tomatoes --name tomatoes-lite0   # writes models/tomatoes-lite0/",
        own=console.VERBOSE_OWN,
    )
    return console.add_verbose_flag(parser)


@console.quiet_unless_verbose
def run(args: argparse.Namespace) -> int:
    card = release(config_from_args(args))
    print(json.dumps({k: card[k] for k in ("out", "files", "val")}, indent=1))
    return 0


# --- the recipe, as commands ------------------------------------------------------------------


def commands(config: ReleaseConfig) -> dict[str, list[str]]:
    """Every step of the recipe as the ``floraedge`` arguments that run it."""
    w = Path(config.work)
    data = str(config.data)
    source = ["--download"] if config.download else ["--source", str(config.source)]
    train = [
        "train", "--data", data, "--arch", config.arch, "--img-size", str(config.img_size),
        "--epochs", str(config.epochs), "--seed", str(config.seed), "--precision", config.precision,
        "--workers", "1", "--threads", str(config.threads), "--no-progress",
    ]  # fmt: skip
    export = ["export", "--data", data, "--precisions", "int8", "--calib-seed", str(config.seed),
              "--max-drop", str(config.max_drop), "--overwrite"]  # fmt: skip
    return {
        "prepare": ["prepare", *source, "--out", data, "--cache-size", str(config.resize_size)],
        "train-split": [*train, "--out", str(w / "train-split")],
        "trainval": [*train, "--train-splits", "train,val", "--no-val", "--out", str(w / "trainval")],
        "export-train-split": [*export, "--checkpoint", str(w / "train-split/best.pt"), "--out", str(w / "exports-train-split")],
        "export-trainval": [*export, "--checkpoint", str(w / "trainval/best.pt"), "--out", str(w / "exports-trainval")],
        "evaluate-test": ["evaluate", "--checkpoint", str(w / "train-split/best.pt"), "--data", data, "--split", "test",
                          "--out", str(w / "evaluate-test")],
    }  # fmt: skip


def training_precision(precision: str) -> str:
    """``auto`` made concrete for the device the trainings will pick (so that the card names what ran):
    fp16 on CUDA, bf16 on a CPU with native bfloat16, fp32 elsewhere; any other choice as given."""
    from train import engine

    if precision != "auto":
        return precision
    device = engine.pick_device("auto").type
    if device == "cuda":
        return "fp16"
    return "bf16" if device == "cpu" and engine.cpu_has_native_bf16() else "fp32"


def floraedge(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "floraedge", *args]


def done(step: str, config: ReleaseConfig) -> bool:
    w = Path(config.work)
    if step.startswith("export-"):  # a card is written even when a file fails its gate: check the files
        folder = w / step.replace("export-", "exports-")
        if not all((folder / f).is_file() for f in ("model_card.json", *RELEASE_FILES)):
            return False
        checkpoint = w / step.removeprefix("export-") / "best.pt"  # retrained since: the files are another model's
        if not checkpoint.is_file() or (folder / "model_card.json").stat().st_mtime < checkpoint.stat().st_mtime:
            return False
        recorded = json.loads((folder / "model_card.json").read_text()).get("config") or {}
        asked = json.loads(json.dumps(asdict(export_config_of(commands(config)[step]))))  # tuples as the card's lists
        return all(recorded.get(k) == v for k, v in asked.items() if k not in EXPORT_PLACES)  # e.g. another preset
    if step == "evaluate-test":
        return (w / step / "metrics.json").is_file()
    return ((config.data if step == "prepare" else w / step) / "summary.json").is_file()


def start(step: str, args: list[str], config: ReleaseConfig) -> subprocess.Popen:
    if step in TRAININGS and (Path(config.work) / step / "last.pt").is_file():
        args = [*args, "--resume"]
    log = Path(config.work) / f"{step}.log"
    print(f"== {step}: floraedge {' '.join(args)}  (log: {log})", flush=True)
    with log.open("a") as f:
        return subprocess.Popen(floraedge(args), stdout=f, stderr=subprocess.STDOUT)


TRAININGS = ("train-split", "trainval")


EXPORT_PLACES = frozenset({"checkpoint", "data", "out", "overwrite"})  # where an export reads and writes


def parsed(add_parser, args: list[str]):
    """The config a ``floraedge`` subcommand (its ``add_parser``) makes of ``args``."""
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    return config_from_args(parser.parse_args(args))


def train_config_of(args: list[str]):
    """The TrainConfig ``floraedge train`` makes of ``args`` (a training step's), as the run records it."""
    from train.cli import add_train_parser
    from train.config import with_weight_decay

    return with_weight_decay(parsed(add_train_parser, args))


def export_config_of(args: list[str]):
    """The ExportConfig ``floraedge export`` makes of ``args`` (an export step's), as its card records it."""
    from export.cli import add_parser

    return parsed(add_parser, args)


def recorded_precision(config: ReleaseConfig) -> str | None:
    """The precision a training of this release's work folder already runs at, if one started."""
    for step in TRAININGS:
        recorded = Path(config.work) / step / "config.json"
        if recorded.is_file():
            return json.loads(recorded.read_text()).get("precision")
    return None


def check_reused_training(step: str, config: ReleaseConfig) -> None:
    """A finished training is reused only where it ran with the options this release's command gives it (an
    interrupted one is checked by ``train --resume`` itself)."""
    from train.trainer import changed_options

    folder = Path(config.work) / step
    recorded = json.loads((folder / "config.json").read_text())
    changed = changed_options(recorded, asdict(train_config_of(commands(config)[step])))
    if changed:
        raise FloraEdgeError(
            f"{folder} finished with other options than this release gives it ({', '.join(changed)}; an option "
            f"`release` has no flag for changed with the code's defaults): give the release the options in "
            f"{folder / 'config.json'}, or delete {folder} to train it again"
        )


def run_steps(steps: list[str], config: ReleaseConfig) -> None:
    """Run ``steps`` side by side (skipping finished ones) and wait for all; any failure stops the release."""
    todo = {s: commands(config)[s] for s in steps if not done(s, config)}
    for step in steps:
        if step in TRAININGS and step not in todo:
            check_reused_training(step, config)
    procs = {s: start(s, args, config) for s, args in todo.items()}
    try:
        failed = [s for s, p in procs.items() if p.wait() != 0]
    except BaseException:
        for p in procs.values():
            p.terminate()
        raise
    if failed:
        logs = ", ".join(str(Path(config.work) / f"{s}.log") for s in failed)
        raise FloraEdgeError(f"release step(s) {', '.join(failed)} failed; see {logs}, fix, and run again to resume")
    for s in steps:
        print(f"== {s}: {'done' if s in todo else 'already done, reused'}", flush=True)


# --- measuring -----------------------------------------------------------------------------------


def predict_files(model: Path, paths: list[Path]) -> np.ndarray:
    """Class probabilities of ``model`` for each image, through the device runtime."""
    from edge_runtime.backends import load
    from edge_runtime.classify import Classifier
    from edge_runtime.preprocess import read_image_bgr

    classifier = Classifier(load(model))
    return np.stack([classifier(read_image_bgr(p)).probabilities for p in paths])


def split_images(data: Path, splits: tuple[str, ...]) -> tuple[list[Path], np.ndarray]:
    from prepare.manifest import read_manifest

    rows = [r for r in read_manifest(data) if r["split"] in splits]
    return [data / r["path"] for r in rows], np.array([int(r["class_index"]) for r in rows])


def most_confused(predicted: np.ndarray, targets: np.ndarray, labels: list[str], n: int = 8) -> list[dict]:
    pairs = Counter((int(t), int(p)) for t, p in zip(targets, predicted, strict=True) if t != p)
    support = Counter(int(t) for t in targets)
    return [
        {"true": labels[t], "predicted_as": labels[p], "images": k, "of": support[t]}
        for (t, p), k in pairs.most_common(n)
    ]


def val_figures(config: ReleaseConfig, labels: list[str]) -> dict:
    """The recipe's honest numbers: the train-split model and its int8 files on the val split."""
    w = Path(config.work)
    training = json.loads((w / "train-split/summary.json").read_text())
    export_card = json.loads((w / "exports-train-split/model_card.json").read_text())
    torch_top1 = export_card["verification"]["torch_top1"]
    files = {
        r["file"]: {
            "top1": r["accuracy"],
            "drop_points_vs_pytorch": round((torch_top1 - r["accuracy"]) * 100, 2),
            "top1_agreement_with_pytorch": r["top1_agreement"],
        }
        for r in export_card["files"]
        if r.get("kept")
    }
    paths, targets = split_images(config.data, ("val",))
    predicted = predict_files(w / "exports-train-split" / RELEASE_TFLITE, paths).argmax(1)
    return {
        "n": len(targets),
        "standard_error_points": round(100 * float(np.sqrt(torch_top1 * (1 - torch_top1) / len(targets))), 2),
        "pytorch_fp32": {
            "top1_device_preprocess": torch_top1,
            "training_evaluation": training.get("val"),
            "training_evaluation_flip_tta": training.get("val_tta"),
            "best_epoch": training.get("best_epoch"),
        },
        "files": files,
        "most_confused_int8_tflite": most_confused(predicted, targets, labels),
    }


def test_figures(config: ReleaseConfig) -> dict | None:
    """The train-split model (PyTorch, and each int8 file through the device runtime) on the test split; None
    without one (the Oxford-102 test images are withheld here)."""
    from edge_runtime.metrics import classification_metrics

    paths, targets = split_images(config.data, ("test",))
    if not paths:
        return None
    w = Path(config.work)
    pytorch = json.loads((w / "evaluate-test/metrics.json").read_text())
    models = {"PyTorch fp32 (device preprocessing)": pytorch}
    num_classes = len(pytorch["per_class"])
    for f in RELEASE_FILES:
        probabilities = predict_files(w / "exports-train-split" / f, paths)
        models[f"`{f}`"] = classification_metrics(np.log(probabilities + 1e-12), targets, num_classes)
    keys = ("top1", "mean_per_class")
    return {"n": len(paths), "models": {m: {k: round(float(v[k]), 5) for k in keys} for m, v in models.items()}}


def reproducibility(old: Path, new: Path, config: ReleaseConfig) -> dict | None:
    """Top-1 agreement of a previous release's int8 TFLite with the new one on every train + val image."""
    old_file, new_file = old / RELEASE_TFLITE, new / RELEASE_TFLITE
    if not old_file.is_file():
        return None
    if file_sha256(old_file) == file_sha256(new_file):  # every step was reused: nothing was reproduced
        return {"identical_files": True}
    paths, targets = split_images(config.data, ("train", "val"))
    labels = (new / "labels.txt").read_text().splitlines()
    old_p, new_p = predict_files(old_file, paths), predict_files(new_file, paths)
    a, b = old_p.argmax(1), new_p.argmax(1)
    differ = np.flatnonzero(a != b)

    def call(p: np.ndarray, i: int) -> str:
        return f"{labels[p[i].argmax()]} {p[i].max():.2f}"

    return {
        "images": len(paths),
        "same_top1": round(1 - len(differ) / len(paths), 5),
        # both models trained on these images: how often each is right says which one a difference favours
        "old_correct": round(float((a == targets).mean()), 5),
        "new_correct": round(float((b == targets).mean()), 5),
        "differing": [
            {"image": paths[i].name, "true": labels[targets[i]], "old": call(old_p, i), "new": call(new_p, i)}
            for i in differ[:50]
        ],
    }


# --- the card -------------------------------------------------------------------------------------


def git_commit() -> dict:
    def git(*args: str) -> str:
        result = subprocess.run(["git", *args], capture_output=True, text=True, cwd=MEASUREMENTS.parent)
        return result.stdout.strip() if result.returncode == 0 else "unknown"

    # uncommitted changes to what makes the model (the code, its pins, the tests); docs and the release's own
    # outputs (models/, the example picture) change with every cut
    code = ["--", ".", ":!docs", ":!models", ":!*.md"]
    return {
        "commit": git("rev-parse", "HEAD"),
        "dirty": bool(git("status", "--porcelain", "--untracked-files=no", *code)),
    }


def is_oxford(config: ReleaseConfig) -> bool:
    """Whether the prepared data is the Oxford-102 release (summaries from before other layouts are)."""
    return json.loads((config.data / "summary.json").read_text()).get("layout", "oxford102") == "oxford102"


def data_info(config: ReleaseConfig) -> dict:
    from prepare.download import md5sum  # the prepare extra (tqdm): not on a device

    summary = json.loads((config.data / "summary.json").read_text())
    source = Path(summary["config"]["source"])
    oxford = is_oxford(config)
    return {
        "dataset": "Oxford 102 Flowers (Nilsback & Zisserman 2008), official splits" if oxford else summary["dataset"],
        "oxford102": oxford,
        "num_classes": summary["num_classes"],
        "source": str(source),
        "counts": summary["counts"],
        "md5": {n: md5sum(source / n) for n in ("imagelabels.mat", "setid.mat") if (source / n).is_file()},
    }


def build_card(config: ReleaseConfig, staging: Path, val: dict, repro: dict | None) -> dict:
    from export.card import tool_versions

    w = Path(config.work)
    export_card = json.loads((w / "exports-trainval/model_card.json").read_text())
    train_config = json.loads((w / "trainval/config.json").read_text())
    data = data_info(config)
    card_test = None if data["oxford102"] else test_figures(config)
    return {
        "name": config.name,
        "out": config.out,
        "created": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "arch": export_card["arch"],
        "input": f"{config.img_size}x{config.img_size} RGB, resized to {config.resize_size} then center-cropped",
        "output": "class probabilities (softmax in the file)",
        "recipe": {
            "commands": {
                s: "floraedge " + " ".join(a)
                for s, a in commands(config).items()
                if s != "evaluate-test" or card_test is not None
            },
            "train_config": train_config,
            "seeds": {"train": config.seed, "calibration": config.seed, "data_order_and_augmentation": config.seed},
            "calibration": export_card.get("calibration"),
        },
        **git_commit(),
        "data": data,
        "tool_versions": tool_versions(),
        "files": {
            f: {"bytes": (staging / f).stat().st_size, "sha256": file_sha256(staging / f)}
            for f in RELEASE_FILES
        },
        "shipped_model": {"trained_on": ["train", "val"], "epochs": train_config["epochs"], "verification": {
            r["file"]: r["gate"] for r in export_card["files"] if r.get("kept")}},
        "val": val,
        "independent_test_measurements": json.loads(MEASUREMENTS.read_text())
        if data["oxford102"] and MEASUREMENTS.is_file() else [],
        "test": card_test,
        "reproducibility": repro,
        "note": config.note,
    }  # fmt: skip


def card_markdown(card: dict) -> str:
    files = [
        f"| `{f}` | {v['bytes']:,} | {'LiteRT / MediaPipe' if f.endswith('.tflite') else 'ONNX Runtime'} |"
        for f, v in card["files"].items()
    ]
    data = card["data"]
    oxford = data.get("oxford102", True)
    title = "Oxford-102 flower classifier" if oxford else classifier_title(data["dataset"], data["num_classes"])
    lines = [
        f"# {card['name']}: {title} ({card['arch']}, int8)",
        "",
        f"{'102 flower species' if oxford else str(data['num_classes']) + ' classes (labels.txt)'}. Input {card['input']}; normalization in the runtime from the embedded spec; "
        f"output {card['output']}. Labels and the preprocessing spec are inside each file.",
        "",
        "| file | bytes | runs on |",
        "|---|---|---|",
        *files,
        *accuracy_section(card),
        *weakness_section(card["val"], None if oxford else data["num_classes"]),
        *reproduce_section(card),
    ]
    return "\n".join(lines) + "\n"


def accuracy_section(card: dict) -> list[str]:
    val, pt = card["val"], card["val"]["pytorch_fp32"]
    counts = card["data"]["counts"]
    return [
        "",
        "## Accuracy",
        "",
        f"The shipped files were trained on train + val ({counts['train'] + counts['val']} images), so val says "
        "nothing about them. "
        f"The recipe's figures come from the same recipe trained on the train split only, on the "
        f"{val['n']} val images (standard error about {val['standard_error_points']} points):",
        "",
        "| model (train split) | val top-1 | drop vs PyTorch (points) | agreement with PyTorch |",
        "|---|---|---|---|",
        f"| PyTorch fp32 (device preprocessing) | {pt['top1_device_preprocess']:.4f} | | |",
        *[
            f"| `{f}` | {v['top1']:.4f} | {v['drop_points_vs_pytorch']:.2f} | {v['top1_agreement_with_pytorch']:.2%} |"
            for f, v in val["files"].items()
        ],
        *(test_section(card["test"]) if card.get("test") else oxford_test_section(card)),
    ]


def oxford_test_section(card: dict) -> list[str]:
    return [
        "",
        "Independent measurements on the 6149 withheld official test images (not run in this repository):",
        "",
        *[f"- {m['date']}, {m['model']}: {m['result']}" for m in card["independent_test_measurements"]],
    ]


def test_section(test: dict) -> list[str]:
    return [
        "",
        f"The same train-split model on the {test['n']} images of the test split, which no step trained or chose on:",
        "",
        "| model (train split) | test top-1 | test mean per-class |",
        "|---|---|---|",
        *[f"| {m} | {v['top1']:.4f} | {v['mean_per_class']:.4f} |" for m, v in test["models"].items()],
    ]


def weakness_section(val: dict, num_classes: int | None = None) -> list[str]:
    """The most confused classes and what the model cannot know (``num_classes`` None: the Oxford-102 text)."""
    limits = (
        "It knows only these 102 species: anything else (other flowers, leaves, people) gets one of "
        "them, often with a high score. Photos are from the web (Oxford-102); camera images in poor "
        "light, at odd scales or with several flowers are out of its distribution."
        if num_classes is None
        else f"It knows only these {num_classes} classes: anything else gets one of them, often with a high score. "
        "Photos unlike its training photos (other light, scale, background or camera) are out of its distribution."
    )
    return [
        "",
        "## What it is not good at",
        "",
        "The train-split model's most frequent confusions on val (int8 TFLite):",
        "",
        "| true class | predicted as | images |",
        "|---|---|---|",
        *[
            f"| {c['true']} | {c['predicted_as']} | {c['images']} of {c['of']} |"
            for c in val["most_confused_int8_tflite"]
        ],
        "",
        limits,
    ]


def reproduce_section(card: dict) -> list[str]:
    lines = [
        "",
        "## Reproduce",
        "",
        "`make release` (or `floraedge release`) runs, in order:",
        "",
        "```",
        *card["recipe"]["commands"].values(),
        "```",
        "",
        f"Commit {card['commit']}{' (with uncommitted changes)' if card['dirty'] else ''}; "
        f"seeds {card['recipe']['seeds']}; data md5 {card['data']['md5']}.",
        "Tool versions: " + ", ".join(f"{k} {v}" for k, v in card["tool_versions"].items()) + ".",
    ]
    if card.get("note"):
        lines += ["", f"This cut: {card['note']}"]
    repro = card.get("reproducibility")
    if repro and not repro.get("identical_files"):
        lines += [
            "",
            f"Compared with the release this one replaced: the same top-1 on {repro['same_top1']:.2%} of "
            f"{repro['images']} train + val images (right on {repro['old_correct']:.2%} before, "
            f"{repro['new_correct']:.2%} now).",
        ]
    return lines


# --- putting it together --------------------------------------------------------------------------


def example_picture(model: Path, image: Path, png: Path) -> None:
    """The overlay of ``floraedge run`` on one real image, as a small PNG."""
    import cv2

    with tempfile.TemporaryDirectory() as tmp:
        shutil.copy(image, Path(tmp) / image.name)
        video = Path(tmp) / "overlay.avi"
        args = ["run", "--model", str(model), "--source", tmp, "--headless", "--record", str(video), "--max-frames", "1"]  # fmt: skip
        subprocess.run(floraedge(args), check=True, capture_output=True)
        ok, frame = cv2.VideoCapture(str(video)).read()
    if not ok:
        raise FloraEdgeError(f"could not read back the example recording of {image}")
    png.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(png), frame, [cv2.IMWRITE_PNG_COMPRESSION, 9])


def assemble(config: ReleaseConfig) -> dict:
    w, out = Path(config.work), Path(config.out)
    check_previous_release(out)
    # built aside and swapped in whole: the previous release stays intact (and is compared with) until then
    with staged_output(out, None, overwrite=True, inputs=[w]) as staging:
        return assemble_into(staging, config)


def check_previous_release(out: Path) -> None:
    """Refuse to replace an ``out`` that is not a release folder (a mistyped --out is never deleted)."""
    if out.is_dir() and not out.is_symlink() and any(out.iterdir()) and not (out / "model_card.json").is_file():
        raise FloraEdgeError(
            f"--out {out} holds files but no model_card.json: it is not a release folder this command may "
            "replace; choose another --out or delete it yourself"
        )


def assemble_into(staging: Path, config: ReleaseConfig) -> dict:
    w, out = Path(config.work), Path(config.out)
    for f in (*RELEASE_FILES, "labels.txt"):
        shutil.copy2(w / "exports-trainval" / f, staging / f)
    labels = (staging / "labels.txt").read_text().splitlines()
    card = build_card(config, staging, val_figures(config, labels), reproducibility(out, staging, config))
    (staging / "model_card.json").write_text(json.dumps(card, indent=2, default=str) + "\n")
    (staging / "MODEL_CARD.md").write_text(card_markdown(card))
    return card


def release(config: ReleaseConfig) -> dict:
    """Run (or resume) the recipe and write the release folder; returns its card."""
    config = with_folders(config)
    # auto: the precision a started training already runs at (this machine may pick another), else this machine's
    precision = (config.precision == "auto" and recorded_precision(config)) or training_precision(config.precision)
    config = replace(config, precision=precision)
    Path(config.work).mkdir(parents=True, exist_ok=True)
    run_steps(["prepare"], config)
    run_steps(list(TRAININGS), config)
    run_steps(["export-train-split", "export-trainval"], config)
    if not is_oxford(config) and split_images(config.data, ("test",))[0]:  # Oxford's test images are withheld
        run_steps(["evaluate-test"], config)
    card = assemble(config)
    example = config.data / "jpg" / config.example
    if config.example_png and example.is_file():
        example_picture(Path(config.out) / RELEASE_TFLITE, example, Path(config.example_png))
    (Path(config.work) / "release_config.json").write_text(json.dumps(asdict(config), indent=2) + "\n")
    print(f"wrote {config.out}/ ({', '.join(RELEASE_FILES)}, labels.txt, MODEL_CARD.md, model_card.json)")
    return card
