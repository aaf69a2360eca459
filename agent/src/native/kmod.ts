/**
 * /dev/vmsubst, the kernel module's device, through the agent's addon.
 *
 * A KmodDevice holds the device's fd: opened at its first call (or open()),
 * kept for every later one, closed by close() or when the process exits.
 * Every call takes the file it is about, the range where there is one, and
 * an options object. The result types below are the kernel's answers as the
 * glue (agent/native/glue/kmod.cc) builds them: each struct field of the uapi
 * header (kmod/include/uapi/linux/vmsubst.h) is named there once and typed
 * here once, bits decoded by name included. The errno contract of every
 * command is the uapi header's.
 */
import { binding, constants } from './binding.js';
import { checkFd, checkInteger, checkU64, U32_MAX } from '@vmsubst/common/native/errors';

export const DEFAULT_KMOD_DEVICE = '/dev/vmsubst';

// ---- the kernel's answers -------------------------------------------------------------------

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
  | 'revalidateReplaced'
  | 'queryOpeners';

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

/** VMSUBST_IOC_INVALIDATE_RANGE. */
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

/** VMSUBST_IOC_INVALIDATE_BDEV. */
export interface InvalidateBdevResult {
  pagesCached: bigint;
  pagesDropped: bigint;
  pagesKept: bigint;
  /** The ranges that stayed: buffers the mounted filesystem holds (superblock, group descriptors). */
  kept: PageRange[];
  keptTotal: bigint;
}

/** VMSUBST_INODE_* bits by name: why an inode is still in use. */
export type InodeReason = 'open' | 'mapped' | 'writers' | 'dirty' | 'children' | 'root' | 'caller' | 'referenced';

/** An inode that stays cached because it is in use; struct vmsubst_inode_status. */
export interface InodeInUse {
  ino: bigint;
  /** VMSUBST_INODE_* bits. */
  reasons: number;
  reasonNames: InodeReason[];
  /** References held apart from the kmod's own. */
  refs: number;
}

/** VMSUBST_IOC_REVALIDATE_INODES. */
export interface RevalidateInodesResult {
  /** Evicted: the next access reads them from the disk. */
  evicted: number;
  /** Not in the inode cache: nothing to do. */
  notCached: number;
  /** In use: evicted only when their last user lets go. */
  inUse: InodeInUse[];
  inUseTotal: bigint;
}

/** VMSUBST_IOC_REVALIDATE_DENTRIES. */
export interface RevalidateDentriesResult {
  /** Names unhashed (negative dentries included): the next lookup reads the directory. */
  dropped: number;
  notCached: number;
  /** In use, left in place (see DENTRIES_F_UNHASH_BUSY). */
  busy: number;
  /** Mount points or directories with mounts below: never touched. */
  mountpoints: number;
}

/** VMSUBST_IOC_QUERY_MAPPERS. */
export interface QueryMappersResult {
  mappers: Mapper[];
  mappersTotal: bigint;
}

/** A descriptor of another process that refers to one of the files asked about; struct vmsubst_opener. */
export interface Opener {
  /** Thread-group id, in the agent's pid namespace. */
  pid: number;
  comm: string;
  /** Index in the fds asked about of the (first) fd of that file. */
  file: number;
  /** The descriptor's number in that process. */
  fd: number;
  /** The open file's flags (O_ACCMODE, O_APPEND, ...). */
  flags: number;
  /** Where its next read starts. */
  pos: bigint;
}

export interface QueryOpenersResult {
  /** Descriptor tables the module read. */
  tasks: number;
  openers: Opener[];
  openersTotal: bigint;
}

/** One file of KmodDevice.invalidateFiles. */
export interface InvalidateFile {
  path: string;
  /** The indexed inode the path must still name (st_dev, st_ino). */
  dev: number;
  ino: number;
  /** [offset, length] byte ranges, one VMSUBST_IOC_INVALIDATE_RANGE each. */
  ranges: [bigint, bigint][];
  /** VMSUBST_INVALIDATE_F_* (constants). */
  flags: number;
  /** Pages kept by a range end the batch after this file. */
  stopIfKept?: boolean;
}

