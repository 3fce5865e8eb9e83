"""`floraedge fixres`: the classifier re-fitted at the test preprocessing, everything else untouched."""

from __future__ import annotations

import copy

import pytest
import torch

import floraedge
from edge_runtime.errors import FloraEdgeError
from edge_runtime.metadata import file_sha256
from prepare.manifest import read_manifest
from train.checkpoint import load_bundle, model_from_bundle, retarget, save_atomic
from train.config import EvaluateConfig, FixresConfig
from train.data import CachedImages, eval_loader, image_key
from train.evaluate import evaluate_checkpoint
from train.fixres import fit_head, head_inputs, refit
from train.models import get_entry


def tiny_model_and_head(checkpoint):
    bundle = load_bundle(checkpoint)
    model, spec = model_from_bundle(bundle)
    return model, model.get_submodule(get_entry(bundle["arch"]).head), spec


def test_the_cached_features_are_what_the_classifier_sees_for_each_image_and_its_mirror(tiny_checkpoint, tiny_prepared):
    model, head, spec = tiny_model_and_head(tiny_checkpoint)
    images = CachedImages(tiny_prepared, ["val"], spec=spec)
    features, labels = head_inputs(model, head, eval_loader(images, workers=0, batch_size=5))
    batch, targets = next(iter(eval_loader(images, workers=0, batch_size=5)))
    n = len(images)  # every image in loader order, then every mirror in the same order
    with torch.no_grad():
        torch.testing.assert_close(head(features[:5]), model(batch))
        torch.testing.assert_close(head(features[n : n + 5]), model(batch.flip(3)))
    assert len(features) == 2 * n and torch.equal(labels[:5], targets) and torch.equal(labels[n : n + 5], targets)


def test_features_under_bfloat16_autocast_are_close_to_fp32_but_computed_in_bfloat16(tiny_checkpoint, tiny_prepared):
    model, head, spec = tiny_model_and_head(tiny_checkpoint)
    loader = eval_loader(CachedImages(tiny_prepared, ["val"], spec=spec), workers=0, batch_size=5)
    fp32, _ = head_inputs(model, head, loader)
    bf16, _ = head_inputs(model, head, loader, amp_dtype=torch.bfloat16)
    assert bf16.dtype == torch.float32  # handed to the head's fit in fp32 whatever the forward ran in
    assert not torch.equal(bf16, fp32)  # the autocast did run
    # bfloat16 keeps ~3 significant digits: each image's feature vector points the same way, within rounding
    assert torch.nn.functional.cosine_similarity(bf16, fp32).min() > 0.99


def test_fitting_the_head_lowers_its_loss_on_the_features(tiny_checkpoint, tiny_prepared):
    model, head, spec = tiny_model_and_head(tiny_checkpoint)
    features, labels = head_inputs(model, head, eval_loader(CachedImages(tiny_prepared, ["train"], spec=spec), 0))
    loss = torch.nn.CrossEntropyLoss()
    fitted = copy.deepcopy(head)
    fit_head(fitted, features, labels, FixresConfig(checkpoint="", data="", out="", epochs=20, lr=1e-2))
    with torch.no_grad():
        assert loss(fitted(features), labels) < 0.9 * loss(head(features), labels)


