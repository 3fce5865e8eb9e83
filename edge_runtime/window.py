"""The overlay window of ``floraedge run``: whether one can open here, decided before the first frame, and the
window itself (q or Esc quits, closing it ends the loop, its title names the model).

A window needs two things, and either can be missing on a device: an OpenCV built with a GUI backend
(``opencv-python-headless``, what ``.[edge]`` installs, has none) and a display to draw on (a headless Pi has
none). Both are checked up front, so a run without a window fails at once with one line that names the ways
that do work, instead of a traceback from ``cv2.imshow`` after the model has loaded.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import sys
from pathlib import Path

import cv2
import numpy as np

from edge_runtime.errors import FloraEdgeError

QUIT_KEYS = (ord("q"), ord("Q"), 27)  # 27: Esc
NO_WINDOW_WAYS = (
    "--headless (JSON lines on stdout), --record FILE.mp4, --publish DIR with `floraedge serve --camera DIR` "
    "(the overlay in a browser), or an OpenCV with window support (docs/devices.md, 'A window on the device')"
)


class WindowError(FloraEdgeError):
    """No window can open here, and nothing else was asked for."""


def gui_backend() -> str | None:
    """The GUI framework OpenCV was built with (QT, GTK3, WIN32UI, COCOA...), or None (a headless build)."""
    if hasattr(cv2, "currentUIFramework"):  # newer builds (PyPI 5.x); Debian's 4.6 has none
        return cv2.currentUIFramework() or None
    for line in cv2.getBuildInformation().splitlines():  # "  GUI:   QT5" in Debian's 4.6
        if line.strip().startswith("GUI:"):
            value = line.split(":", 1)[1].strip()
            return None if value in ("", "NONE", "NO") else value
    return None


def display_problem(env: dict[str, str] | None = None) -> str | None:
    """None when a window could be shown on this machine's display, else what is missing (Linux/BSD: an X11
    or Wayland display; elsewhere the desktop is taken to be there)."""
    env = os.environ if env is None else env
    if not sys.platform.startswith(("linux", "freebsd", "openbsd", "netbsd")):
        return None
    wayland = env.get("WAYLAND_DISPLAY")
    if wayland:
        socket = Path(wayland) if wayland.startswith("/") else Path(env.get("XDG_RUNTIME_DIR", "/nonexistent"), wayland)
        if socket.exists():
            return None
    name = env.get("DISPLAY")
    if not name:
        return "no display (DISPLAY and WAYLAND_DISPLAY are not set: a headless machine, or an SSH session without -X)"
    if not x_display_opens(name):
        return f"the display {name!r} cannot be opened (no X server there, or no permission: check DISPLAY / xhost)"
    return None


def x_display_opens(name: str) -> bool:
    """Whether Xlib can connect to display ``name``. Asked of libX11 itself (ctypes) rather than OpenCV: with
    no display, OpenCV's Qt backend aborts the whole process instead of raising. Without libX11 on the
    machine (no GUI stack at all) the answer is no."""
    path = ctypes.util.find_library("X11")
    if path is None:
        return False
    try:
        xlib = ctypes.CDLL(path)
    except OSError:
        return False
    xlib.XOpenDisplay.restype, xlib.XOpenDisplay.argtypes = ctypes.c_void_p, [ctypes.c_char_p]
    xlib.XCloseDisplay.argtypes = [ctypes.c_void_p]
    handle = xlib.XOpenDisplay(name.encode())
    if not handle:
        return False
    xlib.XCloseDisplay(handle)
    return True


def window_problem() -> str | None:
    """None when ``run`` can open its window here, else why not (one phrase)."""
    backend = gui_backend()
    if backend is None:
        return f"this OpenCV ({cv2.__version__}, {Path(cv2.__file__).parent}) has no window support (a headless build)"
    return display_problem()


class Window:
    """The overlay window; ``show`` returns False once the user quits (q, Esc) or closes it."""

    def __init__(self, title: str):
        self.title, self.opened, self.reason = title, False, None  # reason: why show() said stop

    def show(self, frame: np.ndarray) -> bool:
        try:
            if not self.opened:
                cv2.namedWindow(self.title, cv2.WINDOW_AUTOSIZE | cv2.WINDOW_GUI_NORMAL)
                self.opened = True
            cv2.imshow(self.title, frame)
            key = cv2.waitKey(1)
        except cv2.error as exc:  # e.g. the display went away mid-run
            raise WindowError(f"the window failed: {one_line(exc)}; run with " + NO_WINDOW_WAYS) from None
        if key != -1 and key & 0xFF in QUIT_KEYS:
            self.reason = "quit key"
        elif not self.is_open():
            self.reason = "window closed"
        return self.reason is None

    def is_open(self) -> bool:
        try:  # a closed window reads as not visible on GTK, and raises on Qt ("NULL guiReceiver")
            return cv2.getWindowProperty(self.title, cv2.WND_PROP_VISIBLE) >= 1
        except cv2.error:
            return False

    def close(self) -> None:
        if self.opened:
            with contextlib.suppress(cv2.error):  # closing never raises: this runs in cleanup paths
                cv2.destroyWindow(self.title)
                cv2.waitKey(1)  # lets the GUI loop actually remove it
            self.opened = False


def one_line(exc: cv2.error) -> str:
    text = str(exc).strip().splitlines()
    return text[-1].strip() if text else type(exc).__name__
