/** Mounted filesystems and the block devices (whole disk or partition) under them. */
import { readFile, readdir } from 'node:fs/promises';

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
  return parseMountinfo(await readFile(`${procRoot}/self/mountinfo`, 'utf8'));
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
  const devNum = (await readFile(`${base}/dev`, 'utf8')).trim();
  const sizeBytes = Number((await readFile(`${base}/size`, 'utf8')).trim()) * 512;
  const parts: DiskLayout['parts'] = [{ name, devNum, startBytes: 0, sizeBytes }];
  for (const entry of await readdir(base)) {
    if (!entry.startsWith(name)) continue;
    const start = await readFile(`${base}/${entry}/start`, 'utf8').catch(() => undefined);
    if (start === undefined) continue;
    parts.push({
      name: entry,
      devNum: (await readFile(`${base}/${entry}/dev`, 'utf8')).trim(),
      startBytes: Number(start.trim()) * 512,
      sizeBytes: Number((await readFile(`${base}/${entry}/size`, 'utf8')).trim()) * 512,
    });
  }
  return { name, devNum, sizeBytes, parts };
}

/** The device node of a block device "major:minor" (its DEVNAME in sysfs), or undefined when sysfs does not know it. */
export async function devicePath(devNum: string, sysRoot = '/sys', devRoot = '/dev'): Promise<string | undefined> {
  const uevent = await readFile(`${sysRoot}/dev/block/${devNum}/uevent`, 'utf8').catch(() => undefined);
  const name = uevent?.match(/^DEVNAME=(.+)$/m)?.[1];
  return name ? `${devRoot}/${name}` : undefined;
}
