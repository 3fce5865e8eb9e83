"""The studies that run on the tiny fixtures: each reports what it claims to measure."""

from __future__ import annotations

import json

import pytest


@pytest.mark.slow
def test_pareto_measures_each_candidate_side_by_side_and_retarget_changes_only_the_input_size(
    onnx_exports, tiny_checkpoint, tiny_prepared, tmp_path
):
    from edge_runtime.backends import load
    from studies import pareto
    from train.checkpoint import load_bundle

    at48 = tmp_path / "at48.pt"
    assert pareto.main(["retarget", "--checkpoint", str(tiny_checkpoint), "--img-size", "48", "--out", str(at48)]) == 0
    before, after = load_bundle(tiny_checkpoint), load_bundle(at48)
    assert after["spec"]["crop_size"] == 48 and after["spec"]["resize_size"] == 55  # round(48 / 0.875)
    assert all(before["model"][k].equal(after["model"][k]) for k in before["model"])
    fp32, int8 = onnx_exports / "model_fp32.onnx", onnx_exports / "model_int8.onnx"
    args = ["--data", str(tiny_prepared), "--out", str(tmp_path / "p"), "--rounds", "2", "--runs", "3"]
    assert pareto.main([*args, "--candidate", f"fp32={fp32}", "--candidate", f"int8={int8}"]) == 0
    found = json.loads((tmp_path / "p" / "pareto.json").read_text())["candidates"]
    assert [c["name"] for c in found] == ["fp32", "int8"] and found[0]["latency_vs_first"] == 1.0
    assert all(len(c["rounds_ms"]) == 2 and c["n"] == 16 and c["input"] == 32 for c in found)
    assert (tmp_path / "p" / "pareto.png").stat().st_size > 0
    assert found[0]["top1"] == pytest.approx(bench_top1(load(fp32), tiny_prepared))


def bench_top1(backend, data) -> float:
    """The fp32 file's val top-1 through the device preprocess, computed here independently."""
    import numpy as np

    from edge_runtime.preprocess import preprocess, read_image_bgr
    from prepare.manifest import read_manifest

    rows = [r for r in read_manifest(data) if r["split"] == "val"]
    hits = [
        backend.predict(preprocess(read_image_bgr(data / r["path"]), backend.info.spec))[0].argmax() == r["class_index"]
        for r in rows
    ]
    return float(np.mean(hits))


@pytest.mark.slow  # its fixture exports the tiny model (fp32, int8)
def test_int8_kernels_bench_reports_the_x86_presets_file_computed_as_it_means(onnx_exports, tiny_prepared, capsys):
    from studies import int8_kernels

    path = onnx_exports / "model_int8.onnx"
    report = int8_kernels.main(
        ["--models", str(path), "--data", str(tiny_prepared), "--limit", "16", "--rounds", "2", "--runs", "3"]
    )
    result = report["files"][str(path)]
    assert result["n"] == 16 and result["weights"]["weight_abs_max"] == 64
    # near-ties may flip with the rounding of a CPU's kernels; nothing else may
    assert result["flips_beyond_rounding"] == 0 and result["max_abs_diff"] < 0.05, result
    assert result["top1_agreement"] >= 0.9, result
    assert len(result["rounds_ms"]) == 2 and result["median_ms"] > 0
    assert json.loads(capsys.readouterr().out) == report


@pytest.mark.slow  # a litert-torch conversion
def test_foreign_files_run_as_other_tools_files_and_match_the_checkpoint(tiny_checkpoint, tiny_prepared, tmp_path):
    """The plain ONNX runs once told its labels and spec, the standard-metadata TFLite with no option, and both
    give the checkpoint's own logits' top-1."""
    import numpy as np

    from edge_runtime.backends import load
    from edge_runtime.foreign import ModelOverrides
    from edge_runtime.preprocess import preprocess, read_image_bgr
    from prepare.manifest import read_manifest
    from studies import foreign_files
    from train.checkpoint import load_bundle, model_from_bundle

    out = tmp_path / "foreign"
    assert foreign_files.main(["--checkpoint", str(tiny_checkpoint), "--out", str(out)]) == 0
    model, spec = model_from_bundle(load_bundle(tiny_checkpoint))
    rows = [r for r in read_manifest(tiny_prepared) if r["split"] == "val"][:8]
    batch = np.concatenate([preprocess(read_image_bgr(tiny_prepared / r["path"]), spec) for r in rows])
    import torch

    with torch.no_grad():
        expected = model(torch.from_numpy(batch)).numpy().argmax(1)
    plain = load(
        out / "onnx" / "plain.onnx",
        overrides=ModelOverrides(labels=out / "labels.txt", spec=out / "spec.json", output="logits"),
    )
    standard = load(out / "tflite" / "standard.tflite")
    assert standard.info.labels == plain.info.labels == tuple(load_bundle(tiny_checkpoint)["class_names"])
    for backend in (plain, standard):
        got = np.concatenate(
            [backend.predict(preprocess(read_image_bgr(tiny_prepared / r["path"]), backend.info.spec)) for r in rows]
        )
        assert (got.argmax(1) == expected).all()


@pytest.mark.torch
def test_linear_head_study_rounds_weights_as_the_int8_onnx_export_stores_them():
    import numpy as np
    import torch

    from export.converters import seven_bit
    from studies.linear_head_int8 import round_like_x86_onnx, rounded_per_channel

    weight = torch.randn(8, 4, 3, 3, generator=torch.Generator().manual_seed(0))
    np.testing.assert_allclose(rounded_per_channel(weight, 64).numpy(), seven_bit(weight.numpy()), rtol=1e-6)
    # 7 bits where x86's kernel sums product pairs, the full 8 bits in a depthwise layer
    layers = torch.nn.Sequential(torch.nn.Conv2d(4, 8, 3), torch.nn.Conv2d(8, 8, 3, groups=8))
    before = [m.weight.detach().clone() for m in layers]
    round_like_x86_onnx(layers)
    for module, original, levels in zip(layers, before, (64, 127), strict=True):
        assert not torch.equal(module.weight, original)
        steps = module.weight / original.abs().amax(dim=(1, 2, 3), keepdim=True) * levels
        assert torch.allclose(steps, steps.round(), atol=1e-4)
