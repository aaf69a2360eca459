/**
 * Which filesystems a substitution may go under, decided per mount, before
 * anything is written. ext2/3/4: data and metadata (read-only mounts); XFS:
 * file data only (its metadata lives in its own buffer cache); everything
 * else refused with the reason. A changed range on a device the agent cannot
 * tie to a filesystem it understands — a device-mapper or md device stacked
 * on it, a btrfs mount that shows an anonymous device — is refused the same
 * way, never reported as "outside any filesystem".
 */
import { readdirSync } from 'node:fs';
import type { ByteRange } from '@vmsubst/common/protocol/schema';
import { primaryMount } from './index.js';
import type { DiskLayout, Mount } from './mounts.js';
import { readAttr } from '../proc/attr.js';

export type Handling = 'data-and-metadata' | 'data-only' | 'refused';

export interface FsVerdict {
  handling: Handling;
  reason?: string;
}

const REFUSED: Record<string, string> = {
  btrfs:
    'btrfs: FIEMAP gives logical addresses that its chunk tree maps to the disk (not disk offsets), every block is checksummed, ' +
    'and copy-on-write moves extents: blocks written under it can be neither attributed to files nor trusted',
  zfs: 'zfs: blocks are addressed through the pool, checksummed in their parent block pointers and copy-on-write: blocks written under it cannot be attributed to files',
  f2fs: 'f2fs: log-structured, data is written out of place and found through the node address table it keeps in memory: blocks written under it cannot be attributed to files',
  bcachefs: 'bcachefs: checksummed, copy-on-write extents: blocks written under it cannot be attributed to files',
};

/** What vmsubst does under a filesystem of this type. */
export function fsVerdict(fsType: string): FsVerdict {
  if (fsType === 'ext2' || fsType === 'ext3' || fsType === 'ext4') return { handling: 'data-and-metadata' };
  if (fsType === 'xfs') {
    return {
      handling: 'data-only',
      reason:
        "XFS: file data only; XFS keeps its metadata in its own buffer cache (not the block device's page cache), so a metadata change needs a restart",
    };
  }
  return {
    handling: 'refused',
    reason:
      REFUSED[fsType] ?? `${fsType}: not a filesystem vmsubst understands (ext2/3/4 data and metadata, XFS data are)`,
  };
}

/** One filesystem (or stacked device) of the disk and how a substitution goes under it. */
export interface FsDecision {
  /** The partition (or the whole disk) it lives on. */
  part: DiskLayout['parts'][number];
  mount?: string;
  type: string;
  handling: Handling;
  reason?: string;
}

export interface DecideOptions {
  sysRoot: string;
  /** Reads the disk (O_DIRECT: 4 KiB-aligned offsets and lengths). */
  read(offset: number, length: number): Promise<Buffer>;
}

const BTRFS_MAGIC = Buffer.from('_BHRfS_M');
const anonymous = (devNum: string): boolean => devNum.startsWith('0:');

function list(dir: string): string[] {
  try {
    return readdirSync(dir);
  } catch {
    return [];
  }
}

/** The block device names of every mounted btrfs (sysfs /sys/fs/btrfs/UUID/devices/NAME), by UUID. */
async function btrfsDevices(sysRoot: string): Promise<Map<string, string[]>> {
  const out = new Map<string, string[]>();
  for (const uuid of list(`${sysRoot}/fs/btrfs`)) {
    const devs = list(`${sysRoot}/fs/btrfs/${uuid}/devices`);
    if (devs.length > 0) out.set(uuid, devs);
  }
  return out;
}

/**
 * Every mounted filesystem of `layout` (and every device stacked on one of its partitions), with
 * its handling; `changed` selects which refusals matter (a refused filesystem no changed range
 * touches is listed, not refused).
 */
