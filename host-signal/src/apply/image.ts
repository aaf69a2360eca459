/**
 * The raw-file mode: applying a bundle to a raw image file, for hypervisors
 * that read their raw disk image through the host page cache (Firecracker,
 * Cloud Hypervisor; or any VM that is not running). The blocks are written
 * with pwrite through the page cache (never O_DIRECT), so the VMM's next read
 * sees them, then fdatasync'd. The constraints (docs/apply-modes.md):
 *
 * - raw format, and a VMM that keeps no cache of its own over the file;
 * - no VMM writes to the changed blocks while they are replaced (vmsubst
 *   cannot pause these VMs: their pause is in the VMM's own API), so the
 *   guest sees the disk change during the write window, which is reported;
 * - the guest must be told (notify) to drop its stale caches.
 *
 * QEMU is refused: it may cache (O_DIRECT with its own buffers, qcow2
 * metadata) and must be written through its block layer (--qmp). It is
 * recognised by its image locks or its process name. QEMU is the only VMM
 * recognised: any other process that has the image open for writing (its
 * fds in /proc/PID/fd that are this file, by device and inode, with O_WRONLY
 * or O_RDWR in /proc/PID/fdinfo) is refused too, unless named in
 * allowWriters — a writer could overwrite the new blocks, or keep the old
 * ones in a cache of its own. A process that opens the file after the check
 * is not seen.
 */
import { open, type FileHandle } from 'node:fs/promises';
import { performance } from 'node:perf_hooks';
import { CancelledError, TargetError } from '../errors.js';
import { probeFormat } from '../diff/index.js';
import {
  checkTargetSize,
  inspectTarget,
  loadRanges,
  ms,
  refuseMismatch,
  writeRanges,
  type ApplyProgress,
  type BlockTarget,
  type BundleData,
  type Substitution,
} from './core.js';
import { fileLocks, fileOpeners, isQemuLock, type FileOpener } from './locks.js';

export interface ImageApplyOptions {
  onProgress?: ApplyProgress;
  signal?: AbortSignal;
  /**
   * Apply even if QEMU appears to use the image (default false). Only for a QEMU known to be stopped with its file
   * closed.
   */
  ignoreLocks?: boolean;
  /** Runs once the ranges are verified, before the first write (the two-phase `prepare`). */
  beforeWrite?: () => Promise<void>;
  /**
   * Processes whose write access to the image is accepted: the VM's own VMM,
   * when its guest does not write the changed blocks. Any other process with
   * the image open for writing makes the apply refuse.
   */
  allowWriters?: readonly number[];
}

export interface ImageApplyResult extends Substitution {
  id: string;
  mode: 'raw-file';
  target: { kind: 'image'; path: string };
  /** Never paused: vmsubst has no hold on these hypervisors. */
  pauseMs: null;
  /**
   * The write window: first pwrite to last, during which the guest could read a mix of old and new ranges (the
   * fdatasync follows).
   */
  windowMs: number | null;
  /** Other processes that had the image open (the VMM), as /proc shows them. */
  openers: FileOpener[];
  elapsedMs: number;
  warnings: string[];
}

