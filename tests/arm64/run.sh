#!/usr/bin/env bash
# `make test-arm64`: the Raspberry Pi OS stack (Debian arm64) under qemu user-mode emulation.
#
# Builds or reuses a cached Debian arm64 rootfs, installs the project in it as the README's Raspberry Pi
# lines say, and runs there the torch-free tests, the x86/arm64 agreement of every exported file, the
# device commands, the Camera Module route (Debian's OpenCV) and the README's window route on a virtual
# display (Xvfb). Every mount is made inside a private mount + pid namespace (unshare), so the host's /proc
# is never touched and the mounts go when the run ends, however it ends (checked at the end by interrupting a run).
#
# What runs under which CPU model, chosen for CI time (every emulated minute counts; see docs/devices.md):
#   Pi 5 (Cortex-A76): the install, the torch-free tests, the agreement, the device commands, the camera and
#     window routes.
#   Pi 4 (Cortex-A72): the torch-free tests and the agreement (on the first PI4_IMAGES photos). onnxruntime, ncnn
#     and XNNPACK pick their kernels by the CPU model, so numbers can differ between the two; the
#     commands and the camera route exercise Python, OpenCV and the CLI, which do not read it.
# Cold, the work runs on three lines (host export, camera + window layers, device install + tests): see main().
# pip runs with --no-compile in the rootfs (device.sh says why).
#   tests/arm64/run.sh                    everything (what `make test-arm64` runs)
#   tests/arm64/run.sh shell pi5 CMD...   one command in the rootfs, e.g. `shell pi5 python3 -V` (WORK=DIR: at /work)
#   tests/arm64/run.sh check-interrupt    interrupt a run in the rootfs; no mount may remain (also part of the run)
#   tests/arm64/run.sh check-corrupt      a cached rootfs with one changed byte is refused (also part of the run)
#   tests/arm64/run.sh check-network      the Debian mirror (DEBIAN_MIRROR) and PyPI answer
#   tests/arm64/run.sh layers             builds (or checks) the rootfs and its camera and window layers, nothing else
# Environment: RELEASE (bookworm, or trixie: Raspberry Pi OS 13, Python 3.13), HOST_PYTHON (the main
# environment, with torch, which exports the test model), EDGE_TESTS (the Makefile's test list),
# FLORAEDGE_CACHE (default ~/.cache/floraedge).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
RELEASE=${RELEASE:-bookworm}
HOST_PYTHON=${HOST_PYTHON:-$REPO/.venv/bin/python}
EDGE_TESTS=${EDGE_TESTS:-tests/test_edge_runtime.py tests/test_live.py tests/test_bench_edge.py tests/test_serve.py}
CACHE=${FLORAEDGE_CACHE:-$HOME/.cache/floraedge}/arm64
BINFMT=${BINFMT_MISC:-/proc/sys/fs/binfmt_misc} # another path only to test the refusal
PACKAGES=python3,python3-venv,python3-pip,ca-certificates
ROOTFS_VERSION=2 # bump when build_rootfs changes
KEY=$(echo "$RELEASE $PACKAGES $ROOTFS_VERSION" | sha256sum | cut -c1-12)
ROOTFS=$CACHE/rootfs-$RELEASE-$KEY
# The Camera Module route (README): Debian's OpenCV, built with GStreamer, and libcamera's GStreamer element.
# Hundreds of packages (most of them python3-opencv's libraries), so more dpkg work under emulation
# than the base rootfs: they are an overlay layer over it (CAMERA_LAYER/upper), cached apart and, when cold,
# installed in the background while the device install and tests run on the base rootfs.
CAMERA_PACKAGES="python3-opencv gstreamer1.0-libcamera gstreamer1.0-plugins-base gstreamer1.0-tools"
CAMERA_KEY=$(echo "$KEY $CAMERA_PACKAGES" | sha256sum | cut -c1-12)
CAMERA_LAYER=$CACHE/camera-$RELEASE-$CAMERA_KEY
# The README's window route on a virtual display: Debian's Xvfb, python3-xlib to drive it (tests/arm64/window_run.py),
# and the two system libraries PyPI's opencv-python loads (a Pi OS desktop has them; the camera layer already
# brings both, and Qt 5 with Debian's OpenCV). A third layer, over the camera layer (docs/window.md: its size, time).
WINDOW_PACKAGES="xvfb python3-xlib libgl1 libglib2.0-0"
WINDOW_KEY=$(echo "$CAMERA_KEY $WINDOW_PACKAGES" | sha256sum | cut -c1-12)
WINDOW_LAYER=$CACHE/window-$RELEASE-$WINDOW_KEY
LAYER=${LAYER:-} # an overlay layer (upper/ work/ merged/) that in_root mounts over the rootfs; TOP:BELOW for a stack
OUT=$REPO/build/arm64-$RELEASE # results and logs of the last run
PI4_IMAGES=64 # the Pi 4's agreement: its kernels differ from the Pi 5's in the int8 paths, which any photo exercises
WORK=${WORK:-} # `shell` mounts it at /work when set
OWN_WORK=""    # set when this run made WORK (and so removes it)
TMP_ROOTFS=""

