/**
 * The typed facade of the agent's native addon (agent/native, built by
 * node-gyp into agent/build/Release/vmsubst_native.node).
 *
 * This is the only module that loads the .node file. Everything else in the
 * agent imports these functions and classes, so tests of higher layers can
 * replace this module and the addon's raw, untyped surface stays in one place.
 *
 * Errors from the system come back as NativeError, shaped like node's fs
 * errors: `code` ('ENOENT'), `errno` (negative, -2), `syscall` ('open') and a
 * message such as "ENOENT: no such file or directory, open '/dev/vmsubst'".
 *
 * Sockets are adopted into node's own libuv loop (uv_pipe_open): no thread per
 * socket, and reads, writes and backpressure work like a net.Socket's.
 */
import { EventEmitter } from 'node:events';
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { availableParallelism, constants as osConstants } from 'node:os';
import { resolve as resolvePath } from 'node:path';
import { Duplex } from 'node:stream';
import { fileURLToPath } from 'node:url';

// ---- public types -------------------------------------------------------------

export interface NativeError extends Error {
  /** errno name, e.g. 'EACCES'. */
  code: string;
  /** The system call that failed, e.g. 'connect', 'ioctl', 'open'. */
  syscall: string;
  /** Negative errno, as in node's fs errors (-13 for EACCES). */
  errno: number;
  /** The file or device involved, when there is one. */
  path?: string;
}

/** One FIEMAP extent, in bytes. `flags` are the kernel's fe_flags (see `constants.FIEMAP_EXTENT_*`). */
export interface Extent {
  logical: bigint;
  physical: bigint;
  length: bigint;
  flags: number;
}

/** Kinds of TreeWalkStep records. */
export const TREE_WALK_ENTRY = 0;
export const TREE_WALK_FILE = 1;
export const TREE_WALK_DIR = 2;

/**
 * One step of a native tree walk: flat arrays rather than an object per
 * file. Directories are numbered 0, 1, … in the order their TREE_WALK_DIR
 * records come, across steps (the root is 0); a directory's record comes
 * before the records it holds.
 */
export interface TreeWalkStep {
  /**
   * Five numbers per record: kind (TREE_WALK_ENTRY: only a name → inode
   * entry of its directory; TREE_WALK_FILE: a mapped regular file;
   * TREE_WALK_DIR: a mapped directory), parent directory number (-1 for the
   * root), inode, size in bytes, and how many extents follow in `extents`.
   */
  records: Float64Array;
  /** Each record's ctime in ns. */
  ctimeNs: BigInt64Array;
  /**
   * Four numbers per extent, in record order: physical, logical, length (bytes), flags
   * (TREE_WALK_EXTENT_SHARED); extents without a disk place left out.
   */
  extents: Float64Array;
  /** Each record's name followed by a NUL ('' for the root). */
  names: string;
  /** Directory entries seen so far. */
  seen: number;
  /** Nothing is left to walk. */
  done: boolean;
}

/** A walk in progress: one step at a time; close() when done or abandoned. */
export interface TreeWalk {
  next(maxRecords: number): Promise<TreeWalkStep>;
  close(): void;
}

/** Extent flag of a TreeWalkStep: FIEMAP_EXTENT_SHARED (reflink, snapshot). */
export const TREE_WALK_EXTENT_SHARED = 0x1;

/** How a filesystem is walked (pedigree/walk.ts chooses per filesystem type). */
export interface WalkOptions {
  /** Map directories with FIEMAP (default true; XFS refuses it with EOPNOTSUPP). */
  dirExtents?: boolean;
  /** FIEMAP_FLAG_SYNC on every file (default false: only files with delayed allocations are synced). */
  sync?: boolean;
}

export type WalkTree = (root: string, dev: number, maxEntries: number, opts?: WalkOptions) => TreeWalk;

export interface VersionInfo {
  abiVersion: number;
  features: bigint;
  moduleVersion: string;
}

/** Names of the VMSUBST_FEATURE_* bits, as kmodFeatures() reports them. */
export type KmodFeature =
  | 'invalidateRange'
  | 'invalidateRangeV1'
  | 'invalidateBdev'
  | 'revalidateInodes'
  | 'revalidateDentries'
  | 'queryMappers'
  | 'pinMappers'
  | 'queryPages'
  | 'invalidateUnlessDirty'
  | 'pinCursor'
  | 'revalidateReplaced';

/** VMSUBST_PAGE_* bits by name: why a page range was not simply dropped. */
export type PageState = 'dropped' | 'dirty' | 'writeback' | 'locked' | 'pinned' | 'mapped' | 'busy';

/**
 * Pages of a file or block device that stayed in the page cache, or left it
 * while pinned for DMA ('dropped' and 'pinned'); struct vmsubst_page_range.
 * Adjacent pages in the same state come as one range.
 */
export interface PageRange {
  /** Byte offset of the first page. */
  offset: bigint;
  /** Bytes, a whole number of pages. */
  length: bigint;
  /** VMSUBST_PAGE_* bits (constants.VMSUBST_PAGE_*). */
  state: number;
  /** The same bits by name. */
  states: PageState[];
}

/** One mapping (VMA) of a file range; struct vmsubst_mapper. */
export interface Mapper {
  /** Thread-group id of the address space's owner; 0 if it exited or is not visible to us. */
  pid: number;
  /** The owner's command name; '' when pid is 0. */
  comm: string;
  start: bigint;
  end: bigint;
  /** File offset mapped at `start`. */
  offset: bigint;
  /** VMSUBST_MAP_* bits. */
  flags: number;
  exec: boolean;
  /** MAP_SHARED: shows the page cache itself, cannot be pinned. */
  shared: boolean;
  /** mlock()ed. */
  locked: boolean;
  write: boolean;
}

export interface InvalidateResult {
  pagesCached: bigint;
  pagesMapped: bigint;
  pagesDropped: bigint;
  pagesKept: bigint;
  /** With INVALIDATE_F_REFAULT_SYNC pages read back, with _ASYNC pages read ahead; else 0. */
  pagesRefaulted: bigint;
  /** Every page that was kept, or dropped while pinned, with its reason. */
  outcomes: PageRange[];
  /** Ranges that exist; more than `outcomes.length` when the capacity was too small. */
  outcomesTotal: bigint;
  /** With INVALIDATE_F_REPORT_MAPPERS, the mappings of the range before the zap. */
  mappers: Mapper[];
  mappersTotal: bigint;
}

export interface InvalidateRangeOptions {
  /** Room for `outcomes` entries; default and most constants.VMSUBST_RANGES_MAX. */
  outcomesCapacity?: number;
  /** Room for `mappers` entries; default and most constants.VMSUBST_MAPPERS_MAX. */
  mappersCapacity?: number;
}

