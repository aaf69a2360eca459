#!/usr/bin/env bash
# Builds vmsubst-agent-AGENTVER-REV.x86_64.rpm and vmsubst-dkms-DKMSVER-REV.noarch.rpm
# into OUTDIR with rpmbuild, from the built tree (make build).
#   build-rpm.sh OUTDIR        VMSUBST_PKG_REVISION (default 1) sets the Release
set -euo pipefail
OUT=${1:?usage: build-rpm.sh OUTDIR}
HERE=$(cd "$(dirname "$0")" && pwd)
REV=${VMSUBST_PKG_REVISION:-1}
command -v rpmbuild >/dev/null || { echo "build-rpm.sh: rpmbuild is not installed (apt-get install rpm)" >&2; exit 1; }
mkdir -p "$OUT"
WORK=$(mktemp -d); trap 'rm -rf "$WORK"' EXIT
"$HERE/stage.sh" "$WORK/stage"
# shellcheck disable=SC1091
. "$WORK/stage/versions"
mkdir -p "$WORK/stage/packaging/debian" "$WORK/top/SOURCES"
cp -r "$HERE/scripts" "$HERE/systemd" "$HERE/udev" "$WORK/stage/packaging/"
cp "$HERE/debian/copyright" "$WORK/stage/packaging/debian/"
tar -C "$WORK/stage" -czf "$WORK/top/SOURCES/vmsubst-stage.tar.gz" app src packaging
rpmbuild -bb --quiet --define "_topdir $WORK/top" --define "_rpmdir $OUT" --define '_build_name_fmt %%{NAME}-%%{VERSION}-%%{RELEASE}.%%{ARCH}.rpm' \
  --define "agent_version $AGENT_VERSION" --define "dkms_version $DKMS_VERSION" --define "pkg_release $REV" \
  "$HERE/rpm/vmsubst.spec" >"$WORK/rpmbuild.log" 2>&1 || { cat "$WORK/rpmbuild.log" >&2; exit 1; }
ls -1 "$OUT"/*.rpm >&2
