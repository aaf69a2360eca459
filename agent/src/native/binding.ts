/**
 * Loading the agent's addon (agent/native, built by node-gyp into
 * agent/build/Release/vmsubst_native.node) and its typed surface.
 *
 * This is the only module that loads the .node file, and it does so at the
 * first call that needs it, not at import: importing the facade never
 * throws, so modules and tests that do not touch the addon work where it is
 * not built; the first call then throws why it could not be loaded. The
 * other files of this directory add meaning (checks, defaults, classes) to
 * the functions typed here.
 */
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { resolve as resolvePath } from 'node:path';
import { fileURLToPath } from 'node:url';

import { NativeError } from '@vmsubst/common/native/errors';
import type { Extent, TreeWalk } from './fs.js';
import type {
  InvalidateBdevResult,
  InvalidateResult,
  PinCursor,
  PinMappersResult,
  QueryMappersResult,
  QueryOpenersResult,
  InvalidateFile,
  InvalidateFileResult,
  QueryPagesResult,
  RevalidateDentriesResult,
  RevalidateInodesResult,
  VersionInfo,
} from './kmod.js';
import type { Listener, StreamHandleClass } from '@vmsubst/common/native/stream';

/** Constants taken from the kernel headers by the compiler, never restated here. */
export interface NativeConstants {
  readonly VMSUBST_ABI_VERSION: number;
  readonly VMSUBST_FEATURE_INVALIDATE_RANGE: bigint;
  readonly VMSUBST_FEATURE_INVALIDATE_RANGE_V1: bigint;
  readonly VMSUBST_FEATURE_INVALIDATE_BDEV: bigint;
  readonly VMSUBST_FEATURE_REVALIDATE_INODES: bigint;
  readonly VMSUBST_FEATURE_REVALIDATE_DENTRIES: bigint;
  readonly VMSUBST_FEATURE_QUERY_MAPPERS: bigint;
  readonly VMSUBST_FEATURE_PIN_MAPPERS: bigint;
  readonly VMSUBST_FEATURE_QUERY_PAGES: bigint;
  readonly VMSUBST_FEATURE_INVALIDATE_UNLESS_DIRTY: bigint;
  readonly VMSUBST_FEATURE_PIN_CURSOR: bigint;
  readonly VMSUBST_FEATURE_REVALIDATE_REPLACED: bigint;
  readonly VMSUBST_FEATURE_QUERY_OPENERS: bigint;
  readonly VMSUBST_INVALIDATE_F_FORCE: number;
  readonly VMSUBST_INVALIDATE_F_ZAP: number;
  readonly VMSUBST_INVALIDATE_F_DROP: number;
  readonly VMSUBST_INVALIDATE_F_REFAULT_ASYNC: number;
  readonly VMSUBST_INVALIDATE_F_REFAULT_SYNC: number;
  readonly VMSUBST_INVALIDATE_F_REPORT_MAPPERS: number;
  /** Only if no page of the range is dirty or under writeback (EBUSY otherwise); allowed on a read-write mount. */
  readonly VMSUBST_INVALIDATE_F_UNLESS_DIRTY: number;
  readonly VMSUBST_INVALIDATE_F_ALL: number;
  readonly VMSUBST_BDEV_F_FORCE: number;
  readonly VMSUBST_INODES_F_FORCE: number;
  readonly VMSUBST_INODES_F_UNHASH_BUSY: number;
  readonly VMSUBST_DENTRIES_F_FORCE: number;
  readonly VMSUBST_DENTRIES_F_UNHASH_BUSY: number;
  readonly VMSUBST_PAGE_DROPPED: number;
  readonly VMSUBST_PAGE_DIRTY: number;
  readonly VMSUBST_PAGE_WRITEBACK: number;
  readonly VMSUBST_PAGE_LOCKED: number;
  readonly VMSUBST_PAGE_PINNED: number;
  readonly VMSUBST_PAGE_MAPPED: number;
  readonly VMSUBST_PAGE_BUSY: number;
  readonly VMSUBST_MAP_EXEC: number;
  readonly VMSUBST_MAP_SHARED: number;
  readonly VMSUBST_MAP_LOCKED: number;
  readonly VMSUBST_MAP_WRITE: number;
  readonly VMSUBST_INODE_OPEN: number;
  readonly VMSUBST_INODE_MAPPED: number;
  readonly VMSUBST_INODE_WRITERS: number;
  readonly VMSUBST_INODE_DIRTY: number;
  readonly VMSUBST_INODE_CHILDREN: number;
  readonly VMSUBST_INODE_ROOT: number;
  readonly VMSUBST_INODE_CALLER: number;
  readonly VMSUBST_INODE_REFERENCED: number;
  readonly VMSUBST_PIN_R_EXITED: number;
  readonly VMSUBST_PIN_R_PARTIAL: number;
  readonly VMSUBST_PIN_S_BUDGET: number;
  readonly VMSUBST_PIN_S_TRUNCATED: number;
  readonly VMSUBST_PIN_F_RESUME: number;
  readonly VMSUBST_RANGES_MAX: number;
  readonly VMSUBST_MAPPERS_MAX: number;
  readonly VMSUBST_OPENERS_MAX: number;
  readonly VMSUBST_OPENERS_FILES_MAX: number;
  readonly VMSUBST_INODES_MAX: number;
  readonly VMSUBST_NAMES_MAX: number;
  readonly VMSUBST_NAMES_SIZE_MAX: number;
  readonly VMSUBST_PIN_PAGES_MAX: number;
  readonly VMSUBST_PIN_RESULTS_MAX: number;
  readonly VMSUBST_PIN_VMAS_MAX: number;
  readonly VMADDR_CID_ANY: number;
  readonly VMADDR_CID_HYPERVISOR: number;
  readonly VMADDR_CID_LOCAL: number;
  readonly VMADDR_CID_HOST: number;
  readonly VMADDR_PORT_ANY: number;
  readonly FIEMAP_EXTENT_LAST: number;
  readonly FIEMAP_EXTENT_UNKNOWN: number;
  readonly FIEMAP_EXTENT_DELALLOC: number;
  readonly FIEMAP_EXTENT_ENCODED: number;
  readonly FIEMAP_EXTENT_DATA_ENCRYPTED: number;
  readonly FIEMAP_EXTENT_NOT_ALIGNED: number;
  readonly FIEMAP_EXTENT_DATA_INLINE: number;
  readonly FIEMAP_EXTENT_DATA_TAIL: number;
  readonly FIEMAP_EXTENT_UNWRITTEN: number;
  readonly FIEMAP_EXTENT_MERGED: number;
  readonly FIEMAP_EXTENT_SHARED: number;
  /** Alignment readDirect uses for offset, length and memory. */
  readonly DIRECT_IO_ALIGN: number;
}

