#!/bin/bash
# The device side of `make test-arm64`: runs INSIDE the arm64 rootfs (chroot, qemu), from /work.
# /work/floraedge is a copy of the repository, /work/suite holds tests/ + pyproject.toml (so pytest
# imports the installed project, not a source tree), /work/host is what the x86 side exported.
#   device.sh install            the README's Raspberry Pi lines, verbatim, into /work/venv
#   device.sh tests CPU FILES... the torch-free tests; zero skips allowed
#   device.sh agreement CPU [N]  every exported file against its x86 outputs (first N images), every gate re-run
#   device.sh commands           classify, run --headless over a video, bench, serve one request
#   device.sh camera             the Camera Module route: Debian's OpenCV + a --system-site-packages venv
#   device.sh readme_camera      the README's first camera lines as typed, a video file for the camera
#   device.sh readme_window      the README's window lines as typed on a virtual display (Xvfb), both OpenCVs
set -euo pipefail
cd /work
venv=/work/venv
# pip byte-compiles every module it installs: minutes of emulated CPU for numpy, OpenCV and onnxruntime.
# A module compiles to the same at its first import, so the emulated run passes --no-compile (the only
# change to the README's lines; the files installed are the same). Not PIP_NO_COMPILE=1: pip reads that
# as "compile" (its boolean environment variables of --no-* options are inverted).
nc=--no-compile
say() { echo "[arm64 $(uname -m)] $*"; }

install() {
    say "python3 -m venv + pip install \"./floraedge[edge]\" (Python $(python3 -c 'import platform; print(platform.python_version())'))"
    python3 -m venv "$venv"
    . "$venv/bin/activate"
    pip install --quiet $nc "./floraedge[edge]"
    du -sm "$venv" | cut -f1 > /work/venv-edge-mb.txt
    (cd /work/suite && python -m tests.arm64.venv_size "$venv") > /work/venv-size.json
    say "edge venv: $(cat /work/venv-edge-mb.txt) MB by du -sm; $(cat /work/venv-size.json)"
    say "$(pip list --format=freeze | grep -iE '^(numpy|onnxruntime|ai-edge-litert|opencv-python-headless)=' | tr '\n' ' ')"
    pip install --quiet $nc "./floraedge[edge-test]"  # the test dependencies: one list, pyproject's extra
    pip check
}

tests() {
    local cpu=$1
    shift
    . "$venv/bin/activate"
    cd /work/suite
    python -c 'import edge_runtime, sys; assert edge_runtime.__file__.startswith(sys.prefix), edge_runtime.__file__'
    # -rs lists skips; a skip fails the run below: every test of the list must run on arm64 (the rootfs holds no
    # real data: the realdata tests run on the host)
    python -m pytest -q -p no:cacheprovider -m "not torch and not realdata" -rs "$@" | tee "/work/pytest-$cpu.log"
    if grep -qE '[0-9]+ skipped' "/work/pytest-$cpu.log"; then
        say "tests were skipped on arm64 ($cpu); every test of the list must run here" && return 1
    fi
}

agreement() {
    . "$venv/bin/activate"
    cd /work/suite
    python -m tests.arm64.agreement check /work/host "$@"
}

commands() {
    . "$venv/bin/activate"
    local models=/work/host/exports
    say "floraedge classify"
    floraedge classify --model "$models/model_int8.tflite" /work/host/images --json > /work/classify-arm64.json
    say "floraedge run --headless over a video file"
    floraedge run --model "$models/model_int8.onnx" --source /work/host/clip.mp4 --headless --max-frames 8 \
        > /work/run-arm64.jsonl
    test "$(grep -c '"top"' /work/run-arm64.jsonl)" -eq 8 || { say "run gave no 8 frames"; return 1; }
    say "floraedge bench (torch-free; emulated latency)"
    floraedge bench --models "$models" --data /work/host/flowers --out /work/bench-arm64-emulated \
        --thread-counts 1 --runs 3 --warmup 1 --loop-frames 8
    serve_one_request
}

serve_one_request() {
    say "floraedge serve: one request"
    floraedge serve --model /work/host/exports/model_int8.tflite --port 8765 > /work/serve-arm64.log 2>&1 &
    local server=$!
    python - <<'EOF'
import json, pathlib, time, urllib.request
image = sorted(pathlib.Path("/work/host/images").glob("*.jpg"))[0]
for _ in range(600):  # the server starts slowly under emulation
    try:
        urllib.request.urlopen("http://127.0.0.1:8765/healthz", timeout=2)
        break
    except OSError:
        time.sleep(0.5)
request = urllib.request.Request("http://127.0.0.1:8765/v1/classify", data=image.read_bytes(),
                                 headers={"Content-Type": "image/jpeg"})
answer = json.load(urllib.request.urlopen(request, timeout=120))
pathlib.Path("/work/serve-arm64.json").write_text(json.dumps(answer | {"image": image.name}))
print("serve answered:", answer["top"][0])
EOF
    kill "$server" && wait "$server" || true
}

