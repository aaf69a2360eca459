/**
 * Finds the guest disk a substitution targets: by virtio serial, by path, or —
 * when the host names neither — the one disk whose blocks hash to the first
 * announced range.
 */
import { readdirSync, realpathSync, statSync } from 'node:fs';
import { basename } from 'node:path';
import { CommandError } from '../errors.js';
import type { DiskRef, HashedRange } from '@vmsubst/common/protocol/schema';
import type { DiskReader } from './verify.js';
import { hashRange } from './verify.js';
import { needAttr, readAttr } from '../proc/attr.js';

export interface ResolvedDisk {
  name: string; // vda
  path: string; // /dev/vda
  sizeBytes: number;
}

const SKIP = /^(loop|ram|zram|sr|dm-|md|nbd)/;

/**
 * Disk serials by name, each with the identity (inode, change time) of the disk's sysfs directory
 * when it was read. A virtio-blk disk answers a read of its `serial` with a request to the device
 * (GET_ID), a round trip through the hypervisor, for every disk on every substitution. The
 * directory is made anew when a disk is removed and another takes its name, so a kept serial is
 * never another disk's.
 */
const serials = new Map<string, { id: string; serial: string }>();

function serialOf(sysRoot: string, name: string): string {
  const dir = `${sysRoot}/block/${name}`;
  const st = statSync(dir, { bigint: true, throwIfNoEntry: false });
  const id = st ? `${st.ino}:${st.ctimeNs}` : undefined;
  const key = `${sysRoot}\0${name}`;
  const known = serials.get(key);
  if (id !== undefined && known?.id === id) return known.serial;
  const serial = readAttr(`${dir}/serial`) ?? '';
  if (id !== undefined) serials.set(key, { id, serial });
  return serial;
}

async function diskInfo(name: string, sysRoot: string, devRoot: string): Promise<ResolvedDisk> {
  const sectors = Number(needAttr(`${sysRoot}/block/${name}/size`));
  return { name, path: `${devRoot}/${name}`, sizeBytes: sectors * 512 };
}

export async function resolveDisk(
  ref: DiskRef,
  ranges: HashedRange[],
  reader: DiskReader,
  sysRoot = '/sys',
  devRoot = '/dev',
  /** Before the host writes (dry run, prepare) the blocks are still old: an unnamed disk is then the only one big enough. */
  beforeWrite = false,
): Promise<ResolvedDisk> {
  const names = readdirSync(`${sysRoot}/block`)
    .filter((n) => !SKIP.test(n))
    .sort();
  let disk: ResolvedDisk | undefined;
  if (ref.serial !== undefined) {
    for (const n of names) {
      const serial = serialOf(sysRoot, n);
      if (serial === ref.serial) disk = await diskInfo(n, sysRoot, devRoot);
    }
    if (!disk)
      throw new CommandError(
        'DeviceNotFound',
        `no disk with serial '${ref.serial}' (looked at ${names.join(', ') || 'nothing'})`,
      );
  } else if (ref.path !== undefined) {
    const real = ((): string | undefined => {
      try {
        return realpathSync(ref.path!);
      } catch {
        return undefined;
      }
    })();
    const st = real ? statSync(real, { throwIfNoEntry: false }) : undefined;
    if (!real || !st?.isBlockDevice()) throw new CommandError('DeviceNotFound', `${ref.path} is not a block device`);
    const n = basename(real);
    if (!names.includes(n))
      throw new CommandError('DeviceNotFound', `${ref.path} is not a whole disk (a partition?); name the disk`);
    disk = await diskInfo(n, sysRoot, devRoot);
  } else {
    const first = ranges[0]!;
    const end = Math.max(...ranges.map((r) => r.offset + r.length));
    names.splice(
      0,
      names.length,
      ...(
        await Promise.all(
          names.map(async (n) =>
            ((await diskInfo(n, sysRoot, devRoot).catch(() => undefined))?.sizeBytes ?? 0) >= end ? n : '',
          ),
        )
      ).filter(Boolean),
    );
    if (names.length === 0)
      throw new CommandError(
        'InvalidArguments',
        `ranges end at byte ${end}, beyond every disk of this guest; is the bundle for this VM? nothing was read`,
      );
    for (const n of names) {
      const candidate = await diskInfo(n, sysRoot, devRoot);
      if (candidate.sizeBytes < first.offset + first.length) continue;
      const digest = await hashRange(reader, candidate.path, first).catch(() => undefined);
      if (digest === first.sha256) {
        disk = candidate;
        break;
      }
    }
    if (!disk && beforeWrite) {
      const fits: ResolvedDisk[] = [];
      for (const n of names) {
        const candidate = await diskInfo(n, sysRoot, devRoot);
        if (candidate.sizeBytes >= first.offset + first.length) fits.push(candidate);
      }
      if (fits.length === 1) disk = fits[0];
      else if (fits.length > 1)
        throw new CommandError(
          'DeviceNotFound',
          `before the write, ${fits.map((d) => d.name).join(', ')} could all be the disk; name it by serial or path`,
        );
    }
    if (!disk)
      throw new CommandError('DeviceNotFound', 'no disk holds the announced blocks; name the disk by serial or path');
  }
  const end = Math.max(...ranges.map((r) => r.offset + r.length));
  if (end > disk.sizeBytes) {
    throw new CommandError(
      'InvalidArguments',
      `ranges end at byte ${end}, beyond ${disk.path} (${disk.sizeBytes} bytes); is the bundle for this disk? nothing was read`,
    );
  }
  return disk;
}
