/**
 * The real system behind the agent's deps: the native addon, /proc, /sys, /dev.
 * Tests inject their own deps; main.ts uses this.
 */
import type { AgentDeps } from './agent.js';
import type { MetadataOps } from './substitution/metadata.js';
import type { RestartOutcome } from '@vmsubst/common/protocol/schema';
import { pinFile } from './substitution/pin.js';
import { moduleUsers, procUsers, type UsersOps } from './proc/users.js';
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';

type Native = typeof import('./native/index.js');
type KmodDevice = import('./native/index.js').KmodDevice;

export async function systemDeps(): Promise<AgentDeps> {
  const native = await import('./native/index.js');
  // One device per path, opened at its first call and kept until the process exits.
  const devices = new Map<string, KmodDevice>();
  const kmod = (path: string = native.DEFAULT_KMOD_DEVICE): KmodDevice => {
    let device = devices.get(path);
    if (device === undefined) devices.set(path, (device = new native.KmodDevice(path)));
    return device;
  };
  return {
    readDirect: native.readDirect,
    fiemap: native.fiemap,
    // Only the counts are used: no outcome or mapper lists, so neither the addon nor the module
    // allocates and zeroes report arrays at their maximum size (VMSUBST_RANGES_MAX and
    // VMSUBST_MAPPERS_MAX entries, 288 KiB) for every range of every file.
    invalidateRange: (fd, offset, length, flags, device) =>
      kmod(device).invalidateRange(fd, offset, length, { flags, outcomesCapacity: 0, mappersCapacity: 0 }),
    invalidateBatch: (files, device) => kmod(device).invalidateFiles(files),
    forceFlag: native.constants.VMSUBST_INVALIDATE_F_FORCE,
    unlessDirtyFlag: native.constants.VMSUBST_INVALIDATE_F_UNLESS_DIRTY,
    queryDirty: async (fd, offset, length, device) => {
      const r = await kmod(device).queryPages(fd, BigInt(offset), BigInt(length), { capacity: 0 });
      return { dirty: Number(r.pagesDirty), writeback: Number(r.pagesWriteback) };
    },
    dropOnlyFlag: native.constants.VMSUBST_INVALIDATE_F_DROP,
    refaultFlag: native.constants.VMSUBST_INVALIDATE_F_REFAULT_ASYNC,
    pin: (path) => pinFile(kmod(), path),
    users: moduleUsers(usersOps(native, kmod()), procUsers('/proc')),
    restartUnit,
    metadata: metadataOps(native, kmod()),
    vsockListen: (port) => native.vsockListen(port),
    adoptStream: native.adoptStream,
    dupFd: native.dupFd,
    notifyAsync: native.notifyAsync,
    procRoot: '/proc',
    sysRoot: '/sys',
    devRoot: '/dev',
    now: () => performance.now(),
  };
}

