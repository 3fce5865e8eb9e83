"""The overlay window of `floraedge run` (issue 40).

Without a window possible (this environment's opencv-python-headless, or no display) `run` fails at once in one
line naming the ways that work. With one (PyPI's opencv-python, Qt, in its own environment `.venv-gui` that
`make test` creates, since the two OpenCV wheels cannot share one; Debian's Xvfb as the display) the window
opens with the model in its title, the overlay is drawn (found in a screenshot of the virtual display), and
closing it, q or Esc end the run with a summary."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_runtime.live import draw_overlay
from edge_runtime.window import display_problem, x_display_opens
from tests import xdisplay
from tests.conftest import REPO
from tests.tiny_models import tiny_onnx

GUI_PYTHON = REPO / ".venv-gui" / "bin" / "python"
BACKGROUND = (120, 60, 30)  # BGR of every frame: the overlay's colours appear nowhere else
LONG_VIDEO_FRAMES = 20000


def uniform_video(path: Path, frames: int, size=(120, 160)) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30, (size[1], size[0]))
    frame = np.full((*size, 3), BACKGROUND, np.uint8)
    for _ in range(frames):
        writer.write(frame)
    writer.release()
    return path


def run_cli(args: list[str], python=sys.executable, env=None, **kwargs):
    return subprocess.run(
        [str(python), "-m", "floraedge", "run", *args], cwd=REPO, capture_output=True, text=True, env=env, **kwargs
    )


@pytest.fixture
def model(tmp_path):
    return tiny_onnx(tmp_path / "tiny.onnx")


@pytest.mark.parametrize("display", [None, ":4242"], ids=["no-display", "dead-display"])
def test_no_window_possible_fails_at_once_in_one_line(model, tmp_path, display):
    """The README's first camera line on `.[edge]` (headless OpenCV), with or without a display set."""
    video = uniform_video(tmp_path / "clip.avi", 3)
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    env |= {"DISPLAY": display} if display else {}
    proc = run_cli(["--model", str(model), "--source", str(video)], env=env, timeout=120)
    assert proc.returncode == 1 and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    line = lines[0]
    assert line.startswith("floraedge run: error: cannot show the overlay window: this OpenCV")
    for way in ("--headless", "--record FILE.mp4", "--publish DIR", "floraedge serve --camera DIR", "window support"):
        assert way in line


