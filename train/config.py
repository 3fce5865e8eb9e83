"""The configs of ``floraedge train`` and ``floraedge evaluate``: the one declaration of every option's
name, type and default (the CLI is generated from these fields; torch-free, so ``--help`` stays fast)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace

from train.models import DEFAULT_ARCH

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
RECIPES = ("finetune", "linear")  # linear: the backbone frozen, a linear head on its cached features
# The AdamW weight decay of each recipe, where TrainConfig.weight_decay is None. The linear head needs far
# more than the fine-tune: fitted on frozen features with 0.05, many images sit on thin margins that the int8
# files' rounding of the backbone crosses; 1.0 keeps the int8 files within the 0.5-point target and raises
# the float model's val accuracy too (docs/own_classes.md, "The linear fit's int8 files").
RECIPE_WEIGHT_DECAY = {"finetune": 0.05, "linear": 1.0}


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """One training run. The defaults are the recipe measured in docs/training.md."""

    data: str
    out: str
    recipe: str = "finetune"  # one of RECIPES
    arch: str = DEFAULT_ARCH
    weights: str = "imagenet"
    epochs: int = 30
    head_epochs: int = 3
    batch_size: int = 32
    lr: float = 2e-3  # head; the backbone gets lr * backbone_lr_scale
    backbone_lr_scale: float = 0.1
    weight_decay: float | None = None  # None: the recipe's own (RECIPE_WEIGHT_DECAY; weight_decay_of reads it)
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.1
    min_scale: float = 0.35
    trivial_augment: bool = True
    freeze_bn: bool = True
    freeze_early: bool = True  # keep the backbone's high-resolution early layers frozen (registry: early_layers)
    precision: str = "auto"  # auto: fp16 mixed precision on CUDA, fp32 elsewhere; bf16: bfloat16 autocast
    ema_epochs: float = 0.0  # horizon of an exponential moving average of the weights, in epochs; 0 = off
    teachers: tuple[str, ...] = ()  # checkpoints (best.pt) to distil from; several = their probabilities averaged
    distill_weight: float = 1.0  # loss = w * T^2 * KL(teachers || student) + (1 - w) * label loss; only with teachers
    distill_temperature: float = 1.0
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


def weight_decay_of(config: TrainConfig) -> float:
    """The AdamW weight decay ``config`` trains with: the one asked for, else its recipe's."""
    return RECIPE_WEIGHT_DECAY[config.recipe] if config.weight_decay is None else config.weight_decay


def with_weight_decay(config: TrainConfig) -> TrainConfig:
    """``config`` with its weight decay as a number (the recipe's, where none was asked): what a run records."""
    return replace(config, weight_decay=weight_decay_of(config))


@dataclass(frozen=True, kw_only=True)
class EvaluateConfig:
    """A checkpoint's metrics on one split of a prepared dataset."""

    checkpoint: str
    data: str
    ensemble: tuple[str, ...] = ()  # more checkpoints: the probabilities of all are averaged
    split: str = "val"
    tta_flip: bool = False
    out: str | None = None  # folder for metrics.json, per_class.csv, confusion.csv
    workers: int = 0
    batch_size: int = 64


@dataclass(frozen=True, kw_only=True)
class SoupConfig:
    """One model whose weights average several fine-tuned checkpoints (a model soup)."""

    checkpoints: tuple[str, ...]
    out: str
    data: str | None = None  # with it, every ingredient and the soup are evaluated on ``split``
    split: str = "val"
    greedy: bool = False  # keep an ingredient only if the soup's accuracy on ``split`` does not fall
    overwrite: bool = False
    workers: int = 0
    batch_size: int = 64


@dataclass(frozen=True, kw_only=True)
class FixresConfig:
    """A checkpoint's classifier re-fitted at its test-time resolution and preprocessing (FixRes, Touvron et
    al. 2019): RandomResizedCrop shows objects larger in training than the center crop does at test time."""

    checkpoint: str
    data: str
    out: str
    img_size: int | None = None  # the test resolution; None: the checkpoint's own
    epochs: int = 5  # over the cached features of every training image and its mirror
    lr: float = 1e-3
    weight_decay: float = 0.05
    label_smoothing: float = 0.1
    batch_size: int = 32
    train_splits: tuple[str, ...] | None = None  # None: the checkpoint's own training splits
    val_split: str | None = "val"  # evaluated before and after; None: no evaluation
    seed: int = 0
    threads: int | None = None
    overwrite: bool = False
