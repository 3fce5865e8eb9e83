"""Cross-architecture agreement: the same images through every exported file, on x86 and on arm64.

Torch-free (it runs in the arm64 device venv) and Python 3.10 compatible. Everything goes through the
project's own runtime (``edge_runtime.backends.load``, ``preprocess``), so a file's I/O types are the
ones its tensors declare, never assumed here.

    python -m tests.arm64.agreement reference WORK      # on x86: WORK/x86.npz
    python -m tests.arm64.agreement check WORK pi5      # on arm64: compare, re-run every gate; exit 1 on failure
    python -m tests.arm64.agreement check WORK pi4 64   # the same on the first 64 images only

WORK is what ``tests/arm64/host_models.py`` wrote.
"""

from __future__ import annotations

import json
import platform
import sys
from pathlib import Path

import numpy as np

from edge_runtime.backends import BackendError, _tflite_interpreter, load
from edge_runtime.metadata import INFO_KEY
from edge_runtime.modelfile import onnx_layout
from edge_runtime.preprocess import preprocess, read_image_bgr
from export.formats import FORMATS, Format, needs_qdq_emulation
from export.verify import Reference, verify

FP32_ATOL = 1e-4
FP16_MIN_AGREEMENT = 0.99
# The bound for int8: top-1 identical and the output within one quantization step. It holds for
# the full-integer TFLite file (XNNPACK's aarch64 kernels give x86's outputs to 6e-7). Three files are
# compared with something other than the same integer arithmetic, and each layer's rounding differences
# add up: the x86-preset ONNX file (ONNX Runtime's aarch64 kernels round their requantization otherwise:
# 1.2 steps measured with 8-bit weights, 1.07 with the 7-bit ones), the arm-preset ONNX file (its x86
# reference is its exact QDQ emulation in float, as x86 CPUs without VNNI saturate on its int8 x int8
# kernels: 1.03 steps and 1 near-tie flipped of 128 on the Pi 5 model) and the dynamic-range file
# (activations quantized at run time: 2.2% of the top score). They are held to a bound a few times the
# measured one, so a wrong kernel (qemu's `max` CPU model gave 0.8 and 0.63) still fails.
# The x86-preset files (the test model's, the release's); the arm one: QDQ_REFERENCE_STEPS; others: 1.
INT8_STEPS = {"exports/model_int8.onnx": 3.0, "release/model_int8.onnx": 3.0}
# Against a QDQ-emulation reference a top-1 flip is allowed: it needs the reference's top two within
# 2 x the max difference, so the bound on the difference admits near-ties only.
QDQ_REFERENCE_STEPS = 2.0
# The x86-preset ONNX file may flip near-ties too: it flipped one of 64 on the test model's near-uniform
# scores over the synthetic images (max difference 1 step). For both ONNX files a flip must be a near-tie
# (the reference's top two within the file's bound) and rare (at most MAX_FLIP_SHARE of the images, and
# at least one may): a wrong kernel flips many images. Flipped images' reference top-two gaps are reported.
NEAR_TIE_FILES = {"exports/model_int8.onnx"}  # and every file checked against its QDQ emulation
# OpenVINO's ARM CPU plugin runs an int8 QDQ file with its own requantization (it reports f32 inference
# precision there), further from the x86 reference than ONNX Runtime's kernels on the arm-preset file; its int8
# pairs are held to this many steps (measured: docs/runtimes.md, "arm64 (emulated)"), still far below what a
# wrong kernel gives, and flips must be near-ties as for the ONNX files.
OPENVINO_INT8_STEPS = 6.0
# (CPU model, backend, precision) whose load is refused, in one line, by load()'s trial run: under the Pi 4 model
# (Cortex-A72, no dot-product instructions) OpenVINO's ARM plugin gives an int8 file an empty output. What is
# checked for them is that refusal (no wrong answers reach a user); a pair here that runs is compared as usual.
KNOWN_REFUSALS = {("pi4", "openvino", "int8")}
# The released files (models/oxford102-lite0, copied by host_models.py) on real flower photos: a trained model's
# confident scores, so top-1 must be identical (no near-tie allowance), through the runtime each file is made for.
# A 256 px Lite0 costs about a second per image under qemu: they run on the first RELEASE_IMAGES photos only.
RELEASE_FOLDER = "release"
RELEASE_IMAGES = 32
MAX_FLIP_SHARE = 0.02
DYNAMIC_RTOL = 5e-2