def test_fixres_changes_only_the_classifier_and_the_input_size(tiny_checkpoint, tiny_prepared, tmp_path, capsys):
    out = tmp_path / "fixres48.pt"
    report = refit(FixresConfig(checkpoint=str(tiny_checkpoint), data=str(tiny_prepared), out=str(out), img_size=48))
    printed = capsys.readouterr()
    assert "the cache holds 40 px" in printed.err and "cache" not in printed.out  # stdout stays the JSON report's
    original, fitted = load_bundle(tiny_checkpoint), load_bundle(out)
    head = get_entry(original["arch"]).head
    changed = {k for k, v in original["model"].items() if not torch.equal(v, fitted["model"][k])}
    assert changed == {f"{head}.weight", f"{head}.bias"}
    assert (fitted["spec"]["crop_size"], original["spec"]["crop_size"]) == (48, 32)
    assert fitted["fixres"]["sha256"] == file_sha256(tiny_checkpoint) and fitted["fixres"]["views"] == 2 * 32
    train_keys = {image_key(r) for r in read_manifest(tiny_prepared) if r["split"] == "train"}
    assert set(fitted["dataset"]["trained_images"]) == train_keys  # the re-fit used the same images
    assert "optimizer" not in fitted and "train_state" not in fitted
    again = evaluate_checkpoint(EvaluateConfig(checkpoint=str(out), data=str(tiny_prepared)))
    assert again["top1"] == report["val_top1"] == fitted["metrics"]["val"]["top1"]
    before = evaluate_checkpoint(EvaluateConfig(checkpoint=str(tiny_checkpoint), data=str(tiny_prepared)))
    assert report["val_top1_before"] == before["top1"]
    resized = tmp_path / "at48.pt"
    retarget(tiny_checkpoint, 48, resized)
    assert (
        report["val_top1_resized_only"]
        == evaluate_checkpoint(EvaluateConfig(checkpoint=str(resized), data=str(tiny_prepared)))["top1"]
    )


def test_it_refits_on_the_splits_the_checkpoint_trained_on(tiny_checkpoint, tiny_prepared, tmp_path):
    bundle = load_bundle(tiny_checkpoint)
    bundle["dataset"] = bundle["dataset"] | {"train_splits": ["train", "val"]}  # as a train+val model records
    trainval = tmp_path / "trainval.pt"
    save_atomic(bundle, trainval)
    out = tmp_path / "fixres.pt"
    report = refit(FixresConfig(checkpoint=str(trainval), data=str(tiny_prepared), out=str(out), val_split=None))
    assert report["train_splits"] == ["train", "val"] and report["views"] == 2 * (32 + 16)


def test_a_refit_that_would_replace_its_own_checkpoint_or_divide_by_zero_is_refused(tiny_checkpoint, tmp_path):
    source = tmp_path / "best.pt"
    source.write_bytes(tiny_checkpoint.read_bytes())
    with pytest.raises(FloraEdgeError, match="is the checkpoint being re-fitted"):
        refit(FixresConfig(checkpoint=str(source), data="unused", out=str(source), overwrite=True))
    assert source.read_bytes() == tiny_checkpoint.read_bytes()
    for bad in ({"epochs": 0}, {"batch_size": 0}):
        with pytest.raises(FloraEdgeError, match="must be at least 1"):
            refit(FixresConfig(checkpoint=str(source), data="unused", out=str(tmp_path / "x.pt"), **bad))


def test_a_refit_on_val_records_that_it_saw_val(tiny_checkpoint, tiny_prepared, tmp_path, capsys):
    out = tmp_path / "leaky.pt"
    refit(
        FixresConfig(
            checkpoint=str(tiny_checkpoint), data=str(tiny_prepared), out=str(out), train_splits=("train", "val")
        )
    )
    assert "16 of the 'val' images were in the training data" in capsys.readouterr().err
    assert load_bundle(out)["metrics"]["val"]["seen_in_training"] == 16


def test_an_existing_out_is_kept_unless_overwrite(tiny_checkpoint, tiny_prepared, tmp_path):
    out = tmp_path / "taken.pt"
    out.write_bytes(b"someone's file")
    config = FixresConfig(checkpoint=str(tiny_checkpoint), data=str(tiny_prepared), out=str(out), val_split=None)
    with pytest.raises(FloraEdgeError, match="already exists"):
        refit(config)
    assert out.read_bytes() == b"someone's file"
    assert floraedge.main(["fixres", "--checkpoint", str(tiny_checkpoint), "--data", str(tiny_prepared),
                           "--out", str(out), "--no-val", "--overwrite", "--epochs", "1"]) == 0  # fmt: skip
    assert load_bundle(out)["metrics"] == {}
