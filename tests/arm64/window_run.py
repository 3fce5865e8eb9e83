"""The README's window line, run as typed on a virtual display, as a user would watch it: the window opens with
the model in its title, the overlay is drawn on the frames (its pixels, in a screenshot of the window), and
closing the window, q or Esc ends the run with a summary.

    python3 -m tests.arm64.window_run --title "FloraEdge: model_int8.tflite" --end close --out FILE.json -- CMD...

Runs in the arm64 rootfs on Debian's python3 (python3-xlib, numpy; from the window layer: tests/arm64/run.sh),
outside the venv it checks, and on x86 alike. The command runs in this folder with DISPLAY set to a fresh Xvfb.
Each failure stops it with one line (exit 1); the result (times, overlay pixels, the run's summary) goes to --out.

The overlay's text is found by its colours, which draw_overlay uses for nothing else: its label line is green
(sure) or amber (unsure) inside a black outline, and a photo seldom has a run of exactly those pixel values.
tests/test_window.py holds these colours to draw_overlay's.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from Xlib.display import Display

from tests import xdisplay

OVERLAY_COLORS = ((80, 220, 80), (0, 200, 255))  # BGR: draw_overlay's sure and unsure text
OVERLAY_BAND = (64, 420)  # rows and columns from the frame's top-left corner that hold the overlay's two lines
MIN_OVERLAY_PIXELS = 40  # a few letters' worth; one line of text has hundreds
# Emulated (qemu, one thread) the model loads and Qt starts in seconds; these bound a run that hangs.
WINDOW_WAIT, OVERLAY_WAIT, END_WAIT = 180, 120, 120
END_ACTIONS = {"close": "window closed", "q": "quit key", "Escape": "quit key"}


class Failed(Exception):
    """The check failed; its message is the one line said."""


def overlay_pixels(shot: np.ndarray, box: tuple[int, int, int, int]) -> tuple[int, int]:
    """Pixels of the overlay's text colours in the window ``box``: in its overlay band, and elsewhere in it."""
    x, y, width, height = box
    window = shot[max(y, 0) : y + height, max(x, 0) : x + width]
    colored = np.zeros(window.shape[:2], bool)
    for color in OVERLAY_COLORS:
        colored |= (window == np.array(color, np.uint8)).all(axis=2)
    rows, cols = OVERLAY_BAND
    band = int(colored[:rows, :cols].sum())
    return band, int(colored.sum()) - band


def write_png_or_ppm(shot: np.ndarray, stem: Path) -> Path:
    """The screenshot kept for a person to look at: PNG where OpenCV is importable, else a PPM (no library)."""
    try:
        import cv2

        path = stem.with_suffix(".png")
        cv2.imwrite(str(path), shot)
    except ImportError:
        path = stem.with_suffix(".ppm")
        height, width = shot.shape[:2]
        path.write_bytes(b"P6 %d %d 255\n" % (width, height) + np.ascontiguousarray(shot[:, :, ::-1]).tobytes())
    return path


