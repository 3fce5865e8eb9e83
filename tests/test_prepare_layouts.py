"""`floraedge prepare` on your own photos: class folders, split trees and CSVs, every bad input, and the
Oxford-102 images laid out both ways against the official path."""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from floraedge import main as cli_main
from prepare.build import PrepareConfig, prepare_dataset
from prepare.categories import class_names
from prepare.labelled import folder_name
from prepare.layouts import LayoutError, detect_layout
from prepare.manifest import read_manifest
from tests.conftest import REAL_DATA, build_release, write_jpeg
from tests.oxford_layouts import oxford_as_folders


def prepare(source: Path, out: Path, **kwargs) -> dict:
    return prepare_dataset(PrepareConfig(source=source, out=out, workers=1, cache_size=32, **kwargs))


def make_tree(root: Path, classes: dict[str, int], seed: int = 0, suffix: str = ".jpg") -> Path:
    """``root/<class>/<k>.jpg``: distinct random images, ``classes[name]`` of them per class."""
    rng = np.random.default_rng(seed)
    for name, n in classes.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for k in range(n):
            image = rng.integers(0, 256, size=(36, 44, 3), dtype=np.uint8)
            cv2.imwrite(str(root / name / f"{k}{suffix}"), image)
    return root


def nothing_but(parent: Path, *names: str) -> bool:
    """True when ``parent`` holds exactly ``names`` (no output, no temporary folder left behind)."""
    return sorted(p.name for p in parent.iterdir()) == sorted(names)


# ---------------------------------------------------------------------------------------------- recognition


def test_each_layout_is_recognized_and_named_in_the_summary(tmp_path):
    folders = make_tree(tmp_path / "folders", {"a": 2, "b": 2})
    split = tmp_path / "split"
    make_tree(split / "Training", {"a": 2, "b": 2})
    make_tree(split / "VALID", {"a": 1, "b": 1}, seed=1)
    release = build_release(tmp_path / "release")
    (tmp_path / "table").mkdir()
    (tmp_path / "table" / "labels.csv").write_text("path,label\n")
    assert detect_layout(folders) == "folders"
    assert detect_layout(split) == "folders"
    assert detect_layout(release) == "oxford102"
    assert detect_layout(tmp_path / "table") == "csv"
    assert detect_layout(tmp_path / "table" / "labels.csv") == "csv"
    assert prepare(folders, tmp_path / "o1")["layout"] == "folders"
    assert prepare(split, tmp_path / "o2")["layout"] == "split-folders"
    assert prepare(release, tmp_path / "o3")["layout"] == "oxford102"


def test_nothing_recognized_is_one_line_saying_what_was_looked_for(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "notes.txt").write_text("no images here")
    with pytest.raises(LayoutError, match=r"matches no layout: looked for an Oxford-102 release .* --layout") as exc:
        prepare(tmp_path / "src", tmp_path / "out")
    assert "\n" not in str(exc.value)
    assert nothing_but(tmp_path, "src")


def test_two_layouts_matching_is_refused_with_how_to_force_one(tmp_path):
    src = make_tree(tmp_path / "src", {"a": 2, "b": 2})
    (src / "labels.csv").write_text("path,label\na/0.jpg,a\nb/0.jpg,b\n")
    with pytest.raises(LayoutError, match=r"several layouts: csv \(labels\.csv\); folders \(a/, b/\).*--layout csv or"):
        prepare(src, tmp_path / "out")
    assert prepare(src, tmp_path / "out", layout="csv")["counts"]["train"] == 2  # forced: read as the CSV says
    assert prepare(src, tmp_path / "out2", layout="folders")["layout"] == "folders"


def test_split_folders_beside_class_folders_are_refused(tmp_path):
    src = make_tree(tmp_path / "src", {"train": 2, "roses": 2})
    with pytest.raises(LayoutError, match=r"split folders \(train\) beside class folders \(roses\)"):
        prepare(src, tmp_path / "out")


def test_two_spellings_of_one_split_are_refused(tmp_path):
    make_tree(tmp_path / "src" / "val", {"a": 1, "b": 1})
    make_tree(tmp_path / "src" / "dev", {"a": 1, "b": 1}, seed=1)
    with pytest.raises(LayoutError, match="dev/ and val/ both name the val split"):
        prepare(tmp_path / "src", tmp_path / "out")


# ---------------------------------------------------------------------------------------------- classes


