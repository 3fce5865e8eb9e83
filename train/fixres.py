"""FixRes (Touvron et al. 2019, "Fixing the train-test resolution discrepancy"): re-fit a trained
model's classifier on the images as the device will see them.

RandomResizedCrop shows a training image's objects larger than the center crop of the same image
at test time, so a model is best tested at a higher resolution than it was trained at, once its
classifier has been re-fitted there. With BatchNorm frozen (the default recipe) and the backbone
fixed, re-fitting the classifier needs each training image's features only once: two forward
passes per image (it and its mirror, at the test preprocessing), then epochs over the cached
features that cost next to nothing. The result is an ordinary checkpoint with the new input size.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import asdict, replace
from pathlib import Path

import torch
from torch import nn

from edge_runtime import console
from edge_runtime.errors import FloraEdgeError
from edge_runtime.metadata import file_sha256
from train.checkpoint import library_versions, load_bundle, model_from_bundle, save_atomic
from train.config import EvaluateConfig, FixresConfig
from train.data import CachedImages, eval_loader, image_key, warn_if_cache_too_small
from train.engine import autocast
from train.evaluate import evaluate_bundle
from train.models import get_entry
from train.soup import BUNDLE_KEYS, pooled_dataset


class FixresError(FloraEdgeError):
    """A re-fit that cannot run as asked."""


@torch.no_grad()
def head_inputs(
    model: nn.Module,
    head: nn.Module,
    loader,
    device: torch.device | None = None,
    progress: bool = True,
    amp_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """What ``head`` receives for every image of ``loader`` and then for every mirror (fp32, CPU; the first
    half of the rows are the images in loader order, the second half their mirrors), and the labels of both.
    ``amp_dtype`` runs the backbone's forward passes under autocast (None: fp32)."""
    captured, originals, mirrors, labels = [], [], [], []
    hook = head.register_forward_pre_hook(lambda module, args: captured.append(args[0].float().flatten(1).cpu()))
    device = device or torch.device("cpu")
    try:
        for images, targets in console.progress(loader, desc="features", unit="batch", enabled=progress):
            images = images.to(device).contiguous(memory_format=torch.channels_last)  # as predict() runs it
            with autocast(device, amp_dtype):
                model(images)
                originals.append(captured.pop())
                model(images.flip(3))
                mirrors.append(captured.pop())
            labels.append(targets)
    finally:
        hook.remove()
    labels = torch.cat(labels)
    return torch.cat(originals + mirrors), torch.cat([labels, labels])


@contextlib.contextmanager
def one_thread():
    """torch on one CPU thread inside the block: a linear layer's steps are too small to gain from several,
    and on a busy CPU the threads' synchronisation costs more than the step (docs/own_classes.md)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def fit_head(head: nn.Linear, features: torch.Tensor, labels: torch.Tensor, config: FixresConfig) -> None:
    """AdamW with a cosine decay over ``config.epochs`` passes of the cached features, from the head's weights."""
    optimizer = torch.optim.AdamW(head.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    steps = config.epochs * math.ceil(len(labels) / config.batch_size)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * step / steps)))
    criterion = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    generator = torch.Generator().manual_seed(config.seed)
    with torch.enable_grad(), one_thread():
        for _ in range(config.epochs):
            for batch in torch.randperm(len(labels), generator=generator).split(config.batch_size):
                loss = criterion(head(features[batch]), labels[batch])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()


def refit(config: FixresConfig) -> dict:
    """The checkpoint with its classifier re-fitted at ``config.img_size``, saved at ``config.out``; returns
    a report (with a val split: top-1 of the checkpoint as it was, of the same weights at the new size,
    and after the re-fit)."""
    out = check_config(config)
    if config.threads:
        torch.set_num_threads(config.threads)
    original = load_bundle(config.checkpoint)
    model, own_spec = model_from_bundle(original)
    spec = own_spec.at_size(config.img_size) if config.img_size else own_spec
    warn_if_cache_too_small(Path(config.data), spec)
    splits = config.train_splits or tuple(original.get("dataset", {}).get("train_splits") or ("train",))
    images = CachedImages(config.data, list(splits), spec=spec)
    head = model.get_submodule(get_entry(original["arch"]).head)
    if not isinstance(head, nn.Linear):
        raise FixresError(f"{original['arch']}'s head is a {type(head).__name__}, not the nn.Linear a re-fit expects")
    model.to(memory_format=torch.channels_last)
    features, labels = head_inputs(model, head, eval_loader(images, workers=0))
    fit_head(head, features, labels, config)
    refitted_on = {"train_splits": list(splits), "trained_images": sorted(map(image_key, images.rows))}
    bundle = {k: v for k, v in original.items() if k in BUNDLE_KEYS} | {
        "spec": spec.to_dict(),
        "model": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "dataset": pooled_dataset([original.get("dataset", {}), refitted_on]),
        "config": asdict(config),
        "distillation": original.get("distillation", {}),
        "versions": library_versions(),
        "fixres": {
            "from": config.checkpoint,
            "sha256": file_sha256(config.checkpoint),
            "from_crop_size": own_spec.crop_size,
            "crop_size": spec.crop_size,
            "train_splits": list(splits),
            "views": len(labels),
        },
        "metrics": {},
    }
    report = {"out": str(out), **bundle["fixres"]}
    if config.val_split:
        report |= evaluate_before_and_after(config, original, bundle)
        bundle["metrics"] = {config.val_split: report.pop("after")}
    out.parent.mkdir(parents=True, exist_ok=True)
    save_atomic(bundle, out, replace=config.overwrite)  # without --overwrite, never a file that appeared meanwhile
    return report


def check_config(config: FixresConfig) -> Path:
    """--out, unless it is taken (or is the checkpoint itself), and the counts the re-fit divides by."""
    out = Path(config.out)
    if out.resolve() == Path(config.checkpoint).resolve():
        raise FixresError(f"--out {out} is the checkpoint being re-fitted; write the re-fit to another file")
    if out.exists() and not config.overwrite:
        raise FixresError(f"{out} already exists; choose another --out or pass --overwrite")
    if config.epochs < 1 or config.batch_size < 1:
        raise FixresError(f"epochs ({config.epochs}) and batch_size ({config.batch_size}) must be at least 1")
    return out


def evaluate_before_and_after(config: FixresConfig, original: dict, refitted: dict) -> dict:
    """Val top-1 of the checkpoint as it was, of its weights run at the new size, and of the re-fit (whose
    whole metrics come back under "after")."""
    evaluation = EvaluateConfig(checkpoint=config.checkpoint, data=config.data, split=config.val_split)
    resized = original | {"spec": refitted["spec"]}
    after = evaluate_bundle(refitted, replace(evaluation, checkpoint=config.out))
    split = config.val_split
    return {
        f"{split}_top1_before": evaluate_bundle(original, evaluation)["top1"],
        f"{split}_top1_resized_only": evaluate_bundle(resized, evaluation)["top1"],
        f"{split}_top1": after["top1"],
        "after": after,
    }
