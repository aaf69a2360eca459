/**
 * `vmsubst-agent map --device DEV --blocks A-B[,C-D…] [--json]`: which file
 * (path, inode, byte offset) owns each block of a device, and what the blocks
 * no file owns are (ext4: superblock, group descriptors, bitmaps, inode
 * table, journal, extent tree, free). Blocks are filesystem blocks of DEV,
 * numbered from the start of DEV (a partition counts from its own start);
 * a number with a `B` suffix is a byte offset instead (`--blocks 40960B-45055B`); `--blocks @FILE` reads the list
 * from FILE (separated by commas or white space).
 */
import { readFileSync, statSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { Ext4Classifier, type BlockClass } from '@vmsubst/common/pedigree/classify';
import { FsIndex, type BuiltWith } from '../pedigree/live.js';
import { readMounts, type Mount } from '../pedigree/mounts.js';

export const MAP_USAGE = `Usage: vmsubst-agent map --device DEV --blocks A-B[,C-D...] [--json]

Prints, for each run of blocks, the file that owns it (path, inode, byte offset in the file)
or what it is when no file owns it (ext4: superblock, group-descriptors, block-bitmap,
inode-bitmap, inode-table, journal, extent-tree, directory, free; unknown otherwise).
Blocks are filesystem blocks of DEV counted from DEV's start; a B suffix makes a number a
byte offset (40960B-45055B); --blocks @FILE reads the list from FILE. DEV's filesystem must be mounted for file owners to be found.
`;

/** At most this many blocks per invocation. */
const MAX_BLOCKS = 1 << 20;

export interface MapRow {
  /** First block and number of blocks of this run. */
  block: number;
  count: number;
  class: BlockClass | 'file';
  path?: string;
  ino?: number;
  /** Byte offset in the file of the run's first block. */
  offset?: number;
}

export interface MapReport {
  device: string;
  mountPoint: string | null;
  /** How the index was built (from the disk's metadata on a read-only ext4 mount, else walked). */
  index?: BuiltWith;
  blockSize: number;
  rows: MapRow[];
}

export function parseBlocks(spec: string, blockSize: number): [number, number][] {
  const toBlock = (s: string, _end: boolean): number => {
    const m = /^(\d+)([bB]?)$/.exec(s.trim());
    if (!m) throw new Error(`not a block number: '${s}'`);
    const n = Number(m[1]);
    if (!Number.isSafeInteger(n)) throw new Error(`out of range: '${s}'`);
    return m[2] ? Math.floor(n / blockSize) : n;
  };
  const out: [number, number][] = [];
  for (const part of spec.split(',')) {
    if (part.trim() === '') continue;
    const [a, b] = part.split('-');
    const first = toBlock(a!, false);
    const last = b === undefined ? first : toBlock(b, true);
    if (last < first) throw new Error(`empty range '${part}'`);
    out.push([first, last]);
  }
  if (out.length === 0) throw new Error('no blocks given');
  return out;
}

export interface MapDeps {
  readDirect(path: string, offset: number, length: number): Promise<Buffer>;
  fiemap: FsIndexFiemap;
  procRoot?: string;
}
type FsIndexFiemap = Parameters<typeof FsIndex.build>[2];

export async function mapBlocks(device: string, spec: string, deps: MapDeps): Promise<MapReport> {
  const read = (o: number, l: number): Promise<Buffer> => deps.readDirect(device, o, l);
  const cls = await Ext4Classifier.open(read, 0).catch(() => undefined);
  const blockSize = cls?.blockSize ?? 4096;
  const ranges = parseBlocks(spec, blockSize);
  if (ranges.reduce((n, [a, b]) => n + b - a + 1, 0) > MAX_BLOCKS)
    throw new Error(`more than ${MAX_BLOCKS} blocks asked for`);
  const st = statSync(device);
  if (!st.isBlockDevice()) throw new Error(`${device} is not a block device`);
  const devNum = `${Math.floor(st.rdev / 256) & 0xfff}:${(st.rdev & 0xff) | ((st.rdev >> 12) & 0xfff00)}`;
  const mounts = await readMounts(deps.procRoot);
  const mount: Mount | undefined = mounts
    .filter((m) => m.devNum === devNum)
    .sort((a, b) => Number(b.root === '/') - Number(a.root === '/'))[0];
  const fs = mount
    ? await FsIndex.build(mount, 0, deps.fiemap, { watch: false, readDirect: deps.readDirect, device, mounts })
    : undefined;
  const rows: MapRow[] = [];
  const push = (row: MapRow): void => {
    const last = rows[rows.length - 1];
    if (
      last &&
      last.block + last.count === row.block &&
      last.class === row.class &&
      last.path === row.path &&
      last.ino === row.ino &&
      (last.offset === undefined || last.offset + last.count * blockSize === row.offset)
    ) {
      last.count++;
      return;
    }
    rows.push(row);
  };
  for (const [first, last] of ranges) {
    for (let b = first; b <= last; b++) {
      const hit = fs?.index.lookup([{ offset: b * blockSize, length: blockSize }]).files[0];
      if (hit) {
        const f = hit.file;
        push({
          block: b,
          count: 1,
          class: f.kind === 'dir' ? 'directory' : 'file',
          path: f.path,
          ino: f.ino,
          offset: hit.ranges[0]!.offset,
        });
        continue;
      }
      const c = cls ? await cls.classify(b) : { class: 'unknown' as const };
      push({ block: b, count: 1, class: c.class, ...(c.ino !== undefined ? { ino: c.ino } : {}) });
    }
  }
  return { device, mountPoint: mount?.mountPoint ?? null, ...(fs ? { index: fs.builtWith } : {}), blockSize, rows };
}

export function formatMap(r: MapReport): string {
  const how =
    r.index?.builder === 'ext4-raw'
      ? ' (index read from the ext4 metadata)'
      : r.index?.fallback
        ? ` (index walked: ${r.index.fallback})`
        : r.index
          ? ' (index walked)'
          : '';
  const lines = [
    `${r.device}: ${r.blockSize}-byte blocks${r.mountPoint ? `, mounted at ${r.mountPoint}${how}` : ', not mounted (no file owners)'}`,
  ];
  for (const row of r.rows) {
    const blocks = row.count === 1 ? `${row.block}` : `${row.block}-${row.block + row.count - 1}`;
    const what =
      row.path !== undefined
        ? `${row.path} (inode ${row.ino}) bytes ${row.offset}-${row.offset! + row.count * r.blockSize - 1}${row.class === 'directory' ? ' [directory]' : ''}`
        : `${row.class}${row.ino !== undefined ? ` (inode ${row.ino})` : ''}`;
    lines.push(`${blocks.padStart(12)}  ${what}`);
  }
  return lines.join('\n') + '\n';
}

export async function mapCommand(argv: string[], out: (s: string) => void): Promise<number> {
  const { values } = parseArgs({
    args: argv,
    strict: true,
    options: {
      device: { type: 'string' },
      blocks: { type: 'string' },
      json: { type: 'boolean' },
      help: { type: 'boolean', short: 'h' },
    },
  });
  if (values.help) {
    out(MAP_USAGE);
    return 0;
  }
  if (!values.device || !values.blocks) {
    process.stderr.write(`vmsubst-agent map: --device and --blocks are required\n\n${MAP_USAGE}`);
    return 2;
  }
  const native = await import('../native/index.js');
  const spec = values.blocks.startsWith('@')
    ? readFileSync(values.blocks.slice(1), 'utf8').replace(/\s+/g, ',')
    : values.blocks;
  const report = await mapBlocks(values.device, spec, { readDirect: native.readDirect, fiemap: native.fiemap });
  out(values.json ? JSON.stringify(report) + '\n' : formatMap(report));
  return 0;
}
