#!/usr/bin/env bash
# Idempotent setup for a fresh Debian 12 machine (run as root): host packages,
# npm dependencies, and the guest kernel (image extracted from Debian's package,
# headers installed), version resolved from the cloud metapackages at run time.
# The second run only checks stamps and returns in well under a second.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
CACHE=$ROOT/.cache
mkdir -p "$CACHE/stamps"
say() { printf '\033[1;34m[setup]\033[0m %s\n' "$*" >&2; }
have_pkgs() {
  local st; st=$(dpkg-query -W -f='${Status}\n' "$@" 2>/dev/null) || return 1
  ! grep -qv '^install ok installed$' <<<"$st"
}

PKGS=(qemu-system-x86 qemu-utils busybox-static e2fsprogs cpio kmod socat gcc make libc6-dev python3 g++ xz-utils time
      debootstrap dpkg-dev lintian rpm gnuplot-nox vmtouch xfsprogs btrfs-progs clang-format
      ansible-core python3-voluptuous pycodestyle pyflakes3)
if ! have_pkgs "${PKGS[@]}"; then
  [ "$(id -u)" = 0 ] || { echo "setup: installing packages needs root (apt-get)" >&2; exit 1; }
  say "installing host packages: ${PKGS[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${PKGS[@]}" >/dev/null
fi

# libvirt, for the libvirt suite (test/libvirt: the suite starts its own libvirtd). Its postinst
# would start the daemons: a policy-rc.d that denies every start keeps the install from
# depending on an init system (none as PID 1 in a container), and is removed after.
LIBVIRT_PKGS=(libvirt-daemon-system libvirt-clients)
if ! have_pkgs "${LIBVIRT_PKGS[@]}"; then
  [ "$(id -u)" = 0 ] || { echo "setup: installing packages needs root (apt-get)" >&2; exit 1; }
  say "installing ${LIBVIRT_PKGS[*]} (the libvirt suite)"
  POLICY=/usr/sbin/policy-rc.d
  own_policy=0
  if [ ! -e "$POLICY" ]; then printf '#!/bin/sh\nexit 101\n' > "$POLICY" && chmod 755 "$POLICY" && own_policy=1; fi
  rc=0
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o DPkg::Lock::Timeout=300 --no-install-recommends "${LIBVIRT_PKGS[@]}" >/dev/null || rc=$?
  [ "$own_policy" = 0 ] || rm -f "$POLICY"
  [ "$rc" = 0 ] || { echo "setup: installing ${LIBVIRT_PKGS[*]} failed (apt-get exit $rc)" >&2; exit 1; }
fi

# Guest kernel: resolve linux-image-cloud-amd64 -> linux-image-6.1.0-NN-cloud-amd64.
if [ ! -s "$CACHE/kver" ] || [ ! -e "$CACHE/kernel/$(cat "$CACHE/kver")/vmlinuz" ] \
   || ! have_pkgs "linux-headers-$(cat "$CACHE/kver")"; then
  resolve() { apt-cache depends "$1" 2>/dev/null | sed -n "s/^ *Depends: $2-\(.*-cloud-amd64\)$/\1/p" | head -n1; }
  KVER=$(resolve linux-image-cloud-amd64 linux-image)
  if [ -z "$KVER" ]; then apt-get update -qq; KVER=$(resolve linux-image-cloud-amd64 linux-image); fi
  [ -n "$KVER" ] || { echo "setup: cannot resolve the version of linux-image-cloud-amd64 (apt-cache depends)" >&2; exit 1; }
  say "guest kernel $KVER"
  if ! have_pkgs "linux-headers-$KVER"; then
    say "installing linux-headers-$KVER"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "linux-headers-$KVER" >/dev/null
  fi
  K=$CACHE/kernel/$KVER
  if [ ! -e "$K/vmlinuz" ]; then
    say "downloading and extracting linux-image-$KVER (not installed on this host)"
    rm -rf "$K" && mkdir -p "$K/deb"
    (cd "$K/deb" && apt-get download -qq "linux-image-$KVER" >/dev/null 2>&1)
    dpkg-deb -x "$K"/deb/*.deb "$K/root"
    depmod -b "$K/root" "$KVER"
    cp "$K/root/boot/vmlinuz-$KVER" "$K/vmlinuz.tmp" && mv "$K/vmlinuz.tmp" "$K/vmlinuz"
    rm -rf "$K/deb"
  fi
  echo "$KVER" > "$CACHE/kver"
fi

# Headers of the other Debian 6.1 flavours, so `make test` proves the module builds
# -Werror clean against each (kmod: make check-flavours).
FLAVOUR_PKGS=(linux-headers-amd64 linux-headers-rt-amd64)
if ! have_pkgs "${FLAVOUR_PKGS[@]}"; then
  say "installing ${FLAVOUR_PKGS[*]} (flavour build checks)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${FLAVOUR_PKGS[@]}" >/dev/null
fi

# npm dependencies, reinstalled only when the lockfile changes.
LOCK_SUM=$(sha256sum package-lock.json | cut -c1-16)
if [ ! -d node_modules ] || [ "$(cat "$CACHE/stamps/npm" 2>/dev/null)" != "$LOCK_SUM" ]; then
  say "npm ci"
  npm ci --no-audit --no-fund --loglevel=error
  echo "$LOCK_SUM" > "$CACHE/stamps/npm"
fi
