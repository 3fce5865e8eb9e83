"""``train(config)``: the fine-tuning recipe from a prepared dataset to ``best.pt`` and ``last.pt``.

The default recipe (measured on Oxford-102, see README): BatchNorm frozen, a few head-only
epochs, AdamW with a 10x lower backbone LR, linear warm-up + cosine, label smoothing,
RandomResizedCrop + flip + TrivialAugmentWide, best-by-validation with early stopping.
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from edge_runtime.errors import FloraEdgeError
from edge_runtime.outdir import OutputError, check_output, write_marker
from prepare.categories import class_names
from prepare.manifest import read_manifest
from train import distributed as dist
from train.checkpoint import load_bundle, make_bundle, save_atomic
from train.data import CachedImages, train_transform
from train.engine import (
    TrainError,
    classification_metrics,
    predict,
    set_train_mode,
    train_one_epoch,
    uses_channels_last,
)
from train.models import build_model, get_entry


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    data: str
    out: str
    arch: str = "efficientnet_lite0"
    weights: str = "imagenet"
    epochs: int = 30
    head_epochs: int = 3
    batch_size: int = 32
    lr: float = 2e-3  # head; the backbone gets lr * backbone_lr_scale
    backbone_lr_scale: float = 0.1
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.1
    min_scale: float = 0.35
    trivial_augment: bool = True
    freeze_bn: bool = True
    freeze_early: bool = True  # keep the backbone's high-resolution early layers frozen (registry: early_layers)
    img_size: int | None = None  # None: the backbone's own input size
    train_splits: tuple[str, ...] = ("train",)
    val_split: str | None = "val"  # None when training on train+val (the final protocol)
    tta_flip: bool = False  # per-epoch validation; the final report gives both
    patience: int = 10
    seed: int = 0
    workers: int = field(default_factory=lambda: min(2, os.cpu_count() or 1))
    threads: int | None = None
    device: str = "auto"
    resume: bool = False
    overwrite: bool = False
    progress: bool = True


def pick_device(name: str) -> torch.device:
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def model_spec(config: TrainConfig):
    spec = get_entry(config.arch).spec
    if config.img_size:
        spec = spec.replace(crop_size=config.img_size, resize_size=round(config.img_size / 0.875))
    return spec


def warmup_cosine(total_steps: int, warmup_steps: int, start: int = 0):
    """LR factor per step: 0 before ``start``, then linear warm-up and a cosine decay to 0 at the end."""

    def factor(step: int) -> float:
        step -= start
        if step < 0:
            return 0.0
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        span = max(1, total_steps - start - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup_steps) / span)))

    return factor


def head_and_backbone(model: nn.Module, head: str) -> tuple[list, list]:
    head_ids = {id(p) for p in model.get_submodule(head).parameters()}
    params = list(model.parameters())
    return [p for p in params if id(p) in head_ids], [p for p in params if id(p) not in head_ids]


def make_optimizer(model: nn.Module, config: TrainConfig, steps_per_epoch: int):
    head, backbone = head_and_backbone(model, get_entry(config.arch).head)
    optimizer = torch.optim.AdamW(
        [{"params": backbone, "lr": config.lr * config.backbone_lr_scale}, {"params": head, "lr": config.lr}],
        weight_decay=config.weight_decay,
    )
    total, warmup = config.epochs * steps_per_epoch, max(1, round(config.warmup_epochs * steps_per_epoch))
    head_start = config.head_epochs * steps_per_epoch
    lambdas = [warmup_cosine(total, warmup, start=head_start), warmup_cosine(total, warmup)]
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambdas)


def set_backbone_trainable(model: nn.Module, config: TrainConfig, trainable: bool) -> None:
    entry = get_entry(config.arch)
    head, backbone = head_and_backbone(model, entry.head)
    for p in backbone:
        p.requires_grad_(trainable)
    if config.freeze_early:
        for name in entry.early_layers:
            model.get_submodule(name).requires_grad_(False)


def set_epoch_mode(model: nn.Module, config: TrainConfig, *, backbone_trainable: bool) -> None:
    """What trains this epoch (the head alone, or also the backbone less its frozen early layers) and BatchNorm's mode."""
    set_backbone_trainable(model, config, backbone_trainable)
    set_train_mode(model, freeze_bn=config.freeze_bn)


