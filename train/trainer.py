"""``train(config)``: the fine-tuning loop from a prepared dataset to ``best.pt`` and ``last.pt``.

The default recipe (measured on Oxford-102 with efficientnet_lite0, see README): BatchNorm frozen, a
few head-only epochs, AdamW with a 10x lower backbone LR, linear warm-up + cosine, label smoothing,
RandomResizedCrop + flip + TrivialAugmentWide, best-by-validation with early stopping. The schedule
lives in ``schedule.py``, the run directory and its log in ``runlog.py``, the data in ``data.py``.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from edge_runtime.atomic import write_json_atomic
from edge_runtime.errors import FloraEdgeError
from edge_runtime.metrics import classification_metrics
from train import distributed as dist
from train.checkpoint import load_bundle, make_bundle, save_atomic
from train.config import EvaluateConfig, TrainConfig, with_weight_decay
from train.data import (
    CachedImages,
    check_labels,
    dataset_classes,
    dataset_info,
    epoch_loader,
    eval_loader,
    training_sets,
)
from train.distill import Distiller, check_resumed_teachers, make_distiller
from train.engine import (
    TrainError,
    cpu_has_native_bf16,
    depthwise_in_fp32,
    pick_device,
    predict,
    seeded,
    train_one_epoch,
    uses_channels_last,
)
from train.evaluate import evaluate_checkpoint
from train.models import build_model, input_spec
from train.runlog import check_run_dir, epoch_record, log_epoch, make_run_dir, plot_curves
from train.schedule import make_optimizer, set_epoch_mode

__all__ = ["TrainConfig", "train"]


@dataclass
class RunState:
    """Where a run stands between epochs; last.pt keeps it as a plain dict (``train_state``) for --resume."""

    epoch: int = 0  # the last finished epoch
    best: float = -math.inf  # the best score: val top-1, or the epoch itself without a val split
    best_epoch: int = 0
    stale: int = 0  # epochs since the best one
    elapsed_s: float = 0.0  # training + validation, over every session of the run


@dataclass(kw_only=True)
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
    bundle_args: dict  # what every checkpoint of the run says about itself
    ema: AveragedModel | None = None  # the weights that are validated and saved, when --ema-epochs is set
    distiller: Distiller | None = None  # the teachers, with --teachers
    amp_dtype: torch.dtype | None = None  # --precision: the autocast dtype of the training steps (None: fp32)
    scaler: torch.amp.GradScaler | None = None  # with fp16
    state: RunState = field(default_factory=RunState)

    @property
    def eval_model(self) -> nn.Module:
        """The weights the run validates and ships: the moving average when there is one."""
        return self.ema.module if self.ema is not None else self.model


def make_ema(model: nn.Module, config: TrainConfig, steps_per_epoch: int) -> AveragedModel | None:
    """An exponential moving average of ``model`` whose horizon (1 / (1 - decay)) is ``ema_epochs`` epochs.

    BatchNorm is frozen in the default recipe, so averaging the buffers (use_buffers) copies constants."""
    if not config.ema_epochs:
        return None
    decay = 1 - 1 / max(1.0, config.ema_epochs * steps_per_epoch)
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


def start_run(config: TrainConfig, stack: contextlib.ExitStack) -> Run:
    """Run directory, data, model, optimizer and schedule; restored from last.pt with ``resume``."""
    device = dist.setup(pick_device(config.device))
    if config.threads:
        torch.set_num_threads(config.threads)
    replace = check_run_dir(config)
    spec = input_spec(config.arch, config.img_size)
    train_set, val_set = training_sets(config, spec)  # bad --data fails here, before any folder is made
    class_names = dataset_classes(config.data)
    check_labels(train_set, class_names)
    distiller = make_distiller(config, class_names, spec, device)  # and so does a teacher that cannot teach
    amp_dtype, scaler = mixed_precision(config.precision, device)  # and a --precision this device cannot run
    dist.barrier()  # every rank has checked --out before the main one makes it (else a slower rank finds it made)
    out = make_run_dir(config, replace, stack)
    dist.barrier()
    steps = len(train_set) // config.batch_size
    if steps == 0:
        raise FloraEdgeError(f"{len(train_set)} training images is less than one batch of {config.batch_size}")
    with seeded(config.seed, device):  # the new head's initial weights
        model = build_model(config.arch, len(class_names), config.weights).to(device)
    if uses_channels_last(device):
        model = model.to(memory_format=torch.channels_last)
    if amp_dtype == torch.bfloat16 and device.type == "cpu":
        depthwise_in_fp32(model)
    optimizer, scheduler = make_optimizer(model, config, steps)
    bundle_args = dict(
        arch=config.arch,
        class_names=class_names,
        spec=spec,
        config=asdict(config),
        dataset=dataset_info(config, train_set),
        distillation=distiller.record if distiller else None,
    )
    ema = make_ema(model, config, steps)
    run = Run(
        config=config,
        out=out,
        device=device,
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        train_set=train_set,
        val_set=val_set,
        bundle_args=bundle_args,
        ema=ema,
        distiller=distiller,
        amp_dtype=amp_dtype,
        scaler=scaler,
    )
    if config.resume:
        restore(run)
    if dist.is_main():
        teachers = {"distillation": distiller.record} if distiller else {}  # their sha256 beside their paths
        write_json_atomic(out / "config.json", asdict(config) | teachers)
    return run


# What a resumed run may change: where it reads and writes, with what resources, how it reports and when it
# gives up. Every other option shapes the weights (the schedule's length, the data order, the loss), so a resume
# with another value would ship a checkpoint whose recorded options are not the ones that trained it.
# Teachers are compared by content (check_resumed_teachers), the data by the images it holds.
RESUMABLE_CHANGES = frozenset(
    {"data", "out", "workers", "threads", "device", "resume", "overwrite", "progress", "patience", "teachers"}
)


def changed_options(before: dict, now: dict) -> list[str]:
    """The options that shape the weights (all but RESUMABLE_CHANGES) whose values differ between a run's recorded
    config (``before``) and ``now``, each as "--flag before -> now"; an option one side lacks is not compared."""

    def same(a, b) -> bool:  # a tuple saved by torch, a list read back from JSON: the same option
        return list(a) == list(b) if isinstance(a, list | tuple) and isinstance(b, list | tuple) else a == b

    changed = [k for k in now if k in before and k not in RESUMABLE_CHANGES and not same(before[k], now[k])]
    return [f"--{k.replace('_', '-')} {before[k]!r} -> {now[k]!r}" for k in changed]


def check_resumed_options(run: Run, last: dict, path: Path) -> None:
    """A resumed run goes on with the options it started with, and on the same training images."""
    config = run.config
    changed = changed_options(last.get("config") or {}, asdict(config))
    if changed:
        raise FloraEdgeError(
            f"--resume: {path} was started with other options ({', '.join(changed)}); resume with the run's own "
            f"options (its config.json), or train into a new --out"
        )
    trained = (last.get("dataset") or {}).get("trained_images")
    if trained is not None and run.bundle_args["dataset"]["trained_images"] != trained:
        raise FloraEdgeError(
            f"--resume: the training images in {config.data} are not the ones {path} started on "
            f"({len(trained)} images then); resume on the same prepared data, or train into a new --out"
        )


def restore(run: Run) -> None:
    """--resume: where last.pt stood (weights, the average, optimizer, schedule, best and patience)."""
    path = run.out / "last.pt"
    last = load_bundle(path)
    check_resumed_options(run, last, path)
    check_resumed_teachers(run.distiller, last, path)
    run.model.load_state_dict(last.get("raw_model", last["model"]))
    if run.ema is not None:
        if "ema" not in last:
            raise FloraEdgeError(f"--resume: {path} was trained without --ema-epochs; resume without it")
        run.ema.load_state_dict(last["ema"])
    run.optimizer.load_state_dict(last["optimizer"])
    run.scheduler.load_state_dict(last["scheduler"])
    if run.scaler is not None and last.get("scaler"):
        run.scaler.load_state_dict(last["scaler"])
    run.state = RunState(**last["train_state"])


def mixed_precision(precision: str, device: torch.device) -> tuple[torch.dtype | None, torch.amp.GradScaler | None]:
    """--precision as the autocast dtype (None: fp32) and, for fp16, its gradient scaler."""
    if precision == "auto":
        precision = "fp16" if device.type == "cuda" else "fp32"
    if precision == "fp32":
        return None, None
    if precision == "fp16":
        if device.type != "cuda":
            raise TrainError(f"--precision fp16 needs CUDA, and this run is on {device.type}; use bf16 or fp32")
        return torch.float16, torch.amp.GradScaler("cuda")
    if device.type == "cpu" and not cpu_has_native_bf16():
        raise TrainError(
            "--precision bf16: this CPU has no native bfloat16 (AVX512-BF16 or AMX), so bf16 would run slower "
            "than fp32; use --precision fp32"
        )
    return torch.bfloat16, None


def run_epoch(run: Run, epoch: int) -> dict:
    config = run.config
    set_epoch_mode(run.model, config, backbone_trainable=epoch > config.head_epochs)
    ddp = dist.wrap(run.model)  # after the requires_grad changes: DDP syncs only what trains
    criterion = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    with seeded(config.seed * 1000 + epoch, run.device):  # augmentation in this process, dropout
        stats = train_one_epoch(
            ddp,
            epoch_loader(run.train_set, config, epoch),
            run.optimizer,
            run.scheduler,
            criterion,
            run.device,
            epoch=epoch,
            amp_dtype=run.amp_dtype,
            scaler=run.scaler,
            ema=run.ema,
            distiller=run.distiller,
            progress=config.progress and dist.is_main(),
        )
    return stats | (run.distiller.epoch_stats() if run.distiller else {})


def validate(run: Run) -> dict:
    loader = eval_loader(run.val_set, run.config.workers)
    # at the training precision, as the teachers' passes are; the final report (finish) is in fp32
    logits, targets = predict(run.eval_model, loader, run.device, tta_flip=run.config.tta_flip, amp_dtype=run.amp_dtype)
    return classification_metrics(logits.numpy(), targets.numpy(), len(run.bundle_args["class_names"]))


def end_epoch(run: Run, epoch: int, stats: dict, started: float) -> bool:
    """Validate, log, save best.pt / last.pt (main process); True when early stopping says stop."""
    val = validate(run) if run.val_set else None
    state, seconds = run.state, time.perf_counter() - started  # training + validation
    state.elapsed_s += seconds
    record = epoch_record(epoch, run.scheduler.get_last_lr(), stats, val, seconds)
    log_epoch(run.out, record)
    print(" ".join(f"{k}={v}" for k, v in record.items()), flush=True)
    # Without a validation split (the final train+val protocol) nothing can pick an epoch: the run
    # trains its fixed number of epochs and best.pt is the latest one.
    score = val["top1"] if val else float(epoch)
    bundle = make_bundle(
        run.eval_model, metrics={"val": val, "train": stats, "epoch": epoch}, epoch=epoch, **run.bundle_args
    )
    if score > state.best:
        state.best, state.best_epoch, state.stale = score, epoch, 0
        save_atomic(bundle, run.out / "best.pt")
    else:
        state.stale += 1
    state.epoch = epoch
    resumable = {"optimizer": run.optimizer.state_dict(), "scheduler": run.scheduler.state_dict()}
    if run.ema is not None:  # the bundle's "model" is the average; training goes on from the raw weights
        resumable |= {"raw_model": run.model.state_dict(), "ema": run.ema.state_dict()}
    if run.scaler is not None:  # fp16: the loss scale it has found, else a resume starts again at 2**16
        resumable["scaler"] = run.scaler.state_dict()
    save_atomic({**bundle, **resumable, "train_state": asdict(state)}, run.out / "last.pt")
    stop = run.config.patience > 0 and state.stale >= run.config.patience
    if stop:
        print(f"early stop: no val improvement for {run.config.patience} epochs")
    return stop


def train(config: TrainConfig) -> dict:
    """Fine-tune ``config.arch`` on a prepared dataset (or, with recipe "linear", fit only a new head on the
    frozen backbone's features); returns the best epoch's metrics."""
    config = with_weight_decay(config)
    if config.recipe == "linear":
        from train.linear import fit_linear

        return fit_linear(config)
    with contextlib.ExitStack() as stack:  # a run replacing another is published when this closes
        run = start_run(config, stack)
        try:
            for epoch in range(run.state.epoch + 1, config.epochs + 1):
                start = time.perf_counter()
                stats = run_epoch(run, epoch)
                stop = end_epoch(run, epoch, stats, start) if dist.is_main() else False
                if dist.broadcast_flag(stop):
                    break
        except KeyboardInterrupt:
            print(f"\n{interrupted_note(run)}")
            raise
        except torch.OutOfMemoryError as exc:
            raise TrainError(f"out of memory ({exc}); lower --batch-size or --img-size") from exc
        finally:
            dist.cleanup()
        return finish(run) if dist.is_main() else {}


def interrupted_note(run: Run) -> str:
    if run.out == Path(run.config.out):
        return f"interrupted: {run.out}/last.pt holds epoch {run.state.epoch}; continue with --resume"
    return f"interrupted: the new run is discarded and the previous {run.config.out} is kept as it was"


def finish(run: Run) -> dict:
    """Final report on the best checkpoint: metrics with and without flip TTA, per-class report, curves."""
    config, out, state = run.config, run.out, run.state
    plot_curves(out)
    summary = {"best_epoch": state.best_epoch, "epochs_run": state.epoch, "train_wall_s": round(state.elapsed_s, 1)}
    if run.distiller:
        summary["distillation"] = run.distiller.record
    if config.val_split:
        for tta in (False, True):
            report = evaluate_checkpoint(
                EvaluateConfig(
                    checkpoint=str(out / "best.pt"),
                    data=config.data,
                    split=config.val_split,
                    tta_flip=tta,
                    out=str(out / ("eval_tta" if tta else "eval")),
                    workers=config.workers,
                )
            )
            summary["val_tta" if tta else "val"] = {k: report[k] for k in ("top1", "top5", "mean_per_class", "n")}
    write_json_atomic(out / "summary.json", summary)
    return summary
