/**
 * Applying a bundle to a raw image file: for hypervisors other than QEMU, or a
 * VM that is not running. The image must not be open in a running hypervisor
 * (QEMU's caches would go stale); a lock on the file is taken as proof that it
 * is, and refused.
 */
import { open, type FileHandle } from 'node:fs/promises';
import { performance } from 'node:perf_hooks';
import { TargetError } from '../errors.js';
import { substitute, type ApplyProgress, type BlockTarget, type BundleData, type Substitution } from './core.js';
import { fileLocks } from './locks.js';

export interface ImageApplyOptions {
  onProgress?: ApplyProgress;
  signal?: AbortSignal;
  /** Apply even if another process holds a lock on the image (default false). */
  ignoreLocks?: boolean;
}

export interface ImageApplyResult extends Substitution {
  id: string;
  target: { kind: 'image'; path: string };
  elapsedMs: number;
}

export async function applyToImage(bundle: BundleData, path: string, options: ImageApplyOptions = {}): Promise<ImageApplyResult> {
  const started = performance.now();
  let handle: FileHandle;
  try {
    handle = await open(path, 'r+');
  } catch (e) {
    throw new TargetError(`cannot open image ${path}: ${(e as Error).message}`, 'give the path of a raw disk image you may write', { cause: e });
  }
  try {
    const st = await handle.stat();
    if (!st.isFile()) {
      throw new TargetError(`${path} is not a regular file`, 'only raw image files are supported by --image');
    }
    if (!options.ignoreLocks) {
      const locks = await fileLocks(path);
      if (locks.length > 0) {
        const who = [...new Set(locks.map((l) => (l.pid > 0 ? `pid ${l.pid}` : 'an open-file-description lock, as QEMU takes')))].join(', ');
        throw new TargetError(
          `image ${path} is locked by another process (${who}): a running hypervisor is probably using it`,
          'apply to a running QEMU through --qmp SOCKET; never write an image behind a running VM',
        );
      }
    }
    const target = fileTarget(handle, st.size);
    const outcome = await substitute(bundle, target, { onProgress: options.onProgress, signal: options.signal });
    return {
      ...outcome,
      id: bundle.manifest.id,
      target: { kind: 'image', path },
      elapsedMs: Math.round(performance.now() - started),
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
