"""Knowledge distillation: the student also learns the averaged class probabilities of trained
checkpoints (its teachers).

Teaching is "consistent" (Beyer et al. 2022, "Knowledge distillation: a good teacher is patient and
consistent"): every teacher sees exactly the augmented batch the student sees in that step, only
renormalized and resized where its own preprocessing spec asks for it, in eval mode and without
gradients. The teachers' weights are not copied into the run: they are reloaded from their paths
(``--resume`` included) and identified by their sha256.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from edge_runtime.errors import FloraEdgeError
from edge_runtime.metadata import file_sha256
from edge_runtime.spec import PreprocessSpec
from train.checkpoint import load_bundle, model_from_bundle
from train.config import TrainConfig
from train.engine import uses_channels_last


class DistillError(FloraEdgeError):
    """A teacher that cannot teach this run (another class list, another colour order, a bad setting)."""


@dataclass
class Teacher:
    model: nn.Module  # eval mode, no gradients, on the run's device
    spec: PreprocessSpec
    record: dict  # path, sha256, arch, crop_size, val_top1: what the student's files say about it


def check_classes(path: str, theirs: list[str], ours: list[str], *, role: str = "teacher") -> None:
    """Refuse a teacher (or an ensemble member) whose class list is not the run's (the first member's):
    its probabilities would mean other flowers."""
    if theirs == ours:
        return
    if len(theirs) != len(ours):
        what = f"has {len(theirs)} classes and the model it joins {len(ours)}"
    else:
        differ = [i for i, (a, b) in enumerate(zip(theirs, ours, strict=True)) if a != b]
        i = differ[0]
        what = (
            f"names {len(differ)} of its {len(ours)} classes differently (class {i}: {theirs[i]!r}, here {ours[i]!r})"
        )
    raise DistillError(f"{role} {path} {what}; {role}s must be trained on the same class list as the model they join")


def load_teacher(path: str, class_names: list[str], student: PreprocessSpec, device: torch.device) -> Teacher:
    """A checkpoint written by ``floraedge train``, checked against the run and ready to teach on ``device``."""
    bundle = load_bundle(path)
    check_classes(path, list(bundle.get("class_names", [])), class_names)
    spec = PreprocessSpec.from_dict(bundle["spec"])
    if spec.color_order != student.color_order:
        raise DistillError(
            f"teacher {path} takes {spec.color_order} input and the student {student.color_order}; "
            "training batches are built in one colour order, so use a teacher of the student's"
        )
    model = model_from_bundle(bundle)[0].requires_grad_(False).to(device)
    if uses_channels_last(device):
        model = model.to(memory_format=torch.channels_last)
    record = {
        "path": str(path),
        "sha256": file_sha256(path),
        "arch": bundle["arch"],
        "crop_size": spec.crop_size,
        "val_top1": ((bundle.get("metrics") or {}).get("val") or {}).get("top1"),
    }
    return Teacher(model, spec, record)


def teacher_input(images: torch.Tensor, student: PreprocessSpec, teacher: PreprocessSpec) -> torch.Tensor:
    """The student's normalized batch as ``teacher`` expects it: renormalized to its mean/std, then resized
    (bilinear, antialiased) to its input size. Both steps are affine per pixel, so their order does not
    matter, and the augmented view itself (crop, flip, TrivialAugment) stays the student's."""
    x = images
    if (teacher.mean, teacher.std) != (student.mean, student.std):
        mean_s, std_s, mean_t, std_t = (
            torch.tensor(v, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
            for v in (student.mean, student.std, teacher.mean, teacher.std)
        )
        x = (x * std_s + mean_s - mean_t) / std_t
    if teacher.crop_size != student.crop_size:
        x = F.interpolate(x, size=(teacher.crop_size,) * 2, mode="bilinear", antialias=True, align_corners=False)
    return x


def ensemble_probabilities(logits: list[torch.Tensor], temperature: float) -> torch.Tensor:
    """The teachers' class probabilities at ``temperature``, averaged (an ensemble averages probabilities, not logits)."""
    return torch.stack([(z.float() / temperature).softmax(1) for z in logits]).mean(0)


def distillation_loss(student_logits: torch.Tensor, teacher_probs: torch.Tensor, temperature: float) -> torch.Tensor:
    """T² · KL(teacher ‖ student), both at temperature T, averaged over the batch. The T² keeps the
    gradient's size independent of T (Hinton et al. 2015), so the weight against the label loss means the
    same at every temperature."""
    log_student = F.log_softmax(student_logits.float() / temperature, dim=1)
    return F.kl_div(log_student, teacher_probs, reduction="batchmean") * temperature**2


class Distiller:
    """The training loss with teachers: ``weight`` · distillation loss + (1 − ``weight``) · the label loss.
    It also keeps the epoch's distillation loss and the time the teachers' forward passes took."""

    def __init__(self, teachers: list[Teacher], student: PreprocessSpec, *, weight: float, temperature: float):
        if not 0 <= weight <= 1 or not temperature > 0:
            raise DistillError(f"need 0 <= distill weight <= 1 and temperature > 0, got {weight} and {temperature}")
        self.teachers, self.student = teachers, student
        self.weight, self.temperature = weight, temperature
        self.reset()

    def reset(self) -> None:
        self.kd_sum, self.seen, self.teacher_s = 0.0, 0, 0.0

    @property
    def record(self) -> dict:
        """What the run's files (config.json, the checkpoints, summary.json) say about its distillation."""
        return {"teachers": [t.record for t in self.teachers], "weight": self.weight, "temperature": self.temperature}

    @torch.no_grad()
    def soft_targets(self, images: torch.Tensor) -> torch.Tensor:
        """The teachers' averaged probabilities for the student's batch ``images``, timed."""
        start = time.perf_counter()
        logits = [t.model(teacher_input(images, self.student, t.spec)) for t in self.teachers]
        probs = ensemble_probabilities(logits, self.temperature)
        if probs.is_cuda:
            torch.cuda.synchronize(probs.device)
        self.teacher_s += time.perf_counter() - start
        return probs

    def loss(self, images: torch.Tensor, student_logits: torch.Tensor, label_loss: torch.Tensor) -> torch.Tensor:
        kd = distillation_loss(student_logits, self.soft_targets(images), self.temperature)
        self.kd_sum += kd.item() * images.size(0)
        self.seen += images.size(0)
        return self.weight * kd + (1 - self.weight) * label_loss

    def epoch_stats(self) -> dict:
        """The epoch's mean distillation loss and the teachers' cost; starts the next epoch's count."""
        stats = {
            "distill_loss": self.kd_sum / max(1, self.seen),
            "teacher_s": self.teacher_s,
            "teacher_images_per_s": self.seen / self.teacher_s if self.teacher_s else 0.0,
        }
        self.reset()
        return stats


def make_distiller(
    config: TrainConfig, class_names: list[str], student: PreprocessSpec, device: torch.device
) -> Distiller | None:
    """The run's teachers (``config.teachers``), loaded and checked; None without any."""
    if not config.teachers:
        return None
    teachers = [load_teacher(p, class_names, student, device) for p in config.teachers]
    return Distiller(teachers, student, weight=config.distill_weight, temperature=config.distill_temperature)


def describe(records: list[dict]) -> str:
    return ", ".join(f"{r['path']} (sha256 {r['sha256'][:12]})" for r in records) or "no teachers"


def check_resumed_teachers(distiller: Distiller | None, last: dict, path: Path) -> None:
    """A resumed run must go on learning from the very files it started with (compared by sha256)."""
    before = (last.get("distillation") or {}).get("teachers", [])
    now = distiller.record["teachers"] if distiller else []
    if [r["sha256"] for r in before] != [r["sha256"] for r in now]:
        raise DistillError(
            f"--resume: {path} was trained with {describe(before)}, --teachers gives {describe(now)}; "
            "resume with the run's own teachers (the same files, in the same order)"
        )