RUN = "train"  # the marker kind of a run directory


def check_run_dir(config: TrainConfig) -> bool:
    """Refuse a run directory that exists (without --resume or --overwrite) or overlaps an input; True: replace it."""
    out = Path(config.out)
    weights = config.weights if Path(config.weights).is_file() else None
    if config.resume:  # continues the run in place (runs from before the marker existed included)
        if not (out / "last.pt").is_file():
            raise FloraEdgeError(f"--resume: {out}/last.pt does not exist; start a new run without --resume")
        return False
    try:
        return check_output(out, RUN, overwrite=config.overwrite, inputs=[config.data, weights])
    except OutputError as exc:
        raise OutputError(f"{exc} (or --resume to continue a run)") from exc


def make_run_dir(config: TrainConfig, replace: bool) -> Path:
    out = Path(config.out)
    if dist.is_main():
        if replace:
            shutil.rmtree(out)
        out.mkdir(parents=True, exist_ok=True)
        write_marker(out, RUN)
    return out


def make_loaders(config: TrainConfig, spec) -> tuple[CachedImages, CachedImages | None]:
    data = Path(config.data)
    if not (data / "manifest.csv").is_file() or not (data / "summary.json").is_file():
        raise FloraEdgeError(
            f"--data {data} is not a prepared dataset (no manifest.csv or summary.json); "
            f"run `floraedge prepare --out {data}` first"
        )
    read_manifest(data)  # a malformed one is a one-line error here, before anything is loaded
    try:
        cache_size = int(json.loads((data / "summary.json").read_text())["config"]["cache_size"])
    except (ValueError, KeyError, TypeError) as exc:
        raise FloraEdgeError(
            f"{data}/summary.json is malformed ({exc!r}); re-create it with `floraedge prepare`"
        ) from exc
    if spec.resize_size > cache_size:
        print(
            f"warning: the model resizes to {spec.resize_size} px but the cache holds {cache_size} px; "
            f"re-run prepare with --cache-size {spec.resize_size} for full detail"
        )
    train_set = CachedImages(
        data,
        list(config.train_splits),
        transform=train_transform(spec, min_scale=config.min_scale, trivial_augment=config.trivial_augment),
    )
    val_set = CachedImages(data, [config.val_split], spec=spec) if config.val_split else None
    return train_set, val_set


def dataset_info(config: TrainConfig) -> dict:
    summary = json.loads((Path(config.data) / "summary.json").read_text())
    return {
        "name": summary["dataset"],
        "synthetic": summary["synthetic"],
        "source": summary["source"],
        "train_splits": list(config.train_splits),
        "val_split": config.val_split,
    }


def epoch_loader(dataset, config: TrainConfig, epoch: int) -> DataLoader:
    """A loader whose order and augmentation depend only on (seed, epoch): a resumed run repeats them."""
    torch.manual_seed(config.seed * 1000 + epoch)
    generator = torch.Generator().manual_seed(config.seed * 1000 + epoch)
    sampler = None
    if dist.world_size() > 1:
        sampler = DistributedSampler(dataset, seed=config.seed, drop_last=True)
        sampler.set_epoch(epoch)
    return DataLoader(
        dataset,
        batch_size=config.batch_size // dist.world_size(),
        shuffle=sampler is None,
        sampler=sampler,
        drop_last=True,
        num_workers=config.workers,
        generator=generator,
        persistent_workers=False,
    )