/** Options every kmod call takes. */
export interface KmodCallOptions {
  /** The command's VMSUBST_*_F_* flags (constants), default 0. */
  flags?: number;
  /** The kmod's device, default /dev/vmsubst. */
  devPath?: string;
}

export interface InvalidateBdevOptions extends KmodCallOptions {
  /** Room for `kept` entries; default and most constants.VMSUBST_RANGES_MAX. */
  keptCapacity?: number;
}

export interface InvalidateBdevResult {
  pagesCached: bigint;
  pagesDropped: bigint;
  pagesKept: bigint;
  /** The ranges that stayed: buffers the mounted filesystem holds (superblock, group descriptors). */
  kept: PageRange[];
  keptTotal: bigint;
}

/** VMSUBST_INODE_* bits by name: why an inode is still in use. */
export type InodeReason =
  | 'open'
  | 'mapped'
  | 'writers'
  | 'dirty'
  | 'children'
  | 'root'
  | 'caller'
  | 'referenced';

/** An inode that stays cached because it is in use; struct vmsubst_inode_status. */
export interface InodeInUse {
  ino: bigint;
  /** VMSUBST_INODE_* bits. */
  reasons: number;
  reasonNames: InodeReason[];
  /** References held apart from the kmod's own. */
  refs: number;
}

export interface RevalidateInodesResult {
  /** Evicted: the next access reads them from the disk. */
  evicted: number;
  /** Not in the inode cache: nothing to do. */
  notCached: number;
  /** In use: evicted only when their last user lets go. */
  inUse: InodeInUse[];
  inUseTotal: bigint;
}

export interface RevalidateDentriesResult {
  /** Names unhashed (negative dentries included): the next lookup reads the directory. */
  dropped: number;
  notCached: number;
  /** In use, left in place (see DENTRIES_F_UNHASH_BUSY). */
  busy: number;
  /** Mount points or directories with mounts below: never touched. */
  mountpoints: number;
}

export interface QueryMappersOptions {
  devPath?: string;
  /** Room for `mappers`; default and most constants.VMSUBST_MAPPERS_MAX. */
  capacity?: number;
}

export interface QueryMappersResult {
  mappers: Mapper[];
  mappersTotal: bigint;
}

/** What pinning did to one process; struct vmsubst_pin_result. */
export interface PinnedProcess {
  pid: number;
  comm: string;
  /** VMSUBST_PIN_R_* bits. */
  flags: number;
  /** The address space went away before it could be pinned. */
  exited: boolean;
  /** Some pages were not pinned: see bytesFailed, or the budget ran out. */
  partial: boolean;
  bytesCopied: bigint;
  bytesPrivate: bigint;
  bytesFailed: bigint;
}

/**
 * Where PIN_MAPPERS resumes: opaque, handed back as a call returned it.
 * PIN_CURSOR_START is before the first mapping.
 */
export interface PinCursor {
  readonly mm: bigint;
  readonly addr: bigint;
}

export const PIN_CURSOR_START: PinCursor = Object.freeze({ mm: 0n, addr: 0n });

export interface PinMappersOptions {
  devPath?: string;
  /** Room for `pinned`; default and most constants.VMSUBST_PIN_RESULTS_MAX. */
  pinnedCapacity?: number;
  /** Room for `unpinned`; default and most constants.VMSUBST_MAPPERS_MAX. */
  unpinnedCapacity?: number;
  /**
   * Resume after this cursor (VMSUBST_PIN_F_RESUME; needs the kmod feature
   * 'pinCursor'): pass PIN_CURSOR_START first, then each result's `cursor`.
   * Without it every call starts at the first mapping.
   */
  cursor?: PinCursor;
}

export interface PinMappersResult {
  /** One entry per process with a private mapping of the range. */
  pinned: PinnedProcess[];
  pinnedTotal: bigint;
  /** Shared mappings, which cannot get private copies. */
  unpinned: Mapper[];
  unpinnedTotal: bigint;
  bytesCopied: bigint;
  bytesPrivate: bigint;
  bytesFailed: bigint;
  /** VMSUBST_PIN_S_* bits. */
  status: number;
  /** maxPages copies were made and work remains: call again. */
  budgetExhausted: boolean;
  /** Private mappings were left unvisited (too many, or new): call again. */
  truncated: boolean;
  /** Private mappings finished by this call (the cursor moved past them). */
  mappings: number;
  /** With options.cursor: where the next call resumes. */
  cursor?: PinCursor;
}

export interface QueryPagesOptions {
  devPath?: string;
  /** Room for `ranges`; default and most constants.VMSUBST_RANGES_MAX. */
  capacity?: number;
}

/** VMSUBST_IOC_QUERY_PAGES: the state of a file range's pages; a snapshot, nothing changed. */
export interface QueryPagesResult {
  pagesCached: bigint;
  pagesMapped: bigint;
  /** Written and not yet written back (no fsync yet). */
  pagesDirty: bigint;
  pagesWriteback: bigint;
  /** The runs of dirty and writeback pages ('dirty', 'writeback' states). */
  ranges: PageRange[];
  rangesTotal: bigint;
  /** pagesDirty + pagesWriteback > 0: the guest holds data of the range not on the disk yet. */
  unwritten: boolean;
}

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

// ---- the raw addon --------------------------------------------------------------

type ErrorCallback = (err: NativeError | null) => void;

interface RawStreamHandle {
  readStart(): void;
  readStop(): void;
  write(chunks: Buffer[], cb: ErrorCallback): void;
  shutdown(cb: ErrorCallback): void;
  close(cb?: () => void): void;
  ref(): void;
  unref(): void;
}

interface RawListener {
  start(): void;
  stop(): void;
  close(cb?: () => void): void;
  ref(): void;
  unref(): void;
}

interface RawConnector {
  cancel(): void;
}

interface VsockName {
  cid: number;
  port: number;
}

/** A record as the glue returns it; the facade adds the decoded fields. */
interface RawPageRange {
  offset: bigint;
  length: bigint;
  state: number;
}

interface RawMapper {
  pid: number;
  comm: string;
  start: bigint;
  end: bigint;
  offset: bigint;
  flags: number;
}

interface RawInodeStatus {
  ino: bigint;
  reasons: number;
  refs: number;
}

interface RawPinResult {
  pid: number;
  comm: string;
  flags: number;
  bytesCopied: bigint;
  bytesPrivate: bigint;
  bytesFailed: bigint;
}

