/**
 * What the apply-mode suites share: a random base image and a patched copy,
 * the bundle between them, disk copies for VMs, and a snapshot of what vmsubst
 * could leave behind in QEMU (exports, block nodes, dirty bitmaps, jobs).
 */
import { createHash, randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Test } from 'uvu';
import * as assert from 'uvu/assert';
import { FirmwareVm } from './firmware-vm.js';
import { Bundle, writeBundle, type Manifest } from '../../host-signal/src/bundle/index.js';
import { bufferSource, diffSources } from '../../host-signal/src/diff/index.js';
import type { Qemu } from '../../host-signal/src/qmp/index.js';

export const MiB = 1 << 20;
export const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

export interface ApplyWorld {
  dir: string;
  base: Buffer;
  patched: Buffer;
  basePath: string;
  patchedPath: string;
  bundlePath: string;
  bundle: Bundle;
  manifest: Manifest;
  changedBytes: number;
}

/** A random base of `size` bytes (no boot signature: the firmware must not run it), patched at `edits`. */
export async function applyWorld(name: string, size: number, edits: readonly [number, number][]): Promise<ApplyWorld> {
  const dir = mkdtempSync(join(tmpdir(), `vmsubst-${name}-`));
  const base = randomBytes(size);
  base[510] = 0;
  base[511] = 0;
  const patched = Buffer.from(base);
  for (const [offset, length] of edits) for (let i = offset; i < offset + length; i++) patched[i] = patched[i]! ^ 0x5a;
  const d = await diffSources(bufferSource(base), bufferSource(patched));
  const bundlePath = join(dir, 'patch.vsb');
  await writeBundle(bundlePath, { base: { size }, blockSize: d.blockSize, ranges: d.ranges }, bufferSource(patched));
  const basePath = join(dir, 'base.img');
  const patchedPath = join(dir, 'patched.img');
  writeFileSync(basePath, base);
  writeFileSync(patchedPath, patched);
  const bundle = await Bundle.open(bundlePath);
  return {
    dir,
    base,
    patched,
    basePath,
    patchedPath,
    bundlePath,
    bundle,
    manifest: bundle.manifest,
    changedBytes: d.changedBytes,
  };
}

/** A fresh disk image holding `content`, in its own directory (sockets go there too). */
export function diskCopy(w: ApplyWorld, name: string, content: Buffer): { image: string; dir: string } {
  const dir = join(w.dir, name);
  mkdirSync(dir);
  const image = join(dir, 'disk.img');
  writeFileSync(image, content);
  return { image, dir };
}

/** Which ranges of `disk` hold the bundle's new content, by sha256 of each range. */
export function rangesNew(m: Manifest, disk: Buffer | string): boolean[] {
  const data = typeof disk === 'string' ? readFileSync(disk) : disk;
  return m.ranges.map((r) => sha(data.subarray(r.offset, r.offset + r.length)) === r['new-sha256']);
}

/** What an apply could leave behind in QEMU. */
export interface QemuState {
  exports: string[];
  nodes: string[];
  bitmaps: string[];
  jobs: string[];
}

export async function qemuState(q: Qemu): Promise<QemuState> {
  const nodes = await q.queryNamedBlockNodes();
  return {
    exports: (await q.queryBlockExports()).map((e) => e.id),
    // Automatically named nodes (#blockNNN) are children of named ones.
    nodes: nodes
      .map((n) => n['node-name'] ?? '')
      .filter((n) => !n.startsWith('#'))
      .sort(),
    bitmaps: nodes.flatMap((n) => (n['dirty-bitmaps'] ?? []).map((b) => `${n['node-name']}/${b.name}`)),
    jobs: (await q.queryBlockJobs()).map((j) => j.device),
  };
}

/** QEMU's one NBD server is free again: starting one succeeds. */
export async function assertNbdServerFree(q: Qemu, dir: string): Promise<void> {
  await q.nbdServerStartUnix(join(dir, 'probe.sock'));
  await q.nbdServerStop();
}

/** Writes through the VM's virtio-blk device backend, as a guest write would (HMP qemu-io through QMP: a test tool). */
export async function deviceWrite(q: Qemu, offset: number, length: number, pattern = 0x11): Promise<void> {
  const out = await q.qmp.execute<string>('human-monitor-command', {
    'command-line': `qemu-io -d /machine/peripheral/vblk0/virtio-backend "write -P ${pattern} ${offset} ${length}"`,
  });
  assert.is(out, '', `qemu-io: ${out}`);
}

export async function rejected(p: Promise<unknown>): Promise<Error> {
  const e = await p.then(
    () => undefined,
    (err: unknown) => err,
  );
  assert.ok(e instanceof Error, 'expected a rejection');
  return e as Error;
}

/**
 * The life of an apply suite's world and firmware VMs: the world is made
 * before the suite, every VM a test started is killed after it, and the world
 * is removed after the suite. `world()` is the current world; `startVm` boots
 * a VM on a fresh copy of `content`.
 */
export function firmwareSuite(
  s: Test,
  make: () => Promise<ApplyWorld>,
): {
  world(): ApplyWorld;
  startVm(
    name: string,
    content: Buffer,
    opts?: { shareRw?: boolean; paused?: boolean },
  ): Promise<{ vm: FirmwareVm; image: string; dir: string }>;
} {
  let w: ApplyWorld | undefined;
  let vms: FirmwareVm[] = [];
  s.before(async () => {
    w = await make();
  });
  s.after.each(() => {
    vms.forEach((vm) => vm.kill());
    vms = [];
  });
  s.after(async () => {
    vms.forEach((vm) => vm.kill());
    await w?.bundle.close();
    if (w) rmSync(w.dir, { recursive: true, force: true });
  });
  return {
    world: () => w!,
    async startVm(name, content, opts = {}) {
      const d = diskCopy(w!, name, content);
      const vm = await FirmwareVm.start({ ...d, ...opts });
      vms.push(vm);
      return { vm, ...d };
    },
  };
}
