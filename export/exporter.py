"""``export_all(config)``: every requested row of the format table, exported, embedded, verified.

Each file is written under a temporary name and renamed only once it passed the gate (or, with
``allow_drop``, with a loud warning in its card). One row failing never loses the others.
"""

from __future__ import annotations

import json
import platform
import shutil
import time
import traceback
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from edge_runtime.atomic import write_bytes_atomic
from edge_runtime.metadata import INFO_KEY, LABELS_KEY, PROBABILITIES, SPEC_KEY, classifier_title
from edge_runtime.modelfile import model_bytes, model_files
from edge_runtime.outdir import staged_output
from edge_runtime.spec import PreprocessSpec
from export import converters
from export.calibration import calibration_set, verification_set
from export.card import tool_versions, write_cards
from export.config import ExportConfig
from export.converters import (
    ONNX_OPSET,
    ExportContext,
    WithSoftmax,
    embed_onnx_metadata,
    embed_tflite_metadata,
)
from export.formats import Format, needs_qdq_emulation, onnx_int8_info, select
from export.isolation import run_converter
from export.verify import Reference, verify
from train.checkpoint import dataset_record, load_bundle, model_from_bundle
from train.data import seen_in_training

EXPORT = "export"  # the marker kind of an export folder: only such a folder is replaced by --overwrite


def reference(model: torch.nn.Module, batch: np.ndarray, targets: np.ndarray) -> Reference:
    with torch.no_grad():
        logits = torch.cat([model(torch.from_numpy(batch[i : i + 32])) for i in range(0, len(batch), 32)])
    return Reference(batch, targets, logits.numpy())


def file_info(row: Format, bundle: dict, config: ExportConfig, calib_info: dict | None) -> dict:
    return {
        "arch": bundle["arch"],
        "format": row.format,
        "precision": row.precision,
        "output": PROBABILITIES,  # the runtime applies no second softmax
        "normalization": "in the runtime: (pixel/255 - mean) / std per the spec, before the model",
        "source_checkpoint": str(Path(config.checkpoint).resolve()),
        "epoch": bundle["epoch"],
        "dataset": dataset_record(bundle),
        "opset": ONNX_OPSET if row.format == "onnx" else None,
        "calibration": {k: v for k, v in (calib_info or {}).items() if k != "image_ids"}
        if row.needs_calibration
        else None,
        "onnx_int8": onnx_int8_info(config.ort_preset) if row.converter == "onnx_int8" else None,
    }


def embed(tmp: Path, row: Format, labels: list[str], spec, info: dict) -> Path:
    """Labels, spec and provenance into the file itself; returns the file that carries them."""
    if row.format == "onnx":
        props = {SPEC_KEY: spec.to_json(), LABELS_KEY: json.dumps(labels), INFO_KEY: json.dumps(info)}
        title = classifier_title(info.get("dataset", {}).get("name"), len(labels))
        embed_onnx_metadata(tmp, props, description=f"{title}, exported by FloraEdge")
        return tmp
    if row.format == "ncnn":  # ncnn's files hold no metadata: the runtime reads the sidecar (write_cards rewrites it)
        sidecar = {"spec": spec.to_dict(), "labels": labels, **info}
        write_bytes_atomic(tmp.with_name(tmp.name + ".json"), json.dumps(sidecar, indent=1, default=str).encode())
        return tmp
    with_meta = tmp.with_name(tmp.name.replace(".tmp-", ".tmp-meta-"))
    embed_tflite_metadata(tmp, with_meta, labels=labels, spec=spec, info=info)
    tmp.unlink()
    return with_meta


def export_row(
    row: Format,
    base: Path,
    out: Path,
    ctx: ExportContext,
    ref: Reference,
    bundle: dict,
    config: ExportConfig,
    calib_info: dict | None,
) -> dict:
    start = time.perf_counter()
    spec = file_spec(bundle, row, config)
    info = file_info(row, bundle, config, calib_info)
    tmp = out / f".tmp-{row.filename}"
    try:
        run_converter(getattr(converters, row.converter), ctx, tmp, base)  # in a child process: export/isolation.py
        tmp = embed(tmp, row, bundle["class_names"], spec, info)
        emulate = needs_qdq_emulation(row, config.ort_preset, platform.machine())
        result = verify(tmp, row, ref, max_drop=config.max_drop, qdq_emulation=emulate)
        keep = result["passed"] or config.allow_drop
        if keep:
            for made, kept in zip(model_files(tmp), model_files(out / row.filename), strict=True):
                made.rename(kept)
        result |= {"kept": keep, "warning": "" if result["passed"] else f"FAILED THE GATE: {result['gate']}"}
    finally:
        for made in (*model_files(tmp), tmp.with_name(tmp.name + ".json")):
            made.unlink(missing_ok=True)
    size = model_bytes(out / row.filename) if (out / row.filename).exists() else None
    return {
        "name": row.name,
        "file": row.filename,
        "bytes": size,
        "export_s": round(time.perf_counter() - start, 2),
        "spec": spec.to_dict(),
        "info": info,
        **result,
    }