/** The addon's exports; the facade's files are the only callers. */
export interface NativeBinding {
  setErrorClass(ctor: typeof NativeError): void;
  fiemap(fd: number): Extent[];
  TreeWalk: new (root: string, dev: number, maxEntries: number, threads: number, flags: number) => TreeWalk;
  readDirect(path: string, offset: number, length: number): Promise<Buffer>;
  kmodOpen(devPath: string): number;
  kmodVersion(devFd: number, devPath: string): VersionInfo;
  invalidateRange(
    devFd: number,
    devPath: string,
    fd: number,
    offset: bigint,
    length: bigint,
    flags: number,
    outcomesCap: number,
    mappersCap: number,
  ): Promise<InvalidateResult>;
  invalidateBdev(
    devFd: number,
    devPath: string,
    fd: number,
    offset: bigint,
    length: bigint,
    flags: number,
    keptCap: number,
  ): Promise<InvalidateBdevResult>;
  revalidateInodes(
    devFd: number,
    devPath: string,
    fd: number,
    inodes: readonly bigint[],
    flags: number,
  ): Promise<RevalidateInodesResult>;
  revalidateDentries(
    devFd: number,
    devPath: string,
    fd: number,
    names: readonly string[],
    flags: number,
  ): Promise<RevalidateDentriesResult>;
  queryMappers(
    devFd: number,
    devPath: string,
    fd: number,
    offset: bigint,
    length: bigint,
    mappersCap: number,
  ): Promise<QueryMappersResult>;
  pinMappers(
    devFd: number,
    devPath: string,
    fd: number,
    offset: bigint,
    length: bigint,
    maxPages: number,
    pinnedCap: number,
    unpinnedCap: number,
    cursor?: PinCursor,
  ): Promise<PinMappersResult>;
  queryPages(
    devFd: number,
    devPath: string,
    fd: number,
    offset: bigint,
    length: bigint,
    rangesCap: number,
  ): Promise<QueryPagesResult>;
  queryOpeners(devFd: number, devPath: string, fds: readonly number[], openersCap: number): Promise<QueryOpenersResult>;
  invalidateFiles(devFd: number, devPath: string, files: readonly InvalidateFile[]): Promise<InvalidateFileResult[]>;
  vsockListen(cid: number, port: number, backlog: number): { fd: number; cid: number; port: number };
  vsockAddresses(fd: number): { localCid: number; localPort: number; remoteCid: number; remotePort: number };
  localCid(devPath: string): number;
  sdNotify(socketPath: string, message: string): void;
  closeFd(fd: number): void;
  dupFd(fd: number): number;
  notifyAsync(fd: number): void;
  StreamHandle: StreamHandleClass;
  Listener: new (
    fd: number,
    onconnection: (err: NativeError | null, fd?: number, cid?: number, port?: number) => void,
  ) => Listener;
  constants: NativeConstants;
}