interface RawInvalidateResult {
  pagesCached: bigint;
  pagesMapped: bigint;
  pagesDropped: bigint;
  pagesKept: bigint;
  pagesRefaulted: bigint;
  outcomes: RawPageRange[];
  outcomesTotal: bigint;
  mappers: RawMapper[];
  mappersTotal: bigint;
}

interface RawPinMappersResult {
  bytesCopied: bigint;
  bytesPrivate: bigint;
  bytesFailed: bigint;
  status: number;
  mappings: number;
  pinned: RawPinResult[];
  pinnedTotal: bigint;
  unpinned: RawMapper[];
  unpinnedTotal: bigint;
  cursor?: PinCursor;
}

interface RawQueryPagesResult {
  pagesCached: bigint;
  pagesMapped: bigint;
  pagesDirty: bigint;
  pagesWriteback: bigint;
  ranges: RawPageRange[];
  rangesTotal: bigint;
}

interface NativeBinding {
  fiemap(fd: number): Extent[];
  dataSegments(fd: number, size: number): [number, number][];
  compareSpan(fdA: number, fdB: number, offset: number, length: number, blockSize: number): Promise<Float64Array>;
  /** Absent from addons built before the native walk: the index then walks in JavaScript. */
  TreeWalk?: new (root: string, dev: number, maxEntries: number, threads: number, flags?: number) => TreeWalk;
  readDirect(path: string, offset: number, length: number): Promise<Buffer>;
  kmodVersion(devPath: string): VersionInfo;
  invalidateRange(
    devPath: string,
    fd: number,
    offset: bigint,
    length: bigint,
    flags: number,
    outcomesCap: number,
    mappersCap: number,
  ): Promise<RawInvalidateResult>;
  invalidateBdev(
    devPath: string,
    fd: number,
    offset: bigint,
    length: bigint,
    flags: number,
    keptCap: number,
  ): Promise<{ pagesCached: bigint; pagesDropped: bigint; pagesKept: bigint; kept: RawPageRange[]; keptTotal: bigint }>;
  revalidateInodes(
    devPath: string,
    fd: number,
    inodes: readonly bigint[],
    flags: number,
  ): Promise<{ evicted: number; notCached: number; inUse: RawInodeStatus[]; inUseTotal: bigint }>;
  revalidateDentries(
    devPath: string,
    fd: number,
    names: readonly string[],
    flags: number,
  ): Promise<RevalidateDentriesResult>;
  queryMappers(
    devPath: string,
    fd: number,
    offset: bigint,
    length: bigint,
    mappersCap: number,
  ): Promise<{ mappers: RawMapper[]; mappersTotal: bigint }>;
  pinMappers(
    devPath: string,
    fd: number,
    offset: bigint,
    length: bigint,
    maxPages: number,
    pinnedCap: number,
    unpinnedCap: number,
    cursor?: PinCursor,
  ): Promise<RawPinMappersResult>;
  /** Absent from addons built before VMSUBST_IOC_QUERY_PAGES. */
  queryPages?(
    devPath: string,
    fd: number,
    offset: bigint,
    length: bigint,
    rangesCap: number,
  ): Promise<RawQueryPagesResult>;
  vsockListen(cid: number, port: number, backlog: number): VsockName & { fd: number };
  vsockConnectStart(cid: number, port: number, timeoutMs: number, localPort: number): number;
  vsockAddresses(fd: number): {
    localCid: number;
    localPort: number;
    remoteCid: number;
    remotePort: number;
  };
  localCid(devPath: string): number;
  sdNotify(socketPath: string, message: string): void;
  closeFd(fd: number): void;
  dupFd(fd: number): number;
  StreamHandle: new (
    fd: number,
    onread: (err: NativeError | null, chunk: Buffer | null) => void,
  ) => RawStreamHandle;
  Listener: new (
    fd: number,
    onconnection: (err: NativeError | null, fd?: number, cid?: number, port?: number) => void,
  ) => RawListener;
  Connector: new (
    fd: number,
    cid: number,
    port: number,
    oncomplete: (err: NativeError | null, fd?: number) => void,
  ) => RawConnector;
  constants: NativeConstants;
}

const BINDING_FUNCTIONS = [
  'fiemap',
  'dataSegments',
  'compareSpan',
  'readDirect',
  'kmodVersion',
  'invalidateRange',
  'invalidateBdev',
  'revalidateInodes',
  'revalidateDentries',
  'queryMappers',
  'pinMappers',
  'vsockListen',
  'vsockConnectStart',
  'vsockAddresses',
  'localCid',
  'sdNotify',
  'closeFd',
  'dupFd',
  'StreamHandle',
  'Listener',
  'Connector',
] as const;

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
 * (build/agent/src/native/index.js → the repository or image root), then
 * relative to the source file (agent/src/native/index.ts) for runners that
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

function loadBinding(): { binding: NativeBinding; path: string } {
  const candidates = nativeAddonCandidates();
  const path = candidates.find((p) => existsSync(p)) ?? candidates[0] ?? '';
  const require = createRequire(import.meta.url);
  let loaded: unknown;
  try {
    loaded = require(path);
  } catch (cause) {
    const reason = cause instanceof Error ? cause.message : String(cause);
    throw new Error(
      `vmsubst: cannot load the native addon (tried ${candidates.join(', ')}): ${reason}. ` +
        'Build it with `cd agent && npm_config_nodedir=/usr node-gyp rebuild`, ' +
        'or point VMSUBST_NATIVE_PATH at vmsubst_native.node.',
      { cause },
    );
  }
  if (!isBinding(loaded)) {
    throw new Error(
      `vmsubst: ${path} is not the expected addon (missing exports); rebuild agent/native`,
    );
  }
  return { binding: loaded, path };
}

const loaded = loadBinding();
const binding: NativeBinding = loaded.binding;

/** The .node file this process loaded. */
export const nativeAddonPath: string = loaded.path;

export const constants: NativeConstants = Object.freeze({ ...binding.constants });

/** VMSUBST_INVALIDATE_F_FORCE from the kmod's uapi header. */
export const INVALIDATE_F_FORCE: number = constants.VMSUBST_INVALIDATE_F_FORCE;
/**
 * VMSUBST_INVALIDATE_F_UNLESS_DIRTY from the kmod's uapi header: invalidate only if no page of the
 * range is dirty or under writeback (checked under the file's locks; EBUSY, nothing changed,
 * otherwise); allowed on a read-write mount without INVALIDATE_F_FORCE.
 */
export const INVALIDATE_F_UNLESS_DIRTY: number = constants.VMSUBST_INVALIDATE_F_UNLESS_DIRTY;

