"""Model cards (Markdown + JSON) and labels.txt next to the exported files."""

from __future__ import annotations

import json
import platform
from importlib import metadata
from pathlib import Path

from edge_runtime.backends import BACKENDS
from export.formats import FORMATS
from train.checkpoint import dataset_record

# the converters' packages, then the runtimes that verify the files
TOOLS = (
    "torch",
    "onnx",
    "onnxconverter-common",
    "litert-torch",
    "ai-edge-quantizer",
    *dict.fromkeys(BACKENDS[f.runtime].package for f in FORMATS),
)


def tool_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in TOOLS:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def write_cards(
    out: Path,
    bundle: dict,
    results: list[dict],
    *,
    config: dict,
    verify_info: dict,
    calib_info: dict | None,
    torch_accuracy: float,
    versions: dict,
) -> None:
    (out / "labels.txt").write_text("\n".join(bundle["class_names"]) + "\n")
    card = {
        "arch": bundle["arch"],
        "source_checkpoint": config["checkpoint"],
        "epoch": bundle["epoch"],
        "dataset": dataset_record(bundle),
        "training_metrics": bundle.get("metrics", {}).get("val"),
        "verification": verify_info | {"torch_top1": torch_accuracy},
        "calibration": calib_info,
        "config": config,
        "tool_versions": versions,
        "files": results,
    }
    if card["training_metrics"]:
        card["training_metrics"] = {
            k: v for k, v in card["training_metrics"].items() if k not in ("confusion", "per_class")
        }
    (out / "model_card.json").write_text(json.dumps(card, indent=2, default=str) + "\n")
    for r in results:
        if r.get("kept"):  # the runtime's sidecar: spec + labels + info, for loaders that skip embedded metadata
            sidecar = {"spec": r["spec"], "labels": bundle["class_names"], **r["info"], "verification": r["gate"]}
            (out / f"{r['file']}.json").write_text(json.dumps(sidecar, indent=1, default=str) + "\n")
    (out / "MODEL_CARD.md").write_text(markdown(card, torch_accuracy))


def markdown(card: dict, torch_accuracy: float) -> str:
    dataset = card["dataset"].get("name", "unknown dataset")
    v = card["verification"]
    lines = [
        f"# {card['arch']} — FloraEdge export",
        "",
        f"- dataset: {dataset}",
        f"- source checkpoint: `{card['source_checkpoint']}` (epoch {card['epoch']})",
        f"- verified on {v['n']} `{v['split']}` images; PyTorch top-1 there: {torch_accuracy:.4f}"
        + (
            " (the checkpoint was trained on them: agreement is meaningful, accuracy is not)"
            if v.get("seen_in_training")
            else ""
        ),
        f"- calibration: {json.dumps({k: val for k, val in (card['calibration'] or {}).items() if k != 'image_ids'})}",
        "- normalization lives in the runtime: `(pixel/255 - mean) / std` from the embedded spec, then the model",
        '- every file outputs float32 softmax probabilities (`"output": "probabilities"` in its metadata); '
        "the int8 files quantize inside and keep float32 input, logits and softmax",
        "",
        "| file | precision | size (MB) | top-1 | drop (points) | agreement | gate |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in card["files"]:
        if "error" in r:
            lines.append(f"| {r['file']} | | | | | | FAILED: {r['error'][:120]} |")
            continue
        warn = " **WARNING: kept despite failing the gate**" if r["kept"] and not r["passed"] else ""
        size = f"{r['bytes'] / 1e6:.2f}" if r["bytes"] else "not written"
        lines.append(
            f"| `{r['file']}` | {r['info']['precision']} | {size} | {r['accuracy']:.4f} | "
            f"{r['accuracy_drop_points']:.2f} | {r['top1_agreement']:.2%} | {r['gate']}{warn} |"
        )
    lines += ["", "Tool versions: " + ", ".join(f"{k} {val}" for k, val in card["tool_versions"].items()), ""]
    return "\n".join(lines)