const BINDING_FUNCTIONS = [
  'setErrorClass',
  'fiemap',
  'TreeWalk',
  'readDirect',
  'kmodOpen',
  'kmodVersion',
  'invalidateRange',
  'invalidateBdev',
  'revalidateInodes',
  'revalidateDentries',
  'queryMappers',
  'pinMappers',
  'queryPages',
  'queryOpeners',
  'invalidateFiles',
  'vsockListen',
  'vsockAddresses',
  'localCid',
  'sdNotify',
  'closeFd',
  'dupFd',
  'notifyAsync',
  'StreamHandle',
  'Listener',
] as const satisfies ReadonlyArray<keyof NativeBinding>;

function isBinding(value: unknown): value is NativeBinding {
  if (typeof value !== 'object' || value === null) return false;
  const record = value as Record<string, unknown>;
  return (
    BINDING_FUNCTIONS.every((name) => typeof record[name] === 'function') &&
    typeof record['constants'] === 'object' &&
    record['constants'] !== null
  );
}

/**
 * Where the addon is looked for: $VMSUBST_NATIVE_PATH alone when set;
 * otherwise agent/build/Release relative to the compiled file
 * (build/agent/src/native/binding.js → the repository or image root), then
 * relative to the source file (agent/src/native/binding.ts) for runners that
 * execute TypeScript directly.
 */
export function nativeAddonCandidates(env: NodeJS.ProcessEnv = process.env): string[] {
  const override = env['VMSUBST_NATIVE_PATH'];
  if (override !== undefined && override !== '') return [resolvePath(override)];
  return [
    fileURLToPath(new URL('../../../../agent/build/Release/vmsubst_native.node', import.meta.url)),
    fileURLToPath(new URL('../../build/Release/vmsubst_native.node', import.meta.url)),
  ];
}

type Loaded = { binding: NativeBinding; path: string } | { error: Error };
let loaded: Loaded | undefined;

function load(): Loaded {
  const candidates = nativeAddonCandidates();
  const path = candidates.find((p) => existsSync(p)) ?? candidates[0] ?? '';
  const require = createRequire(import.meta.url);
  let value: unknown;
  try {
    value = require(path);
  } catch (cause) {
    // The first line: node's "Require stack" that follows says nothing about the addon.
    const reason = (cause instanceof Error ? cause.message : String(cause)).split('\n')[0];
    return {
      error: new Error(
        `vmsubst: cannot load the native addon (tried ${candidates.join(', ')}): ${reason}. ` +
          'Build it with `make addon`, or point VMSUBST_NATIVE_PATH at vmsubst_native.node.',
        { cause },
      ),
    };
  }
  if (!isBinding(value)) {
    return {
      error: new Error(`vmsubst: ${path} is not the expected addon (missing exports); rebuild it with \`make addon\``),
    };
  }
  value.setErrorClass(NativeError);
  return { binding: value, path };
}

/** The loaded addon; the first call loads it, and throws (every time) if it cannot be loaded. */
export function binding(): NativeBinding {
  loaded ??= load();
  if ('error' in loaded) throw loaded.error;
  return loaded.binding;
}

/** The .node file this process loaded (loading it if need be). */
export function nativeAddonPath(): string {
  binding();
  return (loaded as { path: string }).path;
}

/**
 * The addon's constants, read at the first access (which loads the addon):
 * taken from the kernel headers by the compiler, never restated here.
 */
export const constants: NativeConstants = new Proxy({} as NativeConstants, {
  get: (_, name) => Reflect.get(binding().constants, name),
  has: (_, name) => Reflect.has(binding().constants, name),
  ownKeys: () => Reflect.ownKeys(binding().constants),
  getOwnPropertyDescriptor: (_, name) => {
    const d = Reflect.getOwnPropertyDescriptor(binding().constants, name);
    return d === undefined ? undefined : { ...d, writable: false, configurable: true };
  },
  set: () => false,
  defineProperty: () => false,
  deleteProperty: () => false,
});