/** VMSUBST_ABI_VERSION this agent was compiled against. */
export const KMOD_ABI_VERSION: number = constants.VMSUBST_ABI_VERSION;

export const DEFAULT_KMOD_DEVICE = '/dev/vmsubst';
export const DEFAULT_VSOCK_DEVICE = '/dev/vsock';

// ---- errors and argument checks ----------------------------------------------------------

export function isNativeError(value: unknown): value is NativeError {
  if (!(value instanceof Error)) return false;
  const e = value as Partial<NativeError>;
  return typeof e.code === 'string' && typeof e.syscall === 'string' && typeof e.errno === 'number';
}

function nativeError(code: keyof typeof osConstants.errno, syscall: string, detail: string): NativeError {
  const errno = osConstants.errno[code];
  const error = new Error(`${code}: ${detail}`) as NativeError;
  error.code = code;
  error.errno = -errno;
  error.syscall = syscall;
  return error;
}

const U32_MAX = 0xffff_ffff;
const U64_LIMIT = 1n << 64n;

function checkInteger(name: string, value: number, min: number, max: number): void {
  if (typeof value !== 'number' || !Number.isInteger(value)) {
    throw new TypeError(`${name} must be an integer, got ${String(value)}`);
  }
  if (value < min || value > max) {
    throw new RangeError(`${name} must be in [${min}, ${max}], got ${value}`);
  }
}

function checkFd(fd: number): void {
  checkInteger('fd', fd, 0, 0x7fff_ffff);
}

function checkU64(name: string, value: bigint): void {
  if (typeof value !== 'bigint') throw new TypeError(`${name} must be a bigint`);
  if (value < 0n || value >= U64_LIMIT) throw new RangeError(`${name} must be in [0, 2^64)`);
}

// ---- FIEMAP, O_DIRECT, /dev/vmsubst ----------------------------------------------------------

/**
 * Every extent of the open file `fd`, in logical order (FS_IOC_FIEMAP with
 * FIEMAP_FLAG_SYNC, in bounded batches up to FIEMAP_EXTENT_LAST). Holes are
 * gaps between extents; an empty or fully sparse file has none. Synchronous.
 */
export function fiemap(fd: number): Extent[] {
  checkFd(fd);
  return binding.fiemap(fd);
}

/** Most threads one walk maps files with. */
export const WALK_THREADS_MAX: number = 4;

/**
 * Walks the tree at `root` without leaving device `dev` (st_dev of root, from
 * the caller's lstat), mapping every regular file and directory with FIEMAP
 * (see agent/native/walk.c). Each `next(n)` walks about n more records on the
 * libuv thread pool — files spread over up to `threads` threads — so the
 * event loop stays free and one step can be consumed while the next runs.
 * A step rejects with E2BIG past `maxEntries` directory entries; a failed or
 * closed walk rejects further steps. Undefined when the loaded addon predates
 * the native walk.
 */
export const walkTree: WalkTree | undefined = binding.TreeWalk
  ? (root, dev, maxEntries, opts = {}) => {
      if (typeof root !== 'string' || root === '') throw new TypeError('root must be a non-empty string');
      checkInteger('dev', dev, 0, Number.MAX_SAFE_INTEGER);
      checkInteger('maxEntries', maxEntries, 0, 2 ** 32);
      const threads = Math.max(1, Math.min(WALK_THREADS_MAX, availableParallelism()));
      // VS_WALK_F_NO_DIR_FIEMAP, VS_WALK_F_SYNC (agent/native/native.h)
      const flags = (opts.dirExtents === false ? 0x1 : 0) | (opts.sync ? 0x2 : 0);
      return new binding.TreeWalk!(root, dev, maxEntries, threads, flags);
    }
  : undefined;
// The pedigree index is handed `fiemap`; the walk travels with it (pedigree/walk.ts).
fiemap.walkTree = walkTree;

/**
 * The data segments `[offset, length]` of the open file `fd` within
 * [0, size), in order (lseek SEEK_DATA / SEEK_HOLE). Gaps are holes, which
 * read as zeros. A filesystem without SEEK_DATA gives one segment covering
 * everything. Synchronous; moves the file offset.
 */
export function dataSegments(fd: number, size: number): [number, number][] {
  checkFd(fd);
  checkInteger('size', size, 0, Number.MAX_SAFE_INTEGER);
  return binding.dataSegments(fd, size);
}

/** Largest span compareSpan takes (its run list is sized to the span). */
export const COMPARE_SPAN_MAX = 1 << 30;

/**
 * The runs of differing blocks between the open files `fdA` and `fdB` over
 * [offset, offset + length), as [offset, length] pairs in order, adjacent
 * differing blocks merged. Both files are read with pread in VS_COMPARE_BUF (64 KiB) steps
 * and compared with memcmp on the libuv thread pool; several spans may run
 * at once. `length` is a multiple of `blockSize` (a power of two, 512 to
 * 64 KiB) and at most COMPARE_SPAN_MAX. A file that ends inside the span
 * rejects with an EIO NativeError ("short read"). The descriptors must stay
 * open until the promise settles.
 */
export function compareSpan(fdA: number, fdB: number, offset: number, length: number, blockSize: number): Promise<Float64Array> {
  checkFd(fdA);
  checkFd(fdB);
  checkInteger('offset', offset, 0, Number.MAX_SAFE_INTEGER);
  checkInteger('length', length, 0, COMPARE_SPAN_MAX);
  return binding.compareSpan(fdA, fdB, offset, length, blockSize);
}

/**
 * Read [offset, offset + length) of a file or block device with O_DIRECT, on
 * the libuv thread pool. Unaligned ranges are served from the enclosing
 * DIRECT_IO_ALIGN-aligned span. A range that runs past the end of the file or
 * device rejects with an EIO NativeError whose message says "short read".
 */
export async function readDirect(path: string, offset: number, length: number): Promise<Buffer> {
  if (typeof path !== 'string' || path === '') throw new TypeError('path must be a non-empty string');
  checkInteger('offset', offset, 0, Number.MAX_SAFE_INTEGER);
  checkInteger('length', length, 0, Number.MAX_SAFE_INTEGER);
  return binding.readDirect(path, offset, length);
}

/** VMSUBST_IOC_VERSION: which kmod is loaded, and what it implements. */
export function kmodVersion(devPath: string = DEFAULT_KMOD_DEVICE): VersionInfo {
  return binding.kmodVersion(devPath);
}