def eval_loader(dataset, config: TrainConfig) -> DataLoader:
    return DataLoader(dataset, batch_size=64, num_workers=config.workers)


def log_epoch(out: Path, record: dict) -> None:
    with (out / "metrics.jsonl").open("a") as f:
        f.write(json.dumps(record) + "\n")
    path = out / "metrics.csv"
    new = not path.exists()
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(record))
        if new:
            writer.writeheader()
        writer.writerow(record)


def plot_curves(out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [h["train_loss"] for h in history], label="train loss")
    ax_loss.set_xlabel("epoch"), ax_loss.legend()
    ax_acc.plot(epochs, [h["train_acc"] for h in history], label="train top-1")
    if "val_top1" in history[0]:
        ax_acc.plot(epochs, [h["val_top1"] for h in history], label="val top-1")
        ax_acc.plot(epochs, [h["val_mean_per_class"] for h in history], label="val mean per-class", ls="--")
    ax_acc.set_xlabel("epoch"), ax_acc.set_ylim(0, 1), ax_acc.legend()
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=100)
    plt.close(fig)


def save_state(out: Path, bundle: dict, optimizer, scheduler, state: dict) -> None:
    save_atomic(
        {**bundle, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "train_state": state},
        out / "last.pt",
    )


def evaluate_split(model, dataset, config: TrainConfig, device) -> dict:
    logits, targets = predict(model, eval_loader(dataset, config), device, tta_flip=config.tta_flip)
    return classification_metrics(logits, targets, len(class_names()))


def epoch_record(epoch: int, scheduler, stats: dict, val: dict | None, seconds: float) -> dict:
    record = {
        "epoch": epoch,
        "lr_head": scheduler.get_last_lr()[1],
        "lr_backbone": scheduler.get_last_lr()[0],
        **{k: round(v, 5) for k, v in stats.items()},
        "epoch_s": round(seconds, 1),
    }
    if val is not None:
        record |= {f"val_{k}": round(val[k], 5) for k in ("top1", "top5", "mean_per_class")}
    return record


@dataclass
class Run:
    """Everything one training run holds between epochs."""

    config: TrainConfig
    out: Path
    device: torch.device
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    train_set: CachedImages
    val_set: CachedImages | None
    bundle_args: dict
    state: dict = field(
        default_factory=lambda: {"epoch": 0, "best": -math.inf, "best_epoch": 0, "stale": 0, "elapsed_s": 0.0}
    )


def start_run(config: TrainConfig) -> Run:
    """Run directory, data, model, optimizer and schedule; restored from last.pt with ``resume``."""
    device = dist.setup(pick_device(config.device))
    if config.threads:
        torch.set_num_threads(config.threads)
    replace = check_run_dir(config)
    spec = model_spec(config)
    train_set, val_set = make_loaders(config, spec)  # bad --data fails here, before any folder is made
    out = make_run_dir(config, replace)
    dist.barrier()
    torch.manual_seed(config.seed)  # the new head's initial weights
    model = build_model(config.arch, len(class_names()), config.weights).to(device)
    if uses_channels_last(device):
        model = model.to(memory_format=torch.channels_last)
    steps = len(train_set) // config.batch_size
    if steps == 0:
        raise FloraEdgeError(f"{len(train_set)} training images is less than one batch of {config.batch_size}")
    optimizer, scheduler = make_optimizer(model, config, steps)
    bundle_args = dict(
        arch=config.arch,
        class_names=list(class_names()),
        spec=spec,
        config=asdict(config),
        dataset=dataset_info(config),
    )
    run = Run(config, out, device, model, optimizer, scheduler, train_set, val_set, bundle_args)
    if config.resume:
        last = load_bundle(out / "last.pt")
        model.load_state_dict(last["model"])
        optimizer.load_state_dict(last["optimizer"])
        scheduler.load_state_dict(last["scheduler"])
        run.state = last["train_state"]
    if dist.is_main():
        (out / "config.json").write_text(json.dumps(asdict(config), indent=2) + "\n")
    return run


