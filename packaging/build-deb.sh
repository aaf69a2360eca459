#!/usr/bin/env bash
# Builds vmsubst-agent_AGENTVER-REV_amd64.deb and vmsubst-dkms_DKMSVER-REV_all.deb
# into OUTDIR with dpkg-deb, from the built tree (make build).
#   build-deb.sh OUTDIR        VMSUBST_PKG_REVISION (default 1) sets -REV
set -euo pipefail
OUT=${1:?usage: build-deb.sh OUTDIR}
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
REV=${VMSUBST_PKG_REVISION:-1}
mkdir -p "$OUT"
WORK=$(mktemp -d); trap 'rm -rf "$WORK"' EXIT
"$HERE/stage.sh" "$WORK/stage"
# shellcheck disable=SC1091
. "$WORK/stage/versions"
EPOCH=${SOURCE_DATE_EPOCH:-$(git -C "$ROOT" log -1 --format=%ct 2>/dev/null || date +%s)}

# Common to both packages: copyright, changelog, md5sums, control, build.
doc() {  # doc PKG VERSION TREE
  local d=$2/usr/share/doc/$1
  install -d -m 0755 "$d"
  install -m 0644 "$HERE/debian/copyright" "$d/copyright"
  { echo "$1 ($3) stable; urgency=medium"; echo
    echo "  * Release $3, built from the vmsubst tree."; echo
    echo " -- vmsubst developers <vmsubst@lists.vmsubst.org>  $(date -u -R -d "@$EPOCH")"; } > "$d/changelog.Debian"
  gzip -9n "$d/changelog.Debian"
}
control() {  # control PKG TREE VERSION SHLIBS
  local pkg=$1 tree=$2
  install -d -m 0755 "$tree/DEBIAN"
  for s in postinst prerm postrm; do
    [ -e "$HERE/debian/$pkg/$s" ] || continue
    sed "s/@DKMS_VERSION@/$DKMS_VERSION/g" "$HERE/debian/$pkg/$s" > "$tree/DEBIAN/$s"; chmod 0755 "$tree/DEBIAN/$s"
  done
  (cd "$tree" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | sort -z | xargs -0 md5sum) > "$tree/DEBIAN/md5sums"
  chmod 0644 "$tree/DEBIAN/md5sums"
  local size; size=$(du -sk --exclude=DEBIAN "$tree" | cut -f1)
  sed -e "s/@VERSION@/$3/" -e "s/@SIZE@/$size/" -e "s/@SHLIBS@/$4/" -e "s/@DKMS_VERSION@/$DKMS_VERSION/" \
    "$HERE/debian/$pkg/control.in" > "$tree/DEBIAN/control"
  find "$tree" -exec touch -h -d "@$EPOCH" {} +
  dpkg-deb --root-owner-group -Zxz --build "$tree" "$OUT/${pkg}_$3_$(sed -n 's/^Architecture: //p' "$tree/DEBIAN/control").deb" >/dev/null
}

# vmsubst-agent
A=$WORK/vmsubst-agent
install -d -m 0755 "$A/usr/lib" "$A/usr/bin" "$A/lib/systemd/system" "$A/lib/udev/rules.d" "$A/etc/vmsubst/trusted.d"
cp -a "$WORK/stage/app" "$A/usr/lib/vmsubst"
install -m 0755 "$HERE/scripts/vmsubst-agent" "$A/usr/bin/vmsubst-agent"
install -m 0644 "$HERE/systemd/vmsubst-agent.service" "$A/lib/systemd/system/"
install -m 0644 "$HERE/udev/60-vmsubst.rules" "$A/lib/udev/rules.d/"
doc vmsubst-agent "$A" "$AGENT_VERSION-$REV"
install -m 0644 "$ROOT/docs/packaging.md" "$A/usr/share/doc/vmsubst-agent/README.md"
mkdir -p "$WORK/shlibs/debian"; printf 'Source: vmsubst\n\nPackage: vmsubst-agent\nArchitecture: any\n' > "$WORK/shlibs/debian/control"
SHLIBS=$(cd "$WORK/shlibs" && dpkg-shlibdeps -O "$A/usr/lib/vmsubst/agent/build/Release/vmsubst_native.node" 2>/dev/null | sed -n 's/^shlibs:Depends=//p')
[ -n "$SHLIBS" ] || { echo "build-deb.sh: dpkg-shlibdeps found no dependencies for the addon" >&2; exit 1; }
control vmsubst-agent "$A" "$AGENT_VERSION-$REV" "$SHLIBS"

# vmsubst-dkms
D=$WORK/vmsubst-dkms
install -d -m 0755 "$D/usr/src" "$D/usr/lib/vmsubst-dkms" "$D/usr/lib/modules-load.d"
cp -a "$WORK/stage/src" "$D/usr/src/vmsubst-$DKMS_VERSION"
install -m 0755 "$HERE/scripts/vmsubst-dkms-ctl" "$D/usr/lib/vmsubst-dkms/"
install -m 0644 "$HERE/scripts/modules-load.conf" "$D/usr/lib/modules-load.d/vmsubst.conf"
doc vmsubst-dkms "$D" "$DKMS_VERSION-$REV"
control vmsubst-dkms "$D" "$DKMS_VERSION-$REV" ""
ls -1 "$OUT"/*.deb >&2
