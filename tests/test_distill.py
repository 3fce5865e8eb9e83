"""`floraedge train --teachers`: the distillation loss, consistent teaching, refusals, resume and records."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torchvision.transforms import v2

import floraedge
from edge_runtime.errors import FloraEdgeError
from edge_runtime.metadata import file_sha256
from edge_runtime.spec import IMAGENET_SPEC, PreprocessSpec
from tests.test_train import TINY, history, train_interrupted
from train import trainer
from train.checkpoint import load_bundle, save_atomic
from train.distill import distillation_loss, ensemble_probabilities, teacher_input
from train.trainer import TrainConfig, train


def variant(checkpoint: Path, out: Path, *, spec: dict | None = None, class_names: list[str] | None = None) -> Path:
    """A copy of ``checkpoint`` with another preprocessing spec or class list (the same weights)."""
    bundle = load_bundle(checkpoint)
    bundle["spec"] |= spec or {}
    if class_names is not None:
        bundle |= {"class_names": class_names, "num_classes": len(class_names)}
    save_atomic(bundle, out)
    return out


@pytest.fixture(scope="module")
def teacher_40px_imagenet_norm(tiny_checkpoint, tmp_path_factory) -> Path:
    """The tiny Lite0 teacher at another input size and normalization than the 32 px students."""
    spec = IMAGENET_SPEC.at_size(40).to_dict()
    return variant(tiny_checkpoint, tmp_path_factory.mktemp("teacher") / "t40.pt", spec=spec)


# ---------------------------------------------------------------- the loss


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_the_distillation_term_is_zero_only_when_the_student_matches_its_teacher(temperature):
    z = torch.randn(8, 102, generator=torch.Generator().manual_seed(0)) * 3
    same = distillation_loss(z, (z / temperature).softmax(1), temperature)
    assert same.abs() < 1e-5
    assert distillation_loss(z.flip(1), (z / temperature).softmax(1), temperature) > 0.1


def test_the_temperature_squared_keeps_the_gradient_at_the_logit_difference():
    """Hinton et al.'s high-temperature limit: the gradient of T² KL is (z_s - z_t) / (classes x batch);
    without the T² it would shrink as 1 / T²."""
    g = torch.Generator().manual_seed(1)
    student, teacher = torch.randn(4, 10, generator=g), torch.randn(4, 10, generator=g)
    student, teacher = student - student.mean(1, keepdim=True), teacher - teacher.mean(1, keepdim=True)
    for temperature in (100.0, 300.0):
        z = student.clone().requires_grad_(True)
        distillation_loss(z, (teacher / temperature).softmax(1), temperature).backward()
        expected = (student - teacher) / (10 * 4)
        assert (z.grad - expected).norm() < 0.01 * expected.norm()  # the gap shrinks as 1 / T (0.6% at T = 100)


def test_an_ensemble_averages_probabilities_not_logits():
    g = torch.Generator().manual_seed(2)
    a, b = torch.randn(3, 5, generator=g) * 4, torch.randn(3, 5, generator=g) * 4
    mixed = ensemble_probabilities([a, b], 2.0)
    torch.testing.assert_close(mixed, ((a / 2).softmax(1) + (b / 2).softmax(1)) / 2)
    assert not torch.allclose(mixed, ((a + b) / 4).softmax(1), atol=1e-3)


@pytest.mark.parametrize("size", [20, 224], ids=["smaller", "larger"])
def test_teacher_input_is_the_same_view_normalized_and_sized_for_the_teacher(size):
    """Renormalizing and resizing the student's tensor equals preparing the same pixels for the teacher."""
    pixels = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    student = PreprocessSpec(crop_size=32, resize_size=36, mean=(0.5,) * 3, std=(0.5,) * 3)
    teacher = IMAGENET_SPEC.at_size(size)
    as_float = v2.ToDtype(torch.float32, scale=True)(pixels)
    for_student = v2.Normalize(list(student.mean), list(student.std))(as_float)
    resized = F.interpolate(as_float, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    for_teacher = v2.Normalize(list(teacher.mean), list(teacher.std))(resized)
    torch.testing.assert_close(teacher_input(for_student, student, teacher), for_teacher, rtol=0, atol=2e-5)
    assert teacher_input(for_student, student, student) is for_student  # nothing to change: the very tensor


# ---------------------------------------------------------------- training with teachers


@pytest.mark.slow
def test_every_teacher_sees_the_students_augmented_batch(
    tiny_prepared, tiny_checkpoint, teacher_40px_imagenet_norm, tmp_path, monkeypatch
):
    """Consistent teaching, held by forward hooks on a real run: the same-spec teacher gets the student's
    very tensor, the other one that tensor renormalized and resized; one pass of each per training step;
    the soft targets are the mean of the two teachers' probabilities."""
    seen = {"inputs": [], "soft": []}
    real_epoch = trainer.train_one_epoch

    def spied(model, *args, distiller, **kwargs):
        def record(who):
            return lambda module, inputs: seen["inputs"].append((who, inputs[0].clone()))

        hooks = [model.register_forward_pre_hook(record("student"))]
        hooks += [t.model.register_forward_pre_hook(record(i)) for i, t in enumerate(distiller.teachers)]
        seen["teachers"], soft_targets = distiller.teachers, distiller.soft_targets

        def keep(images):
            seen["soft"].append(soft_targets(images))
            return seen["soft"][-1]

        distiller.soft_targets = keep
        try:
            return real_epoch(model, *args, distiller=distiller, **kwargs)
        finally:
            for hook in hooks:
                hook.remove()

    monkeypatch.setattr(trainer, "train_one_epoch", spied)
    teachers = (str(tiny_checkpoint), str(teacher_40px_imagenet_norm))
    train(TrainConfig(data=str(tiny_prepared), out=str(tmp_path / "run"), epochs=1, teachers=teachers, **TINY))
    steps = 32 // TINY["batch_size"]  # 4 classes x 8 train images
    assert [who for who, _ in seen["inputs"]] == ["student", 0, 1] * steps
    student = PreprocessSpec.from_dict(load_bundle(tmp_path / "run" / "best.pt")["spec"])
    same, other = seen["teachers"]
    inputs = [x for _, x in seen["inputs"]]
    for x, a, b, probs in zip(inputs[0::3], inputs[1::3], inputs[2::3], seen["soft"], strict=True):
        assert torch.equal(a, x)
        assert b.shape[-2:] == (40, 40)
        torch.testing.assert_close(b, teacher_input(x, student, other.spec))
        with torch.no_grad():
            expected = (same.model(a).softmax(1) + other.model(b).softmax(1)) / 2
        torch.testing.assert_close(probs, expected)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"class_names": ["a rose"] * 10}, "has 10 classes and the model it joins 102"),
        ({"swap": (3, 7)}, "names 2 of its 102 classes differently (class 3: 'bird of paradise', here 'sweet pea')"),
        ({"spec": {"color_order": "BGR"}}, "takes BGR input and the student RGB"),
    ],
    ids=["class-count", "class-names", "colour-order"],
)
def test_a_teacher_that_cannot_teach_is_refused_before_the_run_starts(
    tiny_prepared, tiny_checkpoint, tmp_path, change, message
):
    names = list(load_bundle(tiny_checkpoint)["class_names"])
    if "swap" in change:
        i, j = change.pop("swap")
        names[i], names[j] = names[j], names[i]
        change["class_names"] = names
    teacher = variant(tiny_checkpoint, tmp_path / "teacher.pt", **change)
    out = tmp_path / "run"
    with pytest.raises(FloraEdgeError) as caught:
        train(TrainConfig(data=str(tiny_prepared), out=str(out), epochs=1, teachers=(str(teacher),), **TINY))
    assert str(caught.value).startswith(f"teacher {teacher} ") and message in str(caught.value)
    assert not out.exists()