/** The VMSUBST_FEATURE_* bits of `features` (VersionInfo.features) by name. */
export function kmodFeatures(features: bigint): KmodFeature[] {
  const names: Array<[KmodFeature, bigint]> = [
    ['invalidateRange', constants.VMSUBST_FEATURE_INVALIDATE_RANGE],
    ['invalidateRangeV1', constants.VMSUBST_FEATURE_INVALIDATE_RANGE_V1],
    ['invalidateBdev', constants.VMSUBST_FEATURE_INVALIDATE_BDEV],
    ['revalidateInodes', constants.VMSUBST_FEATURE_REVALIDATE_INODES],
    ['revalidateDentries', constants.VMSUBST_FEATURE_REVALIDATE_DENTRIES],
    ['queryMappers', constants.VMSUBST_FEATURE_QUERY_MAPPERS],
    ['pinMappers', constants.VMSUBST_FEATURE_PIN_MAPPERS],
    ['queryPages', constants.VMSUBST_FEATURE_QUERY_PAGES],
    ['invalidateUnlessDirty', constants.VMSUBST_FEATURE_INVALIDATE_UNLESS_DIRTY],
    ['pinCursor', constants.VMSUBST_FEATURE_PIN_CURSOR],
    ['revalidateReplaced', constants.VMSUBST_FEATURE_REVALIDATE_REPLACED],
  ];
  return names.filter(([, bit]) => (features & bit) === bit).map(([name]) => name);
}

function bitNames<T extends string>(bits: number, table: ReadonlyArray<readonly [T, number]>): T[] {
  return table.filter(([, bit]) => (bits & bit) !== 0).map(([name]) => name);
}

const PAGE_STATES: ReadonlyArray<readonly [PageState, number]> = [
  ['dropped', constants.VMSUBST_PAGE_DROPPED],
  ['dirty', constants.VMSUBST_PAGE_DIRTY],
  ['writeback', constants.VMSUBST_PAGE_WRITEBACK],
  ['locked', constants.VMSUBST_PAGE_LOCKED],
  ['pinned', constants.VMSUBST_PAGE_PINNED],
  ['mapped', constants.VMSUBST_PAGE_MAPPED],
  ['busy', constants.VMSUBST_PAGE_BUSY],
];

const INODE_REASONS: ReadonlyArray<readonly [InodeReason, number]> = [
  ['open', constants.VMSUBST_INODE_OPEN],
  ['mapped', constants.VMSUBST_INODE_MAPPED],
  ['writers', constants.VMSUBST_INODE_WRITERS],
  ['dirty', constants.VMSUBST_INODE_DIRTY],
  ['children', constants.VMSUBST_INODE_CHILDREN],
  ['root', constants.VMSUBST_INODE_ROOT],
  ['caller', constants.VMSUBST_INODE_CALLER],
  ['referenced', constants.VMSUBST_INODE_REFERENCED],
];

function pageRange(r: RawPageRange): PageRange {
  return { ...r, states: bitNames(r.state, PAGE_STATES) };
}

function mapper(m: RawMapper): Mapper {
  return {
    ...m,
    exec: (m.flags & constants.VMSUBST_MAP_EXEC) !== 0,
    shared: (m.flags & constants.VMSUBST_MAP_SHARED) !== 0,
    locked: (m.flags & constants.VMSUBST_MAP_LOCKED) !== 0,
    write: (m.flags & constants.VMSUBST_MAP_WRITE) !== 0,
  };
}

function capacity(name: string, value: number | undefined, max: number): number {
  if (value === undefined) return max;
  checkInteger(name, value, 0, max);
  return value;
}

function flagsOf(options: KmodCallOptions): number {
  const flags = options.flags ?? 0;
  checkInteger('flags', flags, 0, U32_MAX);
  return flags;
}

/**
 * VMSUBST_IOC_INVALIDATE_RANGE on the open file `fileFd`, on the thread pool.
 * Keep `fileFd` open until the promise settles. `flags` are
 * constants.VMSUBST_INVALIDATE_F_* (0: zap and drop, the default); the errno
 * contract (EACCES on a read-write mount without INVALIDATE_F_FORCE, ...) is
 * documented in kmod/include/uapi/linux/vmsubst.h.
 */
export async function invalidateRange(
  fileFd: number,
  offset: bigint,
  length: bigint,
  flags: number = 0,
  devPath: string = DEFAULT_KMOD_DEVICE,
  options: InvalidateRangeOptions = {},
): Promise<InvalidateResult> {
  checkFd(fileFd);
  checkU64('offset', offset);
  checkU64('length', length);
  checkInteger('flags', flags, 0, U32_MAX);
  const outcomesCap = capacity('outcomesCapacity', options.outcomesCapacity, constants.VMSUBST_RANGES_MAX);
  const mappersCap = capacity('mappersCapacity', options.mappersCapacity, constants.VMSUBST_MAPPERS_MAX);
  const r = await binding.invalidateRange(devPath, fileFd, offset, length, flags, outcomesCap, mappersCap);
  return { ...r, outcomes: r.outcomes.map(pageRange), mappers: r.mappers.map(mapper) };
}

/**
 * VMSUBST_IOC_INVALIDATE_BDEV: drop [offset, offset + length) of the block
 * device `bdevFd` (opened by the caller, the partition the filesystem is on)
 * from its buffer cache, where filesystems keep metadata; report what stayed.
 * On a device a read-write filesystem holds it needs constants.VMSUBST_BDEV_F_FORCE.
 */
export async function invalidateBdev(
  bdevFd: number,
  offset: bigint,
  length: bigint,
  options: InvalidateBdevOptions = {},
): Promise<InvalidateBdevResult> {
  checkFd(bdevFd);
  checkU64('offset', offset);
  checkU64('length', length);
  const flags = flagsOf(options);
  const keptCap = capacity('keptCapacity', options.keptCapacity, constants.VMSUBST_RANGES_MAX);
  const r = await binding.invalidateBdev(options.devPath ?? DEFAULT_KMOD_DEVICE, bdevFd, offset, length, flags, keptCap);
  return { ...r, kept: r.kept.map(pageRange) };
}

/**
 * VMSUBST_IOC_REVALIDATE_INODES: evict the cached inodes with these numbers
 * from the filesystem of `fd` (any open file on it; ext2/3/4 only), so they
 * are read from the disk again; the ones in use are reported with why.
 * 1..constants.VMSUBST_INODES_MAX numbers.
 */