export async function decideFilesystems(
  layout: DiskLayout,
  mounts: Mount[],
  opts: DecideOptions,
): Promise<FsDecision[]> {
  const out: FsDecision[] = [];
  const btrfs = await btrfsDevices(opts.sysRoot);
  for (const part of layout.parts) {
    const whole = part.startBytes === 0 && part.name === layout.name;
    const base = whole ? `${opts.sysRoot}/block/${layout.name}` : `${opts.sysRoot}/block/${layout.name}/${part.name}`;
    // 1. A device stacked on it (device-mapper: LVM, dm-crypt, thin; md RAID).
    const holders = list(`${base}/holders`);
    for (const h of holders) {
      const dmName = readAttr(`${opts.sysRoot}/block/${h}/dm/name`) ?? '';
      const hDev = readAttr(`${opts.sysRoot}/block/${h}/dev`) ?? '';
      const m = hDev ? primaryMount(mounts, hDev) : undefined;
      const what = dmName
        ? `device-mapper device ${h} (${dmName})`
        : h.startsWith('md')
          ? `md RAID device ${h}`
          : `block device ${h}`;
      out.push({
        part,
        ...(m ? { mount: m.mountPoint } : {}),
        type: dmName ? 'device-mapper' : h,
        handling: 'refused',
        reason:
          `${part.name} holds ${what}${m ? `, mounted at ${m.mountPoint}` : ''}: its blocks reach a filesystem only through the ${dmName ? 'dm table' : 'RAID layout'}, ` +
          'which vmsubst does not follow (linear, striped, encrypted and thin targets all move or transform blocks); substitute a disk that carries its filesystem directly',
      });
    }
    if (holders.length > 0) continue;
    // 2. A mount of the device itself.
    const m = primaryMount(mounts, part.devNum);
    if (m) {
      out.push({ part, mount: m.mountPoint, type: m.fsType, ...fsVerdict(m.fsType) });
      continue;
    }
    // 3. A mount that shows an anonymous device (btrfs): tied to this device by its source, or by sysfs.
    const byName = mounts.find((x) => anonymous(x.devNum) && x.source === `/dev/${part.name}`);
    const uuid = [...btrfs].find(([, devs]) => devs.includes(part.name))?.[0];
    if (byName || uuid) {
      const type = byName?.fsType ?? 'btrfs';
      const mp =
        byName?.mountPoint ??
        mounts.find(
          (x) => x.fsType === 'btrfs' && anonymous(x.devNum) && btrfs.get(uuid!)?.some((d) => x.source === `/dev/${d}`),
        )?.mountPoint;
      out.push({ part, ...(mp ? { mount: mp } : {}), type, ...fsVerdict(type) });
      continue;
    }
    // 4. Its superblock says btrfs and some btrfs is mounted whose device could not be told: refuse rather than guess.
    if (mounts.some((x) => x.fsType === 'btrfs' && anonymous(x.devNum)) && part.sizeBytes >= 65536 + 4096) {
      const sb = await opts.read(part.startBytes + 65536, 4096).catch(() => undefined);
      if (sb && sb.subarray(0x40, 0x48).equals(BTRFS_MAGIC)) {
        out.push({
          part,
          type: 'btrfs',
          handling: 'refused',
          reason: `${REFUSED.btrfs} (${part.name} holds a btrfs superblock and a btrfs is mounted whose device the agent cannot tell)`,
        });
      }
    }
  }
  return out;
}

const inside = (r: ByteRange, part: DiskLayout['parts'][number]): boolean =>
  r.offset < part.startBytes + part.sizeBytes && r.offset + r.length > part.startBytes;

/** The refusals that `changed` runs into. */
export function refusalsFor(decisions: FsDecision[], changed: ByteRange[]): FsDecision[] {
  return decisions.filter((d) => d.handling === 'refused' && changed.some((r) => inside(r, d.part)));
}

/** The sentence an Unsupported refusal carries. */
export function describeRefusals(refused: FsDecision[]): string {
  return (
    refused.map((d) => `${d.part.name}${d.mount ? ` (${d.mount})` : ''}: ${d.reason}`).join('; ') +
    '. nothing was done; apply this change by replacing the disk and restarting the guest'
  );
}
