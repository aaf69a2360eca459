/**
 * Which processes map a file: found by (device, inode) in /proc/PID/maps.
 * A substitution keeps the file's inode, so the usual "(deleted)" trick of
 * checkrestart/needrestart cannot see these processes; the inode match can.
 */
import { readdir, readFile } from 'node:fs/promises';
import type { Mapper } from '@vmsubst/common/protocol/schema';

/** Linux encodes dev_t as major:minor in hex in /proc/PID/maps. */
export function devToMapsField(dev: number): string {
  const major = ((dev >>> 8) & 0xfff) | (Math.floor(dev / 2 ** 32) & ~0xfff);
  const minor = (dev & 0xff) | ((dev >>> 12) & ~0xff);
  return `${major.toString(16).padStart(2, '0')}:${minor.toString(16).padStart(2, '0')}`;
}

export interface FileKey {
  dev: number;
  ino: number;
}

/** A process mapping a file, and how many bytes of the file's mappings it has (what a pin copies at most). */
export interface MapperInfo extends Mapper {
  mappedBytes: number;
}

/** Finds, for each file key, the processes that have it mapped. One pass over /proc. */
export async function findMappers(files: FileKey[], procRoot = '/proc'): Promise<Map<string, MapperInfo[]>> {
  const wanted = new Map<string, string>(); // "maj:min ino" -> key
  const result = new Map<string, MapperInfo[]>();
  for (const f of files) {
    const k = keyOf(f);
    wanted.set(`${devToMapsField(f.dev)} ${f.ino}`, k);
    result.set(k, []);
  }
  if (wanted.size === 0) return result;
  const entries = await readdir(procRoot).catch(() => [] as string[]);
  for (const name of entries) {
    if (!/^\d+$/.test(name)) continue;
    const maps = await readFile(`${procRoot}/${name}/maps`, 'utf8').catch(() => undefined);
    if (maps === undefined) continue; // exited, or a kernel thread
    const seen = new Map<string, number>(); // key -> bytes mapped
    for (const line of maps.split('\n')) {
      // start-end perms offset dev inode [path]
      const fields = line.split(/\s+/, 6);
      const dev = fields[3];
      const ino = fields[4];
      if (dev === undefined || ino === undefined || ino === '0') continue;
      const k = wanted.get(`${dev} ${ino}`);
      if (k === undefined) continue;
      const [start, end] = (fields[0] ?? '').split('-').map((h) => parseInt(h, 16));
      seen.set(k, (seen.get(k) ?? 0) + (start !== undefined && end !== undefined && end > start ? end - start : 0));
    }
    if (seen.size === 0) continue;
    const comm = (await readFile(`${procRoot}/${name}/comm`, 'utf8').catch(() => '?')).trim();
    for (const [k, bytes] of seen) result.get(k)!.push({ pid: Number(name), comm, mappedBytes: bytes });
  }
  return result;
}

export function keyOf(f: FileKey): string {
  return `${f.dev}:${f.ino}`;
}