export async function revalidateInodes(
  fd: number,
  inodes: readonly bigint[],
  options: KmodCallOptions = {},
): Promise<RevalidateInodesResult> {
  checkFd(fd);
  if (!Array.isArray(inodes)) throw new TypeError('inodes must be an array of bigint');
  checkInteger('inodes.length', inodes.length, 1, constants.VMSUBST_INODES_MAX);
  inodes.forEach((ino, i) => checkU64(`inodes[${i}]`, ino));
  const flags = flagsOf(options);
  const r = await binding.revalidateInodes(options.devPath ?? DEFAULT_KMOD_DEVICE, fd, inodes, flags);
  return {
    ...r,
    inUse: r.inUse.map((st) => ({ ...st, reasonNames: bitNames(st.reasons, INODE_REASONS) })),
  };
}

const utf8 = new TextEncoder();

/** A directory entry name the kernel takes: 1..255 bytes, no '/', no NUL, not . or .. */
function checkName(name: string, i: number): number {
  if (typeof name !== 'string') throw new TypeError(`names[${i}] must be a string`);
  const bytes = utf8.encode(name).length;
  if (bytes < 1 || bytes > 255) throw new RangeError(`names[${i}] must be 1..255 bytes, got ${bytes}`);
  if (name.includes('/') || name.includes('\0') || name === '.' || name === '..') {
    throw new RangeError(`names[${i}] is not a single directory entry name: ${JSON.stringify(name)}`);
  }
  return bytes + 1;
}

/**
 * VMSUBST_IOC_REVALIDATE_DENTRIES in the directory `dirFd`: drop the cached
 * entries of these names (negative ones included) so the next lookup reads
 * the directory from the disk; with no names, every unused entry. Entries in
 * use stay unless constants.VMSUBST_DENTRIES_F_UNHASH_BUSY; mount points never go.
 */
export async function revalidateDentries(
  dirFd: number,
  names: readonly string[] = [],
  options: KmodCallOptions = {},
): Promise<RevalidateDentriesResult> {
  checkFd(dirFd);
  if (!Array.isArray(names)) throw new TypeError('names must be an array of strings');
  checkInteger('names.length', names.length, 0, constants.VMSUBST_NAMES_MAX);
  const size = names.reduce((sum, name, i) => sum + checkName(name, i), 0);
  if (size > constants.VMSUBST_NAMES_SIZE_MAX) {
    throw new RangeError(`names take ${size} bytes, more than ${constants.VMSUBST_NAMES_SIZE_MAX}`);
  }
  const flags = flagsOf(options);
  return binding.revalidateDentries(options.devPath ?? DEFAULT_KMOD_DEVICE, dirFd, names, flags);
}

/**
 * VMSUBST_IOC_QUERY_MAPPERS: every mapping of [offset, offset + length) of
 * the open file `fileFd`, with the owning process; a snapshot.
 */
export async function queryMappers(
  fileFd: number,
  offset: bigint,
  length: bigint,
  options: QueryMappersOptions = {},
): Promise<QueryMappersResult> {
  checkFd(fileFd);
  checkU64('offset', offset);
  checkU64('length', length);
  const cap = capacity('capacity', options.capacity, constants.VMSUBST_MAPPERS_MAX);
  const r = await binding.queryMappers(options.devPath ?? DEFAULT_KMOD_DEVICE, fileFd, offset, length, cap);
  return { mappers: r.mappers.map(mapper), mappersTotal: r.mappersTotal };
}

/**
 * VMSUBST_IOC_PIN_MAPPERS: give every process that maps [offset, offset +
 * length) of `fileFd` privately its own copy of those pages, at most
 * `maxPages` copies (1..constants.VMSUBST_PIN_PAGES_MAX) per call, so that
 * it keeps the old image after the blocks change. Call while the disk still
 * holds the old blocks; call again while `budgetExhausted` or `truncated`,
 * with `options.cursor` set to the previous result's `cursor` (start with
 * PIN_CURSOR_START) so that mappings beyond the first
 * constants.VMSUBST_PIN_VMAS_MAX are reached too.
 */
export async function pinMappers(
  fileFd: number,
  offset: bigint,
  length: bigint,
  maxPages: number,
  options: PinMappersOptions = {},
): Promise<PinMappersResult> {
  checkFd(fileFd);
  checkU64('offset', offset);
  checkU64('length', length);
  checkInteger('maxPages', maxPages, 1, constants.VMSUBST_PIN_PAGES_MAX);
  const pinnedCap = capacity('pinnedCapacity', options.pinnedCapacity, constants.VMSUBST_PIN_RESULTS_MAX);
  const unpinnedCap = capacity('unpinnedCapacity', options.unpinnedCapacity, constants.VMSUBST_MAPPERS_MAX);
  if (options.cursor !== undefined) {
    checkU64('cursor.mm', options.cursor.mm);
    checkU64('cursor.addr', options.cursor.addr);
  }
  const r = await binding.pinMappers(
    options.devPath ?? DEFAULT_KMOD_DEVICE,
    fileFd,
    offset,
    length,
    maxPages,
    pinnedCap,
    unpinnedCap,
    ...(options.cursor === undefined ? [] : [{ mm: options.cursor.mm, addr: options.cursor.addr }]),
  );
  return {
    ...r,
    pinned: r.pinned.map((p) => ({
      ...p,
      exited: (p.flags & constants.VMSUBST_PIN_R_EXITED) !== 0,
      partial: (p.flags & constants.VMSUBST_PIN_R_PARTIAL) !== 0,
    })),
    unpinned: r.unpinned.map(mapper),
    budgetExhausted: (r.status & constants.VMSUBST_PIN_S_BUDGET) !== 0,
    truncated: (r.status & constants.VMSUBST_PIN_S_TRUNCATED) !== 0,
  };
}

/**
 * VMSUBST_IOC_QUERY_PAGES: how many pages of [offset, offset + length) of
 * `fileFd` are cached, mapped, dirty and under writeback, and the runs of
 * dirty and writeback pages. Changes nothing; a snapshot. Before the host
 * writes, `unwritten` means the guest wrote the range without fsync: a
 * substitution there would lose the guest's data or be overwritten by it.
 */
export async function queryPages(
  fileFd: number,
  offset: bigint,
  length: bigint,
  options: QueryPagesOptions = {},
): Promise<QueryPagesResult> {
  checkFd(fileFd);
  checkU64('offset', offset);
  checkU64('length', length);
  const cap = capacity('capacity', options.capacity, constants.VMSUBST_RANGES_MAX);
  if (binding.queryPages === undefined) {
    throw new TypeError('the native addon predates queryPages: rebuild it (make addon)');
  }
  const r = await binding.queryPages(options.devPath ?? DEFAULT_KMOD_DEVICE, fileFd, offset, length, cap);
  return { ...r, ranges: r.ranges.map(pageRange), unwritten: r.pagesDirty + r.pagesWriteback > 0n };
}

// ---- streams ----------------------------------------------------------------------------------

