#!/usr/bin/env bash
# Runs uvu and fails when a suite ran fewer tests than it registered without
# reporting a failure: uvu 0.5 swallows an exception thrown by a `before` hook
# (its tests silently do not run and the exit status stays 0).
set -uo pipefail
out=$(mktemp)
trap 'rm -f "$out"' EXIT
node_modules/.bin/uvu "$@" 2>&1 | tee "$out"
rc=${PIPESTATUS[0]}
# "  (num / total)" closes each suite's line; strip colour codes first.
short=$(sed 's/\x1b\[[0-9;]*m//g' "$out" | grep -oE '^.* \(([0-9]+) / ([0-9]+)\)$' | awk '{ n=$(NF-2); t=$NF; gsub(/[()]/,"",n); gsub(/[()]/,"",t); if (n+0 < t+0) print }')
if [ -n "$short" ] && ! sed 's/\x1b\[[0-9;]*m//g' "$out" | grep -q ' FAIL '; then
  echo "uvu: a suite ran fewer tests than it has and reported no failure: its setup (before hook) threw:" >&2
  echo "$short" | sed 's/^/  /' >&2
  exit 1
fi
exit "$rc"
