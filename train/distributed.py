"""Data-parallel training under ``torchrun`` (NCCL on GPUs, gloo on CPUs); a no-op otherwise."""

from __future__ import annotations

import os

import torch
import torch.distributed as tdist


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def setup(device: torch.device) -> torch.device:
    """Join the process group when launched by torchrun; returns this process's device."""
    if world_size() == 1:
        return device
    if device.type == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    tdist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


def barrier() -> None:
    if tdist.is_available() and tdist.is_initialized():
        tdist.barrier()


def cleanup() -> None:
    if tdist.is_available() and tdist.is_initialized():
        tdist.destroy_process_group()


def broadcast_flag(value: bool) -> bool:
    """rank 0's decision (e.g. early stopping) for every process."""
    if not (tdist.is_available() and tdist.is_initialized()):
        return value
    flag = torch.tensor([int(value)])
    tdist.broadcast(flag, 0)
    return bool(flag.item())


def broadcast_object(value):
    """rank 0's ``value`` (any picklable object, e.g. the folder it made) for every process."""
    if not (tdist.is_available() and tdist.is_initialized()):
        return value
    box = [value]
    tdist.broadcast_object_list(box, 0)
    return box[0]


def wrap(model: torch.nn.Module) -> torch.nn.Module:
    if world_size() == 1:
        return model
    return torch.nn.parallel.DistributedDataParallel(model)
