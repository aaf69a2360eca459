#!/usr/bin/env bash
# Builds the test guest's initramfs: busybox, node and its libraries, the
# agent and the host CLI (compiled TypeScript, production node_modules, both
# addons), the kernel module, the ABI test, and the guest kernel's modules
# needed for virtio disks,
# virtio-serial, vsock and loop devices (the ABI test's read-write filesystem),
# and the filesystems the filesystem suite mounts (xfs, btrfs, overlay)
# (dependencies from modules.dep, loaded by modprobe).
#   build-initramfs.sh KVER OUT.cpio
set -euo pipefail
KVER=${1:?usage: build-initramfs.sh KVER OUT}
OUT=${2:?usage: build-initramfs.sh KVER OUT}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
KROOT=$ROOT/.cache/kernel/$KVER/root
[ -d "$KROOT/lib/modules/$KVER" ] || { echo "no extracted kernel at $KROOT; run scripts/setup.sh" >&2; exit 1; }
STAGE=$(mktemp -d); trap 'rm -rf "$STAGE"' EXIT
chmod 0755 "$STAGE"   # the guest's /: every user must be able to enter it
mkdir -p "$STAGE"/{bin,sbin,etc,lib64,usr/bin,opt/vmsubst,lib/modules/$KVER}

cp /bin/busybox "$STAGE/bin/busybox"
cp "$ROOT/test/guest/init" "$STAGE/init"; chmod 755 "$STAGE/init"

# node and the shared libraries it links.
cp /usr/bin/node "$STAGE/usr/bin/node"
ldd /usr/bin/node | grep -o '/[^ ]*' | sort -u | while read -r lib; do
  mkdir -p "$STAGE$(dirname "$lib")"; cp -L "$lib" "$STAGE$lib"
done

# Kernel modules and everything they depend on.
MODS="virtio_pci virtio_blk virtio_console vsock vmw_vsock_virtio_transport vsock_loopback loop xfs btrfs overlay"
echo "$MODS" > "$STAGE/etc/vmsubst-modules"
MD=$KROOT/lib/modules/$KVER
for m in $MODS; do
  line=$(grep -E "(^|/)$m\.ko:" "$MD/modules.dep") || { echo "module $m not in modules.dep" >&2; exit 1; }
  for f in ${line%%:*} ${line#*:}; do
    mkdir -p "$STAGE/lib/modules/$KVER/$(dirname "$f")"; cp "$MD/$f" "$STAGE/lib/modules/$KVER/$f"
  done
done
cp "$MD"/modules.{dep,alias,symbols,builtin,builtin.modinfo,order} "$STAGE/lib/modules/$KVER/" 2>/dev/null || true
depmod -b "$STAGE" "$KVER"

# The project: same relative layout as the repository, so paths resolve alike.
O=$STAGE/opt/vmsubst
KMOD_DIR=${KMOD_DIR:-$ROOT/kmod}
cp "$ROOT/package.json" "$O/"
mkdir -p "$O/build" "$O/agent/build/Release" "$O/host-signal/build/Release"
cp -r "$ROOT/build/agent" "$ROOT/build/host-signal" "$O/build/"
find "$O/build" -name '*.map' -delete
cp "${ADDON:-$ROOT/agent/build/Release/vmsubst_native.node}" "$O/agent/build/Release/"
# The host CLI runs in the guest too (vsock client tests over CID 1): its addon with it.
cp "${HOST_ADDON:-$ROOT/host-signal/build/Release/vmsubst_host.node}" "$O/host-signal/build/Release/"
cp "$KMOD_DIR/vmsubst.ko" "$O/vmsubst.ko"
cp "$KMOD_DIR/tests/abi_test" "$O/abi_test"
(cd "$ROOT" && npm ls --omit=dev --parseable --all 2>/dev/null | tail -n +2) | while read -r dir; do
  rel=${dir#"$ROOT"/}
  case "$rel" in node_modules/@vmsubst/*) continue;; node_modules/*) ;; *) continue;; esac  # workspaces: below
  mkdir -p "$O/$(dirname "$rel")"; cp -r "$dir" "$O/$rel"
done
# The contract package (an npm workspace, a symlink in node_modules): its compiled files.
mkdir -p "$O/node_modules/@vmsubst/common"
cp -r "$ROOT/common/package.json" "$ROOT/common/dist" "$O/node_modules/@vmsubst/common/"
find "$O/node_modules/@vmsubst/common" \( -name '*.map' -o -name '*.d.ts' \) -delete

(cd "$STAGE" && find . -print0 | cpio --null -o -H newc --quiet) > "$OUT.tmp"
mv "$OUT.tmp" "$OUT"
echo "initramfs: $OUT ($(du -h "$OUT" | cut -f1))" >&2
