"""`edge_runtime.atomic`: a file is either complete or absent, whatever happens mid-write (torch-free)."""

from __future__ import annotations

import contextlib
import json
import os
import random
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edge_runtime.atomic import atomic_dir, atomic_path, write_json_atomic, write_text_atomic
from edge_runtime.outdir import MARKER, STAGING, OutputError, recover_leftovers, staged_output, write_marker
from tests.conftest import REPO


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


# ---------------------------------------------------------------- output folders: built aside, swapped at the end


def hidden(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def an_output(folder, kind="prepare", content="old"):
    folder.mkdir()
    (folder / "data.txt").write_text(content)
    write_marker(folder, kind)
    return folder


def test_the_old_folder_stays_whole_until_the_new_one_is_complete(tmp_path):
    out = an_output(tmp_path / "out")
    with pytest.raises(OSError, match="disk full"), staged_output(out, "prepare", overwrite=True) as stage:
        (stage / "data.txt").write_text("half of the new")
        assert (out / "data.txt").read_text() == "old"  # untouched while the new one is built
        raise OSError("disk full")
    assert (out / "data.txt").read_text() == "old" and hidden(tmp_path) == []
    with staged_output(out, "prepare", overwrite=True) as stage:
        (stage / "data.txt").write_text("new")
    assert sorted(p.name for p in out.iterdir()) == [MARKER, "data.txt"] and (out / "data.txt").read_text() == "new"
    assert stat.S_IMODE(out.stat().st_mode) == 0o755 and hidden(tmp_path) == []


@pytest.mark.parametrize("overwrite", [False, True], ids=["plain", "overwrite"])
def test_a_folder_that_appears_at_out_during_the_run_is_never_replaced(tmp_path, overwrite):
    out = tmp_path / "out"
    refused = pytest.raises(OutputError, match="appeared or changed while this run")
    with refused, staged_output(out, "prepare", overwrite=overwrite) as stage:
        (stage / "data.txt").write_text("ours")
        an_output(out, content="theirs")  # even one of the same kind: this run never saw it
    assert (out / "data.txt").read_text() == "theirs" and hidden(tmp_path) == []


def test_overwrite_replaces_only_the_folder_it_saw_unchanged(tmp_path):
    out = an_output(tmp_path / "out")
    refused = pytest.raises(OutputError, match="appeared or changed")
    with refused, staged_output(out, "prepare", overwrite=True) as stage:
        (stage / "data.txt").write_text("ours")
        (out / "notes.txt").write_text("written into the old folder meanwhile")
    assert (out / "notes.txt").is_file() and hidden(tmp_path) == []


@pytest.mark.parametrize("overwrite", [False, True], ids=["plain", "overwrite"])
def test_of_two_runs_to_one_out_the_first_to_finish_wins_and_the_other_fails(tmp_path, overwrite):
    out = tmp_path / "out"
    if overwrite:
        an_output(out)
    with contextlib.ExitStack() as first, contextlib.ExitStack() as second:
        a = first.enter_context(staged_output(out, "prepare", overwrite=overwrite))
        b = second.enter_context(staged_output(out, "prepare", overwrite=overwrite))
        (a / "data.txt").write_text("first")
        (b / "data.txt").write_text("second")
        first.close()  # publishes
        with pytest.raises(OutputError, match="appeared or changed"):
            second.close()
    assert (out / "data.txt").read_text() == "first" and hidden(tmp_path) == []


def test_an_empty_folder_at_out_is_replaced_but_not_one_filled_meanwhile(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    with staged_output(out, "prepare", overwrite=False) as stage:
        (stage / "data.txt").write_text("new")
    assert (out / "data.txt").read_text() == "new"


def test_with_an_input_inside_out_nothing_is_staged(tmp_path):
    (tmp_path / "release").mkdir()
    with (
        pytest.raises(OutputError, match="overlaps the input"),
        staged_output(tmp_path, "prepare", overwrite=True, inputs=[tmp_path / "release"]),
    ):
        pass
    assert hidden(tmp_path) == []


HOLD = """
import sys, time
from edge_runtime.outdir import staged_output
with staged_output(sys.argv[1], "prepare", overwrite=True) as stage:
    (stage / "data.txt").write_text("killed")
    print(stage, flush=True)
    time.sleep(120)
"""


def hold_a_stage(out):
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(out)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    return proc, Path(proc.stdout.readline().strip())


def test_a_killed_runs_staging_folder_is_removed_by_the_next_run_and_a_live_ones_is_not(tmp_path, capfd):
    out = an_output(tmp_path / "out")
    proc, stage = hold_a_stage(out)
    try:
        recover_leftovers(out)
        assert stage.is_dir()  # its run is alive: not ours to remove
    finally:
        proc.kill()
        proc.wait()
    assert stage.is_dir() and (out / "data.txt").read_text() == "old"  # a kill leaves the old folder whole
    with staged_output(out, "prepare", overwrite=True) as new:
        (new / "data.txt").write_text("new")
    assert f"removed {stage}, the unfinished output of an interrupted run" in capfd.readouterr().err
    assert (out / "data.txt").read_text() == "new" and hidden(tmp_path) == []


@pytest.mark.parametrize("out_exists", [False, True], ids=["killed-between-renames", "killed-before-delete"])
def test_a_swap_killed_midway_is_undone_or_finished_by_the_next_run(tmp_path, capfd, out_exists):
    out = tmp_path / "out"
    old = an_output(tmp_path / f".out.{STAGING.replace('new', 'old')}-x1y2")
    if out_exists:
        an_output(out, content="new")
    recover_leftovers(out)
    assert (out / "data.txt").read_text() == ("new" if out_exists else "old") and hidden(tmp_path) == []
    assert ("removed" if out_exists else "restored") in capfd.readouterr().err
    assert not old.exists()


KILL_LOOP = """
import sys
from edge_runtime.outdir import staged_output
out = sys.argv[1]
for version in range(10**6):
    with staged_output(out, "prepare", overwrite=True) as stage:
        for i in range(20):
            (stage / f"part{i}.txt").write_text(str(version))
    print(version, flush=True)
"""


@pytest.mark.slow
def test_killed_at_random_moments_out_is_always_one_complete_version(tmp_path):
    """SIGKILL a loop of replacements at random moments: after the next run's recovery, --out always holds
    one complete version (never none, never a mix) and nothing is left beside it."""
    out = tmp_path / "out"
    rng = random.Random(0)
    for _ in range(12):
        proc = subprocess.Popen(
            [sys.executable, "-c", KILL_LOOP, str(out)],
            stdout=subprocess.PIPE,
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        if not out.exists():
            proc.stdout.readline()  # one version published first
        time.sleep(rng.uniform(0.2, 1.0))
        proc.kill()
        proc.wait()
        recover_leftovers(out)
        versions = {(out / f"part{i}.txt").read_text() for i in range(20)}
        assert len(versions) == 1, versions
        assert hidden(tmp_path) == []


def test_without_replace_a_file_that_appeared_meanwhile_is_kept(tmp_path):
    target = tmp_path / "soup.pt"
    with pytest.raises(OutputError, match="appeared while this run"), atomic_path(target, replace=False) as tmp:
        tmp.write_bytes(b"ours")
        target.write_bytes(b"theirs")  # another run, or the user
    assert target.read_bytes() == b"theirs" and [p.name for p in tmp_path.iterdir()] == ["soup.pt"]
    with atomic_path(tmp_path / "new.pt", replace=False) as tmp:
        tmp.write_bytes(b"ours")
    assert (tmp_path / "new.pt").read_bytes() == b"ours" and stat.S_IMODE((tmp_path / "new.pt").stat().st_mode) == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new.pt", "soup.pt"]


def test_an_output_built_inside_another_ones_staging_folder_does_not_wait_on_it(tmp_path):
    """`demo` builds `prepare`, `export`, ... outputs inside its own staging folder."""
    import threading

    def nested():
        with (
            staged_output(tmp_path / "demo", "demo", overwrite=False) as demo,
            staged_output(demo / "prepared", "prepare", overwrite=False) as inner,
        ):
            (inner / "data.txt").write_text("inner")

    worker = threading.Thread(target=nested, daemon=True)
    worker.start()
    worker.join(timeout=60)
    assert not worker.is_alive(), "deadlocked on its own staging folder"
    assert (tmp_path / "demo" / "prepared" / "data.txt").read_text() == "inner"
    assert sorted(p.name for p in (tmp_path / "demo").iterdir()) == [MARKER, "prepared"] and hidden(tmp_path) == []
