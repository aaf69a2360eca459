#!/usr/bin/env bash
# Builds the Debian 12 guest the packaging suite installs the packages into:
# a minimal debootstrapped root filesystem with systemd, udev, Debian's own
# nodejs (18), dkms, gcc/make and the headers of the guest kernel, written into
# a raw ext4 image with `mkfs.ext4 -d` (no loop mount), plus a small busybox
# initramfs that loads the virtio modules and switches to the image's systemd.
# The result is cached under OUTDIR (keyed by the kernel version and this
# script); a second run returns at once.
#   build-debian-image.sh KVER OUTDIR
# OUTDIR/root.img, OUTDIR/initramfs.cpio, OUTDIR/times.json on success;
# OUTDIR/unavailable.txt with the reason when the image cannot be built here.
set -euo pipefail
KVER=${1:?usage: build-debian-image.sh KVER OUTDIR}
OUT=${2:?usage: build-debian-image.sh KVER OUTDIR}
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
KROOT=$ROOT/.cache/kernel/$KVER/root
KEY=$( { echo "$KVER"; cat "$0" "$HERE/debian-image/"*; } | sha256sum | cut -c1-16)
say() { printf '\033[1;34m[debian-guest]\033[0m %s\n' "$*" >&2; }
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
if [ "$(cat "$OUT/key" 2>/dev/null)" = "$KEY" ] && [ -s "$OUT/root.img" ] && [ -s "$OUT/initramfs.cpio" ]; then
  exit 0
fi
rm -f "$OUT/unavailable.txt" "$OUT/key"
unavailable() { echo "$*" > "$OUT/unavailable.txt"; echo "debian guest image: $*" >&2; exit 3; }
[ "$(id -u)" = 0 ] || unavailable "building the Debian guest needs root (debootstrap, chroot)"
command -v debootstrap >/dev/null || unavailable "debootstrap is not installed (scripts/setup.sh installs it)"
[ -d "$KROOT/lib/modules/$KVER" ] || unavailable "no extracted guest kernel at $KROOT (run scripts/setup.sh)"
# The archives this machine's apt uses (its mirror or proxy), unless given.
MIRROR=${VMSUBST_DEBIAN_MIRROR:-}
SECURITY=${VMSUBST_DEBIAN_SECURITY:-}
[ -n "$MIRROR" ] || MIRROR=$(python3 "$ROOT/scripts/apt-mirror.py" bookworm) \
  || unavailable "no apt source for bookworm in /etc/apt/sources.list or sources.list.d: add one, or set VMSUBST_DEBIAN_MIRROR"
[ -n "$SECURITY" ] || SECURITY=$(python3 "$ROOT/scripts/apt-mirror.py" bookworm-security) \
  || unavailable "no apt source for bookworm-security in /etc/apt/sources.list or sources.list.d: add one, or set VMSUBST_DEBIAN_SECURITY"

WORK=$(mktemp -d "$OUT/build.XXXXXX")
RFS=$WORK/rootfs
cleanup() {
  for m in "$RFS/proc" "$RFS/sys" "$RFS/dev/pts" "$RFS/dev"; do mountpoint -q "$m" 2>/dev/null && umount -l "$m"; done
  rm -rf "$WORK"
}
trap cleanup EXIT
T0=$(date +%s)

# 1. The base system from Debian's main archive. Debian's nodejs, never another repository's.
PKGS=systemd,systemd-sysv,udev,dbus,kmod,procps,e2fsprogs,util-linux,nodejs,dkms,gcc,make,libc6-dev
say "debootstrap bookworm ($MIRROR): $PKGS"
# dpkg in the target without an fsync per file (as mmdebstrap does); removed before the image is made.
mkdir -p "$RFS/etc/dpkg/dpkg.cfg.d"
echo force-unsafe-io > "$RFS/etc/dpkg/dpkg.cfg.d/zz-build-unsafe-io"
if ! debootstrap --variant=minbase --include="$PKGS" --components=main bookworm "$RFS" "$MIRROR" > "$WORK/debootstrap.log" 2>&1; then
  tail -n 20 "$WORK/debootstrap.log" >&2
  unavailable "debootstrap of bookworm from $MIRROR failed: $(grep -m1 -E '^E:|W: Failure' "$WORK/debootstrap.log" || tail -n1 "$WORK/debootstrap.log")"
fi
T1=$(date +%s)

# 2. The guest kernel's headers (bookworm-security carries the current ABI) with apt in the chroot.
cat > "$RFS/etc/apt/sources.list" <<EOF
deb $MIRROR bookworm main
deb $MIRROR bookworm-updates main
deb $SECURITY bookworm-security main
EOF
mount -t proc proc "$RFS/proc"
mount --bind /dev "$RFS/dev"
say "linux-headers-$KVER (apt in the chroot)"
if ! chroot "$RFS" /bin/sh -c "export DEBIAN_FRONTEND=noninteractive; apt-get update -qq && apt-get install -y -qq --no-install-recommends linux-headers-$KVER" > "$WORK/apt.log" 2>&1; then
  tail -n 20 "$WORK/apt.log" >&2
  unavailable "installing linux-headers-$KVER in the guest failed: $(grep -m1 '^E:' "$WORK/apt.log" || tail -n1 "$WORK/apt.log")"
