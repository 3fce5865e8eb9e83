"""``floraedge train --recipe linear``: a first model in minutes on a CPU.

The pretrained backbone stays as it is; only a new linear classifier is fitted. Its inputs (the
backbone's features of each training image and of its mirror, at the test preprocessing) are computed
once and kept in memory, so the epochs over them cost next to nothing: the forward passes are the whole
cost. FixRes (``train/fixres.py``) re-fits a trained classifier the same way, and this module uses its
two steps. The result is the usual ``best.pt``: evaluate, export, classify and run it like any other.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from edge_runtime.atomic import write_json_atomic
from edge_runtime.errors import FloraEdgeError
from edge_runtime.metrics import classification_metrics
from train.checkpoint import make_bundle, save_atomic
from train.config import TrainConfig, with_weight_decay
from train.data import CachedImages, check_labels, dataset_classes, dataset_info, eval_loader, warn_if_cache_too_small
from train.engine import cpu_has_native_bf16, pick_device, seeded
from train.evaluate import write_report
from train.fixres import fit_head, head_inputs
from train.models import build_model, get_entry, input_spec
from train.runlog import check_run_dir, make_run_dir
from train.trainer import mixed_precision

SUMMARY_KEYS = ("top1", "top5", "mean_per_class", "n")


def check_linear_config(config: TrainConfig) -> None:
    """Refuse the options that have no meaning without training the backbone (rather than ignore them)."""
    if config.teachers:
        raise FloraEdgeError("--recipe linear fits on fixed features and cannot distil; drop --teachers")
    if config.resume:
        raise FloraEdgeError("--recipe linear has no epochs to resume; run it again without --resume")
    if config.ema_epochs:
        raise FloraEdgeError("--recipe linear keeps no moving average; drop --ema-epochs")
    if config.weights == "none":
        raise FloraEdgeError("--recipe linear needs pretrained --weights (a random backbone's features are noise)")


def feature_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of the forward passes that compute the training features (None: fp32).

    ``auto`` takes bfloat16 wherever the device computes it natively (a CPU with AVX512-BF16 or AMX, or CUDA):
    the forward passes are this recipe's whole cost and run faster in bf16 (docs/training.md, "bf16 training"),
    while the head fitted on them scores the same on val (docs/own_classes.md, "The quick path again"). Other
    choices mean what they mean for ``train``. The val features are always fp32: they measure the model as it is exported."""
    if precision != "auto":
        return mixed_precision(precision, device)[0]
    native = device.type == "cuda" and torch.cuda.is_bf16_supported() or device.type == "cpu" and cpu_has_native_bf16()
    return torch.bfloat16 if native else None


def fit_linear(config: TrainConfig) -> dict:
    """A linear classifier on the frozen backbone's features, saved as ``best.pt`` in ``config.out``;
    returns the summary (val metrics from the same features, with and without the mirror averaged in)."""
    config = with_weight_decay(config)
    with contextlib.ExitStack() as stack:  # a run replacing another (--overwrite) is swapped in when this closes
        return fit_linear_into(config, stack)


def fit_linear_into(config: TrainConfig, stack: contextlib.ExitStack) -> dict:
    check_linear_config(config)
    start = time.perf_counter()
    device = pick_device(config.device)
    if config.threads:
        torch.set_num_threads(config.threads)
    replace = check_run_dir(config)
    spec = input_spec(config.arch, config.img_size)
    warn_if_cache_too_small(Path(config.data), spec)
    class_names = dataset_classes(config.data)
    train_set = CachedImages(config.data, list(config.train_splits), spec=spec)  # the test preprocessing
    check_labels(train_set, class_names)
    val_set = CachedImages(config.data, [config.val_split], spec=spec) if config.val_split else None
    out = make_run_dir(config, replace, stack)
    write_json_atomic(out / "config.json", asdict(config))
    with seeded(config.seed, device):  # the new head's initial weights
        model = build_model(config.arch, len(class_names), config.weights)
    model = model.eval().to(device, memory_format=torch.channels_last)
    head = model.get_submodule(get_entry(config.arch).head)
    if not isinstance(head, nn.Linear):
        raise FloraEdgeError(f"{config.arch}'s head is a {type(head).__name__}, not the nn.Linear --recipe linear fits")
    amp_dtype = feature_dtype(config.precision, device)
    loader = eval_loader(train_set, config.workers)
    features, labels = head_inputs(model, head, loader, device, config.progress, amp_dtype)
    features_s = time.perf_counter() - start
    head.cpu()
    fit_head(head, features, labels, config)
    model.cpu()
    summary = {
        "recipe": "linear",
        "weight_decay": config.weight_decay,
        "train_views": len(labels),
        "features_s": round(features_s, 1),
        "features_precision": str(amp_dtype or torch.float32).removeprefix("torch."),
    }
    metrics = {"train": {"images": len(train_set)}, "epoch": config.epochs}
    if val_set is not None:
        reports = validate_linear(model, head, val_set, len(class_names), config, device)
        model.cpu()
        for name, report in reports.items():
            write_report(out / name, report, class_names)
            summary[name.replace("eval", "val")] = {k: report[k] for k in SUMMARY_KEYS}
        metrics["val"] = reports["eval"]
    bundle = make_bundle(
        model,
        arch=config.arch,
        class_names=class_names,
        spec=spec,
        config=asdict(config),
        metrics=metrics,
        epoch=config.epochs,
        dataset=dataset_info(config, train_set),
    )
    save_atomic(bundle, out / "best.pt")
    summary["train_wall_s"] = round(time.perf_counter() - start, 1)
    write_json_atomic(out / "summary.json", summary)
    return summary


@torch.no_grad()
def validate_linear(
    model: nn.Module,
    head: nn.Linear,
    val_set: CachedImages,
    num_classes: int,
    config: TrainConfig,
    device: torch.device,
) -> dict[str, dict]:
    """Val metrics of the fitted head, from one pass over the images and their mirrors: "eval" (the image
    alone, as a device runs it) and "eval_tta" (the mirror's logits averaged in, as ``evaluate --tta``)."""
    model.to(device)
    features, labels = head_inputs(model, head, eval_loader(val_set, config.workers), device, config.progress)
    head.cpu()
    logits = head(features)
    n = len(val_set)
    targets = labels[:n].numpy()
    reports = {
        "eval": classification_metrics(logits[:n].numpy(), targets, num_classes),
        "eval_tta": classification_metrics(((logits[:n] + logits[n:]) / 2).numpy(), targets, num_classes),
    }
    for tta, report in zip((False, True), reports.values(), strict=True):
        report |= {"split": val_set.rows[0]["split"], "tta_flip": tta}
    return reports