die() {
    echo "test-arm64: $*" >&2
    exit 1
}
# A step that failed, in one line: its last error line (apt's E:, pip's ERROR:, a connection failure) and its log.
die_with_log() { # WHAT LOG [LOG'S PATH TO SHOW]
    local line
    line=$(grep -E '^(E: |ERROR: |W: Failure|error: )|Could not|Failed to|Temporary failure|Connection (refused|timed out)|Unable to' "$2" | tail -1)
    die "$1 failed: ${line:-$(tail -1 "$2")} (log: ${3:-$2})"
}
# Each step is announced; the previous one's wall time and its children's CPU time (user + system: what an
# idle machine's wall time would be, near enough, as emulation runs one thread) go to $TIMES (times.txt).
TIMES="" STEP_NAME="" STEP_START=0 STEP_CPU=0 STEP_PREFIX=""
CPU=0 # set by child_cpu: `times` in this shell (in a $(...) subshell it would count that subshell's children)
child_cpu() {
    times > "$WORK/.times"
    CPU=$(tail -1 "$WORK/.times" | awk '{ for (i = 1; i <= 2; i++) { split($i, a, /[ms]/); t += a[1] * 60 + a[2] } } END { printf "%d", t }')
}
step() {
    local cpu=0
    if [ -n "$TIMES" ]; then child_cpu && cpu=$CPU; fi
    if [ -n "$TIMES" ] && [ -n "$STEP_NAME" ]; then
        echo "wall $((SECONDS - STEP_START))s cpu $((cpu - STEP_CPU))s load $(cut -d' ' -f1 /proc/loadavg): $STEP_PREFIX$STEP_NAME" >> "$TIMES"
    fi
    STEP_NAME=$* STEP_START=$SECONDS STEP_CPU=$cpu
    echo "== arm64 [$(date +%T)] $*"
}

BACKGROUND="" # pids of this run's background jobs
# Runs "$@" in the background, its output in $WORK/NAME.log and its times in $TIMES; waited for by `join`.
in_background() { # NAME CMD...
    local name=$1
    shift
    (
        STEP_NAME="" STEP_PREFIX="(in the background) "
        step "$name"
        "$@"
        step "$name: done"
    ) > "$WORK/$name.log" 2>&1 &
    BACKGROUND+=" $!"
}
join() { # PID NAME: its failure, in its log's last line (its own die), fails the run
    wait "$1" || die "$2 failed: $(tail -1 "$WORK/$2.log") (log: $OUT/$2.log)"
    cat "$WORK/$2.log"
}

# A background job and everything under it. SIGKILL: unshare blocks INT and TERM while it waits, and its
# --kill-child then ends the namespace with everything in it.
kill_tree() {
    local child
    for child in $(pgrep -P "$1"); do kill_tree "$child"; done
    kill -KILL "$1" 2> /dev/null || true
}