fi
chroot "$RFS" apt-get clean
rm -f "$RFS/etc/dpkg/dpkg.cfg.d/zz-build-unsafe-io"
umount "$RFS/dev" "$RFS/proc"
rm -rf "$RFS"/var/lib/apt/lists/* "$RFS"/var/cache/apt/*.bin "$RFS"/usr/share/doc/* "$RFS"/usr/share/man/* "$RFS"/usr/share/locale/*
T2=$(date +%s)

# 3. The guest kernel's modules (the image itself boots from the host side, -kernel).
mkdir -p "$RFS/lib/modules/$KVER"
cp -a "$KROOT/lib/modules/$KVER/." "$RFS/lib/modules/$KVER/"
cp -a "$KROOT/boot/." "$RFS/boot/"
depmod -b "$RFS" "$KVER"

# 4. Configuration of a headless test guest (files in debian-image/).
echo vmsubst-guest > "$RFS/etc/hostname"
cat > "$RFS/etc/fstab" <<'EOF'
/dev/disk/by-id/virtio-vmsubst-root  /          ext4  defaults,errors=remount-ro  0 1
/dev/disk/by-id/virtio-vmsubst-data  /mnt/data  ext4  ro,nofail,x-systemd.device-timeout=300s  0 0
EOF
mkdir -p "$RFS/mnt/data"
install -m 0755 "$HERE/debian-image/test-console" "$RFS/usr/local/sbin/test-console"
install -m 0644 "$HERE/debian-image/test-console.service" "$RFS/etc/systemd/system/test-console.service"
ln -sf /etc/systemd/system/test-console.service "$RFS/etc/systemd/system/multi-user.target.wants/test-console.service"
# The console belongs to the test shell; nothing the guest does not need runs at boot.
for u in serial-getty@ttyS0.service getty@tty1.service apt-daily.timer apt-daily-upgrade.timer \
         e2scrub_all.timer e2scrub_reap.service fstrim.timer systemd-timesyncd.service dpkg-db-backup.timer \
         systemd-networkd.service systemd-resolved.service; do
  ln -sf /dev/null "$RFS/etc/systemd/system/$u"
done
: > "$RFS/etc/machine-id"
chroot "$RFS" passwd -d root >/dev/null

# 5. The image: the tree plus room for the packages, DKMS builds and the journal.
USED=$(du -sm "$RFS" | cut -f1)
SIZE=$(( USED + 768 ))
say "mkfs.ext4 -d ($USED MiB used, image ${SIZE} MiB)"
mkfs.ext4 -q -F -L vmsubst-root -E root_owner=0:0 -d "$RFS" "$WORK/root.img" "${SIZE}M"

# 6. The initramfs: busybox, the virtio modules, an /init that mounts the root disk by serial.
STAGE=$WORK/initramfs
mkdir -p "$STAGE"/{bin,dev,proc,sys,newroot,lib/modules/$KVER}
cp /bin/busybox "$STAGE/bin/busybox"
install -m 0755 "$HERE/debian-image/initramfs-init" "$STAGE/init"
MD=$KROOT/lib/modules/$KVER
for m in virtio_pci virtio_blk; do
  line=$(grep -E "(^|/)$m\.ko:" "$MD/modules.dep") || { echo "module $m not in modules.dep" >&2; exit 1; }
  for f in ${line%%:*} ${line#*:}; do
    mkdir -p "$STAGE/lib/modules/$KVER/$(dirname "$f")"; cp "$MD/$f" "$STAGE/lib/modules/$KVER/$f"
  done
done
cp "$MD"/modules.{order,builtin,builtin.modinfo} "$STAGE/lib/modules/$KVER/"
depmod -b "$STAGE" "$KVER"
(cd "$STAGE" && find . -print0 | cpio --null -o -H newc --quiet) > "$WORK/initramfs.cpio"

T3=$(date +%s)
mv "$WORK/root.img" "$OUT/root.img"
mv "$WORK/initramfs.cpio" "$OUT/initramfs.cpio"
NODE=$(chroot "$RFS" dpkg-query -W -f='${Version}' nodejs)
printf '{"debootstrapSec":%d,"headersSec":%d,"imageSec":%d,"totalSec":%d,"usedMiB":%d,"imageMiB":%d,"nodejs":"%s"}\n' \
  $((T1 - T0)) $((T2 - T1)) $((T3 - T2)) $((T3 - T0)) "$USED" "$SIZE" "$NODE" > "$OUT/times.json"
echo "$KEY" > "$OUT/key"
say "ready in $((T3 - T0)) s: $(cat "$OUT/times.json")"
