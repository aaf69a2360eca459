#!/usr/bin/env bash
# Stages what both package formats ship, from the built tree (make build):
#   STAGE/app/   -> /usr/lib/vmsubst: package.json, build/agent (compiled, no
#                   source maps), the stripped addon at agent/build/Release, and
#                   the agent's runtime node_modules (node-addon-api is build-only)
#   STAGE/src/   -> /usr/src/vmsubst-VERSION: kmod's Kbuild, Makefile, sources,
#                   include/ and dkms.conf
#   STAGE/versions  AGENT_VERSION= and DKMS_VERSION= lines
#   stage.sh STAGE
set -euo pipefail
STAGE=${1:?usage: stage.sh STAGEDIR}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
ADDON=$ROOT/agent/build/Release/vmsubst_native.node
for f in "$ROOT/build/agent/src/main.js" "$ROOT/common/dist/protocol/schema.js" "$ADDON"; do
  [ -e "$f" ] || { echo "stage.sh: $f is missing; run make build first" >&2; exit 1; }
done
rm -rf "$STAGE" && mkdir -p "$STAGE/app/build" "$STAGE/app/agent/build/Release" "$STAGE/app/node_modules" "$STAGE/src"

AGENT_VERSION=$(node -p "require('$ROOT/package.json').version")
DKMS_VERSION=$(sed -n 's/^PACKAGE_VERSION="\(.*\)"$/\1/p' "$ROOT/kmod/dkms.conf")
[ -n "$DKMS_VERSION" ] || { echo "stage.sh: no PACKAGE_VERSION in kmod/dkms.conf" >&2; exit 1; }
printf 'AGENT_VERSION=%s\nDKMS_VERSION=%s\n' "$AGENT_VERSION" "$DKMS_VERSION" > "$STAGE/versions"

# The agent. package.json carries "type": "module" for the compiled ES modules.
node -e '
  const p = require(process.argv[1]);
  const keep = { name: "vmsubst-agent", version: p.version, private: true, type: p.type, license: p.license };
  process.stdout.write(JSON.stringify(keep, null, 2) + "\n");' "$ROOT/package.json" > "$STAGE/app/package.json"
cp -r "$ROOT/build/agent" "$STAGE/app/build/"
find "$STAGE/app/build" -name '*.map' -delete
# V8 code caches of the validators are for the node that built them; the guest's node rejects them.
find "$STAGE/app/build" -name '*.v8cache' -delete
strip --strip-unneeded -o "$STAGE/app/agent/build/Release/vmsubst_native.node" "$ADDON"
chmod 0644 "$STAGE/app/agent/build/Release/vmsubst_native.node"
(cd "$ROOT" && npm ls --omit=dev --parseable --all 2>/dev/null | tail -n +2) | while read -r dir; do
  rel=${dir#"$ROOT"/}
  case "$rel" in node_modules/node-addon-api|node_modules/@vmsubst/*) continue;; node_modules/*) ;; *) continue;; esac
  mkdir -p "$STAGE/app/$(dirname "$rel")"; cp -r "$dir" "$STAGE/app/$rel"
done
# The contract package (an npm workspace: a symlink in node_modules): its compiled files.
mkdir -p "$STAGE/app/node_modules/@vmsubst/common"
cp -r "$ROOT/common/package.json" "$ROOT/common/dist" "$STAGE/app/node_modules/@vmsubst/common/"
# Nothing a runtime needs: maps, TypeScript sources and declarations, tests, docs.
find "$STAGE/app/node_modules" \( -name '*.map' -o -name '*.ts' -o -name '*.md' -o -name '*.markdown' \
  -o -name '.*' -o -name 'tsconfig*.json' \) -type f -delete
find "$STAGE/app/node_modules" -depth -type d \( -name test -o -name tests -o -name '.github' \) -exec rm -rf {} +
find "$STAGE/app" -type d -exec chmod 0755 {} + && find "$STAGE/app" -type f -exec chmod 0644 {} +
chmod 0755 "$STAGE/app/build/agent/src/main.js"

# The module source, as DKMS builds it.
(cd "$ROOT/kmod" && cp -r Kbuild Makefile dkms.conf README.md ./*.h include "$STAGE/src/" \
  && for c in ./*.c; do case "$c" in *.mod.c) ;; *) cp "$c" "$STAGE/src/";; esac; done)
find "$STAGE/src" -type d -exec chmod 0755 {} + && find "$STAGE/src" -type f -exec chmod 0644 {} +
echo "staged agent $AGENT_VERSION and module source $DKMS_VERSION in $STAGE" >&2