/** The module's metadata ioctls, through the addon; lists longer than the module takes are split. */
export function metadataOps(native: Native, device: KmodDevice): MetadataOps {
  const c = native.constants;
  return {
    async invalidateBdev(fd, ranges, force) {
      let pagesDropped = 0;
      const kept: { offset: number; length: number }[] = [];
      for (const r of ranges) {
        // The kept pages come back as ranges of pages: no more of them than the pages the range spans.
        const keptCapacity = Math.min(c.VMSUBST_RANGES_MAX, pagesSpanned(r.offset, r.length));
        const res = await device.invalidateBdev(fd, BigInt(r.offset), BigInt(r.length), {
          flags: force ? c.VMSUBST_BDEV_F_FORCE : 0,
          keptCapacity,
        });
        pagesDropped += Number(res.pagesDropped);
        for (const k of res.kept) kept.push({ offset: Number(k.offset), length: Number(k.length) });
      }
      return { pagesDropped, kept };
    },
    async revalidateDentries(fd, names, force) {
      // Named entries are unhashed even when in use: a running program keeps its old file, the
      // next lookup of the name reads the directory's new block.
      const flags =
        (force ? c.VMSUBST_DENTRIES_F_FORCE : 0) | (names.length > 0 ? c.VMSUBST_DENTRIES_F_UNHASH_BUSY : 0);
      const total = { dropped: 0, busy: 0, mountpoints: 0 };
      const batches = names.length === 0 ? [[]] : chunk(names, c.VMSUBST_NAMES_MAX);
      for (const batch of batches) {
        const r = await device.revalidateDentries(fd, batch, { flags });
        total.dropped += r.dropped;
        total.busy += r.busy;
        total.mountpoints += r.mountpoints;
      }
      return total;
    },
    revalidatesReplaced() {
      try {
        return device.features().includes('revalidateReplaced');
      } catch {
        return false; // no module: nothing is revalidated at all, and the substitution says so
      }
    },
    async revalidateInodes(fd, inos, force, unhashBusy) {
      const total = { evicted: 0, notCached: 0, inUse: [] as { ino: number; reasons: string[] }[] };
      for (const batch of chunk(inos, c.VMSUBST_INODES_MAX)) {
        const r = await device.revalidateInodes(fd, batch.map(BigInt), {
          flags: (force ? c.VMSUBST_INODES_F_FORCE : 0) | (unhashBusy ? c.VMSUBST_INODES_F_UNHASH_BUSY : 0),
        });
        total.evicted += r.evicted;
        total.notCached += r.notCached;
        for (const u of r.inUse) total.inUse.push({ ino: Number(u.ino), reasons: u.reasonNames });
      }
      return total;
    },
  };
}

/**
 * QUERY_MAPPERS and QUERY_OPENERS for users.ts. Reports start small (the kernel allocates and
 * zeroes the capacity asked for) and are asked again at their full size when truncated.
 */
export function usersOps(native: Native, device: KmodDevice): UsersOps {
  const c = native.constants;
  const sized = async <T>(first: number, max: number, ask: (cap: number) => Promise<{ items: T[]; total: bigint }>) => {
    const r = await ask(first);
    if (r.total <= BigInt(r.items.length)) return r.items;
    const again = await ask(Math.min(max, Number(r.total) + 64));
    if (again.total > BigInt(again.items.length))
      throw new Error(`the module reports ${again.total} entries, more than ${max}`);
    return again.items;
  };
  return {
    maxFiles: c.VMSUBST_OPENERS_FILES_MAX,
    async queryMappers(fd, length) {
      const items = await sized(64, c.VMSUBST_MAPPERS_MAX, async (capacity) => {
        const r = await device.queryMappers(fd, 0n, BigInt(Math.max(1, length)), { capacity });
        return { items: r.mappers, total: r.mappersTotal };
      });
      return items.map((m) => ({ pid: m.pid, comm: m.comm, start: Number(m.start), end: Number(m.end) }));
    },
    async queryOpeners(fds) {
      const items = await sized(256, c.VMSUBST_OPENERS_MAX, async (capacity) => {
        const r = await device.queryOpeners(fds, { capacity });
        return { items: r.openers, total: r.openersTotal };
      });
      return items.map((o) => ({ ...o, pos: Number(o.pos) }));
    },
  };
}

function chunk<T>(items: readonly T[], size: number): T[][] {
  const out: T[][] = [];
  for (let i = 0; i < items.length; i += size) out.push(items.slice(i, i + size));
  return out;
}

/** `systemctl restart UNIT`, bounded in time; on a system not run by systemd, says so. */
export function restartUnit(unit: string): Promise<RestartOutcome> {
  if (!existsSync('/run/systemd/system'))
    return Promise.resolve({ unit, status: 'no-systemd', detail: 'this system is not run by systemd' });
  return new Promise((resolve) => {
    execFile('systemctl', ['restart', '--', unit], { timeout: 90_000 }, (err, _out, stderr) => {
      resolve(
        err
          ? { unit, status: 'failed', detail: (stderr.trim() || err.message).slice(0, 500) }
          : { unit, status: 'restarted' },
      );
    });
  });
}

/** The 4 KiB pages [offset, offset + length) touches (at least 1). */
export function pagesSpanned(offset: number, length: number): number {
  if (length <= 0) return 1;
  return Math.floor((offset + length - 1) / 4096) - Math.floor(offset / 4096) + 1;
}
