"""Evaluate a model bundle on any split of a prepared dataset: top-1, top-5, mean per-class,
confusion matrix and a per-class report."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import torch

from edge_runtime.metrics import classification_metrics
from edge_runtime.outdir import OutputError, staged_output
from train.checkpoint import load_bundle, model_from_bundle
from train.config import EvaluateConfig
from train.data import CachedImages, eval_loader, seen_in_training
from train.distill import check_classes, ensemble_probabilities
from train.engine import predict


def evaluate_checkpoint(config: EvaluateConfig) -> dict:
    """Metrics of ``config.checkpoint`` (averaged with ``config.ensemble``) on ``config.split``; with
    ``config.out``, also metrics.json, per_class.csv, confusion.csv."""
    bundle = load_bundle(config.checkpoint)
    metrics = evaluate_bundle(bundle, config)
    if config.out is not None:
        write_report(Path(config.out), metrics, bundle["class_names"])
    return metrics


def evaluate_bundle(bundle: dict, config: EvaluateConfig) -> dict:
    """Metrics of a loaded bundle (averaged with ``config.ensemble``) on ``config.split``."""
    logits, targets = split_logits(bundle, config)
    seen = seen_in_training(bundle, config.data, config.split)  # of a member: the most any one saw
    if config.ensemble:
        members = [logits]
        for path in config.ensemble:
            member = load_bundle(path)
            check_classes(path, list(member["class_names"]), list(bundle["class_names"]), role="ensemble member")
            members.append(split_logits(member, config)[0])  # same split, same order: same targets
            seen = max(seen, seen_in_training(member, config.data, config.split))
        logits = ensemble_probabilities(members, temperature=1.0).log()
    metrics = classification_metrics(logits.numpy(), targets.numpy(), bundle["num_classes"])
    if seen:
        print(
            f"warning: {seen} of the {config.split!r} images were in the training data; these figures are optimistic",
            file=sys.stderr,
        )
    metrics |= {
        "seen_in_training": seen,
        "split": config.split,
        "tta_flip": config.tta_flip,
        "checkpoint": str(config.checkpoint),
        "ensemble": list(config.ensemble),
        "arch": bundle["arch"],
    }
    return metrics


def split_logits(bundle: dict, config: EvaluateConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """The bundle's logits on the split, each image prepared as its own spec asks, and the targets."""
    model, spec = model_from_bundle(bundle)
    dataset = CachedImages(config.data, [config.split], spec=spec, in_memory=False)  # one pass: streamed
    loader = eval_loader(dataset, config.workers, config.batch_size)
    return predict(model, loader, torch.device("cpu"), tta_flip=config.tta_flip, progress=True)


REPORT_FILES = ("metrics.json", "per_class.csv", "confusion.csv")


def write_report(out: Path, metrics: dict, names: list[str]) -> None:
    """The report, built aside and swapped in at ``out``: a previous report stays whole until then, and a
    folder holding anything but a report is refused, never written into."""
    if out.is_dir() and not out.is_symlink() and not {p.name for p in out.iterdir()} <= set(REPORT_FILES):
        raise OutputError(
            f"--out {out} holds files other than an evaluation report ({', '.join(REPORT_FILES)}); choose another --out"
        )
    with staged_output(out, None, overwrite=True) as stage:
        write_report_files(stage, metrics, names)


def write_report_files(out: Path, metrics: dict, names: list[str]) -> None:
    (out / "metrics.json").write_text(json.dumps({k: v for k, v in metrics.items() if k != "confusion"}, indent=2))
    confusion = metrics["confusion"]
    with (out / "per_class.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["class_index", "class_name", "support", "accuracy", "most_confused_with"])
        for i, row in enumerate(confusion):
            others = [(n, j) for j, n in enumerate(row) if j != i and n]
            worst = names[max(others)[1]] if others else ""
            writer.writerow([i, names[i], sum(row), round(metrics["per_class"][i], 4), worst])
    with (out / "confusion.csv").open("w", newline="") as f:
        csv.writer(f).writerows(confusion)
