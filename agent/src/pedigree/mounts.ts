/** Mounted filesystems and the block devices (whole disk or partition) under them. */
import { readFileSync, readdirSync } from 'node:fs';
import { needAttr, readAttr } from '../proc/attr.js';

export interface Mount {
  mountPoint: string;
  /** "major:minor" of the filesystem's device. */
  devNum: string;
  root: string;
  fsType: string;
  readOnly: boolean;
  /** The mount source (a device path for block filesystems), when mountinfo gives one. */
  source?: string;
  /** Per-superblock options (`norecovery`, overlayfs' `lowerdir=`), when mountinfo gives them. */
  superOptions?: string[];
}

/** Parses /proc/self/mountinfo (proc(5)); mount points are octal-escaped there. */
export function parseMountinfo(text: string): Mount[] {
  const mounts: Mount[] = [];
  for (const line of text.split('\n')) {
    if (line.trim() === '') continue;
    const [left, right] = line.split(' - ');
    if (left === undefined || right === undefined) continue;
    const f = left.split(' ');
    const r = right.split(' ');
    const devNum = f[2];
    const root = f[3];
    const mountPoint = f[4];
    const opts = f[5];
    const fsType = r[0];
    if (!devNum || !root || !mountPoint || !opts || !fsType) continue;
    mounts.push({
      devNum,
      root: unescape(root),
      mountPoint: unescape(mountPoint),
      fsType,
      readOnly: opts.split(',').includes('ro'),
      ...(r[1] !== undefined ? { source: unescape(r[1]) } : {}),
      ...(r[2] !== undefined ? { superOptions: r[2].split(',').map(unescape) } : {}),
    });
  }
  return mounts;
}

function unescape(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
}

export async function readMounts(procRoot = '/proc'): Promise<Mount[]> {
  return parseMountinfo(readFileSync(`${procRoot}/self/mountinfo`, 'utf8'));
}

/** A whole disk and its partitions, as sysfs describes them. */
export interface DiskLayout {
  name: string;
  devNum: string;
  sizeBytes: number;
  /** The disk itself (start 0) and each partition, with its byte offset on the disk. */
  parts: { name: string; devNum: string; startBytes: number; sizeBytes: number }[];
}

export async function readDiskLayout(name: string, sysRoot = '/sys'): Promise<DiskLayout> {
  const base = `${sysRoot}/block/${name}`;
  const devNum = needAttr(`${base}/dev`);
  const sizeBytes = Number(needAttr(`${base}/size`)) * 512;
  const parts: DiskLayout['parts'] = [{ name, devNum, startBytes: 0, sizeBytes }];
  for (const entry of readdirSync(base)) {
    if (!entry.startsWith(name)) continue;
    const start = readAttr(`${base}/${entry}/start`);
    if (start === undefined) continue;
    parts.push({
      name: entry,
      devNum: needAttr(`${base}/${entry}/dev`),
      startBytes: Number(start) * 512,
      sizeBytes: Number(needAttr(`${base}/${entry}/size`)) * 512,
    });
  }
  return { name, devNum, sizeBytes, parts };
}

/** The device node of a block device "major:minor" (its DEVNAME in sysfs), or undefined when sysfs does not know it. */
export async function devicePath(devNum: string, sysRoot = '/sys', devRoot = '/dev'): Promise<string | undefined> {
  const uevent = readAttr(`${sysRoot}/dev/block/${devNum}/uevent`);
  const name = uevent?.match(/^DEVNAME=(.+)$/m)?.[1];
  return name ? `${devRoot}/${name}` : undefined;
}