cleanup() {
    local pid
    for pid in $BACKGROUND; do kill_tree "$pid"; done
    if [ -n "$TMP_ROOTFS" ]; then rm -rf "$TMP_ROOTFS"; fi
    if [ -n "$OWN_WORK" ] && [ -d "$WORK" ]; then # keep the results and logs, drop the venvs and models
        rm -rf "$OUT" && mkdir -p "$OUT"
        (cd "$WORK" && cp -r -t "$OUT" ./*.json ./*.jsonl ./*.log ./*.txt ./*.png bench-* host/host-export.log 2> /dev/null || true)
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

require_emulation() {
    [ "$(id -u)" = 0 ] || die "needs root (debootstrap, chroot and mount namespaces): run it as root, e.g. sudo make test-arm64"
    [ "$(uname -m)" = x86_64 ] || [ "$(uname -m)" = aarch64 ] || die "runs on an x86_64 (or arm64) host, not $(uname -m)"
    local missing=""
    command -v qemu-aarch64-static > /dev/null || missing+=" qemu-user-static"
    command -v update-binfmts > /dev/null || missing+=" binfmt-support"
    command -v debootstrap > /dev/null || missing+=" debootstrap"
    if [ -n "$missing" ]; then
        step "installing$missing"
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing > /dev/null; } ||
            die "cannot install$missing with apt-get: install them, then rerun"
    fi
    [ "$(uname -m)" = aarch64 ] && return 0
    # the one host-wide change: what systemd's proc-sys-fs-binfmt_misc.automount does on a desktop
    if ! mountpoint -q "$BINFMT"; then
        mount binfmt_misc -t binfmt_misc "$BINFMT" 2> /dev/null ||
            die "no binfmt_misc at $BINFMT: the kernel cannot run arm64 binaries through qemu here (a container needs --privileged, or binfmt_misc mounted by its host)"
    fi
    update-binfmts --enable qemu-aarch64 > /dev/null 2>&1 || true
    grep -q '^enabled' "$BINFMT/qemu-aarch64" 2> /dev/null ||
        die "binfmt_misc has no enabled qemu-aarch64 entry (update-binfmts --enable qemu-aarch64 failed)"
    grep -q '^flags: .*F' "$BINFMT/qemu-aarch64" ||
        die "the qemu-aarch64 binfmt entry lacks the F flag: a chroot cannot find qemu (reinstall qemu-user-static)"
}

# Run "$@" in ROOT (a rootfs folder) under CPU's /proc/cpuinfo (pi4 | pi5 | none), with $WORK at /work.
in_root() {
    local root=$1 cpu=$2
    shift 2
    local cpuinfo=none qemu_cpu
    if [ "$cpu" != none ]; then cpuinfo=$HERE/cpuinfo-$cpu.txt; fi
    # The Pi's own CPU model, not qemu's default "max": under "max" the guest is told it has SVE/I8MM
    # and more, XNNPACK picks int8 kernels no Pi runs, and their emulated results are wrong (every
    # int8 TFLite top-1 differed from x86; under cortex-a72/a76 they are bit-identical).
    case $cpu in pi4) qemu_cpu=cortex-a72 ;; pi5) qemu_cpu=cortex-a76 ;; *) qemu_cpu=max ;; esac
    unshare --mount --pid --fork --kill-child --propagation private -- \
        "$HERE/enter.sh" "$root" "$cpuinfo" "$WORK" "$LAYER" "$qemu_cpu" "$@"
}

# Packaged files of the dpkg database under $1 (a rootfs, or a layer's upper dir: its own packages) unchanged.
# Paths under bin/, sbin/, lib/ are read under usr/ (merged /usr: in a layer's upper dir those links are absent).
md5sums_ok() {
    (cd "$1" && cat var/lib/dpkg/info/*.md5sums | sed -E 's#^([0-9a-f]{32}  )(bin|sbin|lib)/#\1usr/\2/#' |
        md5sum --check --quiet > /dev/null 2>&1)
}

# A cached rootfs is used only when it is whole: its marker (written last, before the atomic rename), every
# packaged file against dpkg's own md5sums (on the host, natively: a few seconds), a clean dpkg, and the
# emulated Python importing what the run needs.
rootfs_ok() {
    [ -f "$1/.floraedge-rootfs" ] && [ "$(cat "$1/.floraedge-rootfs")" = "$KEY" ] &&
        md5sums_ok "$1" &&
        in_root "$1" none /usr/bin/python3 -c 'import venv, ensurepip, ssl' > /dev/null 2>&1 &&
        [ -z "$(in_root "$1" none dpkg --audit 2>&1)" ]
}

debian_mirror() {
    local uri=${DEBIAN_MIRROR:-}
    [ -n "$uri" ] || uri=$(grep -hoE '^(URIs:|deb) +https?://[^ ]+/debian/?( |$)' /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2> /dev/null |
        grep -oE 'https?://[^ ]+' | head -1)
    echo "${uri:-http://deb.debian.org/debian}"
}

# Both fetches the run needs, probed first so that an unreachable one costs seconds and reads as one line.
check_network() {
    local mirror err
    mirror=$(debian_mirror)
    err=$(curl -fsS -o /dev/null --max-time 30 "$mirror/dists/$RELEASE/InRelease" 2>&1) ||
        die "cannot reach the Debian mirror $mirror (${err:-no answer}): the arm64 rootfs is built from it; set DEBIAN_MIRROR=URL for another"
    err=$(curl -fsS -o /dev/null --max-time 30 "${PYPI_PROBE:-https://pypi.org/simple/onnxruntime/}" 2>&1) ||
        die "cannot reach PyPI (${err:-no answer}): the arm64 install takes PyPI's aarch64 wheels"
}

# pip inside reaches the index through the host's TLS proxy, if any: trust the host's local CA certificates.
# Appended to the bundle directly (update-ca-certificates under emulation takes minutes); kept in
# /usr/local/share/ca-certificates too, so a later update-ca-certificates keeps them.
trust_host_certificates() {
    local crt
    for crt in /usr/local/share/ca-certificates/*.crt; do
        [ -f "$crt" ] || continue
        cp "$crt" "$1/usr/local/share/ca-certificates/"
        cat "$crt" >> "$1/etc/ssl/certs/ca-certificates.crt"
    done
}

build_rootfs() {
    mkdir -p "$CACHE"
    rm -rf "$CACHE"/.tmp-rootfs-* # a build that was killed (the lock is ours)
    TMP_ROOTFS=$(mktemp -d "$CACHE/.tmp-rootfs-XXXXXX")
    local tmp=$TMP_ROOTFS/rootfs mirror log=$CACHE/build-$RELEASE.log
    mirror=$(debian_mirror)
    step "debootstrap $RELEASE arm64 from $mirror (a few minutes, once)"
    unshare --mount --pid --fork --kill-child --propagation private -- \
        debootstrap --arch=arm64 --variant=minbase --include="$PACKAGES" "$RELEASE" "$tmp" "$mirror" > "$log" 2>&1 || {
        cat "$tmp/debootstrap/debootstrap.log" >> "$log" 2> /dev/null || true
        die_with_log "debootstrap of $RELEASE arm64 from $mirror" "$log"
    }
    trust_host_certificates "$tmp"
    echo "$KEY" > "$tmp/.floraedge-rootfs"
    rm -rf "$ROOTFS"
    mv "$tmp" "$ROOTFS"
    rm -rf "$TMP_ROOTFS"
    TMP_ROOTFS=""
}

layer_ok() { # NAME DIR KEY: DIR is a whole layer, made for KEY
    [ -f "$2/upper/.floraedge-$1" ] && [ "$(cat "$2/upper/.floraedge-$1")" = "$3" ] && md5sums_ok "$2/upper"
}
camera_layer_ok() { layer_ok camera "$CAMERA_LAYER" "$CAMERA_KEY"; }
window_layer_ok() { layer_ok window "$WINDOW_LAYER" "$WINDOW_KEY"; }

# PACKAGES into a new layer DIR over the (checked) rootfs and the layers BELOW ("" or a:b, as LAYER), renamed
# into place when whole. dpkg's --force-unsafe-io: no fsync per file (a layer cut short is never marked, so never used).
build_layer() { # NAME DIR KEY BELOW WHAT PACKAGES
    local name=$1 dir=$2 key=$3 below=$4 what=$5 packages=$6 tmp log=$CACHE/build-$1-$RELEASE.log
    rm -rf "$CACHE/.tmp-$name-"*
    tmp=$(mktemp -d "$CACHE/.tmp-$name-XXXXXX")
    mkdir "$tmp/upper" "$tmp/work" "$tmp/merged"
    echo "apt-get install $packages ($what) in a layer over $ROOTFS${below:+ and $below}"
    LAYER=$tmp${below:+:$below} in_root "$ROOTFS" none sh -c "apt-get update && apt-get install -y --no-install-recommends \
        -o Dpkg::Options::=--force-unsafe-io $packages && apt-get clean" > "$log" 2>&1 ||
        die_with_log "apt-get install of the $what packages in the arm64 rootfs" "$log"
    echo "$key" > "$tmp/upper/.floraedge-$name"
    rm -rf "$dir"
    mv "$tmp" "$dir"
    layer_ok "$name" "$dir" "$key" || die "the new $name layer $dir fails its own check"
}

# The camera layer, then the window layer over it. A window layer holds dpkg's state as it was over the camera
# layer it was built on, so a rebuilt camera layer takes a new window layer with it.
ensure_layers() {
    if camera_layer_ok; then
        echo "cached camera layer $CAMERA_LAYER"
    else
        build_layer camera "$CAMERA_LAYER" "$CAMERA_KEY" "" "Camera Module route" "$CAMERA_PACKAGES"
        rm -rf "$WINDOW_LAYER"
    fi
    if window_layer_ok; then
        echo "cached window layer $WINDOW_LAYER"
    else
        step "window layer: apt-get install $WINDOW_PACKAGES"
        build_layer window "$WINDOW_LAYER" "$WINDOW_KEY" "$CAMERA_LAYER" "window route" "$WINDOW_PACKAGES"
    fi
}

ensure_rootfs() {
    mkdir -p "$CACHE"
    exec 9> "$CACHE/.lock"
    flock 9
    step "rootfs: checking the cached $ROOTFS"
    if [ -d "$ROOTFS" ] && rootfs_ok "$ROOTFS"; then
        return
    fi
    if [ -d "$ROOTFS" ]; then step "cached rootfs $ROOTFS is broken: rebuilding it"; fi
    build_rootfs
    rootfs_ok "$ROOTFS" || die "the new rootfs $ROOTFS fails its own check"
}

make_work() {
    WORK=$(mktemp -d /tmp/floraedge-arm64.XXXXXX)
    OWN_WORK=1
    chmod 755 "$WORK"
    TIMES=$WORK/times.txt
}

# A copy of the repository, as a user would have on the Pi, and the tests alone (no source tree beside them)
copy_repo() {
    mkdir -p "$WORK/floraedge" "$WORK/suite"
    git -C "$REPO" ls-files -z --cached --others --exclude-standard |
        tar -C "$REPO" --null -T - --ignore-failed-read -cf - 2> /dev/null | tar -C "$WORK/floraedge" -xf -
    cp -r "$WORK/floraedge/tests" "$WORK/floraedge/pyproject.toml" "$WORK/suite/"
}

# The x86 side: the test model exported to every format, and what x86 answers with it
host_side() {
    step "host: the test model exported to every format ($HOST_PYTHON)"
    (cd "$REPO" && "$HOST_PYTHON" -m tests.arm64.host_models "$WORK/host" > "$WORK/host-export.log" 2>&1) ||
        die "the host export failed (log: $OUT/host-export.log): $(tail -1 "$WORK/host-export.log")"
    step "host: the x86 reference outputs, classify and bench"
    (cd "$REPO" && "$HOST_PYTHON" -m tests.arm64.agreement reference "$WORK/host")
    (cd "$REPO" && "$HOST_PYTHON" -m floraedge classify --model "$WORK/host/exports/model_int8.tflite" "$WORK/host/images" --json) > "$WORK/classify-x86.json"
    (cd "$REPO" && "$HOST_PYTHON" -m floraedge bench --models "$WORK/host/exports" --data "$WORK/host/flowers" \
        --out "$WORK/bench-x86" --thread-counts 1 --runs 3 --warmup 1 --loop-frames 8 > /dev/null)
}

arm64_edge_tests() {
    local list=()
    for t in $EDGE_TESTS; do
        # the browser test drives Chromium: not part of a Pi's runtime, and hours under emulation
        [ "$t" = tests/test_serve_browser.py ] || list+=("$t")
    done
    echo "${list[@]}"
}

# Where emulation cannot work the run stops with one line naming what is missing, never a skip.
check_refusals() {
    local out copy ran=0
    # nobody runs a copy in /tmp: a clone inside a mode-700 folder (what `mktemp -d` makes) is closed to it
    copy=$(mktemp -p /tmp test-arm64-XXXXXX.sh)
    cp "$0" "$copy" && chmod 755 "$copy"
    out=$(setpriv --reuid=65534 --regid=65534 --clear-groups "$copy" 2>&1) && ran=1
    rm -f "$copy"
    [ $ran = 0 ] || die "refusal check: a non-root run did not fail"
    [ "$(echo "$out" | wc -l)" = 1 ] && [[ $out == *"needs root"* ]] || die "refusal check: not root gave: $out"
    out=$(BINFMT_MISC=/nonexistent "$0" 2>&1) && die "refusal check: a run without binfmt_misc did not fail"
    [ "$(echo "$out" | wc -l)" = 1 ] && [[ $out == *"no binfmt_misc"* ]] || die "refusal check: no binfmt_misc gave: $out"
    out=$(DEBIAN_MIRROR=http://127.0.0.1:9/debian "$0" check-network 2>&1) && die "refusal check: an unreachable mirror passed"
    [ "$(echo "$out" | wc -l)" = 1 ] && [[ $out == *"cannot reach the Debian mirror"* ]] || die "refusal check: no mirror gave: $out"
    echo "ok: not root, no binfmt_misc and an unreachable mirror each stop the run with one line"
}

# One step of device.sh in the rootfs under CPU: shown, kept in $WORK/STEP-CPU.log, one line when it fails.
device() { # STEP CPU ARGS...
    local name=$1 cpu=$2 log=$WORK/$1-$2.log
    shift 2
    if ! in_root "$ROOTFS" "$cpu" /work/suite/tests/arm64/device.sh "$name" "$@" 2>&1 | tee "$log"; then
        [ "$name" != tests ] || die "arm64 tests ($cpu) failed: $(tail -1 "$log") (log: $OUT/$name-$cpu.log)"
        die_with_log "arm64 $name ($cpu)" "$log" "$OUT/$name-$cpu.log"
    fi
}

main() {
    local start=$SECONDS
    require_emulation
    check_refusals
    make_work
    check_network
    copy_repo
    # Three lines of work, so that a 2-core machine is kept busy: the host side (native: torch trains and
    # exports the test model) and, when not cached, the camera layer (emulated dpkg) run in the background
    # while the device install and the tests (emulated) run here; only what needs their results waits.
    in_background host host_side
    local host=$!
    ensure_rootfs
    in_background layers ensure_layers
    local layers=$!
    step "arm64 pi5: install (README's Raspberry Pi line)"
    device install pi5
    for cpu in pi5 pi4; do
        step "arm64 $cpu: tests ($(arm64_edge_tests))"
        device tests "$cpu" "$cpu" $(arm64_edge_tests)
    done
    step "host side: waiting for it"
    join "$host" host
    step "arm64 pi5: x86/arm64 agreement of every exported file"
    device agreement pi5 pi5
    step "arm64 pi4: x86/arm64 agreement of every exported file ($PI4_IMAGES images)"
    device agreement pi4 pi4 "$PI4_IMAGES"
    step "arm64 pi5: the device commands"
    device commands pi5
    "$HOST_PYTHON" "$HERE/compare_commands.py" "$WORK"
    step "arm64 pi5: the README's first camera lines, as typed (a video file for the camera)"
    device readme_camera pi5
    step "camera and window layers: waiting for them"
    join "$layers" layers
    step "arm64 pi5: the Camera Module route"
    LAYER=$CAMERA_LAYER device camera pi5
    step "arm64 pi5: the README's window lines, as typed, on a virtual display (Xvfb)"
    LAYER=$WINDOW_LAYER:$CAMERA_LAYER device readme_window pi5
    step "robustness: interrupted runs leave no mount; a corrupted rootfs is refused"
    check_interrupt
    check_corrupt
    step "done"
    summary "$start"
}

# A cached rootfs with one packaged file changed (a byte of Python's _ssl module, in an overlay over the
# cache, in a private mount namespace: the cache itself is untouched) fails rootfs_ok, so it would be rebuilt.
check_corrupt() {
    local tmp so
    so=$(grep -hoE 'usr/lib/python3[.0-9]*/lib-dynload/_ssl[^ ]*\.so' "$ROOTFS"/var/lib/dpkg/info/*.md5sums) ||
        die "corruption check: no _ssl module in the rootfs's md5sums"
    so=${so%%$'\n'*}
    tmp=$(mktemp -d /tmp/floraedge-arm64-corrupt.XXXXXX)
    mkdir "$tmp/upper" "$tmp/work" "$tmp/merged"
    local rc=0
    # shellcheck disable=SC2016
    unshare --mount --propagation private -- sh -c '
        mount -t overlay overlay -o "lowerdir=$1,upperdir=$2/upper,workdir=$2/work" "$2/merged" &&
            printf x | dd of="$2/merged/$3" bs=1 seek=4096 conv=notrunc status=none || exit 99
        exec "$4" verify-rootfs "$2/merged"' sh "$ROOTFS" "$tmp" "$so" "$0" || rc=$?
    rm -rf "$tmp"
    [ "$rc" != 99 ] || die "corruption check: could not make the corrupted overlay"
    [ "$rc" != 0 ] || die "corruption check: a rootfs with a changed $so passed its check"
    echo "ok: a cached rootfs with one changed byte in $so is refused (and so rebuilt)"
}

# Processes whose mount table holds a mount of the folder named $1 (any namespace).
mounts_of() { grep -ls -- "$1" /proc/[0-9]*/mountinfo 2> /dev/null || true; }

# An interrupted run (Ctrl-C, or killed outright) leaves no mount anywhere, and a running one shows
# none in the host's mount table. The marker folder, mounted at /work, names this run's mounts.
check_interrupt() {
    local sig marker name pid i
    for sig in INT KILL; do
        marker=$(mktemp -d /tmp/floraedge-arm64-interrupt.XXXXXX)
        name=$(basename "$marker")
        # a background job of a script ignores SIGINT; a user's Ctrl-C reaches a foreground one
        WORK=$marker setsid env --default-signal=INT "$0" shell pi4 sleep 600 &
        pid=$!
        for i in $(seq 300); do
            [ -z "$(mounts_of "$name")" ] || break
            sleep 0.2
        done
        [ -n "$(mounts_of "$name")" ] || die "interrupt check: the rootfs was never entered"
        if grep -q -- "$name" /proc/self/mountinfo; then die "the rootfs mounts leaked into the host's mount table"; fi
        kill "-$sig" -- "-$pid"
        wait "$pid" 2> /dev/null || true
        for i in $(seq 50); do
            [ -n "$(mounts_of "$name")" ] || break
            sleep 0.2
        done
        [ -z "$(mounts_of "$name")" ] || die "SIG$sig left mounts behind in: $(mounts_of "$name")"
        rmdir "$marker"
        echo "ok: SIG$sig to a run in the rootfs left no mount in any namespace"
    done
}

summary() {
    local total=$((SECONDS - $1))
    child_cpu
    echo "wall ${total}s cpu ${CPU}s: total (load average then: $(cut -d' ' -f1-3 /proc/loadavg))" >> "$TIMES"
    echo "== arm64 done in ${total}s; edge venv $(cat "$WORK/venv-edge-mb.txt") MB; results in $OUT; wall time per step:"
    sed 's/^/   /' "$TIMES"
}

{ # one block, read whole before it runs: editing this file cannot derail a run in progress
    case "${1:-}" in
    "") main ;;
    shell)
        shift
        require_emulation
        cpu=$1
        shift
        in_root "$ROOTFS" "$cpu" "$@"
        ;;
    check-interrupt | check-refusals | check-corrupt)
        require_emulation
        "${1//-/_}"
        ;;
    check-network) check_network ;;
    layers)
        require_emulation
        ensure_rootfs
        ensure_layers
        ;;
    verify-rootfs) rootfs_ok "$2" ;;
    *) die "usage: $0 [shell pi4|pi5|none CMD... | layers | check-interrupt | check-refusals | check-corrupt | check-network]" ;;
    esac
    exit
}
