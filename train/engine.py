"""The device, one epoch of training, and prediction (the metrics are ``edge_runtime.metrics``)."""

from __future__ import annotations

import contextlib
import functools
import math
import time

import torch
from torch import nn

from edge_runtime import console
from edge_runtime.errors import FloraEdgeError


class TrainError(FloraEdgeError):
    """Training cannot go on (NaN loss, out of memory, ...); the message says which knob to turn."""


def pick_device(name: str) -> torch.device:
    """``name``, or for "auto" the fastest present: cuda > mps > cpu."""
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


@contextlib.contextmanager
def seeded(seed: int, device: torch.device):
    """torch's global RNG seeded with ``seed`` inside the block and restored after it.

    New layers, dropout and the augmentation that runs in this process draw from the global RNG: seeding
    it makes a run depend on its seed alone (a resumed epoch repeats itself), restoring it leaves the
    caller's random stream as it was.
    """
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def uses_channels_last(device: torch.device) -> bool:
    """Channels-last runs the depthwise convolutions of the edge backbones faster on CPU (oneDNN) too (docs/training.md)."""
    return device.type in ("cpu", "cuda")


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX: without them oneDNN emulates bfloat16, slower than fp32."""
    return torch.ops.mkldnn._is_mkldnn_bf16_supported()


def autocast(device: torch.device, amp_dtype: torch.dtype | None):
    """Autocast to ``amp_dtype`` on ``device``; None: off (fp32)."""
    return torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None)


def depthwise_in_fp32(model: nn.Module) -> nn.Module:
    """Run ``model``'s depthwise convolutions in fp32 under autocast wherever a backward pass will go
    through them; elsewhere (inference, frozen early layers) they stay in the autocast dtype.

    On the CPU measured (AVX512-BF16), oneDNN's bfloat16 depthwise convolution backward is slower than
    its fp32 one, so that bf16 training steps were no faster than fp32; with the depthwise layers in fp32
    they are faster, while bf16 forward passes are fastest with every layer in bf16 (the figures:
    docs/training.md, from studies/precision_bench.py). The weights and the state_dict are unchanged: only each such
    module's class gains this forward."""
    for m in model.modules():
        depthwise = isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels
        if depthwise and not getattr(m, "fp32_when_trained", False):
            m.__class__ = fp32_when_trained(type(m))
    return model


@functools.cache
def fp32_when_trained(conv_type: type) -> type:
    """A subclass of ``conv_type`` (a Conv2d, perhaps with its own padding) whose forward leaves autocast
    when its backward will run."""

    def forward(self, x):
        if not (torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad)):
            return conv_type.forward(self, x)
        with torch.autocast(x.device.type, enabled=False):
            return conv_type.forward(self, x.float())

    return type(f"Fp32Trained{conv_type.__name__}", (conv_type,), {"forward": forward, "fp32_when_trained": True})


def set_train_mode(model: nn.Module, *, freeze_bn: bool) -> None:
    """``model.train()``, but with BatchNorm statistics and affine parameters frozen when asked."""
    model.train()
    if freeze_bn:
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
                for p in m.parameters(recurse=False):
                    p.requires_grad_(False)


def train_one_epoch(
    model,
    loader,
    optimizer,
    scheduler,
    criterion,
    device,
    *,
    epoch: int,
    amp_dtype: torch.dtype | None = None,
    scaler=None,
    ema=None,
    distiller=None,
    progress: bool = True,
) -> dict:
    """One pass over ``loader``; returns mean loss, accuracy and images/s. ``amp_dtype`` (float16 with a
    ``scaler``, or bfloat16) runs the forward passes under autocast. ``ema`` (an ``AveragedModel``)
    is updated after every optimizer step; a ``distill.Distiller`` blends its teachers' loss, on the very
    batch the model sees, into the label loss."""
    total_loss, correct, seen, start = 0.0, 0, 0, time.perf_counter()
    bar = console.progress(loader, desc=f"epoch {epoch}", unit="batch", enabled=progress)
    for step, (images, targets) in enumerate(bar):
        images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        if uses_channels_last(device):
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast(device, amp_dtype):
            logits = model(images).float()  # the losses in fp32, whatever the autocast
            loss = criterion(logits, targets)
            if distiller is not None:
                loss = distiller.loss(images, logits, loss)
        if not math.isfinite(loss.item()):
            raise TrainError(f"loss became {loss.item()} at epoch {epoch}, step {step}; lower --lr or check the data")
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        scheduler.step()
        if ema is not None:
            ema.update_parameters(model)
        total_loss += loss.item() * targets.size(0)
        correct += (logits.argmax(1) == targets).sum().item()
        seen += targets.size(0)
        elapsed = time.perf_counter() - start
        bar.set_postfix(loss=f"{total_loss / seen:.3f}", acc=f"{correct / seen:.3f}", img_s=f"{seen / elapsed:.1f}")
    return {"train_loss": total_loss / seen, "train_acc": correct / seen, "images_per_s": seen / elapsed}


@torch.no_grad()
def predict(model: nn.Module, loader, device, *, tta_flip: bool = False, progress: bool = False, amp_dtype=None):
    """Logits (N x C, float32, CPU) and targets for ``loader``; flip TTA averages the mirrored view;
    ``amp_dtype`` runs the forward passes under autocast."""
    model.eval()
    if uses_channels_last(device):
        model.to(memory_format=torch.channels_last)
    all_logits, all_targets = [], []
    for images, targets in console.progress(loader, desc="evaluating", unit="batch", enabled=progress):
        images = images.to(device)
        if uses_channels_last(device):
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast(device, amp_dtype):
            logits = model(images).float()
            if tta_flip:
                logits = (logits + model(images.flip(3)).float()) / 2
        all_logits.append(logits.cpu())
        all_targets.append(targets)
    return torch.cat(all_logits), torch.cat(all_targets)
