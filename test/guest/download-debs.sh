#!/usr/bin/env bash
# Downloads a Debian package and the part of its dependency closure that a
# guest root image lacks, with this machine's own apt configuration (its
# mirror), so that `dpkg -i OUTDIR/*.deb` installs it in the guest offline.
# Cached: a second run with the same package and image returns at once.
#   download-debs.sh PACKAGE OUTDIR ROOTIMG
# Exit 3 with the reason on stderr when it cannot be done here.
set -euo pipefail
PKG=${1:?usage: download-debs.sh PACKAGE OUTDIR ROOTIMG}
OUT=${2:?usage: download-debs.sh PACKAGE OUTDIR ROOTIMG}
IMG=${3:?usage: download-debs.sh PACKAGE OUTDIR ROOTIMG}
KEY=$( { echo "$PKG"; stat -c '%s %Y' "$IMG"; cat "$0"; } | sha256sum | cut -c1-16)
[ "$(cat "$OUT/key" 2>/dev/null)" = "$KEY" ] && exit 0
unavailable() { echo "download-debs: $*" >&2; exit 3; }
command -v debugfs >/dev/null || unavailable "debugfs is not installed (e2fsprogs)"
rm -rf "$OUT" && mkdir -p "$OUT"
# What the image has: its dpkg status, read without mounting it.
debugfs -R 'cat /var/lib/dpkg/status' "$IMG" 2>/dev/null |
  awk '/^Package: /{p=$2} /^Status: .* installed$/{print p}' | sort -u > "$OUT/installed.txt"
[ -s "$OUT/installed.txt" ] || unavailable "cannot read /var/lib/dpkg/status from $IMG"
# The closure of hard dependencies (the first of each alternative, as apt-cache lists them).
apt-cache depends --recurse --no-recommends --no-suggests --no-conflicts --no-breaks --no-replaces \
  --no-enhances "$PKG" 2>/dev/null | grep -E '^[a-z0-9]' | sort -u > "$OUT/closure.txt" ||
  unavailable "apt-cache knows no package $PKG (apt-get update?)"
# Virtual packages and alternatives the image already satisfies are left out: dpkg tells if not.
mapfile -t NEED < <(comm -23 "$OUT/closure.txt" "$OUT/installed.txt" | grep -vE '^(cdebconf|install-info)$')
[ "${#NEED[@]}" -gt 0 ] || unavailable "$PKG is already in $IMG"
# apt's download user cannot write to a private directory; fetch in a world-writable scratch one.
TMPD=$(mktemp -d); chmod 0777 "$TMPD"; trap 'rm -rf "$TMPD"' EXIT
(cd "$TMPD" && apt-get download -q=2 "${NEED[@]}") > "$OUT/download.log" 2>&1 ||
  unavailable "apt-get download ${NEED[*]} failed: $(grep -m1 '^E:' "$OUT/download.log" || tail -n1 "$OUT/download.log")"
mv "$TMPD"/*.deb "$OUT/"
echo "$KEY" > "$OUT/key"
echo "download-debs: ${NEED[*]} into $OUT" >&2
