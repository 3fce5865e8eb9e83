"""Feeds docs/own_model.md ("Quantizing a float file you already have"): a checkpoint as other tools ship it.

Writes the float files a user brings from elsewhere, made from a FloraEdge checkpoint's weights so that
`floraedge quantize` on them can be compared with `floraedge export`'s own int8 files of the same weights:

* ``onnx/plain.onnx``: ``torch.onnx.export`` as a notebook does it (logits, NCHW, no metadata), with
  ``labels.txt`` and ``spec.json`` one folder up for the options `quantize` and `classify` take (beside the file
  they would be its sidecar, and it would need no option);
* ``tflite/standard.tflite``: litert-torch's NHWC file with only the standard TFLite metadata (NormalizationOptions
  and a labels file, as MediaPipe Model Maker writes it), so it runs with no option.

    python -m studies.foreign_files --checkpoint runs/release-train/best.pt --out foreign/
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def plain_onnx(model, size: int, path: Path) -> Path:
    import torch

    sample = torch.zeros(1, 3, size, size)
    torch.onnx.export(model, (sample,), str(path), input_names=["input"], output_names=["logits"], dynamo=False)
    return path


def standard_tflite(model, spec, labels: list[str], path: Path) -> Path:
    """The litert-torch file with only the standard metadata (mean and std in 0..255 pixel units)."""
    import litert_torch
    import torch

    from export.tflite_metadata import add_metadata

    softmaxed = torch.nn.Sequential(model, torch.nn.Softmax(dim=-1)).eval()  # what such files usually end in
    converted = path.with_name(path.stem + ".converted.tflite")
    nhwc = litert_torch.to_channel_last_io(softmaxed, args=[0])
    litert_torch.convert(nhwc, (torch.zeros(1, spec.crop_size, spec.crop_size, 3),)).export(str(converted))
    try:
        return add_metadata(
            converted,
            path,
            labels=labels,
            mean=tuple(255 * m for m in spec.mean),
            std=tuple(255 * s for s in spec.std),
            name=path.stem,
            description="A classifier from another tool.",
        )
    finally:
        converted.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    from train.checkpoint import load_bundle, model_from_bundle

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True, help="best.pt from `floraedge train`")
    parser.add_argument("--out", type=Path, required=True, help="folder for the files (created)")
    args = parser.parse_args(argv)
    bundle = load_bundle(args.checkpoint)
    model, spec = model_from_bundle(bundle)
    labels = list(bundle["class_names"])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "labels.txt").write_text("\n".join(labels) + "\n", encoding="utf-8")
    (args.out / "spec.json").write_text(json.dumps(spec.to_dict(), indent=1) + "\n")
    for folder in ("onnx", "tflite"):
        (args.out / folder).mkdir(exist_ok=True)
    plain_onnx(model, spec.crop_size, args.out / "onnx" / "plain.onnx")
    standard_tflite(model, spec, labels, args.out / "tflite" / "standard.tflite")
    print(f"wrote {args.out}/ (onnx/plain.onnx, labels.txt, spec.json, tflite/standard.tflite)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