def runs(work: Path) -> list[tuple[str, Path, Format, str]]:
    """(key, file, format row, backend) for every exported file and each backend that runs it."""
    found = []
    for folder in ("exports", "exports-arm", RELEASE_FOLDER):
        for row in FORMATS:
            path = work / folder / row.filename
            if path.is_file():
                backends = (row.runtime,) if folder == RELEASE_FOLDER else (row.runtime, *row.also_runs_on)
                found += [(f"{folder}/{row.filename}:{b}", path, row, b) for b in backends]
    return found


def qdq_reference_here(path: Path, row: Format, backend: str) -> bool:
    """As in the export gate: a file made for another CPU's int8 kernels (the arm preset's, on x86) has its
    QDQ emulation as the x86 reference (x86 without VNNI saturates on those kernels)."""
    if backend != "onnxruntime" or row.converter != "onnx_int8":
        return False
    info = json.loads(onnx_layout(path.read_bytes(), path).props[INFO_KEY])  # what the file says it was made with
    preset = info["onnx_int8"]["preset"]
    return needs_qdq_emulation(row, preset, platform.machine())


_PREPROCESSED: dict[tuple[str, int], list[np.ndarray]] = {}


def preprocessed(images: list[np.ndarray], spec) -> list[np.ndarray]:
    """The images (a prefix of the run's photos) as the spec wants them, once per distinct spec and count
    (resizing is most of the emulated time)."""
    key = (repr(spec), len(images))
    if key not in _PREPROCESSED:
        _PREPROCESSED[key] = [preprocess(image, spec) for image in images]
    return _PREPROCESSED[key]


RAN: dict[tuple[str, str], str] = {}  # (file, backend) -> the precision its runtime says it computed in


def outputs(path: Path, backend_name: str, images: list[np.ndarray], qdq_emulation: bool = False) -> np.ndarray:
    backend = load(path, backend_name, threads=1, qdq_emulation=qdq_emulation)
    if "inference_precision" in backend.info.info:  # openvino: pinned to f32, read back from the compiled model
        RAN[(str(path), backend_name)] = backend.info.info["inference_precision"]
    return np.concatenate([backend.predict(x) for x in preprocessed(images, backend.info.spec)])


def read_images(work: Path, limit: int | None = None) -> tuple[list[str], list[np.ndarray]]:
    paths = sorted((work / "images").glob("*.jpg"))[:limit]
    if not paths:
        raise SystemExit(f"no images in {work / 'images'}: run tests/arm64/host_models.py first")
    return [p.name for p in paths], [read_image_bgr(p) for p in paths]


