#!/usr/bin/env bash
# Runs as pid 1 of the private mount + pid namespace that run.sh's `in_rootfs` makes (unshare -m -p):
# mounts what the arm64 rootfs needs, an ARM /proc/cpuinfo over its /proc, then chroots with `env -i`.
# None of these mounts is visible outside the namespace; the kernel drops them when it ends, and the
# trap unmounts them in order when it ends normally or on INT/TERM.
set -euo pipefail
root=$1 cpuinfo=$2 work=$3 layer=$4 qemu_cpu=$5 # layer: "" or a folder with upper/ work/ merged/, an overlay over root
shift 5
# layer may be TOP:BELOW...: the layers below TOP (their upper/ folders, read-only) lie between it and root
IFS=: read -ra below <<< "$layer"
layer=${below[0]:-}
lower=$root
for ((i = ${#below[@]} - 1; i >= 1; i--)); do lower=${below[i]}/upper:$lower; done

cleanup() {
    for m in work dev sys proc; do
        if mountpoint -q "$root/$m"; then umount -R "$root/$m" || echo "enter.sh: cannot unmount $root/$m" >&2; fi
    done
    if [ -n "$layer" ] && mountpoint -q "$layer/merged"; then umount "$layer/merged"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [ -n "$layer" ]; then
    mount -t overlay overlay -o "lowerdir=$lower,upperdir=$layer/upper,workdir=$layer/work" "$layer/merged"
    root=$layer/merged
fi
mount -t proc proc "$root/proc"
if [ "$cpuinfo" != none ]; then mount --bind "$cpuinfo" "$root/proc/cpuinfo"; fi
mount -t sysfs sysfs "$root/sys"
mount --rbind /dev "$root/dev"
mkdir -p "$root/work"
if [ -n "$work" ]; then mount --bind "$work" "$root/work"; fi
cp /etc/resolv.conf "$root/etc/resolv.conf"

# env -i: none of the host's pip settings (x86 wheel folders, extra indexes) reaches the arm64 pip.
# QEMU_CPU: qemu-user reads it at every exec; it sets the CPU features the guest sees (AT_HWCAP), which is
# what XNNPACK and onnxruntime choose their kernels by. /proc/cpuinfo alone does not change them.
env -i QEMU_CPU="$qemu_cpu" HOME=/root LANG=C.UTF-8 TERM=dumb PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_DEFAULT_TIMEOUT=120 \
    DEBIAN_FRONTEND=noninteractive chroot "$root" "$@"