export interface AdoptOptions {
  /**
   * Keep the writable side open after the peer's EOF (default false, like
   * net.Socket: the stream ends its side too, then closes).
   */
  allowHalfOpen?: boolean;
}

/**
 * A connected fd adopted into libuv as a stream.Duplex. Reading starts when
 * the stream is read and stops while its buffer is full; end() half-closes
 * (shutdown(SHUT_WR); on a character device or pipe it only flushes);
 * destroy() closes the fd.
 */
class NativeStream extends Duplex {
  #handle: RawStreamHandle | null;
  #reading = false;

  constructor(fd: number, options: AdoptOptions = {}) {
    super({ allowHalfOpen: options.allowHalfOpen ?? false });
    this.#handle = new binding.StreamHandle(fd, (err, chunk) => {
      this.#onRead(err, chunk);
    });
  }

  #onRead(err: NativeError | null, chunk: Buffer | null): void {
    if (err !== null) {
      this.#reading = false;
      this.destroy(err);
      return;
    }
    if (chunk === null) {
      this.#reading = false; // libuv stops reading at EOF by itself
      this.push(null);
      return;
    }
    if (!this.push(chunk)) this.#stopReading();
  }

  #stopReading(): void {
    if (this.#reading && this.#handle !== null) {
      this.#handle.readStop();
      this.#reading = false;
    }
  }

  override _read(): void {
    if (this.#reading || this.#handle === null) return;
    try {
      this.#handle.readStart();
      this.#reading = true;
    } catch (err) {
      this.destroy(err instanceof Error ? err : new Error(String(err)));
    }
  }

  override _write(chunk: Buffer, _encoding: BufferEncoding, callback: (error?: Error | null) => void): void {
    this.#writeChunks([chunk], callback);
  }

  override _writev(
    chunks: Array<{ chunk: Buffer; encoding: BufferEncoding }>,
    callback: (error?: Error | null) => void,
  ): void {
    this.#writeChunks(
      chunks.map((c) => c.chunk),
      callback,
    );
  }

  #writeChunks(chunks: Buffer[], callback: (error?: Error | null) => void): void {
    if (this.#handle === null) {
      callback(nativeError('EBADF', 'write', 'bad file descriptor, write (stream is closed)'));
      return;
    }
    try {
      this.#handle.write(chunks, callback);
    } catch (err) {
      callback(err instanceof Error ? err : new Error(String(err)));
    }
  }

  override _final(callback: (error?: Error | null) => void): void {
    if (this.#handle === null) {
      callback();
      return;
    }
    // Like net.Socket: a peer that already went away makes shutdown fail
    // with ENOTCONN, which is not an error for ending our side.
    const done = (err: NativeError | null): void => {
      callback(err !== null && err.code !== 'ENOTCONN' ? err : null);
    };
    try {
      this.#handle.shutdown(done);
    } catch (err) {
      done(isNativeError(err) ? err : nativeError('EIO', 'shutdown', String(err)));
    }
  }

  override _destroy(error: Error | null, callback: (error?: Error | null) => void): void {
    const handle = this.#handle;
    this.#handle = null;
    this.#reading = false;
    if (handle === null) {
      callback(error);
      return;
    }
    handle.close(() => callback(error));
  }

  /** Let the process exit while this stream is open (like net.Socket#unref). */
  unref(): this {
    this.#handle?.unref();
    return this;
  }

  ref(): this {
    this.#handle?.ref();
    return this;
  }
}

/**
 * Adopt an already-open, pollable, connected fd (a socket, or a character
 * device such as /dev/virtio-ports/org.vmsubst.0) into the event loop. The
 * stream owns the fd from then on and closes it on destroy; libuv puts it in
 * non-blocking mode. If adoption throws, the caller still owns the fd.
 *
 * A virtio-serial port reads as end-of-file while no host program has it
 * open (the kernel returns 0 and polls EPOLLHUP), so such a stream ends when
 * the host disconnects, or at once if it never connected; reopen the device
 * to wait for the next host connection.
 */
export function adoptStream(fd: number, options?: AdoptOptions): Duplex {
  checkFd(fd);
  return new NativeStream(fd, options);
}

// ---- vsock ----------------------------------------------------------------------------------

export interface VsockAddresses {
  localCid: number;
  localPort: number;
  remoteCid: number;
  remotePort: number;
}

/**
 * A connected AF_VSOCK stream. Created by vsockConnect() and VsockServer.
 * The addresses are the kernel's: remoteCid/remotePort from accept4() or
 * getpeername(), localCid/localPort from getsockname() — which reports
 * VMADDR_CID_ANY as the localCid of an auto-bound client socket (localCid()
 * gives this machine's CID).
 */
export class VsockSocket extends NativeStream {
  readonly remoteCid: number;
  readonly remotePort: number;
  readonly localCid: number;
  readonly localPort: number;

  /** Takes ownership of fd on success. Not meant to be called directly. */
  constructor(fd: number, addresses: VsockAddresses, options?: AdoptOptions) {
    super(fd, options);
    this.remoteCid = addresses.remoteCid;
    this.remotePort = addresses.remotePort;
    this.localCid = addresses.localCid;
    this.localPort = addresses.localPort;
  }
}

/** Listens for vsock connections; emits 'connection' (VsockSocket), 'error' and 'close'. */
export interface VsockServer extends EventEmitter {
  readonly port: number;
  readonly cid: number;
  close(): void;
  ref(): this;
  unref(): this;
}

// Accept errors that mean "out of resources now": retrying at once would spin.
const ACCEPT_BACKOFF_CODES = new Set(['EMFILE', 'ENFILE', 'ENOBUFS', 'ENOMEM']);
const ACCEPT_BACKOFF_MS = 100;

class VsockServerImpl extends EventEmitter implements VsockServer {
  readonly port: number;
  readonly cid: number;
  #listener: RawListener | null;
  #backoff: NodeJS.Timeout | null = null;
  #refed = true;
  readonly #socketOptions: AdoptOptions;

