"""`floraedge train` on a tiny synthetic dataset: learning, checkpoints, resume, DDP, bad input."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision

from edge_runtime.errors import FloraEdgeError
from edge_runtime.preprocess import preprocess, read_image_bgr
from prepare.manifest import read_manifest
from tests.conftest import REAL_DATA, REPO
from train import trainer
from train.checkpoint import CheckpointError, load_bundle, model_from_bundle
from train.config import EvaluateConfig
from train.data import image_key, seen_in_training
from train.engine import cpu_has_native_bf16, depthwise_in_fp32
from train.models import MODELS, WeightsError, build_model, get_entry
from train.schedule import set_epoch_mode
from train.trainer import TrainConfig, train

TINY = dict(
    arch="efficientnet_lite0",
    img_size=32,
    batch_size=8,
    workers=0,
    threads=2,
    progress=False,
    head_epochs=0,
    warmup_epochs=0.5,
    tta_flip=False,
    patience=0,
)


def history(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_loss_falls_and_bundle_describes_itself(tiny_prepared, tmp_path):
    run = tmp_path / "run"
    summary = train(TrainConfig(data=str(tiny_prepared), out=str(run), epochs=3, lr=3e-3, **TINY))
    losses = [h["train_loss"] for h in history(run)]
    assert losses[-1] < losses[0]
    for name in ("best.pt", "last.pt", "metrics.csv", "curves.png", "config.json", "eval/per_class.csv"):
        assert (run / name).is_file(), name
    bundle = torch.load(run / "best.pt", weights_only=True)
    assert bundle["arch"] == "efficientnet_lite0" and bundle["num_classes"] == 102
    assert bundle["class_names"][0] == "pink primrose" and bundle["dataset"]["synthetic"]
    assert bundle["spec"]["crop_size"] == 32 and bundle["spec"]["mean"] == [0.5, 0.5, 0.5]
    rows = read_manifest(tiny_prepared)
    assert bundle["dataset"]["trained_images"] == sorted(image_key(r) for r in rows if r["split"] == "train")
    assert seen_in_training(bundle, tiny_prepared, "val") == 0
    assert seen_in_training(bundle, tiny_prepared, "train") == sum(r["split"] == "train" for r in rows)
    legacy = bundle | {"dataset": {k: v for k, v in bundle["dataset"].items() if k != "trained_images"}}
    assert seen_in_training(legacy, tiny_prepared, "train") == seen_in_training(bundle, tiny_prepared, "train")
    with (run / "eval" / "per_class.csv").open() as f:
        present = [float(r["accuracy"]) for r in csv.DictReader(f) if int(r["support"])]
    assert summary["val"]["n"] == 16 and len(present) == 4  # the 4 synthetic classes of the 102
    assert summary["val"]["mean_per_class"] == pytest.approx(sum(present) / 4, abs=1e-4)  # the CSV rounds
    assert summary["val"]["mean_per_class"] == pytest.approx(summary["val"]["top1"])  # 4 val images per class


def test_two_runs_in_one_process_are_identical_and_leave_the_callers_rng_alone(tiny_prepared, tmp_path):
    config = dict(data=str(tiny_prepared), epochs=2, **TINY | {"head_epochs": 1})
    torch.manual_seed(1)
    expected = torch.rand(3)
    torch.manual_seed(1)
    train(TrainConfig(out=str(tmp_path / "a"), **config))
    assert torch.equal(torch.rand(3), expected)  # train() drew nothing from the caller's random stream
    torch.manual_seed(2)  # another caller state: the run depends on its own seed alone
    train(TrainConfig(out=str(tmp_path / "b"), **config))
    a, b = load_bundle(tmp_path / "a" / "last.pt"), load_bundle(tmp_path / "b" / "last.pt")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert [h["train_loss"] for h in history(tmp_path / "a")] == [h["train_loss"] for h in history(tmp_path / "b")]


def test_bf16_autocast_trains_and_keeps_fp32_weights_or_is_refused_where_the_cpu_lacks_it(
    tiny_prepared, tmp_path, monkeypatch
):
    config = dict(data=str(tiny_prepared), epochs=2, lr=3e-3, **TINY)
    if not cpu_has_native_bf16():
        with pytest.raises(FloraEdgeError, match="no native bfloat16"):
            train(TrainConfig(out=str(tmp_path / "bf16"), precision="bf16", **config))
        assert not (tmp_path / "bf16").exists()
        return
    trained_classes: set[str] = set()
    real_epoch = trainer.train_one_epoch

    def recording(model, *args, **kwargs):
        trained_classes.update(type(m).__name__ for m in model.modules() if isinstance(m, torch.nn.Conv2d))
        return real_epoch(model, *args, **kwargs)

    monkeypatch.setattr(trainer, "train_one_epoch", recording)
    train(TrainConfig(out=str(tmp_path / "fp32"), precision="fp32", **config))
    assert not any(name.startswith("Fp32Trained") for name in trained_classes)
    train(TrainConfig(out=str(tmp_path / "bf16"), precision="bf16", **config))
    assert any(name.startswith("Fp32Trained") for name in trained_classes)  # the trainer swapped its depthwise layers
    fp32, bf16 = ([h["train_loss"] for h in history(tmp_path / run)] for run in ("fp32", "bf16"))
    assert bf16 != fp32  # the same seeded run (see above), so only the arithmetic differs
    assert bf16 == pytest.approx(fp32, rel=0.1) and bf16[-1] < bf16[0]
    assert all(
        v.dtype == torch.float32
        for v in load_bundle(tmp_path / "bf16" / "best.pt")["model"].values()
        if v.is_floating_point()
    )


def test_depthwise_in_fp32_leaves_autocast_only_where_a_backward_pass_will_run():
    """bf16 training on a CPU keeps the depthwise layers in fp32 (oneDNN's bf16 depthwise backward is slow)
    where gradients flow; inference, and frozen layers that nothing trains before, stay in bf16; without
    autocast, nothing changes."""
    torch.manual_seed(0)
    model = build_model("efficientnet_lite0", 5, "none").eval()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        before = model(images)
    keys = list(model.state_dict())
    depthwise_in_fp32(model)
    depthwise_in_fp32(model)  # a second call changes nothing
    with torch.no_grad():
        assert torch.equal(model(images), before) and list(model.state_dict()) == keys
    # bf16 autocast runs on any CPU (emulated where not native): the dtypes below hold everywhere
    set_epoch_mode(model, TrainConfig(data="", out="", arch="efficientnet_lite0"), backbone_trainable=True)
    depthwise = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.groups > 1]
    frozen = [not m.weight.requires_grad for m in depthwise]  # the recipe's frozen early layers come first
    assert 0 < sum(frozen) < len(depthwise)
    seen: list[torch.dtype] = []
    for m in depthwise:
        m.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        model(images)
    assert seen == [torch.bfloat16] * len(depthwise)
    seen.clear()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(images)
    assert seen == [torch.bfloat16 if f else torch.float32 for f in frozen]
    assert all(type(m).__name__.count("Fp32Trained") == 1 for m in depthwise)  # swapped once, not twice


def test_fp16_on_a_cpu_is_refused_before_any_folder_is_made(tiny_prepared, tmp_path):
    with pytest.raises(FloraEdgeError, match="fp16 needs CUDA"):
        train(TrainConfig(data=str(tiny_prepared), out=str(tmp_path / "run"), epochs=1, precision="fp16", **TINY))
    assert not (tmp_path / "run").exists()


def test_checkpoint_round_trip_gives_the_same_outputs(tiny_prepared, tmp_path):
    run = tmp_path / "run"
    train(TrainConfig(data=str(tiny_prepared), out=str(run), epochs=1, **TINY))
    model, spec = model_from_bundle(load_bundle(run / "best.pt"))
    row = read_manifest(tiny_prepared)[0]
    x = torch.from_numpy(preprocess(read_image_bgr(tiny_prepared / row["cache_path"]), spec))
    again, _ = model_from_bundle(load_bundle(run / "best.pt"))
    with torch.no_grad():
        assert torch.equal(model(x), again(x))
        assert model(x).std() > 1e-3  # a trained head, not an all-zero output


def train_interrupted(config: TrainConfig, monkeypatch, at_epoch: int = 2) -> None:
    """``train(config)`` stopped by a Ctrl-C as epoch ``at_epoch`` starts (last.pt holds the one before)."""
    real_epoch = trainer.train_one_epoch

    def interrupted(*args, epoch, **kwargs):
        if epoch == at_epoch:
            raise KeyboardInterrupt
        return real_epoch(*args, epoch=epoch, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(trainer, "train_one_epoch", interrupted)
        with pytest.raises(KeyboardInterrupt):
            train(config)


@pytest.mark.parametrize("ema_epochs", [0.0, 1.0])
def test_resume_matches_an_uninterrupted_run(tiny_prepared, tmp_path, monkeypatch, ema_epochs):
    config = dict(data=str(tiny_prepared), epochs=3, ema_epochs=ema_epochs, **TINY)
    train(TrainConfig(out=str(tmp_path / "straight"), **config))
    train_interrupted(TrainConfig(out=str(tmp_path / "resumed"), **config), monkeypatch)
    assert load_bundle(tmp_path / "resumed" / "last.pt")["epoch"] == 1
    train(TrainConfig(out=str(tmp_path / "resumed"), resume=True, **config))
    a = load_bundle(tmp_path / "straight" / "last.pt")["model"]
    b = load_bundle(tmp_path / "resumed" / "last.pt")["model"]
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-6) for k in a)
    assert [h["train_loss"] for h in history(tmp_path / "straight")] == [
        h["train_loss"] for h in history(tmp_path / "resumed")
    ]


def test_resume_keeps_the_fp16_loss_scale(tiny_prepared, tmp_path, monkeypatch):
    # fp16 needs CUDA; a CPU GradScaler that doubles its scale after every step stands in for its state
    scaler = lambda *_: (None, torch.amp.GradScaler("cpu", init_scale=2.0**4, growth_interval=1))  # noqa: E731
    monkeypatch.setattr(trainer, "mixed_precision", scaler)
    config = dict(data=str(tiny_prepared), epochs=3, **TINY)
    train(TrainConfig(out=str(tmp_path / "straight"), **config))
    train_interrupted(TrainConfig(out=str(tmp_path / "resumed"), **config), monkeypatch)
    train(TrainConfig(out=str(tmp_path / "resumed"), resume=True, **config))
    straight, resumed = (load_bundle(tmp_path / run / "last.pt")["scaler"] for run in ("straight", "resumed"))
    assert straight["scale"] > 2.0**4  # it grew, so a resume that started again at 2**4 would differ
    assert resumed == straight


def test_ema_checkpoints_hold_the_average_and_last_keeps_the_raw_weights(tiny_prepared, tmp_path):
    run = tmp_path / "run"
    summary = train(TrainConfig(data=str(tiny_prepared), out=str(run), epochs=2, ema_epochs=0.5, **TINY))
    last = load_bundle(run / "last.pt")
    train_rows = [r for r in read_manifest(tiny_prepared) if r["split"] == "train"]
    steps = 2 * (len(train_rows) // TINY["batch_size"])
    assert int(last["ema"]["n_averaged"]) == steps  # updated after every optimizer step
    averaged = {k.removeprefix("module."): v for k, v in last["ema"].items() if k != "n_averaged"}
    assert all(torch.equal(last["model"][k], averaged[k]) for k in last["model"])  # the bundle ships the average
    assert not torch.equal(
        last["model"]["_fc.weight"], last["raw_model"]["_fc.weight"]
    )  # ... and is not the raw weights
    assert load_bundle(run / "best.pt")["metrics"]["val"]["top1"] == summary["val"]["top1"]  # validated = shipped


def test_final_protocol_without_val_trains_every_epoch_and_keeps_the_last(tiny_prepared, tmp_path):
    run = tmp_path / "run"
    config = TrainConfig(
        data=str(tiny_prepared), out=str(run), epochs=3, **TINY | {"patience": 1}, train_splits=("train", "val")
    )
    summary = train(dataclasses.replace(config, val_split=None))
    assert [h["epoch"] for h in history(run)] == [1, 2, 3]  # no early stop without a val split
    assert "val_top1" not in history(run)[0] and "val" not in summary
    assert summary["best_epoch"] == 3 and load_bundle(run / "best.pt")["epoch"] == 3
    assert load_bundle(run / "best.pt")["dataset"]["train_splits"] == ["train", "val"]


@pytest.mark.parametrize("freeze_early", [True, False])
def test_early_layers_stay_frozen_unless_asked(tiny_prepared, tmp_path, freeze_early):
    run = tmp_path / "run"
    train(TrainConfig(data=str(tiny_prepared), out=str(run), epochs=1, freeze_early=freeze_early, **TINY))
    trained = load_bundle(run / "best.pt")["model"]
    start = build_model("efficientnet_lite0", 102, "imagenet").state_dict()
    stem, late = "_conv_stem.weight", "_blocks.15._project_conv.weight"
    assert torch.equal(trained[stem], start[stem]) is freeze_early
    assert not torch.equal(trained[late], start[late])


def test_every_registry_entry_names_real_early_layers():
    for name, entry in MODELS.items():
        model = entry.build("none")
        assert entry.early_layers, name
        for layer in entry.early_layers:
            assert any(True for _ in model.get_submodule(layer).parameters()), (name, layer)


def test_existing_run_dir_is_refused(tiny_prepared, tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "x").write_text("keep")
    with pytest.raises(FloraEdgeError, match="--resume"):
        train(TrainConfig(data=str(tiny_prepared), out=str(tmp_path / "run"), epochs=1, **TINY))


def test_unprepared_data_dir_is_a_clear_error(tmp_path):
    with pytest.raises(FloraEdgeError, match="not a prepared dataset"):
        train(TrainConfig(data=str(tmp_path / "data"), out=str(tmp_path / "run"), epochs=1, **TINY))


def test_weights_with_another_class_count_are_refused(tmp_path):
    model = build_model("mobilenet_v3_large", 10, weights="none")
    torch.save(model.state_dict(), tmp_path / "ten.pth")
    with pytest.raises(WeightsError, match="10-class head"):
        build_model("mobilenet_v3_large", 102, weights=str(tmp_path / "ten.pth"))


def test_weights_of_another_architecture_are_refused(tmp_path):
    torch.save(build_model("efficientnet_lite0", 102, weights="none").state_dict(), tmp_path / "lite.pth")
    with pytest.raises(WeightsError, match="does not fit mobilenet_v3_large"):
        build_model("mobilenet_v3_large", 102, weights=str(tmp_path / "lite.pth"))


def test_imagenet_state_dict_file_loads_and_head_is_replaced(tmp_path):
    imagenet = build_model("mobilenet_v3_large", 1000, weights="none")
    torch.save(imagenet.state_dict(), tmp_path / "imagenet.pth")
    model = build_model("mobilenet_v3_large", 102, weights=str(tmp_path / "imagenet.pth"))
    assert model.classifier[3].out_features == 102
    assert torch.equal(model.features[0][0].weight, imagenet.features[0][0].weight)


def test_torchvision_imagenet_weights_fail_fast_offline_naming_the_routes(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty hub cache: it has to download
    with pytest.raises(WeightsError, match="--weights PATH"):
        build_model("resnet50", 102, weights="imagenet")


def test_unknown_arch_lists_the_choices():
    with pytest.raises(FloraEdgeError, match="resnet50, mobilenet_v3_large, efficientnet_lite0"):
        get_entry("vgg16")


def test_foreign_checkpoint_is_refused(tmp_path):
    torch.save({"weight": torch.zeros(3)}, tmp_path / "plain.pt")
    with pytest.raises(CheckpointError, match="not a FloraEdge model bundle"):
        load_bundle(tmp_path / "plain.pt")
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_bundle(tmp_path / "junk.pt")


@pytest.mark.realdata
@pytest.mark.parametrize("arch", ["efficientnet_lite0", "efficientnet_lite2"])  # the student, the teacher
def test_lite_offline_imagenet_weights_see_a_daisy(arch):
    """Proves the shipped weights and the (x - 127.5) / 127.5 normalization are right."""
    if not REAL_DATA.is_dir():
        pytest.skip(f"real data not present at {REAL_DATA}")
    categories = torchvision.models.ResNet50_Weights.IMAGENET1K_V1.meta["categories"]
    model = MODELS[arch].build("imagenet").eval()
    image = read_image_bgr(REAL_DATA / "jpg" / "image_06200.jpg")  # an oxeye daisy (train split)
    with torch.no_grad():
        probs = model(torch.from_numpy(preprocess(image, get_entry(arch).spec))).softmax(1)[0]
    assert categories[probs.argmax()] == "daisy" and probs.max() > 0.5


@pytest.mark.slow
def test_ddp_with_two_gloo_processes(tiny_prepared, tmp_path):
    run = tmp_path / "ddp"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        "29533",
        "-m",
        "train",
        "--data",
        str(tiny_prepared),
        "--out",
        str(run),
        "--arch",
        "efficientnet_lite0",
        "--img-size",
        "32",
        "--batch-size",
        "8",
        "--epochs",
        "2",
        "--head-epochs",
        "0",
        "--workers",
        "0",
        "--threads",
        "1",
        "--no-progress",
    ]
    result = subprocess.run(
        cmd, capture_output=True, text=True, cwd=REPO, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert [h["epoch"] for h in history(run)] == [1, 2]
    assert load_bundle(run / "best.pt")["num_classes"] == 102


def test_evaluation_reads_each_image_when_asked_not_at_once(tiny_prepared, monkeypatch):
    """`evaluate` walks a split once: its dataset holds no decoded images, so memory stays flat in the split."""
    from edge_runtime.spec import PreprocessSpec
    from train import data, evaluate
    from train.config import EvaluateConfig

    spec = PreprocessSpec(crop_size=32, resize_size=36)
    eager, lazy = (data.CachedImages(tiny_prepared, ["val"], spec=spec, in_memory=m) for m in (True, False))
    assert lazy.images is None and len(lazy) == len(eager) == 16
    assert all(torch.equal(lazy[i][0], eager[i][0]) and lazy[i][1] == eager[i][1] for i in range(len(lazy)))
    made = []
    monkeypatch.setattr(evaluate, "CachedImages", lambda *a, **k: made.append(k) or data.CachedImages(*a, **k))
    bundle = {"arch": "x"}
    monkeypatch.setattr(evaluate, "model_from_bundle", lambda b: (torch.nn.Flatten(), spec))
    logits, targets = evaluate.split_logits(bundle, EvaluateConfig(checkpoint="-", data=str(tiny_prepared)))
    assert made == [{"spec": spec, "in_memory": False}] and len(targets) == 16 == len(logits)


def test_overwrite_keeps_the_previous_run_until_the_new_one_completes(tiny_prepared, tmp_path, monkeypatch, capsys):
    config = dict(data=str(tiny_prepared), out=str(tmp_path / "run"), epochs=2, **TINY)
    train(TrainConfig(**config))
    before = (tmp_path / "run" / "best.pt").read_bytes()
    train_interrupted(TrainConfig(overwrite=True, **config), monkeypatch)  # a Ctrl-C midway through the new run
    assert "the previous" in capsys.readouterr().out and (tmp_path / "run" / "best.pt").read_bytes() == before
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # the half-made run is gone
    train(TrainConfig(overwrite=True, seed=1, **config))
    assert (tmp_path / "run" / "best.pt").read_bytes() != before and (tmp_path / "run" / "summary.json").is_file()
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_two_new_runs_into_one_folder_do_not_share_it(tiny_prepared, tmp_path, monkeypatch):
    from edge_runtime.outdir import OutputError, claim

    run = tmp_path / "run"
    real_sets = trainer.training_sets

    def another_run_starts_meanwhile(*args, **kwargs):  # after this run checked --out, before it made it
        run.mkdir()
        claim(run, "train")
        return real_sets(*args, **kwargs)

    monkeypatch.setattr(trainer, "training_sets", another_run_starts_meanwhile)
    with pytest.raises(OutputError, match="taken by another run"):
        train(TrainConfig(data=str(tiny_prepared), out=str(run), epochs=1, **TINY))
    assert [p.name for p in run.iterdir()] == [".floraedge-output.json"]  # nothing written into the other run


def test_evaluate_replaces_a_report_whole_and_never_writes_into_another_folder(
    tiny_checkpoint, tiny_prepared, tmp_path
):
    from edge_runtime.outdir import OutputError
    from train.evaluate import evaluate_checkpoint

    out = tmp_path / "eval"
    config = EvaluateConfig(checkpoint=str(tiny_checkpoint), data=str(tiny_prepared), out=str(out))
    evaluate_checkpoint(config)
    evaluate_checkpoint(config)  # a previous report is replaced
    assert sorted(p.name for p in out.iterdir()) == ["confusion.csv", "metrics.json", "per_class.csv"]
    (out / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match="holds files other than an evaluation report"):
        evaluate_checkpoint(config)
    assert (out / "notes.txt").read_text() == "mine" and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_resume_refuses_other_options_and_other_images_but_takes_other_resources(tiny_prepared, tmp_path, monkeypatch):
    """--epochs stretches the schedule, --lr changes every step: a resume with either would ship a checkpoint whose
    recorded options did not train it. Threads and workers are resources, and may change."""
    config = TrainConfig(data=str(tiny_prepared), out=str(tmp_path / "run"), epochs=3, **TINY)
    train_interrupted(config, monkeypatch)
    resume = dataclasses.replace(config, resume=True)
    for changed in ({"epochs": 5}, {"lr": 0.01}, {"train_splits": ("train", "val"), "val_split": None}):
        with pytest.raises(FloraEdgeError, match="--resume: .* was started with other options") as caught:
            train(dataclasses.replace(resume, **changed))
        assert f"--{next(iter(changed)).replace('_', '-')}" in str(caught.value)
    assert load_bundle(tmp_path / "run" / "last.pt")["epoch"] == 1  # nothing was trained by the refused runs
    summary = train(dataclasses.replace(resume, threads=1, workers=0))
    assert summary["best_epoch"] >= 1 and load_bundle(tmp_path / "run" / "last.pt")["epoch"] == 3


def test_resume_refuses_a_dataset_whose_training_images_changed(tiny_prepared, tmp_path, monkeypatch):
    config = TrainConfig(data=str(tiny_prepared), out=str(tmp_path / "run"), epochs=2, **TINY)
    train_interrupted(config, monkeypatch)
    last = tmp_path / "run" / "last.pt"
    bundle = load_bundle(last)
    bundle["dataset"]["trained_images"] = bundle["dataset"]["trained_images"][1:]  # one image fewer back then
    torch.save(bundle, last)
    with pytest.raises(FloraEdgeError, match="not the ones .* started on"):
        train(dataclasses.replace(config, resume=True))
