"""What trains when, and at what learning rate: parameter groups, freezing, warm-up + cosine."""

from __future__ import annotations

import math

import torch
from torch import nn

from train.config import TrainConfig, weight_decay_of
from train.engine import set_train_mode
from train.models import get_entry


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
    """AdamW with the backbone at ``lr * backbone_lr_scale``; the backbone's schedule starts after the head epochs."""
    head, backbone = head_and_backbone(model, get_entry(config.arch).head)
    optimizer = torch.optim.AdamW(
        [{"params": backbone, "lr": config.lr * config.backbone_lr_scale}, {"params": head, "lr": config.lr}],
        weight_decay=weight_decay_of(config),
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
