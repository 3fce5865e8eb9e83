"""`floraedge soup`: weights averaged into one ordinary checkpoint, the greedy choice, and the refusals."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

import floraedge
from edge_runtime.errors import FloraEdgeError
from edge_runtime.metadata import file_sha256
from prepare.manifest import read_manifest
from tests.test_distill import variant
from tests.test_train import TINY
from train.checkpoint import load_bundle, save_atomic
from train.config import EvaluateConfig, SoupConfig
from train.data import image_key
from train.evaluate import evaluate_checkpoint
from train.soup import average_weights, greedy_choice, make_soup
from train.trainer import TrainConfig, train


@pytest.fixture(scope="module")
def second_seed(tiny_prepared, tmp_path_factory) -> Path:
    """The tiny Lite0 of the conftest recipe, fine-tuned from the same ImageNet weights with another seed."""
    run = tmp_path_factory.mktemp("seed1") / "run"
    train(TrainConfig(data=str(tiny_prepared), out=str(run), epochs=2, seed=1, **TINY))
    return run / "best.pt"


def trained_weights(bundle: dict) -> dict:
    return {k: v for k, v in bundle["model"].items() if v.is_floating_point()}


def test_the_uniform_soup_is_the_mean_of_its_ingredients_and_a_complete_checkpoint(
    tiny_checkpoint, second_seed, tiny_prepared, tmp_path
):
    out = tmp_path / "soup" / "best.pt"
    report = make_soup(
        SoupConfig(checkpoints=(str(tiny_checkpoint), str(second_seed)), out=str(out), data=str(tiny_prepared))
    )
    a, b, soup = load_bundle(tiny_checkpoint), load_bundle(second_seed), load_bundle(out)
    moved = [k for k, v in trained_weights(a).items() if not torch.equal(v, b["model"][k])]
    assert moved, "the two seeds must differ somewhere for this test to mean anything"
    for k in moved:
        torch.testing.assert_close(soup["model"][k], (a["model"][k] + b["model"][k]) / 2)
    assert (soup["arch"], soup["class_names"], soup["spec"]) == (a["arch"], a["class_names"], a["spec"])
    assert [i["sha256"] for i in soup["soup"]["ingredients"]] == [
        file_sha256(tiny_checkpoint),
        file_sha256(second_seed),
    ]
    assert "optimizer" not in soup and "train_state" not in soup
    again = evaluate_checkpoint(EvaluateConfig(checkpoint=str(out), data=str(tiny_prepared)))
    assert again["top1"] == report["top1"] == soup["metrics"]["val"]["top1"]
    assert [i["val_top1"] for i in report["ingredients"]] == [
        evaluate_checkpoint(EvaluateConfig(checkpoint=str(p), data=str(tiny_prepared)))["top1"]
        for p in (tiny_checkpoint, second_seed)
    ]


def test_a_soup_of_one_model_with_itself_is_that_model(tiny_checkpoint, tmp_path):
    out = tmp_path / "same.pt"
    make_soup(SoupConfig(checkpoints=(str(tiny_checkpoint),) * 2, out=str(out)))  # (a + a) / 2 is exact
    original = load_bundle(tiny_checkpoint)["model"]
    soup = load_bundle(out)["model"]
    assert all(torch.equal(soup[k], v) for k, v in original.items())


def test_integer_counters_are_kept_not_averaged():
    states = [
        {"w": torch.tensor([0.0, 2.0]), "n": torch.tensor(3)},
        {"w": torch.tensor([2.0, 4.0]), "n": torch.tensor(8)},
    ]
    mean = average_weights(states)
    assert torch.equal(mean["w"], torch.tensor([1.0, 3.0])) and mean["n"].item() == 3 and mean["n"].dtype == torch.int64


def test_the_greedy_soup_adds_the_best_first_and_keeps_only_what_does_not_hurt():
    """Scored by closeness of the averaged weight to 0.5: ingredients 0 and 1 (0.0 and 1.0) average to it;
    adding 10.0 would pull the soup away, so it stays out."""
    bundles = [{"model": {"w": torch.tensor([w])}} for w in (10.0, 0.0, 1.0)]
    kept, alone = greedy_choice(bundles, lambda b: -abs(b["model"]["w"].item() - 0.5))
    assert alone == [-9.5, -0.5, -0.5]
    assert kept == [1, 2]


def refused(config: SoupConfig, match: str) -> None:
    with pytest.raises(FloraEdgeError, match=match):
        make_soup(config)
    assert not Path(config.out).exists()


def test_ingredients_that_cannot_be_averaged_are_refused_before_anything_is_written(tiny_checkpoint, tmp_path):
    out = str(tmp_path / "soup.pt")
    other_norm = variant(tiny_checkpoint, tmp_path / "norm.pt", spec={"mean": [0.1, 0.2, 0.3]})
    renamed = load_bundle(tiny_checkpoint)["class_names"][::-1]
    other_classes = variant(tiny_checkpoint, tmp_path / "classes.pt", class_names=renamed)
    other_arch = tmp_path / "arch.pt"
    save_atomic(load_bundle(tiny_checkpoint) | {"arch": "mobilenet_v3_large"}, other_arch)
    first = str(tiny_checkpoint)
    refused(SoupConfig(checkpoints=(first,), out=out), "at least two")
    refused(SoupConfig(checkpoints=(first, str(other_norm)), out=out), r"prepares its input unlike .*\(mean\)")
    refused(SoupConfig(checkpoints=(first, str(other_classes)), out=out), "names .* classes differently")
    refused(SoupConfig(checkpoints=(first, str(other_arch)), out=out), "mobilenet_v3_large")
    refused(SoupConfig(checkpoints=(first, first), out=out, greedy=True), "pass --data")


def test_another_input_size_is_accepted_and_the_soup_takes_the_firsts(tiny_checkpoint, tmp_path):
    bigger = variant(tiny_checkpoint, tmp_path / "40.pt", spec={"crop_size": 40, "resize_size": 46})
    make_soup(SoupConfig(checkpoints=(str(tiny_checkpoint), str(bigger)), out=str(tmp_path / "soup.pt")))
    assert load_bundle(tmp_path / "soup.pt")["spec"] == load_bundle(tiny_checkpoint)["spec"]


def test_choosing_on_a_split_the_ingredients_trained_on_is_refused(tiny_checkpoint, tiny_prepared, tmp_path):
    config = SoupConfig(
        checkpoints=(str(tiny_checkpoint),) * 2, out=str(tmp_path / "s.pt"), data=str(tiny_prepared), split="train"
    )
    refused(config, "was trained on [0-9]+ of the 'train' images")


def test_a_held_out_split_that_holds_training_images_under_another_name_is_refused(
    tiny_checkpoint, tiny_prepared, tmp_path, capsys
):
    # as if the ingredient came from a differently split copy of the release: its "val" is not this "val"
    val = [image_key(r) for r in read_manifest(tiny_prepared) if r["split"] == "val"]
    bundle = load_bundle(tiny_checkpoint)
    bundle["dataset"]["trained_images"] = sorted(bundle["dataset"]["trained_images"] + val[:3])
    leaky = tmp_path / "leaky.pt"
    save_atomic(bundle, leaky)
    config = SoupConfig(
        checkpoints=(str(tiny_checkpoint), str(leaky)), out=str(tmp_path / "s.pt"), data=str(tiny_prepared)
    )
    refused(config, f"{leaky} was trained on 3 of the 'val' images")
    # without --data nothing is scored: the soup is made, and it has seen what each ingredient saw
    make_soup(replace(config, data=None))
    soup = tmp_path / "s.pt"
    assert load_bundle(soup)["dataset"]["trained_images"] == bundle["dataset"]["trained_images"]
    metrics = evaluate_checkpoint(EvaluateConfig(checkpoint=str(soup), data=str(tiny_prepared), split="val", workers=0))
    assert metrics["seen_in_training"] == 3
    assert capsys.readouterr().err.count("3 of the 'val' images were in the training data") == 1


def test_an_existing_soup_is_kept_without_overwrite(tiny_checkpoint, tmp_path):
    out = tmp_path / "soup.pt"
    out.write_bytes(b"precious")
    code = floraedge.main(["soup", str(tiny_checkpoint), str(tiny_checkpoint), "--out", str(out)])
    assert code == 1 and out.read_bytes() == b"precious"
    assert floraedge.main(["soup", str(tiny_checkpoint), str(tiny_checkpoint), "--out", str(out), "--overwrite"]) == 0
    assert load_bundle(out)["soup"]["method"] == "uniform"
