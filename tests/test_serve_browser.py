"""End to end in headless Chromium (Debian's chromium + chromedriver, installed by `make test`):
the page uploads a real image and shows the same top-1 name as the API; behind --token it asks for
the token, sends it on every request (the camera stream too) and never puts it in a URL, a log or
persistent storage."""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import socket
import threading
import time

import cv2
import numpy as np
import pytest
import uvicorn
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from edge_runtime.serve.app import ServeConfig, create_app
from tests.conftest import REAL_DATA
from tests.tiny_models import tiny_onnx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serving(config: ServeConfig):
    """``config``'s app under uvicorn on a free loopback port (access log on); yields (base URL, app)."""
    port = free_port()
    app = create_app(config)
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="info"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.time() + 10
    while not srv.started and time.time() < deadline:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}", app
    finally:
        srv.should_exit = True
        thread.join(timeout=5)


@pytest.fixture
def server(tmp_path):
    with serving(ServeConfig(model=tiny_onnx(tmp_path / "model_fp32.onnx"))) as served:
        yield served


@pytest.fixture
def browser(tmp_path):
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    assert chromium and driver, "Debian's chromium and chromium-driver are needed: `make test` installs them"
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'chrome'}",
    ):
        options.add_argument(flag)
    b = webdriver.Chrome(service=Service(driver), options=options)
    yield b
    b.quit()


def photo(tmp_path):
    jpgs = sorted((REAL_DATA / "jpg").glob("*.jpg"))[:1]
    if jpgs:
        return jpgs[0]
    path = tmp_path / "photo.jpg"  # no dataset here: a picture of our own
    cv2.imwrite(
        str(path), cv2.GaussianBlur(np.random.default_rng(0).integers(0, 255, (200, 300, 3), np.uint8), (9, 9), 0)
    )
    return path


@pytest.mark.slow
def test_page_uploads_a_real_image_and_shows_the_top1_name(server, browser, tmp_path):
    from starlette.testclient import TestClient

    url, app = server
    image = photo(tmp_path)
    expected = (
        TestClient(app, base_url="http://localhost")
        .post("/v1/classify", content=image.read_bytes(), headers={"content-type": "image/jpeg"})
        .json()["top"][0]["label"]
    )
    browser.get(url)
    WebDriverWait(browser, 20).until(lambda b: "classes" in b.find_element(By.ID, "model").text)
    browser.find_element(By.ID, "file").send_keys(str(image))
    WebDriverWait(browser, 20).until(lambda b: b.find_element(By.ID, "results").get_attribute("data-top1"))
    assert browser.find_element(By.ID, "results").get_attribute("data-top1") == expected
    assert expected in browser.find_element(By.ID, "results").text
    assert "4 classes" in browser.find_element(By.ID, "model").text


TOKEN = "s3cret-Token_for.the~page"


class Captured(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def camera_folder(tmp_path):
    """What `floraedge run --publish` leaves: the newest annotated frame and its result."""
    camera = tmp_path / "camera"
    camera.mkdir()
    cv2.imwrite(str(camera / "latest.jpg"), np.full((48, 64, 3), (40, 160, 90), np.uint8))
    (camera / "latest.json").write_text(json.dumps({"frame": 7, "label": "flower 2", "score": 0.875, "fps": 12.5}))
    return camera


@pytest.mark.slow
def test_the_page_asks_for_the_token_and_sends_it_everywhere_but_never_shows_it(browser, tmp_path):
    from starlette.testclient import TestClient

    image = photo(tmp_path)
    config = ServeConfig(model=tiny_onnx(tmp_path / "model_fp32.onnx"), token=TOKEN, camera=camera_folder(tmp_path))
    log = Captured()
    loggers = [logging.getLogger(name) for name in ("uvicorn.access", "uvicorn.error")]
    try:
        with serving(config) as (url, app):
            for logger in loggers:  # after uvicorn has configured its logging
                logger.addHandler(log)
            expected = (
                TestClient(app, base_url="http://localhost")
                .post("/v1/classify", content=image.read_bytes(), headers={"authorization": f"Bearer {TOKEN}"})
                .json()["top"][0]["label"]
            )
            browser.get(url)
            wait = WebDriverWait(browser, 20)
            wait.until(lambda b: b.find_element(By.ID, "auth").is_displayed())
            assert "needs a token" in browser.find_element(By.ID, "model").text

            browser.find_element(By.ID, "token").send_keys("wrong-token")
            browser.find_element(By.ID, "use-token").click()
            wait.until(lambda b: "refused" in b.find_element(By.ID, "auth-error").text)

            browser.find_element(By.ID, "token").send_keys(TOKEN)
            browser.find_element(By.ID, "use-token").click()
            wait.until(lambda b: "4 classes" in b.find_element(By.ID, "model").text)
            assert not browser.find_element(By.ID, "auth").is_displayed()
            assert browser.find_element(By.ID, "token").get_attribute("value") == ""  # not left in the form

            browser.find_element(By.ID, "file").send_keys(str(image))
            wait.until(lambda b: b.find_element(By.ID, "results").get_attribute("data-top1"))
            assert browser.find_element(By.ID, "results").get_attribute("data-top1") == expected

            # the camera view: frames from the authenticated stream, and the polled result
            wait.until(
                lambda b: b.execute_script(
                    "const i = document.getElementById('stream'); return i.src.startsWith('blob:') && i.naturalWidth;"
                )
            )
            assert browser.execute_script("return document.getElementById('stream').naturalWidth") == 64
            wait.until(lambda b: "flower 2 87.5%" in b.find_element(By.ID, "live-result").text)

            urls = browser.execute_script(
                "return [location.href, ...performance.getEntriesByType('resource').map(e => e.name)]"
            )
            stored = browser.execute_script(
                "return [JSON.stringify(localStorage), document.cookie, sessionStorage.getItem('floraedge-token')]"
            )
            html = browser.page_source
    finally:
        for logger in loggers:
            logger.removeHandler(log)
    assert any("/v1/classify" in u for u in urls) and all(TOKEN not in u for u in urls)  # (a stream never ends:
    # no resource entry; the access log below shows it)
    assert stored == ["{}", "", TOKEN]  # this tab's session only: nothing that outlives it
    assert TOKEN not in html
    assert any("/v1/classify" in line and "200" in line for line in log.lines), log.lines
    assert any("/camera.mjpg" in line and "200" in line for line in log.lines), log.lines
    assert all(TOKEN not in line and "wrong-token" not in line for line in log.lines)
