/** The version of this vmsubst, from the project's package.json. */
import { readFileSync } from 'node:fs';

function readVersion(): string {
  // build/host-signal/src/version.js, or the bundled CLI build/host-signal/src/cli/vmsubst.mjs
  // (Makefile, target ts) -> package.json at the project root.
  for (const rel of ['../../../package.json', '../../../../package.json', '../../package.json']) {
    try {
      const pkg = JSON.parse(readFileSync(new URL(rel, import.meta.url), 'utf8')) as {
        name?: unknown;
        version?: unknown;
      };
      if (pkg.name === 'vmsubst' && typeof pkg.version === 'string') return pkg.version;
    } catch {
      // try the next candidate
    }
  }
  return '0.0.0';
}

export const TOOL_VERSION = readVersion();
