"""Every subcommand walked through its bad inputs: exit code 1, one line on stderr that names the
problem, no traceback, and nothing left behind.

Cases that need the training environment (prepare's scipy, torch) carry the ``torch`` marker, so
the rest also runs in the torch-free device environment.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest

from edge_runtime.metadata import SPEC_KEY, MetadataError, from_tflite_zip
from edge_runtime.spec import PreprocessSpec
from floraedge import main
from prepare.manifest import MANIFEST_FIELDS
from tests.test_adversarial import bomb
from tests.tiny_models import tiny_onnx


def with_props(src: Path, dst: Path, **props: str) -> Path:
    model = onnx.load(str(src))
    for p in model.metadata_props:
        if p.key in props:
            p.value = props[p.key]
    onnx.save(model, str(dst))
    return dst


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """Good and bad inputs for every subcommand, in one folder (names are used by the cases below)."""
    w = tmp_path_factory.mktemp("world")
    model = tiny_onnx(w / "model_fp32.onnx")
    with_props(model, w / "labels_not_json.onnx", **{"floraedge.labels": "not json ["})
    with_props(model, w / "info_not_json.onnx", **{"floraedge.info": "{"})
    with_props(model, w / "spec_mismatch.onnx", **{SPEC_KEY: PreprocessSpec(crop_size=48, resize_size=56).to_json()})
    (w / "nospec").mkdir()
    tiny_onnx(w / "nospec" / "model.onnx", embed=False)
    (w / "badsidecar").mkdir()
    tiny_onnx(w / "badsidecar" / "model.onnx", embed=False)
    (w / "badsidecar" / "spec.json").write_text("{ not json")
    cv2.imwrite(str(w / "photo.jpg"), np.full((60, 80, 3), 120, np.uint8))
    (w / "frames").mkdir()
    cv2.imwrite(str(w / "frames" / "0.jpg"), np.full((60, 80, 3), 120, np.uint8))
    (w / "bomb.png").write_bytes(bomb("png", 60_000, 60_000))
    (w / "empty").mkdir()
    (w / "afile").write_text("a file, not a folder")
    (w / "exports").mkdir()
    tiny_onnx(w / "exports" / "model_fp32.onnx")
    for name, text in {
        "bad_header": "path,split\njpg/a.jpg,val\n",
        "bad_int": ",".join(MANIFEST_FIELDS) + "\njpg/a.jpg,c,one,0,x,val,s,1,1\n",
        "short_row": ",".join(MANIFEST_FIELDS) + "\njpg/a.jpg,c\n",
    }.items():
        (w / name).mkdir()
        (w / name / "manifest.csv").write_text(text)
    (w / "bad_int" / "summary.json").write_text(json.dumps({"config": {"cache_size": 40}}))
    (w / "foreign").mkdir()
    (w / "foreign" / "keep.txt").write_text("mine")
    return w


EDGE_CASES = {
    "classify-missing-model": ("classify --model {w}/missing.onnx {w}/photo.jpg", "does not exist"),
    "classify-top-k-0": ("classify --model {w}/model_fp32.onnx --top-k 0 {w}/photo.jpg", "outside"),
    "classify-labels-not-json": ("classify --model {w}/labels_not_json.onnx {w}/photo.jpg", "malformed metadata"),
    "classify-info-not-json": ("classify --model {w}/info_not_json.onnx {w}/photo.jpg", "malformed metadata"),
    "classify-no-spec": ("classify --model {w}/nospec/model.onnx {w}/photo.jpg", "no preprocessing spec"),
    "classify-bad-sidecar": ("classify --model {w}/badsidecar/model.onnx {w}/photo.jpg", "malformed metadata"),
    "classify-spec-vs-input": ("classify --model {w}/spec_mismatch.onnx {w}/photo.jpg", "does not match the model"),
    "classify-empty-folder": ("classify --model {w}/model_fp32.onnx {w}/empty", "no images"),
    "classify-bomb": ("classify --model {w}/model_fp32.onnx {w}/bomb.png", "pixels"),
    "classify-unknown-flag": ("classify --model {w}/model_fp32.onnx --nope {w}/photo.jpg", "unrecognized"),
    "run-window-0": ("run --model {w}/model_fp32.onnx --source {w}/empty --window 0", "outside"),
    "run-top-k-0": ("run --model {w}/model_fp32.onnx --source {w}/empty --top-k 0", "outside"),
    "run-alpha-0": ("run --model {w}/model_fp32.onnx --source {w}/empty --alpha 0", "outside"),
    "run-threshold-2": ("run --model {w}/model_fp32.onnx --source {w}/empty --threshold 2", "outside"),
    "run-max-frames-nan": ("run --model {w}/model_fp32.onnx --source {w}/empty --max-frames x", "not an integer"),
    "run-empty-folder": ("run --model {w}/model_fp32.onnx --source {w}/empty --headless", "holds no images"),
    "run-no-source": ("run --model {w}/model_fp32.onnx --source {w}/nothing.mp4 --headless", "is not a camera"),
    "run-record-unwritable": (
        "run --model {w}/model_fp32.onnx --source {w}/frames --headless --record {w}/afile/out.mp4",
        "--record: cannot write",
    ),
    "run-publish-unwritable": (
        "run --model {w}/model_fp32.onnx --source {w}/frames --headless --publish {w}/afile/pub",
        "--publish: cannot write",
    ),
    "serve-port": ("serve --model {w}/model_fp32.onnx --port 70000", "outside"),
    "serve-concurrency-0": ("serve --model {w}/model_fp32.onnx --concurrency 0", "outside"),
    "serve-body-timeout-0": ("serve --model {w}/model_fp32.onnx --body-timeout 0", "outside"),
    "serve-missing-model": ("serve --model {w}/missing.onnx", "does not exist"),
    "space-exists": ("space --model {w}/model_fp32.onnx --out {w}/empty", "exists"),
    "bench-bad-header": ("bench --models {w}/exports --data {w}/bad_header --out {w}/b1", "lacks the columns"),
    "bench-bad-int": ("bench --models {w}/exports --data {w}/bad_int --out {w}/b2", "is not an integer"),
    "bench-short-row": ("bench --models {w}/exports --data {w}/short_row --out {w}/b3", "columns of the header"),
    "bench-no-models": ("bench --models {w}/empty --data {w}/bad_int --out {w}/b4", "malformed"),
    "bench-out-is-models": ("bench --models {w}/exports --data {w}/bad_int --out {w}/exports", "overlaps"),
    "bench-runs-0": ("bench --models {w}/exports --data {w}/bad_int --out {w}/b5 --runs 0", "outside"),
    "bench-checkpoint-and-reference": (
        "bench --models {w}/exports --data {w}/bad_int --out {w}/b6 --checkpoint {w}/a.pt --reference {w}/b.onnx",
        "former name of --reference",
    ),
    "no-command": ("", "required"),
    "unknown-command": ("bogus", "invalid choice"),
}
TRAINING_CASES = {
    "prepare-no-source": ("prepare --source {w}/missing --out {w}/p1", "does not exist"),
    "prepare-neither-source-nor-download": ("prepare --out {w}/p4", "--source DIR, or --download"),
    "prepare-source-and-download": ("prepare --source {w}/empty --download --out {w}/p5", "one of the two"),
    "prepare-out-in-source": ("prepare --source {w}/foreign --out {w}/foreign/prepared", "overlaps"),
    "prepare-out-is-source": ("prepare --source {w}/foreign --out {w}/foreign --overwrite", "overlaps"),
    "prepare-overwrite-foreign": ("prepare --source {w}/empty --out {w}/foreign --overwrite", "--overwrite refused"),
    "prepare-cache-size": ("prepare --source {w}/empty --out {w}/p2 --cache-size 5", "between 32 and 4096"),
    "prepare-workers-0": ("prepare --source {w}/empty --out {w}/p3 --workers 0", "outside"),
    "train-no-data": ("train --data {w}/missing --out {w}/run1 --workers 0", "not a prepared dataset"),
    "train-bad-manifest": ("train --data {w}/bad_int --out {w}/run2 --workers 0", "is not an integer"),
    "train-out-is-data": ("train --data {w}/bad_int --out {w}/bad_int --workers 0", "overlaps"),
    "train-overwrite-foreign": ("train --data {w}/bad_int --out {w}/foreign --overwrite", "--overwrite refused"),
    "train-epochs-0": ("train --data {w}/bad_int --out {w}/run3 --epochs 0", "outside"),
    "export-missing-checkpoint": (
        "export --checkpoint {w}/missing.pt --data {w}/bad_int --out {w}/e1",
        "does not exist",
    ),
    "export-junk-checkpoint": ("export --checkpoint {w}/afile --data {w}/bad_int --out {w}/e2", "not a readable"),
    "quantize-not-prepared": ("quantize --model {w}/model_fp32.onnx --data {w}/empty --out {w}/q1", "not a prepared"),
    "quantize-not-a-model": ("quantize --model {w}/afile --data {w}/bad_int --out {w}/q2", "float32 .onnx or .tflite"),
    "evaluate-missing-checkpoint": ("evaluate --checkpoint {w}/missing.pt --data {w}/bad_int", "does not exist"),
}
CASES = [pytest.param(*case, id=name) for name, case in EDGE_CASES.items()] + [
    pytest.param(*case, id=name, marks=pytest.mark.torch) for name, case in TRAINING_CASES.items()
]


def run_cli(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exc:  # argparse's exit, which a real process turns into its exit code
        return exc.code


@pytest.mark.parametrize("command, message", CASES)
def test_a_bad_input_is_one_line_and_exit_code_1(world, capfd, command, message):
    before = sorted(p.relative_to(world).as_posix() for p in world.rglob("*"))
    code = run_cli(command.format(w=world).split())
    out, err = capfd.readouterr()
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 1, (code, err[-2000:])
    assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
    assert message in lines[0], lines[0]
    after = sorted(p.relative_to(world).as_posix() for p in world.rglob("*"))
    assert after == before  # nothing left behind (no empty run folder, no half-written output)
    assert (world / "foreign" / "keep.txt").read_text() == "mine"


def test_a_tflite_whose_zip_is_broken_is_a_metadata_error(tmp_path):
    path = tmp_path / "model.tflite"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("floraedge.json", "{ not json")
    with pytest.raises(MetadataError, match="malformed metadata"):
        from_tflite_zip(path)
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("floraedge.json", json.dumps({"no_spec": 1}))
    with pytest.raises(MetadataError, match="KeyError"):
        from_tflite_zip(path)
    data = bytearray(path.read_bytes())
    data[40:44] = b"\0\0\0\0"  # the member's CRC/sizes: a corrupt zip that still looks like one
    path.write_bytes(bytes(data))
    with pytest.raises(MetadataError):
        from_tflite_zip(path)
