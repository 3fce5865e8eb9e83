"""A virtual X display (Xvfb) and what a user does to a window on it: find it by its title, look at it, press a
key, click its close button. Used by tests/test_window.py on x86 and by tests/arm64/window_run.py in the arm64
rootfs, where it runs on Debian's python3 with python3-xlib and numpy only (no Pillow, no OpenCV needed): the
screenshot is read through Xlib itself."""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Iterator

import numpy as np
from Xlib import XK, X, protocol
from Xlib.display import Display
from Xlib.ext import xtest

SCREEN = "640x480x24"
START_WAIT = 60  # seconds for Xvfb to say its display number (emulated: a few seconds)


@contextlib.contextmanager
def xvfb(screen: str = SCREEN) -> Iterator[str]:
    """A virtual X display on the first free display number (Xvfb picks it: -displayfd), its name yielded."""
    read, write = os.pipe()
    server = subprocess.Popen(
        ["Xvfb", "-displayfd", str(write), "-screen", "0", screen, "-nolisten", "tcp"],
        pass_fds=(write,),
        stderr=subprocess.DEVNULL,
    )
    os.close(write)
    try:
        with os.fdopen(read) as fd:  # Xvfb writes the number once it accepts clients; EOF if it died
            number = fd.readline().strip()
        if not number:
            raise RuntimeError(f"Xvfb exited with {server.wait(START_WAIT)} before opening a display")
        yield ":" + number
    finally:
        server.terminate()
        server.wait(10)


def find_window(display: Display, title: str, timeout: float):
    """The top-level window named ``title`` (what a window manager shows in its title bar), waited for; or None."""
    root = display.screen().root
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for window in root.query_tree().children:
            if window.get_wm_name() == title:
                return window
        time.sleep(0.2)
    return None


def screenshot(display: Display, box: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """The screen, or the part of it in ``box`` (x, y, width, height: as window_box gives), as a BGR image
    (HxWx3 uint8). Only the part looked at is asked for: python-xlib unpacks it in Python, slow under emulation."""
    screen = display.screen()
    x, y, width, height = box or (0, 0, screen.width_in_pixels, screen.height_in_pixels)
    x, y = max(x, 0), max(y, 0)
    width, height = min(width, screen.width_in_pixels - x), min(height, screen.height_in_pixels - y)
    image = screen.root.get_image(x, y, width, height, X.ZPixmap, 0xFFFFFFFF)
    # a 24-bit screen's ZPixmap: 32 bits a pixel, least significant byte first (B, G, R, unused) on every
    # server this runs with (Xvfb on x86 and arm64); anything else would need its own unpacking
    if image.depth != 24 or display.display.info.image_byte_order != X.LSBFirst:
        raise RuntimeError(
            f"unexpected screen format: depth {image.depth}, byte order {display.display.info.image_byte_order}"
        )
    return np.frombuffer(image.data, np.uint8).reshape(height, width, 4)[:, :, :3].copy()


def window_box(display: Display, window) -> tuple[int, int, int, int]:
    """Where ``window`` lies on the screen: x, y, width, height."""
    geometry = window.get_geometry()
    origin = window.translate_coords(display.screen().root, 0, 0)  # the root's origin in the window's coordinates
    return -origin.x, -origin.y, geometry.width, geometry.height


def close_window(display: Display, window) -> None:
    """What a window manager sends when the user clicks the close button: WM_DELETE_WINDOW."""
    atom = display.intern_atom
    message = protocol.event.ClientMessage(
        window=window, client_type=atom("WM_PROTOCOLS"), data=(32, [atom("WM_DELETE_WINDOW"), X.CurrentTime, 0, 0, 0])
    )
    window.send_event(message, event_mask=X.NoEventMask)
    display.flush()


def press_key(display: Display, window, keysym_name: str) -> None:
    """A key typed into ``window`` (focused first: there is no window manager to do it), through XTEST."""
    window.set_input_focus(X.RevertToParent, X.CurrentTime)
    display.sync()
    keycode = display.keysym_to_keycode(XK.string_to_keysym(keysym_name))
    xtest.fake_input(display, X.KeyPress, keycode)
    xtest.fake_input(display, X.KeyRelease, keycode)
    display.sync()