def test_a_teacher_inside_the_run_directory_is_refused(tiny_prepared, tiny_checkpoint):
    """--overwrite would delete it."""
    with pytest.raises(FloraEdgeError, match="overlaps the input"):
        train(
            TrainConfig(
                data=str(tiny_prepared),
                out=str(tiny_checkpoint.parent),
                overwrite=True,
                epochs=1,
                teachers=(str(tiny_checkpoint),),
                **TINY,
            )
        )
    assert tiny_checkpoint.is_file()


def test_the_cli_says_in_one_line_that_a_teacher_is_missing(tiny_prepared, tmp_path, capfd):
    argv = ["train", "--data", str(tiny_prepared), "--out", str(tmp_path / "run"), "--workers", "0"]
    assert floraedge.main([*argv, "--teachers", f"{tmp_path}/a.pt,{tmp_path}/b.pt"]) == 1
    lines = capfd.readouterr().err.splitlines()
    err = [line for line in lines if line.strip() and not line.startswith("warning: the model resizes")]  # tiny cache
    assert len(err) == 1 and f"checkpoint {tmp_path}/a.pt does not exist" in err[0], err
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_a_teacher_at_weight_zero_changes_nothing_and_at_weight_one_it_teaches(
    tiny_prepared, tiny_checkpoint, tmp_path
):
    """The teachers' forward passes draw no randomness and touch no student state: with weight 0 the run
    is bit-identical to a run without teachers (the same code path as today's training)."""
    config = dict(data=str(tiny_prepared), epochs=2, **TINY)
    teachers = (str(tiny_checkpoint),)
    train(TrainConfig(out=str(tmp_path / "plain"), **config))
    train(TrainConfig(out=str(tmp_path / "zero"), teachers=teachers, distill_weight=0.0, **config))
    train(TrainConfig(out=str(tmp_path / "one"), teachers=teachers, **config))
    plain, zero, one = (load_bundle(tmp_path / r / "last.pt")["model"] for r in ("plain", "zero", "one"))
    assert all(torch.equal(plain[k], zero[k]) for k in plain)
    assert [h["train_loss"] for h in history(tmp_path / "plain")] == [
        h["train_loss"] for h in history(tmp_path / "zero")
    ]
    assert not torch.equal(plain["_fc.weight"], one["_fc.weight"])
    assert "distill_loss" not in history(tmp_path / "plain")[0] and history(tmp_path / "zero")[0]["distill_loss"] > 0