camera() {
    # The README's Camera Module route: Debian's python3-opencv (built with GStreamer) is in the rootfs
    local cam=/work/venv-camera
    python3 -m venv --system-site-packages "$cam"
    . "$cam/bin/activate"
    pip install --quiet $nc --no-deps ./floraedge
    # keep Debian's numpy: its cv2 is built against it (LiteRT's ml_dtypes would otherwise pull numpy 2)
    pip install --quiet $nc onnxruntime ai-edge-litert "numpy==$(python3 -c 'import numpy; print(numpy.__version__)')"
    pip check || true  # reported, not fatal: the import checks below are what matters
    python - <<'EOF'
import re, cv2, numpy
gst = re.search(r"GStreamer:\s*(\S+)", cv2.getBuildInformation())
print(f"camera venv: cv2 {cv2.__version__} from {cv2.__file__}, numpy {numpy.__version__}, GStreamer: {gst and gst.group(1)}")
assert cv2.__file__.startswith("/usr/lib/python3/dist-packages"), "not Debian's OpenCV"
assert gst and gst.group(1) == "YES", "this OpenCV has no GStreamer"
import onnxruntime, edge_runtime.backends  # noqa: F401  the runtime imports beside Debian's numpy
EOF
    floraedge classify --model /work/host/exports/model_int8.tflite /work/host/images --json > /work/classify-camera.json
    # a GStreamer source through OpenCV's GStreamer backend, as libcamerasrc would be on a Pi
    floraedge run --model /work/host/exports/model_int8.onnx --headless --max-frames 3 --source-kind gstreamer --source \
        'videotestsrc num-buffers=30 ! video/x-raw,width=320,height=240 ! videoconvert ! video/x-raw,format=BGR ! appsink' \
        > /work/run-gstreamer.jsonl
    test "$(grep -c '"top"' /work/run-gstreamer.jsonl)" -eq 3
    gst-inspect-1.0 libcamerasrc > /dev/null && say "libcamerasrc: present (gstreamer1.0-libcamera)"
}

# The README's first camera lines (its "flowers on a Pi" block), as typed, in the `.[edge]` venv from the copy of
# the repository, with the clip standing in for camera 0 and --max-frames to end it: the headless-Pi line gives
# JSON lines; the desktop line, on `.[edge]`'s headless OpenCV with no display, stops at once in one line.
# (The window route is readme_window, below.)
readme_line() { # PATTERN [CLIP]: the README line that starts with it, its comment cut, the clip for `--source 0`
    local line clip=${2:-/work/host/clip.mp4}
    line=$(grep -m1 -E "^$1" /work/floraedge/README.md | sed 's/ *#.*//')
    [ -n "$line" ] || { say "README: no line starting with: $1" && return 1; }
    say "README: $line" >&2
    echo "${line/--source 0/--source $clip}"
}

readme_camera() {
    . "$venv/bin/activate"
    cd /work/floraedge
    local line out rc=0 run='floraedge run --model models/oxford102-lite0/model_int8.tflite --source 0'
    line=$(readme_line "$run --headless")
    read -ra cmd <<< "$line"
    "${cmd[@]}" --max-frames 5 > /work/readme-headless.jsonl
    test "$(grep -c '"top"' /work/readme-headless.jsonl)" -eq 5 || { say "the headless line gave no 5 frames" && return 1; }
    line=$(readme_line "$run +#")  # the desktop line: nothing after --source 0 but its comment
    read -ra cmd <<< "$line"
    out=$(env -u DISPLAY -u WAYLAND_DISPLAY "${cmd[@]}" 2>&1) || rc=$?
    [ "$rc" = 1 ] && [ "$(echo "$out" | wc -l)" = 1 ] && [[ $out == *"cannot show the overlay window"*"--headless"* ]] ||
        { say "the desktop line on a headless OpenCV gave (exit $rc): $out" && return 1; }
    say "README camera lines: headless route 5 frames; the window line without a window: one line, exit 1"
}

# The README's window route ("On a Pi OS desktop ..."), as typed, on a virtual display (Xvfb from the window layer;
# python3-xlib drives it: tests/arm64/window_run.py): in the `.[edge]` venv, the switch to PyPI's opencv-python
# (Qt), then the desktop line, ended once by closing the window and once by q; then the same line with Debian's
# python3-opencv (Qt 5, the Camera Module route's venv, Debian's numpy), ended by closing the window (how a closed
# window reads differs between OpenCV versions; keys do not: Esc is tests/test_window.py's). Each time the window
# opens titled with the model, its overlay text is on the screen, and the run ends with a summary. Runs after
# `camera` (its venv) and last on /work/venv, whose OpenCV it replaces. The clip is long: a camera does not end.
readme_window() {
    local line end title="FloraEdge: model_int8.tflite" clip=/work/host/clip-window.mp4
    local run='floraedge run --model models/oxford102-lite0/model_int8.tflite --source 0'
    cd /work/floraedge
    . "$venv/bin/activate"
    line=$(readme_line 'pip uninstall -y opencv-python-headless')
    bash -ec "${line//pip install/pip install $nc}"
    window_cv2 PyPI
    line=$(readme_line "$run +#" "$clip")
    read -ra cmd <<< "$line"
    for end in close q; do
        /usr/bin/python3 -m tests.arm64.window_run --title "$title" --end "$end" --out "/work/window-pypi-$end.json" -- "${cmd[@]}"
    done
    deactivate
    . /work/venv-camera/bin/activate
    window_cv2 Debian
    /usr/bin/python3 -m tests.arm64.window_run --title "$title" --end close --out /work/window-debian-close.json -- "${cmd[@]}"
    say "README window route: a window with the overlay under both OpenCVs; closing it (both) and q (PyPI's) ended the run"
}

window_cv2() { # WHOSE: the venv's OpenCV is WHOSE's (PyPI's wheel or Debian's package) and has a GUI backend
    python - "$1" <<'EOF'
import sys, cv2, numpy
from edge_runtime.window import gui_backend
debian = cv2.__file__.startswith("/usr/lib/python3/dist-packages")
print(f"{sys.argv[1]} OpenCV: cv2 {cv2.__version__} from {cv2.__file__}, numpy {numpy.__version__}, GUI: {gui_backend()}")
assert debian == (sys.argv[1] == "Debian"), f"not {sys.argv[1]}'s OpenCV"
assert gui_backend(), "this OpenCV has no GUI backend"
EOF
}

"$@"