def test_without_a_window_the_other_outputs_asked_for_still_run(model, tmp_path):
    video = uniform_video(tmp_path / "clip.avi", 4)
    record = tmp_path / "out.mp4"
    proc = run_cli(["--model", str(model), "--source", str(video), "--record", str(record)], timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines[0].startswith("output: no window (this OpenCV") and f"output: a recording to {record}" in lines
    assert json.loads(lines[-1])["summary"]["frames"] == 4 and record.stat().st_size > 0


def test_display_problem_names_what_is_missing():
    assert "DISPLAY and WAYLAND_DISPLAY are not set" in display_problem({})
    assert "cannot be opened" in display_problem({"DISPLAY": ":4242"})
    assert "DISPLAY and WAYLAND_DISPLAY" in display_problem({"WAYLAND_DISPLAY": "wayland-404", "XDG_RUNTIME_DIR": "/"})


# -- a real window: PyPI's opencv-python (Qt) on Xvfb --------------------------------------------------------


@pytest.fixture
def xvfb():
    """A virtual X display (Debian's xvfb; `make test` installs it), on the first free display number."""
    assert shutil.which("Xvfb"), "Debian's xvfb is needed: `make test` installs it (make gui)"
    with xdisplay.xvfb() as name:
        yield name


@pytest.fixture(scope="module")
def long_video(tmp_path_factory):
    """Long enough never to end by itself during a test: waitKey(1) holds the loop under 1000 frames/s."""
    return uniform_video(tmp_path_factory.mktemp("window") / "long.avi", LONG_VIDEO_FRAMES)


@pytest.fixture
def gui_python():
    assert GUI_PYTHON.exists(), f"{GUI_PYTHON} (opencv-python with Qt) is needed: `make gui` creates it"
    return GUI_PYTHON


def overlay_template() -> np.ndarray:
    """The word "unsure" as the overlay draws it on a frame of BACKGROUND, cut out."""
    frame = np.full((120, 160, 3), BACKGROUND, np.uint8)
    drawn = draw_overlay(frame, {"label": "unsure", "score": 0.0, "unsure": True}, 0.0, 0.0)
    (width, height), baseline = cv2.getTextSize("unsure", cv2.FONT_HERSHEY_SIMPLEX, 0.7, 4)
    return drawn[28 - height - 3 : 28 + baseline, 7 : 10 + width + 2]


def overlay_found(display) -> float:
    """How far the best match of the overlay's "unsure" in a screenshot of the display is (0: exact)."""
    shot = xdisplay.screenshot(display)
    return float(cv2.minMaxLoc(cv2.matchTemplate(shot, overlay_template(), cv2.TM_SQDIFF_NORMED))[0])


@pytest.mark.slow
@pytest.mark.parametrize(("action", "ended"), [("close", "window closed"), ("q", "quit key"), ("Escape", "quit key")])
def test_the_window_shows_the_overlay_and_ends_the_run_with_a_summary(
    model, long_video, xvfb, gui_python, action, ended
):
    video = long_video
    env = {k: v for k, v in os.environ.items() if k not in ("WAYLAND_DISPLAY", "QT_QPA_PLATFORM")}
    env |= {"DISPLAY": xvfb, "PYTHONPATH": str(REPO)}
    args = ["--model", str(model), "--source", str(video), "--threshold", "1", "--threads", "2"]
    proc = subprocess.Popen(
        [str(gui_python), "-m", "floraedge", "run", *args],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        display = xdisplay.Display(xvfb)
        window = xdisplay.find_window(display, "FloraEdge: tiny.onnx", timeout=60)
        assert window is not None, "no window titled with the model opened"
        deadline = time.monotonic() + 30
        while (distance := overlay_found(display)) > 0.02 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert distance <= 0.02, f"the overlay's text is not on the screen (best match {distance:.3f})"
        assert proc.poll() is None, "the run ended before the window was closed"
        if action == "close":
            xdisplay.close_window(display, window)
        else:
            xdisplay.press_key(display, window, action)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0 and "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert "output: a window 'FloraEdge: tiny.onnx' (q or Esc quits, as does closing it)" in lines
    summary = json.loads(lines[-1])["summary"]
    assert summary["ended"] == ended and 0 < summary["frames"] < LONG_VIDEO_FRAMES and summary["threads_left"] == 0
    assert out == ""  # no --headless: no JSON lines


@pytest.mark.parametrize(
    ("display", "says"), [(None, "no display (DISPLAY and WAYLAND_DISPLAY are not set"), (":4242", "cannot be opened")]
)
def test_a_gui_opencv_without_a_display_fails_at_once_in_one_line(model, tmp_path, gui_python, display, says):
    """A headless Pi (or SSH) with a GUI OpenCV: Qt would abort the process at the first imshow; run refuses first."""
    video = uniform_video(tmp_path / "clip.avi", 3)
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM")}
    env |= {"PYTHONPATH": str(REPO)} | ({"DISPLAY": display} if display else {})
    proc = run_cli(["--model", str(model), "--source", str(video)], python=gui_python, env=env, timeout=120)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith("floraedge run: error: cannot show the overlay window: ") and says in lines[0]
    assert "--headless" in lines[0] and "--publish DIR" in lines[0]


def test_x_display_probe_sees_a_live_display(xvfb):
    assert x_display_opens(xvfb) and display_problem({"DISPLAY": xvfb}) is None


@pytest.mark.parametrize("unsure", [False, True], ids=["sure", "unsure"])
def test_the_arm64_window_check_finds_the_overlay_by_its_colours_and_nothing_in_a_photo(unsure):
    """tests/arm64/window_run.py looks for the overlay by draw_overlay's text colours (it runs on Debian's python3,
    outside the project's environment): they must be the ones drawn, and a photo must not have them."""
    from tests.arm64.window_run import MIN_OVERLAY_PIXELS, overlay_pixels

    photo = cv2.imread(str(REPO / "docs" / "release_example.png"))
    assert photo is not None
    box = (0, 0, photo.shape[1], photo.shape[0])
    assert overlay_pixels(photo, box) == (0, 0)
    drawn = draw_overlay(photo, {"label": "passion flower", "score": 0.93, "unsure": unsure}, 6.0, 93.7)
    band, elsewhere = overlay_pixels(drawn, box)
    assert band >= 10 * MIN_OVERLAY_PIXELS and elsewhere == 0
    # on a screen the window lies somewhere: the band is counted from the window's corner
    screen = np.zeros((photo.shape[0] + 50, photo.shape[1] + 70, 3), np.uint8)
    screen[50:, 70:] = drawn
    assert overlay_pixels(screen, (70, 50, photo.shape[1], photo.shape[0])) == (band, 0)
