/**
 * Loading the host's addon (host-signal/native, built by node-gyp into
 * host-signal/build/Release/vmsubst_host.node) and its typed surface.
 *
 * The CLI works without it: the differ then reads and compares in
 * JavaScript (slower, same result) and only vsock is unavailable. A load
 * failure is never silent: `nativeStatus()` says why (the `--json` output of
 * the commands that would have used the addon carries it), and `optional()`
 * prints one warning line on stderr the first time.
 *
 * Loading happens at the first call, not at import.
 */
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { resolve as resolvePath } from 'node:path';
import { fileURLToPath } from 'node:url';

import { NativeError } from '@vmsubst/common/native/errors';
import type { Connector, StreamHandleClass } from '@vmsubst/common/native/stream';

/** The addon's exports; this directory's files are the only callers. */
export interface HostBinding {
  setErrorClass(ctor: typeof NativeError): void;
  dataSegments(fd: number, size: number): [number, number][];
  compareSpan(fdA: number, fdB: number, offset: number, length: number, blockSize: number): Promise<Float64Array>;
  prefault(buffer: Buffer): void;
  vsockConnectStart(cid: number, port: number, timeoutMs: number, localPort: number): number;
  vsockAddresses(fd: number): { localCid: number; localPort: number; remoteCid: number; remotePort: number };
  closeFd(fd: number): void;
  StreamHandle: StreamHandleClass;
  Connector: new (
    fd: number,
    cid: number,
    port: number,
    oncomplete: (err: NativeError | null, fd?: number) => void,
  ) => Connector;
  constants: { readonly COMPARE_BLOCK_MAX: number };
}

const BINDING_FUNCTIONS = [
  'setErrorClass',
  'dataSegments',
  'compareSpan',
  'prefault',
  'vsockConnectStart',
  'vsockAddresses',
  'closeFd',
  'StreamHandle',
  'Connector',
] as const satisfies ReadonlyArray<keyof HostBinding>;

/** Whether the addon loaded, from where, or why not. */
export interface NativeStatus {
  loaded: boolean;
  /** The .node file loaded. */
  path?: string;
  /** Why it did not load. */
  error?: string;
}

/**
 * Where the addon is looked for: $VMSUBST_HOST_NATIVE_PATH alone when set;
 * otherwise host-signal/build/Release relative to the compiled file
 * (build/host-signal/src/native/binding.js, or the bundled CLI beside it at
 * build/host-signal/src/cli/vmsubst.mjs → the repository root), then relative
 * to the source file for runners that execute TypeScript directly.
 */
export function hostAddonCandidates(env: NodeJS.ProcessEnv = process.env): string[] {
  const override = env['VMSUBST_HOST_NATIVE_PATH'];
  if (override !== undefined && override !== '') return [resolvePath(override)];
  return [
    fileURLToPath(new URL('../../../../host-signal/build/Release/vmsubst_host.node', import.meta.url)),
    fileURLToPath(new URL('../../build/Release/vmsubst_host.node', import.meta.url)),
  ];
}

type Loaded = { binding: HostBinding; path: string } | { error: Error };
let loaded: Loaded | undefined;
let warned = false;

function load(): Loaded {
  const candidates = hostAddonCandidates();
  const path = candidates.find((p) => existsSync(p)) ?? candidates[0] ?? '';
  let value: unknown;
  try {
    value = createRequire(import.meta.url)(path);
  } catch (cause) {
    // The first line: node's "Require stack" that follows says nothing about the addon.
    const reason = (cause instanceof Error ? cause.message : String(cause)).split('\n')[0];
    return {
      error: new Error(`cannot load the host's native addon (tried ${candidates.join(', ')}): ${reason}`, { cause }),
    };
  }
  const record = (typeof value === 'object' && value !== null ? value : {}) as Record<string, unknown>;
  const missing = BINDING_FUNCTIONS.filter((name) => typeof record[name] !== 'function');
  if (missing.length > 0)
    return {
      error: new Error(`${path} is not the expected addon (no ${missing.join(', ')}); rebuild it with \`make addon\``),
    };
  const binding = value as HostBinding;
  binding.setErrorClass(NativeError);
  return { binding, path };
}

/** The loaded addon; the first call loads it, and throws (every time) if it cannot be loaded. */
export function hostBinding(): HostBinding {
  loaded ??= load();
  if ('error' in loaded) throw loaded.error;
  return loaded.binding;
}

export function nativeStatus(): NativeStatus {
  loaded ??= load();
  return 'error' in loaded ? { loaded: false, error: loaded.error.message } : { loaded: true, path: loaded.path };
}

/**
 * The addon for a caller that has a JavaScript fallback: undefined when it
 * cannot be loaded, after one warning line through `warn` (stderr) per process.
 */
export function optionalHostBinding(
  warn: (line: string) => void = (l) => process.stderr.write(l),
): HostBinding | undefined {
  try {
    return hostBinding();
  } catch (e) {
    if (!warned) {
      warned = true;
      warn(`vmsubst: warning: ${(e as Error).message}; continuing in JavaScript (slower, same result)\n`);
    }
    return undefined;
  }
}