/** What became of one file of a batch; the batch ends at the first file that is not `done` (or kept pages). */
export interface InvalidateFileResult {
  state: 'pending' | 'done' | 'open-failed' | 'swapped' | 'ioctl-failed';
  /** open-failed, ioctl-failed: the error (errno, code, syscall). */
  error?: Error;
  /** ioctl-failed: the range whose ioctl failed; done with stopIfKept: the range that kept pages. */
  range: number;
  /** swapped: the st_mode and inode number the path names now. */
  nowMode?: number;
  nowIno?: number;
  pagesCached: bigint;
  pagesMapped: bigint;
  pagesDropped: bigint;
  pagesKept: bigint;
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

/** VMSUBST_IOC_PIN_MAPPERS. */
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

// ---- options --------------------------------------------------------------------------------

/** What every command that changes state takes. */
export interface KmodCallOptions {
  /** The command's VMSUBST_*_F_* flags (constants), default 0. */
  flags?: number;
}

export interface InvalidateRangeOptions extends KmodCallOptions {
  /** Room for `outcomes` entries; default and most constants.VMSUBST_RANGES_MAX. */
  outcomesCapacity?: number;
  /** Room for `mappers` entries; default and most constants.VMSUBST_MAPPERS_MAX. */
  mappersCapacity?: number;
}

export interface InvalidateBdevOptions extends KmodCallOptions {
  /** Room for `kept` entries; default and most constants.VMSUBST_RANGES_MAX. */
  keptCapacity?: number;
}

export interface QueryMappersOptions {
  /** Room for `mappers`; default and most constants.VMSUBST_MAPPERS_MAX. */
  capacity?: number;
}

export interface QueryOpenersOptions {
  /** Room for `openers`; default and most constants.VMSUBST_OPENERS_MAX. */
  capacity?: number;
}

export interface PinMappersOptions {
  /** Copies made by this call at most, 1..constants.VMSUBST_PIN_PAGES_MAX. */
  maxPages: number;
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

export interface QueryPagesOptions {
  /** Room for `ranges`; default and most constants.VMSUBST_RANGES_MAX. */
  capacity?: number;
}

// ---- checks ---------------------------------------------------------------------------------

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

function checkRange(fd: number, offset: bigint, length: bigint): void {
  checkFd(fd);
  checkU64('offset', offset);
  checkU64('length', length);
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
    ['queryOpeners', constants.VMSUBST_FEATURE_QUERY_OPENERS],
  ];
  return names.filter(([, bit]) => (features & bit) === bit).map(([name]) => name);
}

// ---- the device -----------------------------------------------------------------------------

/** Devices still open, closed when the process exits. */
const openDevices = new Set<KmodDevice>();
let exitHook = false;

function closeAtExit(device: KmodDevice): void {
  openDevices.add(device);
  if (exitHook) return;
  exitHook = true;
  process.once('exit', () => {
    for (const d of [...openDevices]) d.close();
  });
}

export class KmodDevice {
  readonly path: string;
  #fd: number | null = null;

  constructor(path: string = DEFAULT_KMOD_DEVICE) {
    if (typeof path !== 'string' || path === '') throw new TypeError('path must be a non-empty string');
    this.path = path;
  }

  /** Opens the device now (every call opens it otherwise); throws a NativeError (ENOENT: module not loaded). */
  open(): this {
    if (this.#fd === null) {
      this.#fd = binding().kmodOpen(this.path);
      closeAtExit(this);
    }
    return this;
  }

  get isOpen(): boolean {
    return this.#fd !== null;
  }

  /** Closes the fd; a later call opens the device again. Idempotent. */
  close(): void {
    const fd = this.#fd;
    if (fd === null) return;
    this.#fd = null;
    openDevices.delete(this);
    binding().closeFd(fd);
  }

  #devFd(): number {
    this.open();
    return this.#fd!;
  }

