/**
 * xfs_db (xfsprogs) as a library: read an XFS image without mounting it and
 * without root (`xfs_db -r`, commands on stdin, one process per batch).
 *
 *   - owners: `blockget -n` builds the block-usage map of the whole
 *     filesystem (one scan of its metadata, like xfs_repair -n), then one
 *     `fsblock B` + `blockuse -n -c N` per run of changed blocks says what
 *     each block is: `data` of inode I, or metadata (sb, agf, inode, btree,
 *     log, dir, …), or `free`;
 *   - `ncheck -i I …`: the paths of the owners (every hard link);
 *   - `inode I` / `path P` + `print core.mode core.size` + `bmap`: a file's
 *     type, size and data extents; its bytes are read from the image by the
 *     caller, not by xfs_db.
 *
 * xfs_db takes no offset: an XFS in a partition is first copied out of the
 * image to a sparse temporary file (extractFilesystem). It cannot quote
 * arguments either: a path containing white space cannot be looked up.
 *
 * Block numbers here are linear: byte offset in the filesystem / block size.
 * XFS's own fsblock numbers put the AG number above `agblklog` bits; the
 * conversion is done in both directions here.
 */
import { runTool, toolAvailable } from './tool.js';
import { open } from 'node:fs/promises';
import { HintError } from '../errors.js';
import type { ImageReader } from './partitions.js';

const MAX_OUTPUT = 512 << 20;
/** Changed-block runs asked per xfs_db run (each run repeats blockget). */
const RUNS_PER_BATCH = 200_000;
const MARK = '@@vmsubst';

/** `xfs_db -V` works: xfsprogs is installed. */
export const xfsDbAvailable = (): Promise<boolean> => toolAvailable('xfs_db');

/** The XFS geometry the block conversions need (from the superblock). */
export interface XfsGeometry {
  blockSize: number;
  agBlocks: number;
  agBlkLog: number;
}

/** What a block is, from blockuse: `data` of an inode, or a metadata/free type. */
export interface BlockUse {
  type: string;
  ino?: number;
}

export interface XfsInode {
  /** 0 when looked up by path. */
  ino: number;
  /** st_mode, octal as xfs_db prints it, parsed. */
  mode: number;
  size: number;
  /** Data extents, linear blocks; unwritten extents left out (they read as zeros). */
  extents: { fileBlock: number; block: number; count: number }[];
}

export const S_IFMT = 0o170000;
export const S_IFREG = 0o100000;

export class XfsDb {
  constructor(
    readonly image: string,
    readonly geometry: XfsGeometry,
  ) {}

  /** Runs `xfs_db -r image` with `commands` on stdin; resolves with stdout (errors are printed there too). */
  async run(commands: readonly string[]): Promise<string> {
    const r = await runTool('xfs_db', ['-r', this.image], [...commands, `echo ${MARK} end`].join('\n') + '\n', {
      maxOutput: MAX_OUTPUT,
      install: 'xfsprogs',
    });
    // xfs_db exits 1 after any command that failed (a path not found); only no output at all is fatal.
    if (r.signal !== null || r.tooLarge || (r.code !== 0 && !r.stdout.includes(MARK))) {
      const why = r.tooLarge
        ? 'output too large'
        : r.stderr.trim().split('\n')[0] || r.stdout.trim().split('\n')[0] || `exit status ${r.code ?? r.signal}`;
      throw new HintError(`xfs_db ${this.image}: ${why}`);
    }
    return r.stdout;
  }

  /** Linear block → XFS fsblock number. */
  fsblock(block: number): number {
    const { agBlocks, agBlkLog } = this.geometry;
    return Math.floor(block / agBlocks) * 2 ** agBlkLog + (block % agBlocks);
  }

  /** AG number and AG block → linear block. */
  linear(ag: number, agBlock: number): number {
    return ag * this.geometry.agBlocks + agBlock;
  }

  /** What each of `blocks` (linear, sorted) is. */
  async blockUse(blocks: readonly number[]): Promise<Map<number, BlockUse>> {
    const use = new Map<number, BlockUse>();
    // Runs of consecutive blocks inside one AG: one blockuse each.
    const runs: [number, number][] = [];
    for (const b of blocks) {
      const last = runs[runs.length - 1];
      if (
        last &&
        last[0] + last[1] === b &&
        Math.floor(b / this.geometry.agBlocks) === Math.floor(last[0] / this.geometry.agBlocks)
      )
        last[1]++;
      else runs.push([b, 1]);
    }
    for (let i = 0; i < runs.length; i += RUNS_PER_BATCH) {
      const cmds = ['blockget -n'];
      for (const [start, count] of runs.slice(i, i + RUNS_PER_BATCH))
        cmds.push(`fsblock ${this.fsblock(start)}`, `blockuse -n -c ${count}`);
      const text = await this.run(cmds);
      for (const line of text.split('\n')) {
        // block 32792 (1/24) type data inode 262273 bin/t
        const m = /^block \d+ \((\d+)\/(\d+)\) type (\S+)(?: inode (\d+))?/.exec(line);
        if (!m) continue;
        const u: BlockUse = { type: m[3]! };
        if (m[4] !== undefined) u.ino = Number(m[4]);
        use.set(this.linear(Number(m[1]), Number(m[2])), u);
      }
    }
    return use;
  }