  constructor(fd: number, cid: number, port: number, socketOptions: AdoptOptions) {
    super();
    this.cid = cid;
    this.port = port;
    this.#socketOptions = socketOptions;
    this.#listener = new binding.Listener(fd, (err, connFd, peerCid, peerPort) => {
      this.#onConnection(err, connFd, peerCid, peerPort);
    });
  }

  #onConnection(err: NativeError | null, fd?: number, peerCid?: number, peerPort?: number): void {
    if (err !== null || fd === undefined || peerCid === undefined || peerPort === undefined) {
      const error = err ?? nativeError('EPROTO', 'accept', 'protocol error, accept (no fd)');
      if (ACCEPT_BACKOFF_CODES.has(error.code)) this.#pause();
      this.emit('error', error);
      return;
    }
    let socket: VsockSocket;
    try {
      const local = binding.vsockAddresses(fd);
      socket = new VsockSocket(
        fd,
        {
          localCid: local.localCid,
          localPort: local.localPort,
          remoteCid: peerCid,
          remotePort: peerPort,
        },
        this.#socketOptions,
      );
    } catch (e) {
      binding.closeFd(fd);
      // A peer that vanished between accept and getpeername is not the server's failure.
      if (isNativeError(e) && e.code === 'ENOTCONN') return;
      this.emit('error', e);
      return;
    }
    this.emit('connection', socket);
  }

  #pause(): void {
    const listener = this.#listener;
    if (listener === null || this.#backoff !== null) return;
    listener.stop();
    this.#backoff = setTimeout(() => {
      this.#backoff = null;
      this.#listener?.start();
    }, ACCEPT_BACKOFF_MS);
    if (!this.#refed) this.#backoff.unref();
  }

  close(): void {
    const listener = this.#listener;
    if (listener === null) return;
    this.#listener = null;
    if (this.#backoff !== null) {
      clearTimeout(this.#backoff);
      this.#backoff = null;
    }
    listener.close(() => this.emit('close'));
  }

  ref(): this {
    this.#refed = true;
    this.#listener?.ref();
    this.#backoff?.ref();
    return this;
  }

  unref(): this {
    this.#refed = false;
    this.#listener?.unref();
    this.#backoff?.unref();
    return this;
  }
}

export interface VsockListenOptions extends AdoptOptions {
  /** Local CID to bind (default VMADDR_CID_ANY). */
  cid?: number;
  /** listen() backlog (default 128; the kernel caps it at somaxconn). */
  backlog?: number;
}

/**
 * Listen on vsock `port` (constants.VMADDR_PORT_ANY picks a free one; read it
 * back from server.port). Throws a NativeError synchronously when AF_VSOCK is
 * unavailable or the port is taken.
 */
export function vsockListen(port: number, opts: VsockListenOptions = {}): VsockServer {
  const cid = opts.cid ?? constants.VMADDR_CID_ANY;
  const backlog = opts.backlog ?? 128;
  checkInteger('port', port, 0, U32_MAX);
  checkInteger('cid', cid, 0, U32_MAX);
  checkInteger('backlog', backlog, 0, 65535);
  const bound = binding.vsockListen(cid, port, backlog);
  try {
    return new VsockServerImpl(bound.fd, bound.cid, bound.port, {
      allowHalfOpen: opts.allowHalfOpen ?? false,
    });
  } catch (err) {
    binding.closeFd(bound.fd);
    throw err;
  }
}

export interface VsockConnectOptions extends AdoptOptions {
  /**
   * Give up after this many milliseconds (rejects with ETIMEDOUT). Without
   * it the transport's own connect timeout applies (2 s on Linux).
   */
  timeoutMs?: number;
  /**
   * The local port to bind first: 'reserved' takes a free one below 1024
   * (needs CAP_NET_BIND_SERVICE: EACCES otherwise), which tells the guest
   * agent the peer is privileged; a number that port; default any.
   */
  localPort?: number | 'reserved';
}

const VSOCK_PORT_NONE = 0xffffffff;
const VSOCK_PORT_RESERVED = 0xfffffffe;

/** dup(2) with close-on-exec: a second descriptor of the same open file. */
export function dupFd(fd: number): number {
  checkInteger('fd', fd, 0, 0x7fffffff);
  return binding.dupFd(fd);
}

// The kernel's connect timeout is set a little past ours, so that our timer,
// not the transport, decides when a long timeout ends.
const KERNEL_TIMEOUT_SLACK_MS = 1000;

/** Connect to cid:port without blocking the event loop. */
export function vsockConnect(
  cid: number,
  port: number,
  opts: VsockConnectOptions = {},
): Promise<VsockSocket> {
  return new Promise<VsockSocket>((resolve, reject) => {
    const { timeoutMs } = opts;
    let fd: number;
    try {
      checkInteger('cid', cid, 0, U32_MAX);
      checkInteger('port', port, 0, U32_MAX);
      if (timeoutMs !== undefined) checkInteger('timeoutMs', timeoutMs, 1, U32_MAX - KERNEL_TIMEOUT_SLACK_MS);
      const { localPort } = opts;
      if (typeof localPort === 'number') checkInteger('localPort', localPort, 0, VSOCK_PORT_RESERVED - 1);
      fd = binding.vsockConnectStart(
        cid,
        port,
        timeoutMs === undefined ? 0 : timeoutMs + KERNEL_TIMEOUT_SLACK_MS,
        localPort === undefined ? VSOCK_PORT_NONE : localPort === 'reserved' ? VSOCK_PORT_RESERVED : localPort,
      );
    } catch (err) {
      reject(err);
      return;
    }

    let timer: NodeJS.Timeout | undefined;
    let connector: RawConnector;
    try {
      connector = new binding.Connector(fd, cid, port, (err, connectedFd) => {
        if (timer !== undefined) clearTimeout(timer);
        if (err !== null || connectedFd === undefined) {
          reject(err ?? nativeError('EPROTO', 'connect', `protocol error, connect vsock ${cid}:${port}`));
          return;
        }
        try {
          resolve(
            new VsockSocket(connectedFd, binding.vsockAddresses(connectedFd), {
              allowHalfOpen: opts.allowHalfOpen ?? false,
            }),
          );
        } catch (e) {
          binding.closeFd(connectedFd);
          reject(e);
        }
      });
    } catch (err) {
      binding.closeFd(fd);
      reject(err);
      return;
    }
    if (timeoutMs !== undefined) {
      timer = setTimeout(() => {
        connector.cancel(); // closes the socket; no completion callback follows
        reject(
          nativeError(
            'ETIMEDOUT',
            'connect',
            `connection timed out, connect vsock ${cid}:${port} (after ${timeoutMs} ms)`,
          ),
        );
      }, timeoutMs);
    }
  });
}

/** This machine's CID (IOCTL_VM_SOCKETS_GET_LOCAL_CID on /dev/vsock). */
export function localCid(devPath: string = DEFAULT_VSOCK_DEVICE): number {
  return binding.localCid(devPath);
}

/** sd_notify(3): sends `message` ("READY=1", "WATCHDOG=1", ...) to the AF_UNIX socket `socketPath`. */
export function sdNotify(socketPath: string, message: string): void {
  binding.sdNotify(socketPath, message);
}
