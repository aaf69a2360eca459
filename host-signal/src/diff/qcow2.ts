/**
 * qcow2 images as byte sources. QEMU itself interprets the image: qemu-nbd
 * exports it read-only on a private unix socket and the differ reads it over
 * NBD (../nbd), so compressed clusters, backing chains, external data files
 * and every future qcow2 feature read exactly as a VM would see them. Where
 * the image holds data comes from `qemu-img map --output=json` (zero and
 * unallocated extents are holes). Why not read the clusters' file offsets
 * from the map directly: that is only right for uncompressed, unencrypted
 * images without a backing file or data file; docs/design.md has the numbers.
 */
import { spawn, execFile, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { NbdClient } from '../nbd/client.js';
import { DiffError } from '../errors.js';
import type { BlockSource, Segment } from './source.js';

/** qemu-nbd starts in milliseconds; a loaded machine can take much longer. */
const START_TIMEOUT_MS = 60_000;

interface MapEntry {
  start: number;
  length: number;
  data: boolean;
  zero: boolean;
}

function run(cmd: string, args: string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(cmd, args, { maxBuffer: 256 << 20, timeout: 120_000 }, (err, stdout, stderr) => {
      if (err)
        reject(
          new DiffError(
            `${cmd} ${args.join(' ')}: ${(stderr || err.message).trim().split('\n')[0]}`,
            'is qemu-utils installed and the image a readable qcow2?',
          ),
        );
      else resolve(stdout);
    });
  });
}

export class Qcow2Source implements BlockSource {
  #segments: Promise<Segment[]> | undefined;

  private constructor(
    readonly path: string,
    private readonly nbd: NbdClient,
    private readonly child: ChildProcess,
    private readonly dir: string,
  ) {}

  get size(): number {
    return this.nbd.size;
  }

  /**
   * `imageOpts`: the image as qemu-nbd --image-opts options in place of `path` (e.g. a chain that a running QEMU
   * holds, opened with `locking=off` on every file: nothing is written and no lock taken).
   */
  static async open(path: string, options: { imageOpts?: string } = {}): Promise<Qcow2Source> {
    await stat(path);
    const dir = await mkdtemp(join(tmpdir(), 'vmsubst-qcow2-'));
    const sock = join(dir, 'nbd.sock');
    // -r read-only; --shared=1 one client; it exits when we disconnect.
    const image = options.imageOpts !== undefined ? ['--image-opts', options.imageOpts] : ['--format=qcow2', path];
    const child = spawn('qemu-nbd', ['--read-only', `--socket=${sock}`, '--shared=1', ...image], {
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    let stderr = '';
    child.stderr!.on('data', (b: Buffer) => (stderr += b.toString('utf8')));
    let exited: string | undefined;
    child.on(
      'exit',
      (code, signal) =>
        (exited = `qemu-nbd exited (${code ?? signal})${stderr ? `: ${stderr.trim().split('\n')[0]}` : ''}`),
    );
    child.on('error', (e) => (exited = `cannot run qemu-nbd: ${e.message}`));
    try {
      const deadline = Date.now() + START_TIMEOUT_MS;
      for (;;) {
        if (exited)
          throw new DiffError(`${path}: ${exited}`, 'is qemu-utils installed and the image a readable qcow2?');
        if (
          await stat(sock).then(
            () => true,
            () => false,
          )
        )
          break;
        if (Date.now() > deadline) throw new DiffError(`${path}: qemu-nbd did not start within ${START_TIMEOUT_MS} ms`);
        await new Promise((r) => setTimeout(r, 20));
      }
      let nbd: NbdClient;
      try {
        nbd = await NbdClient.connect(sock, { timeoutMs: 60_000, requestTimeoutMs: 120_000 });
      } catch (e) {
        // qemu-nbd listens before it has opened the image: its own message says why it closed.
        await new Promise((r) => setTimeout(r, 200));
        throw new DiffError(
          `${path}: ${exited ?? `cannot read it through qemu-nbd: ${(e as Error).message}`}`,
          'is it a readable qcow2 image? (`qemu-img check` tells)',
        );
      }
      return new Qcow2Source(path, nbd, child, dir);
    } catch (e) {
      child.kill('SIGTERM');
      await rm(dir, { recursive: true, force: true });
      throw e;
    }
  }

  async readInto(target: Buffer, position: number): Promise<number> {
    const n = Math.max(0, Math.min(target.length, this.size - position));
    if (n === 0) return 0;
    const data = await this.nbd.read(position, n);
    data.copy(target, 0);
    return n;
  }

  /** Extents holding data (not zero, not unallocated), merged. */
  dataSegments(): Promise<readonly Segment[]> {
    this.#segments ??= run('qemu-img', ['map', '--output=json', '-U', '-f', 'qcow2', this.path]).then((text) => {
      const entries = JSON.parse(text) as MapEntry[];
      const out: [number, number][] = [];
      for (const e of entries) {
        if (!e.data || e.zero) continue;
        const last = out.at(-1);
        if (last && last[0] + last[1] === e.start) last[1] += e.length;
        else out.push([e.start, e.length]);
      }
      return out;
    });
    return this.#segments;
  }

  async close(): Promise<void> {
    await this.nbd.disconnect().catch(() => this.nbd.close());
    const done = new Promise((r) =>
      this.child.exitCode !== null || this.child.signalCode !== null ? r(undefined) : this.child.once('exit', r),
    );
    const timer = setTimeout(() => this.child.kill('SIGKILL'), 5_000);
    await done;
    clearTimeout(timer);
    await rm(this.dir, { recursive: true, force: true });
  }
}