def file_spec(bundle: dict, row: Format, config: ExportConfig) -> PreprocessSpec:
    """The checkpoint's spec with the layout this file takes (TFLite: NHWC unless --nchw)."""
    spec = PreprocessSpec.from_dict(bundle["spec"])
    return spec.replace(layout="NHWC" if row.format == "tflite" and config.nhwc else "NCHW")


def export_all(config: ExportConfig) -> list[dict]:
    """Export, embed and verify every selected row; returns one result per row (failures included)."""
    rows = select(list(config.formats), list(config.precisions))
    bundle = load_bundle(config.checkpoint)
    model, spec = model_from_bundle(bundle)
    data = Path(config.data)
    # built aside; an earlier export at --out stays whole until this one is complete, then is swapped out
    with staged_output(config.out, EXPORT, overwrite=config.overwrite, inputs=[config.checkpoint, data]) as out:
        return export_into(out, config, rows, bundle, model, spec, data)


def export_into(out: Path, config: ExportConfig, rows, bundle: dict, model, spec, data: Path) -> list[dict]:
    """Every row exported, verified and carded into the folder ``out``."""
    batch, targets, verify_info = verification_set(
        data, spec, split=config.verify_split, limit=config.verify_n, scratch=out
    )
    verify_info["seen_in_training"] = seen = seen_in_training(bundle, data, config.verify_split)
    if seen:
        print(
            f"note: the checkpoint was trained on {seen} of the {config.verify_split!r} images; the gate's agreement "
            f"and probability checks hold, but its accuracies are optimistic (use an unseen split with --verify-split)"
        )
    ref = reference(model, batch, targets)
    calib, calib_info = None, None
    if any(r.needs_calibration for r in rows):
        calib, calib_info = calibration_set(
            data, spec, n=config.calib_n, minimum=config.calib_min, seed=config.calib_seed
        )
    ctx = export_context(model, batch, calib, config)
    results = export_rows(rows, out, ctx, ref, bundle, config, calib_info)
    write_cards(
        out,
        bundle,
        results,
        config=asdict(config),
        verify_info=verify_info,
        calib_info=calib_info,
        torch_accuracy=ref.accuracy,
        versions=tool_versions(),
    )
    return results


def export_context(model: torch.nn.Module, batch: np.ndarray, calib, config: ExportConfig) -> ExportContext:
    return ExportContext(
        model=WithSoftmax(model).eval(),
        sample=torch.from_numpy(np.array(batch[:1])),  # a copy: the batch may be a file mapping
        calibration=calib,
        calib_method=config.calib_method,
        per_channel=config.per_channel,
        ort_preset=config.ort_preset,
        nhwc=config.nhwc,
    )


def export_rows(rows: list[Format], out: Path, ctx: ExportContext, ref, bundle, config, calib_info) -> list[dict]:
    """Each row's file, derived from its format's base file (made once, in a work folder removed after)."""
    work = out / ".work"
    work.mkdir()
    results, bases = [], {}
    try:
        for row in rows:
            print(f"== {row.name}: {row.filename}", flush=True)
            try:
                if row.base not in bases:
                    bases[row.base] = work / f"base.{row.format}"
                    run_converter(getattr(converters, row.base), ctx, bases[row.base])
                results.append(export_row(row, bases[row.base], out, ctx, ref, bundle, config, calib_info))
            except Exception as exc:  # one row failing must not lose the others
                results.append(failure(row, exc))
            print(f"   {summary_line(results[-1])}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return results


def failure(row: Format, exc: Exception) -> dict:
    return {
        "name": row.name,
        "file": row.filename,
        "passed": False,
        "kept": False,
        "error": f"{type(exc).__name__}: {exc}",
        "traceback": traceback.format_exc(limit=3),
    }


def summary_line(r: dict) -> str:
    if "error" in r:
        return f"FAILED: {r['error']}"
    verdict = "ok" if r["passed"] else ("KEPT DESPITE FAILING" if r["kept"] else "FAILED, not written")
    return f"{verdict}: {r['gate']}; accuracy {r['accuracy']:.4f}; {r['bytes'] or 0:,} bytes"
