/**
 * debugfs (e2fsprogs) as a library: read an ext4 image without mounting it
 * and without root. One process per batch of requests, never one per block:
 * `icheck` (block → inode), `ncheck` (inode → paths), `stat` (type, size),
 * `blocks` (a file's data blocks) and `dump` (a file's content).
 *
 * icheck compares every block of every inode with every block asked about, so
 * its batches stay small (ICHECK_BATCH); owners are found by asking about a
 * few blocks, then taking each owner's whole block list.
 */
import { HintError } from '../errors.js';
import { runTool, toolAvailable } from './tool.js';

const ICHECK_BATCH = 1000;
const NCHECK_BATCH = 2000;
const MAX_OUTPUT = 256 << 20;

/** `debugfs -V` works: e2fsprogs is installed. */
export const debugfsAvailable = (): Promise<boolean> => toolAvailable('debugfs');

export interface InodeInfo {
  ino: number;
  type: string;
  size: number;
}

export class Debugfs {
  readonly spec: string;

  /** The filesystem in `image` at byte `offset` (a partition's start), read-only. */
  constructor(
    readonly image: string,
    readonly offset = 0,
  ) {
    if (image.includes('?'))
      throw new HintError(`${image}: debugfs cannot open a path containing '?'`, 'rename the image');
    this.spec = offset > 0 ? `${image}?offset=${offset}` : image;
  }

  /** Runs debugfs with `commands` on stdin (-f -); resolves with stdout. */
  async run(commands: readonly string[]): Promise<string> {
    const r = await runTool('debugfs', ['-f', '-', this.spec], commands.join('\n') + '\n', {
      maxOutput: MAX_OUTPUT,
      install: 'e2fsprogs',
      env: { ...process.env, PAGER: '__none__', DEBUGFS_PAGER: '__none__' },
    });
    const stderr = r.stderr.replace(/^debugfs [\d.]+ \([^)]*\)\n/, '').trim();
    if (r.code !== 0 || r.signal !== null || /Bad magic|while trying to open|Could not open/.test(stderr)) {
      const why = r.tooLarge ? 'output too large' : stderr.split('\n')[0] || `exit status ${r.code ?? r.signal}`;
      throw new HintError(`debugfs ${this.spec}: ${why}`);
    }
    return r.stdout;
  }

  /** block → owning inode for each block asked; blocks no inode owns are left out. */
  async icheck(blocks: readonly number[]): Promise<Map<number, number>> {
    const owners = new Map<number, number>();
    for (let i = 0; i < blocks.length; i += ICHECK_BATCH) {
      // One command per line: debugfs reads -f lines into a BUFSIZ buffer, so each stays short.
      const batch = blocks.slice(i, i + ICHECK_BATCH);
      const lines: string[] = [];
      for (let j = 0; j < batch.length; j += 500) lines.push(`icheck ${batch.slice(j, j + 500).join(' ')}`);
      const text = await this.run(lines);
      for (const line of text.split('\n')) {
        const m = /^(\d+)\s+(\d+)\s*$/.exec(line.trim());
        if (m) owners.set(Number(m[1]), Number(m[2]));
      }
    }
    return owners;
  }

  /** inode → its paths (every hard link), '/'-rooted, in the filesystem. */
  async ncheck(inodes: readonly number[]): Promise<Map<number, string[]>> {
    const paths = new Map<number, string[]>();
    for (let i = 0; i < inodes.length; i += NCHECK_BATCH) {
      const batch = inodes.slice(i, i + NCHECK_BATCH);
      const lines: string[] = [];
      for (let j = 0; j < batch.length; j += 500) lines.push(`ncheck ${batch.slice(j, j + 500).join(' ')}`);
      const text = await this.run(lines);
      for (const line of text.split('\n')) {
        const m = /^(\d+)\t(.*)$/.exec(line);
        if (!m) continue;
        // ncheck prints "//name" for the root's entries.
        const path = m[2]!.replace(/^\/+/, '/');
        const list = paths.get(Number(m[1])) ?? [];
        if (!list.includes(path)) list.push(path);
        paths.set(Number(m[1]), list);
      }
    }
    return paths;
  }

  /** Type ("regular", "directory", …) and size of each inode. */
  async stat(inodes: readonly number[]): Promise<Map<number, InodeInfo>> {
    const info = new Map<number, InodeInfo>();
    if (inodes.length === 0) return info;
    const text = await this.run(inodes.map((i) => `stat <${i}>`));
    let current: InodeInfo | undefined;
    for (const line of text.split('\n')) {
      const head = /^Inode: (\d+)\s+Type: (\S+)/.exec(line);
      if (head) {
        current = { ino: Number(head[1]), type: head[2]!, size: 0 };
        info.set(current.ino, current);
        continue;
      }
      const size = /\bSize: (\d+)\s*$/.exec(line);
      if (size && current && /^User:/.test(line)) current.size = Number(size[1]);
    }
    return info;
  }

  /** Each inode's data blocks (filesystem block numbers). */
  async blocks(inodes: readonly number[]): Promise<Map<number, number[]>> {
    const out = new Map<number, number[]>();
    if (inodes.length === 0) return out;
    const text = await this.run(inodes.map((i) => `blocks <${i}>`));
    // Output: per command, an echo line "debugfs: blocks <N>" then the blocks on one line.
    let current: number | undefined;
    for (const line of text.split('\n')) {
      const cmd = /^debugfs: blocks <(\d+)>/.exec(line);
      if (cmd) {
        current = Number(cmd[1]);
        out.set(current, []);
        continue;
      }
      if (current === undefined) continue;
      const list = out.get(current)!;
      for (const w of line.trim().split(/\s+/)) if (/^\d+$/.test(w)) list.push(Number(w));
    }
    return out;
  }

  /**
   * Writes files out of the filesystem: `[what, hostPath]`, `what` being
   * `<ino>` or a quoted path. A file that is not there is simply not written.
   */
  async dump(items: readonly (readonly [string, string])[]): Promise<void> {
    if (items.length === 0) return;
    await this.run(items.map(([what, to]) => `dump ${what} ${quote(to)}`));
  }
}

/** debugfs argument quoting (its parser takes "…" with no escapes): undefined when it cannot be quoted. */
export function quote(s: string): string {
  if (/["\n\r\0]/.test(s)) throw new HintError(`cannot pass ${JSON.stringify(s)} to debugfs`);
  return `"${s}"`;
}