def versions() -> dict:
    import cv2
    import onnxruntime

    return {
        "machine": platform.machine(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "onnxruntime": onnxruntime.__version__,
        "opencv": cv2.__version__,
        "litert": _tflite_interpreter().__module__,
        "openvino": openvino_version(),
        "ncnn": ncnn_version(),
    }


def openvino_version() -> str | None:
    try:
        import openvino
    except ImportError:  # the edge-openvino extra is optional; its pairs then fail to load, each in one line
        return None
    return openvino.__version__


def ncnn_version() -> str | None:
    try:
        import ncnn
    except ImportError:
        return None
    return ncnn.__version__


def reference(work: Path) -> None:
    names, images = read_images(work)
    found = runs(work)
    qdq = [key for key, path, row, b in found if qdq_reference_here(path, row, b)]
    arrays = {key: outputs(path, b, images, key in qdq) for key, path, _, b in found}
    np.savez(work / "x86.npz", names=np.array(names), qdq_reference=np.array(qdq, dtype=str), **arrays)
    (work / "x86-versions.json").write_text(json.dumps(versions()))
    print(f"x86 reference: {len(arrays)} file/backend pairs x {len(names)} images")


def _undelegated(path: Path):
    """The file's own ops: with the default XNNPACK delegate the whole graph is one DELEGATE op."""
    interpreter_class = _tflite_interpreter()
    resolver = sys.modules[interpreter_class.__module__].OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    interpreter = interpreter_class(model_path=str(path), experimental_op_resolver_type=resolver)
    interpreter.allocate_tensors()
    return interpreter


def quant_step(path: Path, backend_name: str) -> float:
    """One quantization step of the file's output: the scale of the last quantized tensor before it."""
    if backend_name == "litert":
        interpreter = _undelegated(path)
        details = {d["index"]: d for d in interpreter.get_tensor_details()}
        producers = {o: op for op in interpreter._get_ops_details() for o in op["outputs"]}
        tensor = interpreter.get_output_details()[0]["index"]
        for _ in range(8):  # output, or softmax / float classifier / dequantize after the last quantized tensor
            scale = details[tensor]["quantization"][0]
            if scale:
                return float(scale)
            if tensor not in producers:
                break
            tensor = producers[tensor]["inputs"][0]
    else:
        import onnx

        graph = onnx.load(str(path), load_external_data=False).graph
        consts = {t.name: onnx.numpy_helper.to_array(t) for t in graph.initializer}
        producers = {o: node for node in graph.node for o in node.output}
        tensor = graph.output[0].name
        for _ in range(4):
            node = producers[tensor]
            if node.op_type == "DequantizeLinear":
                return float(np.max(consts[node.input[1]]))
            tensor = node.input[0]
    raise SystemExit(f"{path}: no quantized tensor near the output; the int8 check cannot name its step")


def key_of(path: Path) -> str:
    """A file's name in the bounds above: its folder and file name."""
    return f"{path.parent.name}/{path.name}"


def top2_gaps(scores: np.ndarray) -> list[float]:
    """Per row: the top score minus the second."""
    top2 = np.sort(scores, axis=1)[:, -2:]
    return [round(float(g), 6) for g in top2[:, 1] - top2[:, 0]]


def top1_agrees(reference: np.ndarray, other: np.ndarray, limit: float, *, may_flip: bool) -> tuple[bool, list[float]]:
    """Whether ``other`` keeps the reference's top-1, up to rare near-tie flips where ``may_flip``;
    and the flipped images' reference top-two gaps."""
    flips = reference.argmax(1) != other.argmax(1)
    gaps = top2_gaps(reference[flips])
    rare = flips.sum() <= max(1, int(MAX_FLIP_SHARE * len(flips)))
    return not gaps or (may_flip and rare and max(gaps) <= limit + 1e-7), gaps


def compare(
    key: str, path: Path, row: Format, backend: str, x86: np.ndarray, arm: np.ndarray, qdq_reference: bool = False
) -> dict:
    diff = float(np.abs(x86 - arm).max())
    agreement = float((x86.argmax(1) == arm.argmax(1)).mean())
    result = {"file": key, "max_abs_diff": diff, "top1_agreement": agreement}
    if row.precision == "fp32":
        result |= {"limit": FP32_ATOL, "passed": diff <= FP32_ATOL}
    elif row.precision == "fp16":
        result |= {"limit": f"agreement >= {FP16_MIN_AGREEMENT}", "passed": agreement >= FP16_MIN_AGREEMENT}
    elif row.precision == "int8":
        name = key_of(path)
        steps = QDQ_REFERENCE_STEPS if qdq_reference else INT8_STEPS.get(name, 1.0)
        if backend == "openvino":
            steps = max(steps, OPENVINO_INT8_STEPS)
        limit = steps * quant_step(path, backend)
        may_flip = qdq_reference or name in NEAR_TIE_FILES or backend == "openvino"
        top1_ok, gaps = top1_agrees(x86, arm, limit, may_flip=may_flip)
        result |= {"limit": limit, "qdq_reference": qdq_reference, "flipped_top2_gaps": gaps,
                   "passed": top1_ok and diff <= limit + 1e-7}  # fmt: skip
    else:
        limit = DYNAMIC_RTOL * float(np.abs(x86).max())
        result |= {"limit": limit, "passed": agreement == 1.0 and diff <= limit}
    return result


def pair_result(
    key: str, path: Path, row: Format, backend: str, x86: np.ndarray, images: list, qdq_reference: bool, cpu: str
) -> dict:
    """``compare`` of the pair's arm64 outputs with x86's, or, for a ``KNOWN_REFUSALS`` pair, its one-line refusal."""
    try:
        arm = outputs(path, backend, images)
    except BackendError as exc:
        if (cpu, backend, row.precision) not in KNOWN_REFUSALS:
            raise
        return {"file": key, "refused": str(exc), "passed": "\n" not in str(exc)}
    return compare(key, path, row, backend, x86, arm, qdq_reference)


def gates(work: Path) -> list[dict]:
    """Every exported file's own export gate, re-run here against the PyTorch reference made on x86."""
    saved = np.load(work / "gate.npz")
    ref = Reference(saved["batch"], saved["targets"], saved["logits"])
    ref.__dict__["probabilities"] = saved["probabilities"]  # PyTorch's softmax, made on x86 (no torch here)
    cards = {
        folder: json.loads((work / folder / "model_card.json").read_text()) for folder in ("exports", "exports-arm")
    }
    results = []
    for key, path, row, backend in runs(work):
        if backend == row.runtime and path.parent.name in cards:  # the released files have no gate batch here
            card = cards[path.parent.name]
            x86_passed = next(f["passed"] for f in card["files"] if f["file"] == row.filename)
            here = verify(path, row, ref, max_drop=card["config"]["max_drop"])
            results.append({"file": key, "gate": here["gate"], "passed": here["passed"], "x86_passed": x86_passed})
    return results


def check(work: Path, cpu: str, limit: int | None = None) -> int:
    names, images = read_images(work, limit)
    saved = np.load(work / "x86.npz")
    assert list(saved["names"][: len(names)]) == names, "the x86 reference was made on other images"
    qdq = set(saved["qdq_reference"].tolist())
    results = []
    for k, p, r, b in runs(work):
        n = min(len(names), RELEASE_IMAGES) if p.parent.name == RELEASE_FOLDER else len(names)
        results.append(pair_result(k, p, r, b, saved[k][:n], images[:n], k in qdq, cpu) | {"images": n})
    for r, (_, p, _, b) in zip(results, runs(work), strict=True):
        if (str(p), b) in RAN:
            r["inference_precision"] = RAN[(str(p), b)]
    gate_results = gates(work)
    report = {"cpu": cpu, "images": len(names), "versions": versions(), "agreement": results, "gates": gate_results}
    report["x86_versions"] = json.loads((work / "x86-versions.json").read_text())
    (work / f"agreement-{cpu}.json").write_text(json.dumps(report, indent=1))
    for r in results:
        if "refused" in r:
            print(f"{'ok  ' if r['passed'] else 'FAIL'} {r['file']}: refused as expected under {cpu}: {r['refused']}")
            continue
        print(
            f"{'ok  ' if r['passed'] else 'FAIL'} {r['file']}: max |x86 - arm64| {r['max_abs_diff']:.3g} "
            f"(limit {r['limit']}), top-1 agreement {r['top1_agreement']:.2%}"
            + (f" on the first {r['images']} images" if r["images"] < len(names) else "")
            + (" (x86: QDQ emulation)" if r.get("qdq_reference") else "")
            + (f", computed in {r['inference_precision']}" if r.get("inference_precision") else "")
            + (f", flipped near-ties' top-two gaps {r['flipped_top2_gaps']}" if r.get("flipped_top2_gaps") else "")
        )
    for g in gate_results:
        print(f"{'ok  ' if g['passed'] else 'FAIL'} gate on arm64, {g['file']}: {g['gate']}")
    # a gate fails here when it passed on x86; the --ort-preset arm file must pass outright
    failed = [r for r in results if not r["passed"]] + [
        g for g in gate_results if not g["passed"] and (g["x86_passed"] or g["file"].startswith("exports-arm/"))
    ]
    print(
        f"{cpu}: {len(results)} file/backend pairs x {len(names)} images, {len(gate_results)} gates; "
        f"{len(failed)} failed"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    mode, work = sys.argv[1], Path(sys.argv[2])
    if mode == "reference":
        sys.exit(reference(work))
    sys.exit(check(work, sys.argv[3], int(sys.argv[4]) if len(sys.argv) > 4 else None))
