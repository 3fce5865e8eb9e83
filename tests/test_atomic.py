"""`edge_runtime.atomic`: a file is either complete or absent, whatever happens mid-write (torch-free)."""

from __future__ import annotations

import json
import stat

import pytest

from edge_runtime.atomic import atomic_dir, atomic_path, write_json_atomic, write_text_atomic


def test_writes_land_whole_and_readable_by_others(tmp_path):
    write_text_atomic(tmp_path / "a.txt", "héllo\n")
    write_json_atomic(tmp_path / "b.json", {"x": [1, 2]})
    assert (tmp_path / "a.txt").read_text(encoding="utf-8") == "héllo\n"
    assert json.loads((tmp_path / "b.json").read_text()) == {"x": [1, 2]}
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o644  # not mkstemp's 0600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.json"]


@pytest.mark.parametrize("error", [OSError("disk full"), KeyboardInterrupt()], ids=["error", "ctrl-c"])
def test_a_failed_write_keeps_the_old_file_and_leaves_nothing_behind(tmp_path, error):
    target = tmp_path / "best.pt"
    target.write_bytes(b"the old, complete file")
    with pytest.raises(type(error)), atomic_path(target) as tmp:
        tmp.write_bytes(b"half of the new")
        raise error
    assert target.read_bytes() == b"the old, complete file"
    assert [p.name for p in tmp_path.iterdir()] == ["best.pt"]


def test_a_folder_appears_whole_or_not_at_all(tmp_path):
    with atomic_dir(tmp_path / "space") as tmp:
        (tmp / "app.py").write_text("app")
    assert [p.name for p in (tmp_path / "space").iterdir()] == ["app.py"]
    assert stat.S_IMODE((tmp_path / "space").stat().st_mode) == 0o755  # not mkdtemp's 0700
    with pytest.raises(KeyboardInterrupt), atomic_dir(tmp_path / "other") as tmp:
        (tmp / "half").write_text("x")
        raise KeyboardInterrupt
    assert [p.name for p in tmp_path.iterdir()] == ["space"]
