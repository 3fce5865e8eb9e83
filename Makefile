# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed

# The torch-free device environment (what a Pi or a Jetson installs), on the Jetson's Python 3.10.
EDGE_PYTHON ?= $(firstword $(wildcard $(HOME)/.pyenv/versions/3.10*/bin/python3.10) python3.10)
EDGE_VENV := .venv-edge
EDGE_STAMP := $(EDGE_VENV)/.installed
# The torch-free runtime's tests: in that environment (test-edge) and on arm64 under qemu (test-arm64).
EDGE_TESTS := tests/test_edge_runtime.py tests/test_live.py tests/test_bench_edge.py tests/test_serve.py tests/test_ncnn.py \
	tests/test_serve_browser.py
# The threat-model suites (hypothesis, server abuse, signals, CLI errors) and the option/helper tests also run
# torch-free, on the host only: their timing bounds measure this machine, which emulation would make meaningless.
EDGE_HOST_TESTS := tests/test_adversarial.py tests/test_serve_abuse.py tests/test_cli_errors.py tests/test_signals.py \
	tests/test_cli_options.py tests/test_atomic.py tests/test_metrics.py tests/test_sources.py \
	tests/test_model_files.py tests/test_image_inputs.py tests/test_console.py tests/test_openvino.py \
	tests/test_house.py tests/test_docs.py tests/test_foreign_models.py tests/test_concurrency.py
# MediaPipe in an environment of its own (it replaces the project's cv2): the tests check that its ImageClassifier
# reads our TFLite metadata. Keep the version in step with MEDIAPIPE_VERSION in tests/conftest.py.
MEDIAPIPE_VERSION := 1.2.3
MEDIAPIPE_VENV ?= $(HOME)/.cache/floraedge/mediapipe-venv
MEDIAPIPE_STAMP := $(MEDIAPIPE_VENV)/.installed-$(MEDIAPIPE_VERSION)
# Debian release of the arm64 rootfs (Raspberry Pi OS Bookworm = Debian 12; trixie = 13, Python 3.13)
RELEASE ?= bookworm

.PHONY: demo release test test-main test-edge test-arm64 test-fast lint clean browser gui mediapipe disk

# About what a fresh `make test` fills on disk (the three venvs, torch's CUDA wheels most of it; the arm64 rootfs and
# MediaPipe's venv under ~/.cache/floraedge; pytest's temporary files; measured in docs/design.md, "Disk").
# A full disk stops pip mid-install with "No space left on device": this says so before anything starts.
DISK_NEEDED_GB := 14
disk:
	@free=$$(df -Pk . | awk 'NR==2 {print int($$4 / 1048576)}'); \
	if [ "$$free" -lt $(DISK_NEEDED_GB) ]; then \
		echo "warning: $$free GB free on this disk; a fresh 'make test' fills about $(DISK_NEEDED_GB) GB (the venvs, ~/.cache/floraedge, pytest's temporary files): free some if pip or a test stops with 'No space left on device'" >&2; \
	fi

$(STAMP): pyproject.toml constraints.txt | disk
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	# constraints.txt pins known-good versions (torch 2.14.1 from this disk: no second torch is pulled)
	$(PIP) install --quiet -c constraints.txt -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/floraedge demo

# The released model (models/oxford102-lite0/): hours on a small CPU (the measured times: docs/training.md),
# resumable.
release: $(STAMP)
	$(VENV)/bin/floraedge release

# Every test. The emulated arm64 run (one qemu thread at a time, most of its time) runs beside test-main and
# test-edge, so that both cores stay busy; its output goes to build/test-arm64.log, its summary is shown at the
# end, and any failure of the three fails `make test`.
test: $(STAMP) $(EDGE_STAMP) browser gui mediapipe
	@mkdir -p build
	@echo "test-arm64: running in the background, log in build/test-arm64.log"
	@$(MAKE) --no-print-directory test-arm64 > build/test-arm64.log 2>&1 & arm64=$$!; \
	$(MAKE) --no-print-directory test-main test-edge; status=$$?; \
	wait $$arm64; arm64_status=$$?; \
	echo "== test-arm64 (exit $$arm64_status), the end of build/test-arm64.log:"; tail -n 25 build/test-arm64.log; \
	[ $$status = 0 ] && [ $$arm64_status = 0 ]

