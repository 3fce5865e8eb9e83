"""End to end in headless Chromium (Debian's chromium + chromedriver, installed by `make test`):
the page uploads a real image and shows the same top-1 name as the API."""

from __future__ import annotations

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


@pytest.fixture
def server(tmp_path):
    port = free_port()
    app = create_app(ServeConfig(model=tiny_onnx(tmp_path / "model_fp32.onnx")))
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.time() + 10
    while not srv.started and time.time() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", app
    srv.should_exit = True
    thread.join(timeout=5)


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
