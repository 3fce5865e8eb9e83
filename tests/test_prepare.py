"""`floraedge prepare` on miniature releases built in tmp_path, every bad input, and the real data."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image

from edge_runtime.spec import PreprocessSpec
from floraedge import main as cli_main
from prepare.build import OutputExistsError, PrepareConfig, prepare_dataset
from prepare.categories import class_names, folder_name
from prepare.manifest import read_manifest
from prepare.oxford102 import ReleaseError
from prepare.splits import SplitError
from tests.conftest import REAL_DATA, REPO, add_tar_member, build_release


def prepare(source: Path, out: Path, **kwargs) -> dict:
    return prepare_dataset(PrepareConfig(source=source, out=out, workers=1, cache_size=32, **kwargs))


def leftovers(parent: Path) -> list[str]:
    return [p.name for p in parent.iterdir() if p.name.startswith(".")]


def test_class_names_are_the_102_official_names_in_label_order():
    names = class_names()
    assert len(names) == 102 and len(set(names)) == 102
    assert names[0] == "pink primrose" and names[1] == "hard-leaved pocket orchid"
    assert names[76] == "passion flower" and names[101] == "blackberry lily"
    assert folder_name(11) == "011_colt's_foot"


@pytest.mark.realdata
def test_class_names_match_the_release_categories_file():
    if not REAL_DATA.is_dir():
        pytest.skip(f"real data not present at {REAL_DATA}")
    lines = (REAL_DATA / "categories.txt").read_text().splitlines()
    assert list(class_names()) == [line.strip() for line in lines if line.strip()]


@pytest.mark.parametrize("archive", [True, False], ids=["tgz", "extracted-jpg"])
def test_official_split_labels_and_outputs(tmp_path, archive):
    source = build_release(tmp_path / "rel", archive=archive)
    out = tmp_path / "out"
    summary = prepare(source, out)
    assert summary["counts"] == {"train": 9, "val": 6, "test": 6}
    assert summary["missing"] == {"train": 0, "val": 0, "test": 0} and not summary["partial_release"]
    rows = read_manifest(out)
    assert len(rows) == 21
    labels = scipy.io.loadmat(source / "imagelabels.mat")["labels"].ravel()
    for row in rows:
        assert row["class_index"] == labels[row["image_id"] - 1] - 1
        assert row["class_name"] == class_names()[row["class_index"]]
        with Image.open(out / row["cache_path"]) as im:
            assert min(im.size) == 32
        assert (out / row["path"]).is_file()
    first = next(r for r in rows if r["image_id"] == 1)
    assert first["split"] == "train" and first["class_index"] == 0 and (first["width"], first["height"]) == (56, 41)
    assert (out / "labels.txt").read_text().splitlines() == list(class_names())
    assert PreprocessSpec.from_json((out / "spec.json").read_text()).resize_size == 32
    assert json.loads((out / "summary.json").read_text())["counts"] == summary["counts"]
    assert leftovers(tmp_path) == []


def test_image_folder_tree_reads_with_torchvision_and_keeps_class_indices(mini_release, tmp_path):
    from torchvision.datasets import ImageFolder

    out = tmp_path / "out"
    prepare(mini_release, out)
    dataset = ImageFolder(str(out / "train"))
    assert len(dataset) == 9
    for name in dataset.class_to_idx:
        assert folder_name(int(name[:3])) == name
    by_file = {r["path"].split("/")[-1]: r["class_index"] for r in read_manifest(out)}
    for path, idx in dataset.samples:
        assert int(dataset.classes[idx][:3]) == by_file[Path(path).name]
    assert (out / "train" / folder_name(0)).iterdir().__next__().is_symlink()


def test_stratified_split_is_reproducible_and_class_stratified(tmp_path):
    source = build_release(tmp_path / "rel", per_split=(6, 2, 2))
    kwargs = dict(split="stratified", val_frac=0.2, test_frac=0.3)
    a = prepare(source, tmp_path / "a", seed=1, **kwargs)
    prepare(source, tmp_path / "b", seed=1, **kwargs)
    prepare(source, tmp_path / "c", seed=2, **kwargs)
    assert a["counts"] == {"train": 15, "val": 6, "test": 9}
    assert a["per_class"]["test"][:3] == [3, 3, 3]
    split_of = {d: {r["image_id"]: r["split"] for r in read_manifest(tmp_path / d)} for d in "abc"}
    assert split_of["a"] == split_of["b"]
    assert split_of["a"] != split_of["c"]


def test_stratified_split_refuses_impossible_fractions(mini_release, tmp_path):
    with pytest.raises(SplitError, match="sum to less than 1"):
        prepare(mini_release, tmp_path / "out", split="stratified", val_frac=0.6, test_frac=0.5)


def test_partial_release_reports_missing_and_goes_on(tmp_path):
    source = build_release(tmp_path / "rel", archive=False)
    for i in (6, 7, 13):  # test images of classes 0 and 1
        (source / "jpg" / f"image_{i:05d}.jpg").unlink()
    summary = prepare(source, tmp_path / "out")
    assert summary["missing"] == {"train": 0, "val": 0, "test": 3} and summary["partial_release"]
    assert summary["counts"]["test"] == 3
    assert json.loads((tmp_path / "out" / "missing.json").read_text())["test"] == [6, 7, 13]


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_corrupt_jpegs_are_reported_by_name_and_skipped(tmp_path, damage):
    source = build_release(tmp_path / "rel", archive=False)
    bad = source / "jpg" / "image_00004.jpg"
    data = bad.read_bytes()
    bad.write_bytes({"truncated": data[: len(data) // 2], "garbage": b"not a jpeg" * 50, "empty": b""}[damage])
    summary = prepare(source, tmp_path / "out")
    assert [c["file"] for c in summary["corrupt"]] == ["image_00004.jpg"]
    assert summary["counts"]["val"] == 5
    assert 4 not in {r["image_id"] for r in read_manifest(tmp_path / "out")}
    assert not (tmp_path / "out" / "jpg" / "image_00004.jpg").exists()


def test_duplicate_images_are_reported(tmp_path):
    source = build_release(tmp_path / "rel", archive=False)
    (source / "jpg" / "image_00002.jpg").write_bytes((source / "jpg" / "image_00001.jpg").read_bytes())
    summary = prepare(source, tmp_path / "out")
    assert summary["duplicates"] == [["jpg/image_00001.jpg", "jpg/image_00002.jpg"]]


def test_missing_images_and_archive_is_a_clear_error(tmp_path):
    source = build_release(tmp_path / "rel")
    (source / "102flowers.tgz").unlink()
    with pytest.raises(ReleaseError, match="neither 102flowers.tgz nor an extracted jpg/"):
        prepare(source, tmp_path / "out")
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


def test_truncated_archive_is_a_clear_error_and_leaves_nothing(mini_release, tmp_path):
    archive = mini_release / "102flowers.tgz"
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(ReleaseError, match="truncated or corrupt"):
        prepare(mini_release, tmp_path / "out")
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


def _member(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    return info


@pytest.mark.parametrize(
    "member, why",
    [
        (_member("/etc/evil.jpg"), "absolute"),
        (_member("jpg/../../evil.jpg"), r"'\.\.'"),
        (_member("jpg/link.jpg", tarfile.SYMTYPE, "/etc/passwd"), "links"),
        (_member("jpg/hard.jpg", tarfile.LNKTYPE, "jpg/image_00001.jpg"), "links"),
        (_member("jpg/dev", tarfile.CHRTYPE), "devices"),
    ],
    ids=["absolute", "dotdot", "symlink", "hardlink", "device"],
)
def test_unsafe_archive_members_are_refused(mini_release, tmp_path, member, why):
    add_tar_member(mini_release / "102flowers.tgz", member, b"x" if member.isfile() else b"")
    with pytest.raises(ReleaseError, match=why):
        prepare(mini_release, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not (tmp_path.parent / "evil.jpg").exists()


def test_mat_file_with_missing_key(mini_release, tmp_path):
    scipy.io.savemat(mini_release / "setid.mat", {"trnid": np.array([[1]], np.uint16)})
    with pytest.raises(ReleaseError, match="no key 'valid'"):
        prepare(mini_release, tmp_path / "out")


def test_labels_out_of_range(mini_release, tmp_path):
    scipy.io.savemat(mini_release / "imagelabels.mat", {"labels": np.array([[1, 2, 103]], np.uint8)})
    with pytest.raises(ReleaseError, match=r"outside 1\.\.102"):
        prepare(mini_release, tmp_path / "out")


def test_splits_naming_images_beyond_the_label_file(mini_release, tmp_path):
    labels = scipy.io.loadmat(mini_release / "imagelabels.mat")["labels"]
    scipy.io.savemat(mini_release / "imagelabels.mat", {"labels": labels[:, :10]})
    with pytest.raises(ReleaseError, match="do not belong together"):
        prepare(mini_release, tmp_path / "out")


def test_overlapping_splits(mini_release, tmp_path):
    setid = scipy.io.loadmat(mini_release / "setid.mat")
    setid["valid"] = np.concatenate([setid["valid"], setid["trnid"][:, :2]], axis=1)
    scipy.io.savemat(mini_release / "setid.mat", {k: setid[k] for k in ("trnid", "valid", "tstid")})
    with pytest.raises(ReleaseError, match="'train' and 'val' overlap in 2 images"):
        prepare(mini_release, tmp_path / "out")


def test_missing_mat_file(mini_release, tmp_path):
    (mini_release / "imagelabels.mat").unlink()
    with pytest.raises(ReleaseError, match="imagelabels.mat is missing"):
        prepare(mini_release, tmp_path / "out")


def test_existing_output_is_refused_without_overwrite(mini_release, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="--overwrite"):
        prepare(mini_release, out)
    assert (out / "keep.txt").read_text() == "mine"
    with pytest.raises(OutputExistsError, match="not a folder written by `floraedge prepare`"):
        prepare(mini_release, out, overwrite=True)  # --overwrite replaces only a dataset prepare wrote
    assert (out / "keep.txt").read_text() == "mine"
    (out / "keep.txt").unlink()
    prepare(mini_release, out)  # an empty folder is fine
    prepare(mini_release, out, overwrite=True)
    assert (out / "manifest.csv").is_file() and leftovers(tmp_path) == []


def test_parallel_workers_give_the_same_manifest(mini_release, tmp_path):
    prepare(mini_release, tmp_path / "one")
    prepare_dataset(PrepareConfig(source=mini_release, out=tmp_path / "two", workers=2, cache_size=32))
    assert read_manifest(tmp_path / "one") == read_manifest(tmp_path / "two")


def test_cli_prepare_and_errors(mini_release, tmp_path, capsys):
    assert cli_main(["prepare", "--source", str(mini_release), "--out", str(tmp_path / "out"), "--workers", "1"]) == 0
    printed = capsys.readouterr().out
    assert "train      9 images in   3 classes" in printed and "layout read: oxford102; split official" in printed
    assert cli_main(["prepare", "--source", str(mini_release), "--out", str(tmp_path / "out")]) == 1
    assert "already exists" in capsys.readouterr().err


def test_python_dash_m_prepare_runs_the_same_command():
    result = subprocess.run([sys.executable, "-m", "prepare", "--help"], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0 and "--split {official,stratified}" in result.stdout


@pytest.mark.realdata
@pytest.mark.slow
def test_prepare_the_real_partial_release(tmp_path):
    if not REAL_DATA.is_dir():
        pytest.skip(f"real data not present at {REAL_DATA}")
    summary = prepare_dataset(PrepareConfig(source=REAL_DATA, out=tmp_path / "flowers"))
    assert summary["counts"] == {"train": 1020, "val": 1020, "test": 0}
    assert summary["missing"] == {"train": 0, "val": 0, "test": 6149}
    assert summary["per_class"]["train"] == [10] * 102 and summary["per_class"]["val"] == [10] * 102
    assert summary["corrupt"] == [] and not summary["synthetic"]
    rows = read_manifest(tmp_path / "flowers")
    assert len(rows) == 2040 and len({r["class_index"] for r in rows}) == 102
    assert {r["class_name"] for r in rows if r["class_index"] == 0} == {"pink primrose"}
    assert (tmp_path / "flowers" / "labels.txt").read_text().splitlines() == list(class_names())


def snapshot(root: Path) -> dict[str, tuple[int, str]]:
    """Every file under ``root``: (mtime_ns, sha256) by relative path."""
    return {
        p.relative_to(root).as_posix(): (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_no_file_outside_out_is_deleted_or_changed(mini_release, tmp_path):
    before = snapshot(mini_release)
    out = tmp_path / "out"
    prepare(mini_release, out)
    prepare(mini_release, out, overwrite=True)
    for bad_out in (mini_release, mini_release / "prepared", tmp_path):  # is, inside, contains the source
        with pytest.raises(OutputExistsError, match="overlaps"):
            prepare(mini_release, bad_out, overwrite=True)
    assert snapshot(mini_release) == before
    umask = os.umask(0o022)
    os.umask(umask)
    assert (out / ".floraedge-output.json").is_file() and out.stat().st_mode & 0o777 == 0o777 & ~umask  # not 0700


def test_a_jpeg_with_garbage_in_the_middle_is_reported_corrupt(mini_release, tmp_path):
    with tarfile.open(mini_release / "102flowers.tgz") as tar:
        tar.extractall(mini_release, filter="data")
    (mini_release / "102flowers.tgz").unlink()
    victim = mini_release / "jpg" / "image_00001.jpg"
    data = bytearray(victim.read_bytes())
    middle = len(data) // 2
    data[middle:middle] = bytes(range(7, 7 + 40))  # 40 bytes inserted into the entropy-coded data
    victim.write_bytes(bytes(data))
    summary = prepare(mini_release, tmp_path / "out")
    assert [c["file"] for c in summary["corrupt"]] == ["image_00001.jpg"], summary["corrupt"]


# ---------------------------------------------------------------- malformed release files: one line, never a cast


def _save(name: str, **variables):
    return lambda source: scipy.io.savemat(source / name, variables)


def _replace_with(name: str, make):
    def edit(source):
        (source / name).unlink()
        make(source / name)

    return edit


MALFORMED = {
    "float-labels": (_save("imagelabels.mat", labels=np.full((1, 21), 1.5)), r"21 non-integer values \(e\.g\. \[1\.5"),
    "nan-labels": (_save("imagelabels.mat", labels=np.full((1, 21), np.nan)), "NaN or infinite"),
    "text-labels": (_save("imagelabels.mat", labels=np.array(["abc"])), "not numbers"),
    "cell-labels": (_save("imagelabels.mat", labels=np.array([[1, 2], [3]], dtype=object)), "not numbers"),
    "struct-labels": (_save("imagelabels.mat", labels={"a": 1}), "not numbers"),
    "complex-labels": (_save("imagelabels.mat", labels=np.full((1, 21), 1 + 1j)), "not numbers"),
    "matrix-labels": (_save("imagelabels.mat", labels=np.ones((3, 7), np.uint8)), "3x7 array"),
    "3d-labels": (_save("imagelabels.mat", labels=np.ones((1, 3, 7))), "1x3x7 array"),
    "float-split-ids": (
        _save("setid.mat", trnid=np.array([[1.5, 2]]), valid=np.array([[3]]), tstid=np.array([[4]])),
        "'trnid' holds 1 non-integer",
    ),
    "text-file": (lambda s: (s / "imagelabels.mat").write_text("hello"), "not a readable MATLAB file"),
    "empty-file": (lambda s: (s / "setid.mat").write_bytes(b""), "not a readable MATLAB file"),
    "truncated": (lambda s: (s / "setid.mat").write_bytes((s / "setid.mat").read_bytes()[:200]), "not a readable"),
    "folder": (_replace_with("imagelabels.mat", Path.mkdir), "not a regular file"),
    "fifo": (_replace_with("setid.mat", os.mkfifo), "not a regular file"),  # refused without blocking on it
    "huge-sparse": (lambda s: os.truncate(s / "setid.mat", 2**36), "over the .*-byte limit"),  # never read
}


@pytest.mark.parametrize("edit, error", list(MALFORMED.values()), ids=list(MALFORMED))
def test_malformed_mat_files_are_one_line_errors_and_never_truncated(tmp_path, edit, error):
    source = build_release(tmp_path / "rel", archive=False)
    edit(source)
    with pytest.raises(ReleaseError, match=error) as caught:  # the layout forced: a .mat folder is still the release's
        prepare(source, tmp_path / "out", layout="oxford102")
    assert "\n" not in str(caught.value) and not (tmp_path / "out").exists() and leftovers(tmp_path) == []


def test_a_compressed_mat_variable_is_refused_from_its_declared_shape(tmp_path, monkeypatch):
    import prepare.oxford102 as release

    source = build_release(tmp_path / "rel", archive=False)
    monkeypatch.setattr(release, "MAT_MAX_VALUES", 10)  # 21 labels: over it, whatever the file weighs
    scipy.io.savemat(source / "imagelabels.mat", {"labels": np.ones((1, 21), np.uint8)}, do_compression=True)
    with pytest.raises(ReleaseError, match="declares 21 values, over the limit of 10"):
        prepare(source, tmp_path / "out")


@pytest.mark.parametrize(
    "content", [b"not a tgz at all" * 100, gzip.compress(b"x" * 5000)], ids=["junk", "gzip-not-tar"]
)
def test_an_archive_that_is_not_a_tar_is_a_one_line_error(tmp_path, content):
    source = build_release(tmp_path / "rel")
    (source / "102flowers.tgz").write_bytes(content)
    with pytest.raises(ReleaseError, match="not a readable tar archive") as caught:
        prepare(source, tmp_path / "out")
    assert "\n" not in str(caught.value) and leftovers(tmp_path) == []


def test_labelled_images_in_no_split_are_reported(tmp_path, capsys):
    source = build_release(tmp_path / "rel", archive=False)
    scipy.io.savemat(source / "setid.mat", {"trnid": [[1, 2]], "valid": [[3]], "tstid": [[4]]})
    assert cli_main(["prepare", "--source", str(source), "--out", str(tmp_path / "out"), "--workers", "1"]) == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["labelled_in_no_split"] == 17 and summary["labelled_in_no_split_first"][:3] == [5, 6, 7]
    assert "17 labelled images are in no split (e.g. ids [5, 6, 7" in capsys.readouterr().out


# ---------------------------------------------------------------- reads bounded before they happen


def test_a_huge_sparse_file_posing_as_an_image_is_refused_unread(tmp_path):
    source = build_release(tmp_path / "rel", archive=False)
    os.truncate(source / "jpg" / "image_00001.jpg", 2**40)  # 1 TiB of holes: reading it would end the process
    summary = prepare(source, tmp_path / "out")
    (corrupt,) = summary["corrupt"]
    assert corrupt["file"] == "image_00001.jpg" and "over the 268,435,456-byte limit" in corrupt["error"]
    assert summary["counts"]["train"] == 8


def test_a_tar_member_declaring_a_huge_size_is_refused_before_extraction(tmp_path):
    source = build_release(tmp_path / "rel")
    huge = tarfile.TarInfo("jpg/image_00001.jpg")
    huge.size = 300 * 1024**2  # declared only: the archive ends after the header, so nothing backs it
    header = huge.tobuf(tarfile.USTAR_FORMAT)
    (source / "102flowers.tgz").write_bytes(gzip.compress(header))
    with pytest.raises(ReleaseError, match="declares 314,572,800 bytes, over the 268,435,456-byte limit"):
        prepare(source, tmp_path / "out")
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize(
    "limit, value, error",
    [("ARCHIVE_MAX_MEMBERS", 5, "over 5 members"), ("ARCHIVE_MAX_BYTES", 1000, "add up to .* over the 1,000-byte")],
    ids=["member-count", "total-size"],
)
def test_tar_member_count_and_total_size_are_capped(mini_release, tmp_path, monkeypatch, limit, value, error):
    import prepare.oxford102 as release

    monkeypatch.setattr(release, limit, value)
    with pytest.raises(ReleaseError, match=error):
        prepare(mini_release, tmp_path / "out")
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MB tmpfs (needs root): a disk that fills up mid-run."""
    mount = tmp_path / "small"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)]).returncode:
        pytest.skip("mounting a small tmpfs needs root")
    yield mount
    subprocess.run(["umount", "--lazy", str(mount)], check=True)


def test_a_full_disk_mid_run_keeps_the_previous_dataset_and_leaves_nothing(tmp_path, small_disk, capsys):
    source = build_release(tmp_path / "rel", archive=False)
    out = small_disk / "out"
    args = ["prepare", "--source", str(source), "--out", str(out), "--workers", "1", "--overwrite"]
    assert cli_main(args) == 0
    before = (out / "manifest.csv").read_bytes()
    filler = small_disk / "filler"
    filler.write_bytes(b"\0" * (os.statvfs(small_disk).f_bavail * os.statvfs(small_disk).f_frsize - 16 * 1024))
    capsys.readouterr()
    assert cli_main(args) == 1
    err = capsys.readouterr().err
    errors = [line for line in err.replace("\r", "\n").splitlines() if "error:" in line]  # not the progress bar
    assert len(errors) == 1 and "No space left on device" in errors[0] and "Traceback" not in err, err
    assert (out / "manifest.csv").read_bytes() == before and leftovers(small_disk) == []
    filler.unlink()
    assert cli_main(args) == 0 and leftovers(small_disk) == []