  /** VMSUBST_IOC_VERSION: which kmod is loaded, and what it implements. */
  version(): VersionInfo {
    return binding().kmodVersion(this.#devFd(), this.path);
  }

  /** The features of the loaded kmod by name. */
  features(): KmodFeature[] {
    return kmodFeatures(this.version().features);
  }

  /**
   * VMSUBST_IOC_INVALIDATE_RANGE on the open file `fileFd`, on the thread pool.
   * Keep `fileFd` open until the promise settles. `options.flags` are
   * constants.VMSUBST_INVALIDATE_F_* (0: zap and drop); the errno contract
   * (EACCES on a read-write mount without INVALIDATE_F_FORCE, ...) is the uapi header's.
   */
  async invalidateRange(
    fileFd: number,
    offset: bigint,
    length: bigint,
    options: InvalidateRangeOptions = {},
  ): Promise<InvalidateResult> {
    checkRange(fileFd, offset, length);
    const flags = flagsOf(options);
    const outcomesCap = capacity('outcomesCapacity', options.outcomesCapacity, constants.VMSUBST_RANGES_MAX);
    const mappersCap = capacity('mappersCapacity', options.mappersCapacity, constants.VMSUBST_MAPPERS_MAX);
    return binding().invalidateRange(this.#devFd(), this.path, fileFd, offset, length, flags, outcomesCap, mappersCap);
  }

  /**
   * VMSUBST_IOC_INVALIDATE_BDEV: drop [offset, offset + length) of the block
   * device `bdevFd` (opened by the caller, the partition the filesystem is on)
   * from its buffer cache, where filesystems keep metadata; report what stayed.
   * On a device a read-write filesystem holds it needs constants.VMSUBST_BDEV_F_FORCE.
   */
  async invalidateBdev(
    bdevFd: number,
    offset: bigint,
    length: bigint,
    options: InvalidateBdevOptions = {},
  ): Promise<InvalidateBdevResult> {
    checkRange(bdevFd, offset, length);
    const flags = flagsOf(options);
    const keptCap = capacity('keptCapacity', options.keptCapacity, constants.VMSUBST_RANGES_MAX);
    return binding().invalidateBdev(this.#devFd(), this.path, bdevFd, offset, length, flags, keptCap);
  }

  /**
   * VMSUBST_IOC_REVALIDATE_INODES: evict the cached inodes with these numbers
   * from the filesystem of `fd` (any open file on it; ext2/3/4 only), so they
   * are read from the disk again; the ones in use are reported with why.
   * 1..constants.VMSUBST_INODES_MAX numbers.
   */
  async revalidateInodes(
    fd: number,
    inodes: readonly bigint[],
    options: KmodCallOptions = {},
  ): Promise<RevalidateInodesResult> {
    checkFd(fd);
    if (!Array.isArray(inodes)) throw new TypeError('inodes must be an array of bigint');
    checkInteger('inodes.length', inodes.length, 1, constants.VMSUBST_INODES_MAX);
    inodes.forEach((ino, i) => checkU64(`inodes[${i}]`, ino));
    const flags = flagsOf(options);
    return binding().revalidateInodes(this.#devFd(), this.path, fd, inodes, flags);
  }

  /**
   * VMSUBST_IOC_REVALIDATE_DENTRIES in the directory `dirFd`: drop the cached
   * entries of these names (negative ones included) so the next lookup reads
   * the directory from the disk; with no names, every unused entry. Entries in
   * use stay unless constants.VMSUBST_DENTRIES_F_UNHASH_BUSY; mount points never go.
   */
  async revalidateDentries(
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
    return binding().revalidateDentries(this.#devFd(), this.path, dirFd, names, flags);
  }

  /**
   * VMSUBST_IOC_QUERY_MAPPERS: every mapping of [offset, offset + length) of
   * the open file `fileFd`, with the owning process; a snapshot.
   */
  async queryMappers(
    fileFd: number,
    offset: bigint,
    length: bigint,
    options: QueryMappersOptions = {},
  ): Promise<QueryMappersResult> {
    checkRange(fileFd, offset, length);
    const cap = capacity('capacity', options.capacity, constants.VMSUBST_MAPPERS_MAX);
    return binding().queryMappers(this.#devFd(), this.path, fileFd, offset, length, cap);
  }

  /**
   * Open (by path, checked to be the indexed inode), VMSUBST_IOC_INVALIDATE_RANGE each range (the
   * counts only), close: for up to 4096 files in one job on the thread pool, in order, stopping at
   * the first that fails (its result says how; the files after it are `pending`).
   */
  async invalidateFiles(files: readonly InvalidateFile[]): Promise<InvalidateFileResult[]> {
    checkInteger('files.length', files.length, 0, 4096);
    for (const f of files) {
      checkInteger('flags', f.flags, 0, U32_MAX);
      for (const [offset, length] of f.ranges) {
        checkU64('offset', offset);
        checkU64('length', length);
      }
    }
    return binding().invalidateFiles(this.#devFd(), this.path, files);
  }

  /**
   * VMSUBST_IOC_QUERY_OPENERS: the descriptors of every other process that
   * refer to the files open as `fileFds` (1..constants.VMSUBST_OPENERS_FILES_MAX
   * of them), in one pass over the processes; a snapshot.
   */
  async queryOpeners(fileFds: readonly number[], options: QueryOpenersOptions = {}): Promise<QueryOpenersResult> {
    checkInteger('fileFds.length', fileFds.length, 1, constants.VMSUBST_OPENERS_FILES_MAX);
    fileFds.forEach((fd) => checkFd(fd));
    const cap = capacity('capacity', options.capacity, constants.VMSUBST_OPENERS_MAX);
    return binding().queryOpeners(this.#devFd(), this.path, fileFds, cap);
  }

  /**
   * VMSUBST_IOC_PIN_MAPPERS: give every process that maps [offset, offset +
   * length) of `fileFd` privately its own copy of those pages, at most
   * `options.maxPages` copies per call, so that it keeps the old image after
   * the blocks change. Call while the disk still holds the old blocks; call
   * again while `budgetExhausted` or `truncated`, with `options.cursor` set to
   * the previous result's `cursor` (start with PIN_CURSOR_START) so that
   * mappings beyond the first constants.VMSUBST_PIN_VMAS_MAX are reached too.
   */
  async pinMappers(
    fileFd: number,
    offset: bigint,
    length: bigint,
    options: PinMappersOptions,
  ): Promise<PinMappersResult> {
    checkRange(fileFd, offset, length);
    checkInteger('maxPages', options.maxPages, 1, constants.VMSUBST_PIN_PAGES_MAX);
    const pinnedCap = capacity('pinnedCapacity', options.pinnedCapacity, constants.VMSUBST_PIN_RESULTS_MAX);
    const unpinnedCap = capacity('unpinnedCapacity', options.unpinnedCapacity, constants.VMSUBST_MAPPERS_MAX);
    const { cursor } = options;
    if (cursor !== undefined) {
      checkU64('cursor.mm', cursor.mm);
      checkU64('cursor.addr', cursor.addr);
    }
    return binding().pinMappers(
      this.#devFd(),
      this.path,
      fileFd,
      offset,
      length,
      options.maxPages,
      pinnedCap,
      unpinnedCap,
      cursor,
    );
  }

  /**
   * VMSUBST_IOC_QUERY_PAGES: how many pages of [offset, offset + length) of
   * `fileFd` are cached, mapped, dirty and under writeback, and the runs of
   * dirty and writeback pages. Changes nothing; a snapshot. Before the host
   * writes, `unwritten` means the guest wrote the range without fsync: a
   * substitution there would lose the guest's data or be overwritten by it.
   */
  async queryPages(
    fileFd: number,
    offset: bigint,
    length: bigint,
    options: QueryPagesOptions = {},
  ): Promise<QueryPagesResult> {
    checkRange(fileFd, offset, length);
    const cap = capacity('capacity', options.capacity, constants.VMSUBST_RANGES_MAX);
    return binding().queryPages(this.#devFd(), this.path, fileFd, offset, length, cap);
  }
}