@pytest.mark.slow
def test_a_distilled_run_with_ema_resumes_exactly_and_records_its_teachers(
    tiny_prepared, tiny_checkpoint, teacher_40px_imagenet_norm, tmp_path, monkeypatch
):
    teachers = (str(tiny_checkpoint), str(teacher_40px_imagenet_norm))
    config = dict(data=str(tiny_prepared), epochs=3, ema_epochs=1.0, teachers=teachers, distill_weight=0.7, **TINY)
    config["distill_temperature"] = 2.0
    train(TrainConfig(out=str(tmp_path / "straight"), **config))
    train_interrupted(TrainConfig(out=str(tmp_path / "resumed"), **config), monkeypatch)
    for wrong in ((), teachers[:1], teachers[::-1]):
        with pytest.raises(FloraEdgeError, match="resume with the run's own teachers"):
            train(TrainConfig(out=str(tmp_path / "resumed"), resume=True, **config | {"teachers": wrong}))
    train(TrainConfig(out=str(tmp_path / "resumed"), resume=True, **config))

    a, b = (load_bundle(tmp_path / r / "last.pt") for r in ("straight", "resumed"))
    for key in ("model", "raw_model"):
        assert all(torch.allclose(a[key][k].float(), b[key][k].float(), atol=1e-6) for k in a[key])
    logged = ("train_loss", "distill_loss")
    assert [[h[k] for k in logged] for h in history(tmp_path / "straight")] == [
        [h[k] for k in logged] for h in history(tmp_path / "resumed")
    ]
    expected = {
        "teachers": [{"path": p, "sha256": file_sha256(p)} for p in teachers],
        "weight": 0.7,
        "temperature": 2.0,
    }
    summary = json.loads((tmp_path / "resumed" / "summary.json").read_text())
    config_json = json.loads((tmp_path / "resumed" / "config.json").read_text())
    for record in (
        b["distillation"],
        load_bundle(tmp_path / "resumed" / "best.pt")["distillation"],
        summary["distillation"],
        config_json["distillation"],
    ):
        assert [{k: t[k] for k in ("path", "sha256")} for t in record["teachers"]] == expected["teachers"]
        assert (record["weight"], record["temperature"]) == (0.7, 2.0)
        assert [t["crop_size"] for t in record["teachers"]] == [32, 40]
    assert config_json["teachers"] == list(teachers)
    for h in history(tmp_path / "resumed"):
        assert h["distill_loss"] > 0 and h["teacher_s"] > 0 and h["teacher_images_per_s"] > 0


# ---------------------------------------------------------------- choosing a teacher: `floraedge evaluate --ensemble`


def test_an_ensemble_averages_its_members_probabilities_each_prepared_by_its_own_spec(
    tiny_prepared, tiny_checkpoint, teacher_40px_imagenet_norm
):
    from train.config import EvaluateConfig
    from train.evaluate import evaluate_checkpoint, split_logits

    alone = EvaluateConfig(checkpoint=str(tiny_checkpoint), data=str(tiny_prepared))
    single = evaluate_checkpoint(alone)
    with_itself = evaluate_checkpoint(dataclasses.replace(alone, ensemble=(str(tiny_checkpoint),)))
    assert {k: with_itself[k] for k in ("top1", "top5", "confusion")} == {
        k: single[k] for k in ("top1", "top5", "confusion")
    }

    pair = evaluate_checkpoint(dataclasses.replace(alone, ensemble=(str(teacher_40px_imagenet_norm),)))
    a, targets = split_logits(load_bundle(tiny_checkpoint), alone)
    b, _ = split_logits(load_bundle(teacher_40px_imagenet_norm), alone)  # 40 px, ImageNet normalization
    assert not torch.allclose(a.softmax(1), b.softmax(1), atol=1e-3)  # the members disagree: the mean is tested
    expected = ((a.softmax(1) + b.softmax(1)) / 2).argmax(1)
    assert pair["top1"] == pytest.approx((expected == targets).float().mean().item())
    assert pair["ensemble"] == [str(teacher_40px_imagenet_norm)] and single["ensemble"] == []


def test_an_ensemble_member_with_another_class_list_is_refused(tiny_prepared, tiny_checkpoint, tmp_path):
    from train.config import EvaluateConfig
    from train.evaluate import evaluate_checkpoint

    names = list(load_bundle(tiny_checkpoint)["class_names"])
    other = variant(tiny_checkpoint, tmp_path / "other.pt", class_names=names[::-1])
    config = EvaluateConfig(checkpoint=str(tiny_checkpoint), data=str(tiny_prepared), ensemble=(str(other),))
    with pytest.raises(FloraEdgeError, match=f"ensemble member {other} names .* classes differently"):
        evaluate_checkpoint(config)