def test_class_names_come_from_the_folders_exactly_in_code_point_order(tmp_path):
    names = {"Zebra rose": 3, "apple blossom": 3, "crème brûlée": 3, "日本 桜": 3, "a/b? no": 0}
    names.pop("a/b? no")  # "/" cannot be in a folder name; the safe-name test below covers odd characters
    src = make_tree(tmp_path / "src", names)
    nested = src / "apple blossom" / "more" / "deeper"
    nested.mkdir(parents=True)
    write_jpeg(nested / "x.JPG", np.random.default_rng(9))
    summary = prepare(src, tmp_path / "out")
    expected = sorted(names)
    assert expected == ["Zebra rose", "apple blossom", "crème brûlée", "日本 桜"]
    assert summary["class_names"] == expected and summary["num_classes"] == 4
    assert (tmp_path / "out" / "labels.txt").read_text(encoding="utf-8").splitlines() == expected
    rows = read_manifest(tmp_path / "out")
    assert len(rows) == 13 and all(r["class_name"] == expected[r["class_index"]] for r in rows)
    assert {r["source"] for r in rows if r["class_name"] == "apple blossom"} >= {"apple blossom/more/deeper/x.JPG"}
    assert summary["counts"] == {"train": 13, "val": 0, "test": 0}  # 10% of 3 or 4 images rounds to none


def test_image_folder_output_names_are_safe_and_keep_class_order(tmp_path):
    from torchvision.datasets import ImageFolder

    assert folder_name(3, "crème brûlée: *deluxe*?", 3) == "003_crème_brûlée_deluxe_"
    assert folder_name(0, "..hidden", 3) == "000_hidden"
    src = make_tree(tmp_path / "src", {"b': x": 4, "A|B": 4, 'q"uote': 4})
    prepare(src, tmp_path / "out", val_frac=0, test_frac=0)
    dataset = ImageFolder(str(tmp_path / "out" / "train"))
    assert dataset.classes == ["000_A_B", "001_b_x", "002_q_uote"]
    by_file = {Path(r["path"]).name: r["class_index"] for r in read_manifest(tmp_path / "out")}
    assert all(by_file[Path(p).name] == idx for p, idx in dataset.samples)


def test_stratified_split_of_class_folders_is_reproducible(tmp_path):
    src = make_tree(tmp_path / "src", {"a": 10, "b": 20})
    kwargs = dict(val_frac=0.2, test_frac=0.3)
    a = prepare(src, tmp_path / "a", seed=1, **kwargs)
    prepare(src, tmp_path / "b", seed=1, **kwargs)
    prepare(src, tmp_path / "c", seed=2, **kwargs)
    assert a["per_class"] == {"train": [5, 10], "val": [2, 4], "test": [3, 6]}
    split_of = {d: {r["source"]: r["split"] for r in read_manifest(tmp_path / d)} for d in "abc"}
    assert split_of["a"] == split_of["b"] and split_of["a"] != split_of["c"]


def test_a_split_tree_keeps_its_split_and_reports_a_class_missing_from_a_split(tmp_path, capsys):
    src = tmp_path / "src"
    make_tree(src / "train", {"cat": 6, "dog": 6, "owl": 6})
    make_tree(src / "Validation", {"cat": 2, "dog": 2}, seed=1)
    make_tree(src / "test", {"cat": 1, "dog": 1, "owl": 1}, seed=2)
    assert cli_main(["prepare", "--source", str(src), "--out", str(tmp_path / "out"), "--workers", "1"]) == 0
    printed = capsys.readouterr().out
    assert "layout read: split-folders; split given by the source; 3 classes" in printed
    assert "warning: 1 classes have no val image: owl" in printed
    rows = read_manifest(tmp_path / "out")
    assert {r["source"].split("/")[0]: r["split"] for r in rows} == {
        "train": "train",
        "Validation": "val",
        "test": "test",
    }
    assert sorted(r["source"] for r in rows if r["split"] == "val") == [
        "Validation/cat/0.jpg",
        "Validation/cat/1.jpg",
        "Validation/dog/0.jpg",
        "Validation/dog/1.jpg",
    ]


def test_unbalanced_classes_are_counted_per_split_and_warned(tmp_path):
    src = make_tree(tmp_path / "src", {"many": 40, "few": 3})
    summary = prepare(src, tmp_path / "out")
    assert summary["per_class"] == {"train": [3, 32], "val": [0, 4], "test": [0, 4]}  # "few" < "many"
    assert summary["class_warnings"] == [
        "1 classes have fewer than 5 train images: few (3)",
        "1 classes have no val image: few",
        "1 classes have fewer than 5 val images: many (4)",
        "1 classes have no test image: few",
        "1 classes have fewer than 5 test images: many (4)",
    ]