test-main: $(STAMP) browser gui mediapipe lint
	$(PY) -m pytest -q

# The serve page's end-to-end test drives Debian's Chromium (root can install it; CI runs as root).
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver)

# The overlay window's test (tests/test_window.py): PyPI's opencv-python (Qt) cannot share an environment with
# `.[edge]`'s opencv-python-headless (both own the cv2 package), so it gets its own; Debian's Xvfb is the display,
# libgl1 and libglib2.0-0 what that wheel loads from the system.
GUI_VENV := .venv-gui
GUI_STAMP := $(GUI_VENV)/.installed
$(GUI_STAMP): constraints.txt
	test -x $(GUI_VENV)/bin/python || $(PYTHON) -m venv $(GUI_VENV)
	$(GUI_VENV)/bin/python -m pip install --quiet -c constraints.txt numpy onnxruntime opencv-python
	touch $(GUI_STAMP)

gui: $(GUI_STAMP)
	@command -v Xvfb >/dev/null && ldconfig -p | grep -q 'libGL\.so\.1 ' || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq xvfb libgl1 libglib2.0-0)

mediapipe: $(MEDIAPIPE_STAMP)

# Built aside and renamed into place, so that an interrupted install never looks like a finished one.
$(MEDIAPIPE_STAMP):
	rm -rf $(MEDIAPIPE_VENV).partial $(MEDIAPIPE_VENV)
	$(PYTHON) -m venv $(MEDIAPIPE_VENV).partial
	$(MEDIAPIPE_VENV).partial/bin/python -m pip install --quiet mediapipe==$(MEDIAPIPE_VERSION)
	mv $(MEDIAPIPE_VENV).partial $(MEDIAPIPE_VENV)
	touch $(MEDIAPIPE_STAMP)

# The runtime's own tests with only `.[edge]` installed: proves it needs no torch and runs on 3.10.
$(EDGE_STAMP): pyproject.toml
	test -x $(EDGE_VENV)/bin/python || $(EDGE_PYTHON) -m venv $(EDGE_VENV)
	$(EDGE_VENV)/bin/python -m pip install --quiet ".[edge,edge-test]"
	touch $(EDGE_STAMP)

test-edge: $(EDGE_STAMP) browser
	$(EDGE_VENV)/bin/python -c 'import sys; assert "torch" not in sys.modules; import importlib.util as u; assert u.find_spec("torch") is None, "torch leaked into the edge environment"'
	$(EDGE_VENV)/bin/python -m pytest -q -p no:cacheprovider -m "not torch" $(EDGE_TESTS) $(EDGE_HOST_TESTS)

# The same runtime on a Debian arm64 userland (Raspberry Pi OS) under qemu, installed as the README says;
# its tests under a Pi 5 CPU model, the cross-architecture agreement of every exported file under a Pi 5 and
# a Pi 4, the device commands and the Camera Module route (tests/arm64/run.sh says what runs where, and why).
# Needs root. Cold, it builds a cached rootfs in ~/.cache/floraedge/arm64 (debootstrap, then Debian's OpenCV
# as a layer; CI always runs it cold: docs/devices.md has the times).
# `RELEASE=trixie` for Debian 13 (not yet run).
test-arm64: $(STAMP)
	RELEASE=$(RELEASE) HOST_PYTHON=$(abspath $(PY)) EDGE_TESTS="$(EDGE_TESTS)" tests/arm64/run.sh

test-fast: $(STAMP) browser gui mediapipe
	$(PY) -m pytest -q -m "not slow"

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) $(EDGE_VENV) $(GUI_VENV) .pytest_cache build *.egg-info