export async function applyToImage(
  bundle: BundleData,
  path: string,
  options: ImageApplyOptions = {},
): Promise<ImageApplyResult> {
  const started = performance.now();
  const { manifest } = bundle;
  if (!bundle.verified)
    throw new TargetError("the bundle's data has not been verified", 'open the bundle with data verification');
  let handle: FileHandle;
  try {
    handle = await open(path, 'r+');
  } catch (e) {
    throw new TargetError(
      `cannot open image ${path}: ${(e as Error).message}`,
      'give the path of a raw disk image you may write',
      { cause: e },
    );
  }
  const warnings: string[] = [];
  try {
    const st = await handle.stat();
    if (!st.isFile()) {
      throw new TargetError(`${path} is not a regular file`, 'only raw image files are supported by --image');
    }
    if ((await probeFormat(path)) === 'qcow2') {
      throw new TargetError(
        `${path} is a qcow2 image`,
        'the raw-file mode writes raw images only; a qcow2 image must be written through QEMU (--qmp)',
      );
    }
    const openers = await fileOpeners(path);
    if (!options.ignoreLocks) {
      const qemuLocks = (await fileLocks(path)).filter(isQemuLock);
      const qemu = openers.filter((o) => o.comm.startsWith('qemu'));
      if (qemuLocks.length > 0 || qemu.length > 0) {
        const who = qemu.length > 0 ? qemu.map((o) => `${o.comm}[${o.pid}]`).join(', ') : 'QEMU (its image locks)';
        throw new TargetError(
          `image ${path} is locked by another process (${who}): QEMU is using it, and QEMU's caches would go stale`,
          'apply to a running QEMU through --qmp SOCK (--mode nbd or overlay); never write an image behind QEMU',
        );
      }
    }
    const allowed = new Set(options.allowWriters ?? []);
    const writers = openers.filter((o) => o.writable && !allowed.has(o.pid));
    if (writers.length > 0) {
      const who = writers.map((o) => `${o.comm}[${o.pid}]`).join(', ');
      throw new TargetError(
        `image ${path} is open for writing by another process: ${who}; nothing was written`,
        `a writer could overwrite the new blocks or keep the old ones in a cache of its own (vmsubst recognises ` +
          `only QEMU as a VMM). Stop it or have it open the image read-only; if it is this VM's VMM and the guest ` +
          `does not write the changed blocks (a read-only filesystem), accept it with --allow-writer ` +
          `${writers[0]!.pid}`,
      );
    }
    for (const o of openers.filter((x) => x.direct)) {
      warnings.push(
        `${o.comm}[${o.pid}] has the image open with O_DIRECT: it sees the new blocks only once they are written ` +
          `back (after the fdatasync), and must keep no cache of its own`,
      );
    }
    checkTargetSize(manifest, st.size, `image ${path}`);
    const target = fileTarget(handle, st.size);
    const base = {
      id: manifest.id,
      mode: 'raw-file' as const,
      target: { kind: 'image' as const, path },
      pauseMs: null,
      openers,
      warnings,
      ranges: manifest.ranges.length,
      elapsedMs: 0,
    };
    const none = { rangesWritten: 0, rangesAlreadyNew: 0, bytesWritten: 0 };
    if (manifest.ranges.length === 0) {
      return {
        ...base,
        ...none,
        status: 'no-changes',
        verifiedBytes: 0,
        windowMs: null,
        timingsMs: { verify: 0, write: 0 },
        elapsedMs: ms(performance.now() - started),
      };
    }
    const t0 = performance.now();
    const { states, verifiedBytes } = await inspectTarget(manifest, target, options.onProgress);
    const verify = ms(performance.now() - t0);
    refuseMismatch(manifest, states);
    const rangesAlreadyNew = states.filter((s) => s === 'new').length;
    if (rangesAlreadyNew === manifest.ranges.length) {
      return {
        ...base,
        ...none,
        rangesAlreadyNew,
        status: 'already-applied',
        verifiedBytes,
        windowMs: null,
        timingsMs: { verify, write: 0 },
        elapsedMs: ms(performance.now() - started),
      };
    }
    if (options.signal?.aborted) throw new CancelledError('cancelled before writing');
    if (options.beforeWrite) await options.beforeWrite();
    const preloaded = await loadRanges(bundle, states);
    const t1 = performance.now();
    const written = await writeRanges(bundle, target, states, {
      flush: false,
      ...(preloaded ? { preloaded } : {}),
      ...(options.onProgress ? { onProgress: options.onProgress } : {}),
    });
    // The guest can see a mix of old and new ranges only until the last pwrite lands in the page
    // cache; the fdatasync after it is for durability (a host crash), not for what the VMM reads.
    const windowMs = ms(performance.now() - t1);
    await target.flush();
    return {
      ...base,
      status: 'applied',
      ...written,
      rangesAlreadyNew,
      verifiedBytes,
      windowMs,
      timingsMs: { verify, write: ms(performance.now() - t1) },
      elapsedMs: ms(performance.now() - started),
    };
  } finally {
    await handle.close();
  }
}

/** A raw file as a BlockTarget: positional reads and writes through the page cache, fdatasync to flush. */
export function fileTarget(handle: FileHandle, size: number): BlockTarget {
  return {
    size,
    async read(offset, length) {
      const buf = Buffer.allocUnsafe(length);
      let done = 0;
      while (done < length) {
        const { bytesRead } = await handle.read(buf, done, length - done, offset + done);
        if (bytesRead === 0) throw new TargetError(`short read from the image at offset ${offset + done}`);
        done += bytesRead;
      }
      return buf;
    },
    async write(offset, data) {
      let done = 0;
      while (done < data.length) {
        const { bytesWritten } = await handle.write(data, done, data.length - done, offset + done);
        done += bytesWritten;
      }
    },
    flush: () => handle.datasync(),
  };
}