# ---------------------------------------------------------------------------------------------- images


def test_formats_non_images_hidden_files_and_corrupt_files_are_counted(tmp_path):
    src = make_tree(tmp_path / "src", {"a": 3, "b": 3}, suffix=".png")
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 256, (30, 40, 3), np.uint8)).save(src / "a" / "w.webp")
    (src / "a" / "notes.txt").write_text("a note")
    (src / "b" / ".DS_Store").write_bytes(b"\0\1")
    (src / "README.md").write_text("loose file")
    png = (src / "b" / "0.png").read_bytes()
    (src / "b" / "0.png").write_bytes(png[: len(png) // 2])  # truncated
    (src / "b" / "1.png").write_bytes(b"not a png" * 10)
    summary = prepare(src, tmp_path / "out", val_frac=0, test_frac=0)
    assert summary["skipped"] == {"hidden": 1, "not an image": 1, "not in a class folder": 1}
    assert [c["file"] for c in summary["corrupt"]] == ["b/0.png", "b/1.png"]
    assert summary["per_class"]["train"] == [4, 1]
    rows = read_manifest(tmp_path / "out")
    assert {r["path"] for r in rows} == {
        p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out" / "images").iterdir()
    }
    assert next(r for r in rows if r["source"] == "a/w.webp")["width"] == 40


def test_exif_orientation_is_applied(tmp_path):
    src = make_tree(tmp_path / "src", {"a": 2, "b": 2})
    image = Image.fromarray(np.random.default_rng(2).integers(0, 256, (30, 60, 3), np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees to show upright
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", exif=exif)
    (src / "a" / "rotated.jpg").write_bytes(buffer.getvalue())
    prepare(src, tmp_path / "out")
    row = next(r for r in read_manifest(tmp_path / "out") if r["source"] == "a/rotated.jpg")
    assert (row["width"], row["height"]) == (30, 60)


def test_duplicates_and_cross_split_leakage_are_reported(tmp_path):
    src = tmp_path / "src"
    make_tree(src / "train", {"a": 3, "b": 3})
    make_tree(src / "val", {"a": 2, "b": 2}, seed=5)
    shutil.copyfile(src / "train" / "a" / "0.jpg", src / "val" / "a" / "copy.jpg")
    shutil.copyfile(src / "train" / "b" / "0.jpg", src / "train" / "b" / "again.jpg")
    summary = prepare(src, tmp_path / "out")
    assert summary["leakage"] == [{"splits": ["train", "val"], "sources": ["train/a/0.jpg", "val/a/copy.jpg"]}]
    assert summary["duplicates"] == [["train/a/0.jpg", "val/a/copy.jpg"], ["train/b/0.jpg", "train/b/again.jpg"]]


# ---------------------------------------------------------------------------------------------- bad inputs


def test_one_class_only_is_refused_before_anything_is_written(tmp_path):
    src = make_tree(tmp_path / "src", {"only": 5})
    with pytest.raises(LayoutError, match=r"one class \('only'\) with images; a classifier needs at least 2"):
        prepare(src, tmp_path / "out")
    assert nothing_but(tmp_path, "src")


def test_an_empty_class_folder_is_reported_and_left_out(tmp_path):
    src = make_tree(tmp_path / "src", {"a": 2, "b": 2})
    (src / "empty" / "sub").mkdir(parents=True)
    (src / "empty" / "readme.txt").write_text("nothing")
    summary = prepare(src, tmp_path / "out")
    assert summary["empty_classes"] == ["empty"] and summary["class_names"] == ["a", "b"]


def test_a_class_whose_every_file_is_corrupt_is_dropped_and_reported(tmp_path):
    src = make_tree(tmp_path / "src", {"a": 2, "b": 2, "c": 2})
    for p in (src / "b").iterdir():
        p.write_bytes(b"\xff\xd8\xff\xe0 broken")
    summary = prepare(src, tmp_path / "out")
    assert summary["dropped_classes"] == ["b"] and summary["class_names"] == ["a", "c"]
    assert {r["class_index"]: r["class_name"] for r in read_manifest(tmp_path / "out")} == {0: "a", 1: "c"}
    for p in (src / "c").iterdir():
        p.write_bytes(b"junk")
    with pytest.raises(LayoutError, match=r"one class \('a'\).*after skipping 4 unreadable images"):
        prepare(src, tmp_path / "out2")
    assert not (tmp_path / "out2").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_a_symlink_loop_is_refused(tmp_path):
    src = make_tree(tmp_path / "src", {"a": 2, "b": 2})
    os.symlink("..", src / "a" / "up")
    with pytest.raises(LayoutError, match="leads back to .*symlink loop"):
        prepare(src, tmp_path / "out")
    (src / "a" / "up").unlink()
    os.symlink("self", src / "a" / "self")
    with pytest.raises(LayoutError, match="self is a symlink loop; remove the link"):
        prepare(src, tmp_path / "out")
    assert nothing_but(tmp_path, "src")


def test_a_symlink_out_of_the_source_is_refused_and_inside_is_read(tmp_path):
    src = make_tree(tmp_path / "src", {"a": 2, "b": 2})
    secret = tmp_path / "private.jpg"
    write_jpeg(secret, np.random.default_rng(3))
    os.symlink(secret, src / "a" / "leak.jpg")
    with pytest.raises(LayoutError, match="outside .*refusing to read outside the source"):
        prepare(src, tmp_path / "out")
    (src / "a" / "leak.jpg").unlink()
    os.symlink("../b/0.jpg", src / "a" / "inside.jpg")
    summary = prepare(src, tmp_path / "out")
    assert summary["counts"]["train"] == 5 and summary["duplicates"] == [["a/inside.jpg", "b/0.jpg"]]


def test_a_fifo_is_refused_without_blocking(tmp_path):
    src = make_tree(tmp_path / "src", {"a": 2, "b": 2})
    os.mkfifo(src / "a" / "pipe.jpg")
    with pytest.raises(LayoutError, match="pipe.jpg is not a regular file"):
        prepare(src, tmp_path / "out")


def test_names_that_are_not_utf8(tmp_path):
    src = make_tree(tmp_path / "src", {"a": 2, "b": 2})
    raw = os.fsencode(src / "a") + b"/caf\xe9.jpg"
    try:
        shutil.copyfile(src / "a" / "0.jpg", raw)
    except OSError:  # a filesystem that allows only UTF-8 names (APFS) cannot hold the input under test
        pytest.skip("this filesystem refuses names that are not UTF-8")
    summary = prepare(src, tmp_path / "out")
    assert summary["skipped"] == {"name not valid UTF-8": 1}
    assert summary["skipped_examples"]["name not valid UTF-8"] == ["a/caf\\udce9.jpg"]
    os.mkdir(os.fsencode(src) + b"/bad\xff")
    shutil.copyfile(src / "a" / "0.jpg", os.fsencode(src) + b"/bad\xff/x.jpg")
    with pytest.raises(LayoutError, match="is not valid UTF-8; rename it"):
        prepare(src, tmp_path / "out2")


# ---------------------------------------------------------------------------------------------- csv


def write_csv(root: Path, text: str) -> Path:
    path = root / "labels.csv"
    path.write_text(text, encoding="utf-8")
    return path


def test_csv_with_split_column_paths_relative_to_its_folder(tmp_path, capsys):
    root = make_tree(tmp_path / "data", {"imgs": 6})
    csv_path = write_csv(
        root,
        "Path, Label ,split\n"
        + "".join(
            f"imgs/{k}.jpg,{'ripe' if k % 2 else 'un ripe'},{['train', 'TRAIN', 'dev'][k % 3]}\n" for k in range(6)
        )
        + "imgs/missing.jpg,ripe,test\n\nimgs/0.jpg,un ripe,train\n",
    )
    assert cli_main(["prepare", "--source", str(csv_path), "--out", str(tmp_path / "out"), "--workers", "1"]) == 0
    assert "layout read: csv; split given by the source; 2 classes" in capsys.readouterr().out
    summary = prepare(root, tmp_path / "out2", layout="csv")
    assert summary["class_names"] == ["ripe", "un ripe"] and summary["counts"] == {"train": 4, "val": 2, "test": 0}
    assert summary["missing_files"] == 1 and summary["missing_files_listed"] == ["imgs/missing.jpg"]
    assert summary["duplicate_rows"] == 1 and summary["dataset"] == "data"
    assert {r["source"]: r["split"] for r in read_manifest(tmp_path / "out2")}["imgs/2.jpg"] == "val"


@pytest.mark.parametrize(
    "line, error",
    [
        ("/etc/passwd,a", "is absolute"),
        ("C:\\photos\\x.jpg,a", "is absolute"),
        ("../outside.jpg,a", "leaves the CSV's folder"),
        ("imgs/../../outside.jpg,a", "leaves the CSV's folder"),
        ("imgs/0.jpg,", "the class name '' is empty"),
        (",a", "the path is empty"),
        ("imgs/0.jpg,b", "imgs/0.jpg is labelled 'b' .* but line 2 gave it 'a'"),
        ("imgs", "fewer than the header's columns"),
        ("imgs,a", "is not a regular file"),
    ],
    ids=[
        "absolute",
        "windows-absolute",
        "dotdot",
        "dotdot-inside",
        "empty-label",
        "empty-path",
        "conflict",
        "short",
        "folder",
    ],
)
def test_bad_csv_rows_are_one_line_errors_naming_the_line(tmp_path, line, error):
    root = make_tree(tmp_path / "data", {"imgs": 2})
    write_jpeg(tmp_path / "outside.jpg", np.random.default_rng(4))
    csv_path = write_csv(root, f"path,label\nimgs/0.jpg,a\nimgs/1.jpg,b\n{line}\n")
    with pytest.raises(LayoutError, match=error) as exc:
        prepare(csv_path, tmp_path / "out")
    assert "\n" not in str(exc.value) and ("line 4" in str(exc.value) or "is not a regular file" in str(exc.value))
    assert nothing_but(tmp_path, "data", "outside.jpg")


def test_csv_without_header_or_with_unknown_split_is_refused(tmp_path):
    root = make_tree(tmp_path / "data", {"imgs": 2})
    with pytest.raises(LayoutError, match="must be a header naming the columns path,label"):
        prepare(write_csv(root, "imgs/0.jpg,a\nimgs/1.jpg,b\n"), tmp_path / "out")
    with pytest.raises(LayoutError, match="split 'holdout' is none of"):
        prepare(write_csv(root, "path,label,split\nimgs/0.jpg,a,holdout\n"), tmp_path / "out")
    (root / "labels.csv").write_bytes(b"path,label\nimgs/0.jpg,caf\xe9\n")
    with pytest.raises(LayoutError, match="is not UTF-8 text"):
        prepare(root / "labels.csv", tmp_path / "out")


def test_a_csv_symlink_through_a_folder_outside_is_refused(tmp_path):
    root = make_tree(tmp_path / "data", {"imgs": 2})
    make_tree(tmp_path / "elsewhere", {"x": 1})
    os.symlink(tmp_path / "elsewhere", root / "linked")
    csv_path = write_csv(root, "path,label\nimgs/0.jpg,a\nimgs/1.jpg,b\nlinked/x/0.jpg,a\n")
    with pytest.raises(LayoutError, match="outside .*refusing to read outside the source"):
        prepare(csv_path, tmp_path / "out")


# ---------------------------------------------------------------------------------------------- real data


@pytest.mark.realdata
@pytest.mark.slow
def test_oxford_images_as_folders_and_as_a_split_tree_match_the_official_path(tmp_path):
    if not (REAL_DATA / "jpg").is_dir():
        pytest.skip(f"real data not present at {REAL_DATA}")
    official = prepare_dataset(PrepareConfig(source=REAL_DATA, out=tmp_path / "official", cache_size=32))
    expected = {(r["sha256"], r["class_name"], r["split"]) for r in read_manifest(tmp_path / "official")}
    assert len(expected) == 2040 and official["layout"] == "oxford102"

    folders = oxford_as_folders(REAL_DATA, tmp_path / "folders", split_tree=False)  # hard links, not copies
    summary = prepare_dataset(PrepareConfig(source=folders, out=tmp_path / "a", cache_size=32))
    assert summary["layout"] == "folders" and summary["class_names"] == sorted(class_names())
    got = {(r["sha256"], r["class_name"]) for r in read_manifest(tmp_path / "a")}
    assert got == {(sha, name) for sha, name, _ in expected}

    tree = oxford_as_folders(REAL_DATA, tmp_path / "tree", split_tree=True)
    summary = prepare_dataset(PrepareConfig(source=tree, out=tmp_path / "b", cache_size=32))
    assert summary["layout"] == "split-folders" and summary["counts"] == official["counts"]
    assert {(r["sha256"], r["class_name"], r["split"]) for r in read_manifest(tmp_path / "b")} == expected
    assert summary["corrupt"] == [] and summary["leakage"] == [] and summary["class_warnings"] == []  # 10 + 10 each


def test_the_dataset_name_is_the_folder_name_or_name(tmp_path, mini_release):
    src = make_tree(tmp_path / "Tomatoes à la ferme", {"ripe": 2, "unripe": 2})
    assert prepare(src, tmp_path / "a")["dataset"] == "Tomatoes à la ferme"
    assert prepare(src, tmp_path / "b", name="Shop shelf v2")["dataset"] == "Shop shelf v2"
    assert prepare(mini_release, tmp_path / "c", name="My flowers")["dataset"] == "My flowers"
    assert prepare(mini_release, tmp_path / "d")["dataset"].startswith("Oxford 102 Flowers")
    with pytest.raises(LayoutError, match="--name: the dataset name 'two\\\\nlines' .*line break"):
        prepare(src, tmp_path / "e", name="two\nlines")
    assert not (tmp_path / "e").exists()


def test_thousands_of_classes_keep_their_order_and_safe_folder_names(tmp_path):
    names = [f"species {k}" for k in range(1200)]
    rng = np.random.default_rng(6)
    for name in names:
        (tmp_path / "src" / name).mkdir(parents=True)
        ok, data = cv2.imencode(".png", rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8))
        (tmp_path / "src" / name / "x.png").write_bytes(data.tobytes())
    summary = prepare(tmp_path / "src", tmp_path / "out")
    assert summary["num_classes"] == 1200 and summary["class_names"] == sorted(names)
    assert summary["class_names"][:3] == ["species 0", "species 1", "species 10"]  # code points, not numbers
    folders = sorted(p.name for p in (tmp_path / "out" / "train").iterdir())
    assert len(folders) == 1200 and folders[2] == "0002_species_10" and folders[-1] == "1199_species_999"


@pytest.mark.torch
def test_the_training_loader_reads_a_prepared_folder_tree(tmp_path):
    from train.data import CachedImages

    src = make_tree(tmp_path / "src", {"zeta": 3, "alpha": 5})
    prepare(src, tmp_path / "out", val_frac=0, test_frac=0)
    images = CachedImages(tmp_path / "out", ["train"])
    by_source = {r["source"]: t for r, t in zip(images.rows, images.targets, strict=True)}
    assert len(images) == 8 and by_source["alpha/0.jpg"] == 0 and by_source["zeta/2.jpg"] == 1
    assert images.images[0].shape[:2] == (32, 39)  # the 36x44 photo's cached copy: shorter side 32


def test_class_names_that_differ_only_in_unicode_normal_form_are_refused(tmp_path):
    make_tree(tmp_path / "src", {"caf\u00e9": 2, "cafe\u0301": 2, "tea": 2})  # NFC and NFD spellings of café
    with pytest.raises(LayoutError, match="different Unicode normal forms; rename one"):
        prepare(tmp_path / "src", tmp_path / "out")


def test_a_split_tree_is_re_split_only_when_asked(tmp_path):
    src = tmp_path / "src"
    make_tree(src / "train", {"a": 8, "b": 8})
    make_tree(src / "test", {"a": 2, "b": 2}, seed=1)
    summary = prepare(src, tmp_path / "out", split="stratified", val_frac=0.2, test_frac=0.2)
    assert summary["split_from"].startswith("class-stratified") and summary["per_class"]["val"] == [2, 2]
    assert summary["counts"] == {"train": 12, "val": 4, "test": 4}


def test_listing_is_bounded_in_entries_and_depth(tmp_path, monkeypatch):
    import prepare.layouts as layouts

    src = make_tree(tmp_path / "src", {"a": 6, "b": 6})
    monkeypatch.setattr(layouts, "MAX_ENTRIES", 10)
    with pytest.raises(LayoutError, match="more than 10 entries"):
        prepare(src, tmp_path / "out")
    monkeypatch.setattr(layouts, "MAX_ENTRIES", 1000)
    monkeypatch.setattr(layouts, "MAX_DEPTH", 2)
    deep = src / "a" / "1" / "2" / "3"
    deep.mkdir(parents=True)
    with pytest.raises(LayoutError, match="nested more than 2 folders deep"):
        prepare(src, tmp_path / "out")
    assert nothing_but(tmp_path, "src")