def watch(proc: subprocess.Popen, display: Display, title: str, end: str, shot_stem: Path | None) -> dict:
    """The window of the running ``proc``: found, its overlay seen, then ended by ``end``."""
    start = time.monotonic()
    window = None
    while window is None and proc.poll() is None and time.monotonic() - start < WINDOW_WAIT:
        window = xdisplay.find_window(display, title, timeout=1)
    if window is None:
        raise Failed(f"no window titled {title!r} opened (waited {time.monotonic() - start:.0f} s)" + exited(proc))
    opened = time.monotonic() - start
    deadline = time.monotonic() + OVERLAY_WAIT
    while True:
        box = xdisplay.window_box(display, window)
        shot = xdisplay.screenshot(display, box)
        band, elsewhere = overlay_pixels(shot, (0, 0, *shot.shape[1::-1]))
        if band >= MIN_OVERLAY_PIXELS or time.monotonic() > deadline or proc.poll() is not None:
            break
        time.sleep(0.2)
    if band < MIN_OVERLAY_PIXELS:
        raise Failed(f"the window {title!r} shows no overlay text ({band} pixels of its colours)" + exited(proc))
    if elsewhere > band // 4:
        raise Failed(
            f"the overlay's colours are all over the window ({elsewhere} pixels outside its corner, {band} in it)"
        )
    if proc.poll() is not None:
        raise Failed("the run ended by itself before the window was closed (the clip is too short)" + exited(proc))
    shot_file = write_png_or_ppm(shot, shot_stem) if shot_stem else None
    if end == "close":
        xdisplay.close_window(display, window)
    else:
        xdisplay.press_key(display, window, end)
    return {
        "window_after_s": round(opened, 1),
        "overlay_after_s": round(time.monotonic() - start, 1),
        "window_box": list(box),
        "overlay_pixels": band,
        "overlay_colored_elsewhere": elsewhere,
        "screenshot": shot_file and str(shot_file),
    }


def exited(proc: subprocess.Popen) -> str:
    if proc.poll() is None:
        return ""
    last = (proc.stderr.read() if proc.stderr else "").strip().splitlines()
    return f"; the run exited {proc.returncode}: {last[-1] if last else '(no output)'}"


def check_ending(proc: subprocess.Popen, title: str, end: str) -> dict:
    """The run's own account once the window is gone: exit 0, the window line, a summary that says why it ended."""
    try:
        out, err = proc.communicate(timeout=END_WAIT)
    except subprocess.TimeoutExpired:
        raise Failed(f"the run went on {END_WAIT} s after {end!r} ended its window") from None
    lines = err.strip().splitlines()
    if proc.returncode != 0 or "Traceback" in err:
        raise Failed(f"the run exited {proc.returncode} after {end!r}: {lines[-1] if lines else '(no output)'}")
    if f"output: a window {title!r} (q or Esc quits, as does closing it)" not in lines:
        raise Failed(f"the run did not say it shows a window {title!r}: {err.strip()!r}")
    try:
        summary = json.loads(lines[-1])["summary"]
    except (IndexError, ValueError, KeyError, TypeError):
        raise Failed(f"the run's last line is no summary: {lines[-1:]}") from None
    if summary.get("ended") != END_ACTIONS[end] or not summary.get("frames"):
        raise Failed(f"after {end!r} the summary says ended={summary.get('ended')!r}, frames={summary.get('frames')}")
    if out:
        raise Failed(f"the run printed on stdout without --headless: {out[:200]!r}")
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--title", required=True, help="the window's expected title")
    parser.add_argument("--end", choices=sorted(END_ACTIONS), required=True, help="how the user ends the run")
    parser.add_argument("--out", type=Path, required=True, help="the result, as JSON (and a screenshot beside it)")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command, as typed")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command after --")
    try:
        result = run(command, args.title, args.end, args.out.with_suffix(""))
    except Failed as exc:
        print(f"window_run: {exc}", file=sys.stderr)
        return 1
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(
        f"window {args.title!r} after {result['window_after_s']} s, overlay text ({result['overlay_pixels']} pixels) "
        f"after {result['overlay_after_s']} s; {args.end!r} ended the run: {json.dumps(result['summary'])}"
    )
    return 0


def run(command: list[str], title: str, end: str, shot_stem: Path) -> dict:
    with xdisplay.xvfb() as name, tempfile.TemporaryDirectory() as runtime:
        # what a desktop session gives its programs: the display, and a private runtime folder (Qt asks for it)
        env = os.environ | {"DISPLAY": name, "XDG_RUNTIME_DIR": runtime}
        env.pop("WAYLAND_DISPLAY", None)
        proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            display = Display(name)
            seen = watch(proc, display, title, end, shot_stem)
            summary = check_ending(proc, title, end)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return {"command": command, "title": title, "end": end, **seen, "summary": summary}


if __name__ == "__main__":
    sys.exit(main())