def run_epoch(run: Run, epoch: int, scaler) -> dict:
    config = run.config
    set_epoch_mode(run.model, config, backbone_trainable=epoch > config.head_epochs)
    ddp = dist.wrap(run.model)  # after the requires_grad changes: DDP syncs only what trains
    criterion = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    return train_one_epoch(
        ddp,
        epoch_loader(run.train_set, config, epoch),
        run.optimizer,
        run.scheduler,
        criterion,
        run.device,
        epoch=epoch,
        amp=scaler is not None,
        scaler=scaler,
        progress=config.progress and dist.is_main(),
    )


def end_epoch(run: Run, epoch: int, stats: dict, started: float) -> bool:
    """Validate, log, save best.pt / last.pt (main process); True when early stopping says stop."""
    val = evaluate_split(run.model, run.val_set, run.config, run.device) if run.val_set else None
    state, seconds = run.state, time.perf_counter() - started  # training + validation
    state["elapsed_s"] += seconds
    record = epoch_record(epoch, run.scheduler, stats, val, seconds)
    log_epoch(run.out, record)
    print(" ".join(f"{k}={v}" for k, v in record.items()), flush=True)
    # Without a validation split (the final train+val protocol) nothing can pick an epoch: the run
    # trains its fixed number of epochs and best.pt is the latest one.
    score = val["top1"] if val else float(epoch)
    bundle = make_bundle(
        run.model, metrics={"val": val, "train": stats, "epoch": epoch}, epoch=epoch, **run.bundle_args
    )
    if score > state["best"]:
        state |= {"best": score, "best_epoch": epoch, "stale": 0}
        save_atomic(bundle, run.out / "best.pt")
    else:
        state["stale"] += 1
    state["epoch"] = epoch
    save_state(run.out, bundle, run.optimizer, run.scheduler, state)
    stop = run.config.patience > 0 and state["stale"] >= run.config.patience
    if stop:
        print(f"early stop: no val improvement for {run.config.patience} epochs")
    return stop


def train(config: TrainConfig) -> dict:
    """Fine-tune ``config.arch`` on a prepared dataset; returns the best epoch's metrics."""
    run = start_run(config)
    scaler = torch.amp.GradScaler("cuda") if run.device.type == "cuda" else None  # mixed precision on CUDA
    try:
        for epoch in range(run.state["epoch"] + 1, config.epochs + 1):
            start = time.perf_counter()
            stats = run_epoch(run, epoch, scaler)
            stop = end_epoch(run, epoch, stats, start) if dist.is_main() else False
            if dist.broadcast_flag(stop):
                break
    except KeyboardInterrupt:
        print(f"\ninterrupted: {run.out}/last.pt holds epoch {run.state['epoch']}; continue with --resume")
        raise
    except torch.OutOfMemoryError as exc:
        raise TrainError(f"out of memory ({exc}); lower --batch-size or --img-size") from exc
    finally:
        dist.cleanup()
    return finish(run.out, config, run.state) if dist.is_main() else {}


def finish(out: Path, config: TrainConfig, state: dict) -> dict:
    """Final report on the best checkpoint: metrics with and without flip TTA, per-class report, curves."""
    plot_curves(out)
    summary = {
        "best_epoch": state["best_epoch"],
        "epochs_run": state["epoch"],
        "train_wall_s": round(state["elapsed_s"], 1),
    }
    if config.val_split:
        from train.evaluate import evaluate_checkpoint

        for tta in (False, True):
            report = evaluate_checkpoint(
                out / "best.pt",
                config.data,
                config.val_split,
                tta_flip=tta,
                out=out / ("eval_tta" if tta else "eval"),
                workers=config.workers,
            )
            summary["val_tta" if tta else "val"] = {k: report[k] for k in ("top1", "top5", "mean_per_class", "n")}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