  /** inode → its paths (every hard link), '/'-rooted. */
  async paths(inodes: readonly number[]): Promise<Map<number, string[]>> {
    const paths = new Map<number, string[]>();
    for (let i = 0; i < inodes.length; i += 2000) {
      const batch = inodes.slice(i, i + 2000);
      // `ncheck -i` answers only after `blockget -n` (the names it records).
      const text = await this.run(['blockget -n', `ncheck ${batch.map((n) => `-i ${n}`).join(' ')}`]);
      for (const line of text.split('\n')) {
        const m = /^\s*(\d+) (.*)$/.exec(line);
        if (!m) continue;
        const ino = Number(m[1]);
        if (!batch.includes(ino)) continue;
        const path = `/${m[2]!.replace(/^\/+/, '')}`;
        const list = paths.get(ino) ?? [];
        if (!list.includes(path)) list.push(path);
        paths.set(ino, list);
      }
    }
    return paths;
  }

  /** Mode, size and extents of inodes given by number or by path; missing ones are left out. */
  async inodes(what: readonly (number | string)[]): Promise<Map<number | string, XfsInode>> {
    const out = new Map<number | string, XfsInode>();
    if (what.length === 0) return out;
    const cmds: string[] = [];
    const asked: (number | string)[] = [];
    for (const w of what) {
      if (typeof w === 'string' && (/\s/.test(w) || !w.startsWith('/'))) continue;
      asked.push(w);
      cmds.push(
        `echo ${MARK} ${asked.length - 1}`,
        typeof w === 'number' ? `inode ${w}` : `path ${w}`,
        'print core.mode core.size',
        'bmap',
      );
    }
    const text = await this.run(cmds);
    let cur: { key: number | string; node: XfsInode; bad: boolean } | undefined;
    const flush = (): void => {
      if (cur && !cur.bad && cur.node.mode !== 0) out.set(cur.key, cur.node);
    };
    for (const line of text.split('\n')) {
      const mark = new RegExp(`^${MARK} (\\d+|end)`).exec(line);
      if (mark) {
        flush();
        cur =
          mark[1] === 'end'
            ? undefined
            : {
                key: asked[Number(mark[1])]!,
                node: {
                  ino: typeof asked[Number(mark[1])] === 'number' ? (asked[Number(mark[1])] as number) : 0,
                  mode: 0,
                  size: 0,
                  extents: [],
                },
                bad: false,
              };
        continue;
      }
      if (!cur) continue;
      let m: RegExpExecArray | null;
      if ((m = /^core\.mode = (0[0-7]*)/.exec(line))) cur.node.mode = parseInt(m[1]!, 8);
      else if ((m = /^core\.size = (\d+)/.exec(line))) cur.node.size = Number(m[1]);
      else if ((m = /^data offset (\d+) startblock \d+ \((\d+)\/(\d+)\) count (\d+) flag (\d)/.exec(line))) {
        if (m[5] === '0')
          cur.node.extents.push({
            fileBlock: Number(m[1]),
            block: this.linear(Number(m[2]), Number(m[3])),
            count: Number(m[4]),
          });
      } else if (/: No such file|Not a directory|bad inode|not a valid|unknown|[Ee]rror/.test(line)) cur.bad = true;
    }
    flush();
    return out;
  }
}

/** Reads a file's first `length` bytes (or all of it) through its extents; holes read as zeros. */
export async function readXfsFile(
  read: ImageReader,
  fsOffset: number,
  blockSize: number,
  node: XfsInode,
  length = node.size,
): Promise<Buffer> {
  const n = Math.min(length, node.size);
  const buf = Buffer.alloc(n);
  for (const e of node.extents) {
    const from = e.fileBlock * blockSize;
    if (from >= n) continue;
    const len = Math.min(e.count * blockSize, n - from);
    (await read(fsOffset + e.block * blockSize, len)).copy(buf, from);
  }
  return buf;
}

/**
 * Copies `size` bytes at `offset` of `image` to `to`, leaving holes where the
 * image reads zeros (so a partition costs the disk space of its data).
 */
export async function extractFilesystem(read: ImageReader, offset: number, size: number, to: string): Promise<void> {
  const CHUNK = 1 << 20;
  const zero = Buffer.alloc(CHUNK);
  const h = await open(to, 'w');
  try {
    await h.truncate(size);
    for (let at = 0; at < size; at += CHUNK) {
      const buf = await read(offset + at, Math.min(CHUNK, size - at));
      if (!buf.equals(zero.subarray(0, buf.length))) await h.write(buf, 0, buf.length, at);
    }
  } finally {
    await h.close();
  }
}
