/**
 * The delta disk: `vmsubst export --qcow2` checked with qemu-img (compare,
 * map, check), and the overlay apply mode against a real QEMU (firmware
 * only): the overlay put on top of the running drive with blockdev-snapshot,
 * the pause reported, optionally committed back, and nothing left behind on
 * failure.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { vmsubst, vmsubstJson } from '../../helpers/cli.js';
import { withTimeout } from '../../helpers/timeout.js';
import { FirmwareVm, whyNoQemu } from '../../helpers/firmware-vm.js';
import {
  MiB,
  applyWorld,
  assertNbdServerFree,
  deviceWrite,
  firmwareSuite,
  qemuState,
  rejected,
  sha,
  type ApplyWorld,
} from '../../helpers/apply-world.js';
import { applyToQemu } from '../../../host-signal/src/apply/index.js';
import { BaseMismatchError } from '../../../host-signal/src/errors.js';
import { NbdClient } from '../../../host-signal/src/nbd/index.js';

const SIZE = 64 * MiB;
const TEST_TIMEOUT = 90_000;
const K = 1024;
/** 4 MiB in 64 ranges of 64 KiB (4 KiB-aligned, so they straddle 64 KiB clusters), plus small edits that leave clusters partly unchanged. */
const EDITS: [number, number][] = [
  [100, 8],
  ...Array.from({ length: 64 }, (_, i): [number, number] => [i * MiB + 8192, 64 * K]),
  [40 * MiB + 70 * K, 1],
  [SIZE - 1, 1],
];

function qemuImg(args: string[]): { code: number; out: string } {
  const r = spawnSync('qemu-img', args, { encoding: 'utf8' });
  return { code: r.status ?? -1, out: `${r.stdout}${r.stderr}` };
}
const noQemuImg = spawnSync('qemu-img', ['--version']).error ? 'qemu-img is not installed' : undefined;

/** The clusters `qemu-img map` shows as allocated in the overlay itself (depth 0), as [start, length] merged runs. */
function allocated(overlay: string): [number, number][] {
  const r = spawnSync('qemu-img', ['map', '--output=json', overlay], { encoding: 'utf8' });
  const map = JSON.parse(r.stdout) as { start: number; length: number; depth: number; data: boolean }[];
  return map.filter((e) => e.depth === 0 && e.data).map((e) => [e.start, e.length]);
}

/** The changed clusters of a cluster size, merged into runs. */
function expectedRuns(w: ApplyWorld, cs: number): [number, number][] {
  const clusters = new Set<number>();
  for (const r of w.manifest.ranges)
    for (let c = Math.floor(r.offset / cs); c <= Math.floor((r.offset + r.length - 1) / cs); c++) clusters.add(c);
  const runs: [number, number][] = [];
  for (const c of [...clusters].sort((a, b) => a - b)) {
    const last = runs.at(-1);
    if (last && last[0] + last[1] === c * cs) last[1] += cs;
    else runs.push([c * cs, cs]);
  }
  return runs;
}

const Export = suite('export --qcow2 (delta disk)');
const Live = suite('apply --mode overlay (QEMU, blockdev-add + blockdev-snapshot)');
let W: ApplyWorld;

/** The content the VM's drive shows now, range by range, read through a read-only NBD export of the device's current top node. */
async function driveRangesNew(vm: FirmwareVm, dir: string): Promise<boolean[]> {
  const q = vm.monitor;
  const top = (await q.queryBlock()).find((b) => b.qdev?.includes('vblk0'))!.inserted!['node-name']!;
  const sock = join(dir, 'check.sock');
  await q.nbdServerStartUnix(sock);
  await q.blockExportAdd({ id: 'check', nodeName: top, name: 'check', writable: false });
  const nbd = await NbdClient.connect(sock, { exportName: 'check' });
  try {
    const out: boolean[] = [];
    for (const r of W.manifest.ranges) out.push(sha(await nbd.read(r.offset, r.length)) === r['new-sha256']);
    return out;
  } finally {
    await nbd.disconnect();
    await q.blockExportDel('check', 'hard');
    await q.nbdServerStop();
  }
}

Export.before(async () => {
  W = await applyWorld('overlay', SIZE, EDITS);
});
// Live uses the world Export made, and removes it at the end.
const { startVm } = firmwareSuite(Live, async () => W);

if (noQemuImg) {
  console.log(`apply-overlay.test: export checks skipped: ${noQemuImg}`);
  Export.skip('export --qcow2 (needs qemu-img)', () => undefined);
} else {
  for (const cs of [64 * K, 4 * K]) {
    Export(
      `cluster size ${cs / K}K: the overlay reads identical to PATCHED and allocates exactly the changed clusters`,
      () =>
        withTimeout(60_000, 'export', async () => {
          const out = join(W.dir, `delta-${cs}.qcow2`);
          const r = await vmsubstJson<Record<string, unknown>>([
            'export',
            W.bundlePath,
            '--qcow2',
            out,
            '--base',
            W.basePath,
            '--cluster-size',
            String(cs),
          ]);
          assert.is(r['cluster-size'], cs);
          assert.equal(r['backing'], { name: W.basePath, format: 'raw' }, 'the base, as given');
          const check = qemuImg(['check', out]);
          assert.is(check.code, 0, check.out);
          const cmp = qemuImg(['compare', out, W.patchedPath]);
          assert.is(cmp.code, 0, cmp.out);
          assert.match(cmp.out, /Images are identical/);
          assert.equal(allocated(out), expectedRuns(W, cs));
          if (cs === 4 * K) assert.is(r['filled-bytes'], 0, 'block-sized clusters hold only changed bytes');
          else assert.ok((r['filled-bytes'] as number) > 0, 'partly changed clusters were filled from the base');
          console.log(
            `  export ${cs / K}K clusters: ${r['data-clusters']} clusters, ${r['filled-bytes']} bytes filled from the base, file ${r['file-size']} bytes`,
          );
        }),
    );
  }

  Export('a qcow2 base works too: the overlay names it with format qcow2 and reads identical to PATCHED', () =>
    withTimeout(60_000, 'qcow2 base', async () => {
      const qbase = join(W.dir, 'base.qcow2');
      const conv = qemuImg(['convert', '-O', 'qcow2', W.basePath, qbase]);
      assert.is(conv.code, 0, conv.out);
      const out = join(W.dir, 'over-qcow2.qcow2');
      const r = await vmsubstJson<Record<string, unknown>>(['export', W.bundlePath, '--qcow2', out, '--base', qbase]);
      assert.equal(r['backing'], { name: qbase, format: 'qcow2' });
      const cmp = qemuImg(['compare', out, W.patchedPath]);
      assert.is(cmp.code, 0, cmp.out);
      assert.equal(allocated(out), expectedRuns(W, 64 * K));
    }),
  );

  Export("a base that is not the bundle's is refused and no file is written", () =>
    withTimeout(60_000, 'bad base', async () => {
      const diverged = join(W.dir, 'diverged.img');
      const content = Buffer.from(W.base);
      content[32 * MiB + 8192] = content[32 * MiB + 8192]! ^ 1;
      writeFileSync(diverged, content);
      const out = join(W.dir, 'refused.qcow2');
      for (const [base, message] of [
        [diverged, /1 of \d+ ranges hold neither/],
        [W.patchedPath, /already hold the new content \(is it the patched image\?\)/],
      ] as const) {
        const r = await vmsubst(['export', W.bundlePath, '--qcow2', out, '--base', base]);
        assert.is(r.code, 1, r.stderr);
        assert.match(r.stderr, message);
        assert.not.ok(existsSync(out), 'no overlay written');
      }
      const small = join(W.dir, 'small.img');
      writeFileSync(small, W.base.subarray(0, MiB));
      const r = await vmsubst(['export', W.bundlePath, '--qcow2', out, '--base', small]);
      assert.is(r.code, 1);
      assert.match(r.stderr, /is 1048576 bytes, the base image was 67108864 bytes/);
      assert.not.ok(existsSync(out));
      assert.equal(
        readdirSync(W.dir).filter((f) => f.includes('refused')),
        [],
        'no temporary file either',
      );
    }),
  );

  Export('an existing output file is never replaced; --base is required', () =>
    withTimeout(60_000, 'exists', async () => {
      const out = join(W.dir, 'exists.qcow2');
      writeFileSync(out, 'keep me');
      const r = await vmsubst(['export', W.bundlePath, '--qcow2', out, '--base', W.basePath]);
      assert.is(r.code, 1);
      assert.match(r.stderr, /exists already/);
      assert.is(readFileSync(out, 'utf8'), 'keep me');
      const u = await vmsubst(['export', W.bundlePath, '--qcow2', join(W.dir, 'nobase.qcow2')]);
      assert.is(u.code, 2);
      assert.match(u.stderr, /--base BASE is required/);
    }),
  );
}

if (whyNoQemu()) {
  console.log(`apply-overlay.test: QEMU suite skipped: ${whyNoQemu()}`);
  Live.skip('overlay mode (needs QEMU)', () => undefined);
} else {
  Live(
    'the overlay goes on top of the running drive: it reads the new content, its own image is untouched, the pause is reported',
    () =>
      withTimeout(TEST_TIMEOUT, 'overlay', async () => {
        const { vm, image, dir } = await startVm('fresh', W.base);
        const before = await qemuState(vm.monitor);
        const r = await applyToQemu(W.bundle, vm.qmpSocket, { mode: 'overlay', device: 'vblk0' });
        assert.is(r.mode, 'overlay');
        assert.is(r.status, 'applied');
        assert.is(r.recheck, 'clean');
        assert.is(r.windowMs, 0, 'the switch is atomic');
        assert.ok(typeof r.pauseMs === 'number' && r.pauseMs > 0);
        console.log(
          `  overlay: ${(W.changedBytes / MiB).toFixed(2)} MiB: guest paused ${r.pauseMs} ms for the switch, verify ${r.timingsMs.verify} ms, total ${r.elapsedMs} ms (QEMU TCG, loaded host)`,
        );
        const ov = r.overlay!;
        assert.is(ov.path, `${image}.vmsubst-${W.manifest.id.slice(0, 12)}.qcow2`);
        assert.equal(ov.backing, { name: image, format: 'raw' });
        assert.is(ov.clusterSize, 4096, 'block-aligned clusters: nothing filled from the live disk');
        assert.not.ok(ov.committed);
        const top = (await vm.monitor.queryBlock()).find((b) => b.qdev?.includes('vblk0'))!.inserted!;
        assert.is(top['node-name'], ov.node);
        assert.is(top.drv, 'qcow2');
        const after = await qemuState(vm.monitor);
        assert.equal(after, { ...before, nodes: [...before.nodes, ov.node].sort() }, 'only the overlay node was added');
        assert.ok((await driveRangesNew(vm, dir)).every(Boolean), 'the drive reads the new content');
        assert.ok((await vm.status()).running);
        await vm.flush();
        assert.ok(readFileSync(image).equals(W.base), "the drive's own image is not written");
        const cmp = qemuImg(['compare', '-U', ov.path, W.patchedPath]);
        assert.is(cmp.code, 0, cmp.out);
        assert.equal(readdirSync(dir).sort(), [
          'disk.img',
          `disk.img.vmsubst-${W.manifest.id.slice(0, 12)}.qcow2`,
          'vm.mon',
          'vm.qmp',
        ]);
      }),
  );

  Live('--commit merges the overlay into the drive while the guest runs, then removes its node and file', () =>
    withTimeout(TEST_TIMEOUT, 'commit', async () => {
      const { vm, image, dir } = await startVm('commit', W.base);
      const before = await qemuState(vm.monitor);
      const r = await vmsubstJson<Record<string, unknown>>([
        'apply',
        W.bundlePath,
        '--qmp',
        vm.qmpSocket,
        '--mode',
        'overlay',
        '--commit',
      ]);
      const ov = r['overlay'] as { committed: boolean; path: string; 'commit-ms': number };
      assert.ok(ov.committed, JSON.stringify(r));
      assert.equal(r['warnings'], []);
      console.log(`  overlay --commit: block-commit took ${ov['commit-ms']} ms (guest running)`);
      assert.equal(await qemuState(vm.monitor), before);
      const top = (await vm.monitor.queryBlock()).find((b) => b.qdev?.includes('vblk0'))!.inserted!;
      assert.is(top['node-name'], 'disk0');
      assert.is(top.ro, false, 'the drive is writable again');
      assert.not.ok(existsSync(ov.path));
      assert.ok((await vm.status()).running);
      await vm.flush();
      assert.ok(readFileSync(image).equals(W.patched), "the drive's image now holds the patched content");
      assert.equal(readdirSync(dir).sort(), ['disk.img', 'vm.mon', 'vm.qmp']);
    }),
  );

  Live('a disk that diverged from the base is refused: no overlay file, no node, no export', () =>
    withTimeout(TEST_TIMEOUT, 'diverged', async () => {
      const content = Buffer.from(W.base);
      const at = W.manifest.ranges[3]!.offset + 5;
      content[at] = content[at]! ^ 0xff;
      const { vm, image, dir } = await startVm('diverged', content);
      const before = await qemuState(vm.monitor);
      const err = await rejected(applyToQemu(W.bundle, vm.qmpSocket, { mode: 'overlay' }));
      assert.instance(err, BaseMismatchError);
      assert.equal(await qemuState(vm.monitor), before);
      await assertNbdServerFree(vm.monitor, dir);
      assert.equal(readdirSync(dir).sort(), ['disk.img', 'vm.mon', 'vm.qmp']);
      await vm.flush();
      assert.ok(readFileSync(image).equals(content));
    }),
  );

  Live(
    'a guest write into a changed range after the verification is refused at the pause; the overlay is removed',
    () =>
      withTimeout(TEST_TIMEOUT, 'race', async () => {
        const { vm, image, dir } = await startVm('race', W.base);
        const before = await qemuState(vm.monitor);
        const target = W.manifest.ranges[7]!.offset;
        const err = await rejected(
          applyToQemu(W.bundle, vm.qmpSocket, {
            mode: 'overlay',
            beforeWrite: () => deviceWrite(vm.monitor, target, 4096, 0x55),
          }),
        );
        assert.instance(err, BaseMismatchError);
        assert.ok((await vm.status()).running);
        assert.equal(await qemuState(vm.monitor), before);
        assert.equal(readdirSync(dir).sort(), ['disk.img', 'vm.mon', 'vm.qmp']);
        await vm.flush();
        const expect = Buffer.from(W.base);
        expect.fill(0x55, target, target + 4096);
        assert.ok(readFileSync(image).equals(expect));
      }),
  );

  Live('works on a device without share-rw=on (the drive itself is never written)', () =>
    withTimeout(TEST_TIMEOUT, 'no share-rw', async () => {
      const { vm, dir } = await startVm('noshare', W.base, { shareRw: false });
      const r = await applyToQemu(W.bundle, vm.qmpSocket, { mode: 'overlay', overlayPath: join(dir, 'given.qcow2') });
      assert.is(r.status, 'applied');
      assert.is(r.overlay!.path, join(dir, 'given.qcow2'));
      assert.ok((await driveRangesNew(vm, dir)).every(Boolean));
      const again = await applyToQemu(W.bundle, vm.qmpSocket, { mode: 'overlay' });
      assert.is(again.status, 'already-applied', 'the drive (through the overlay) already holds the new content');
      assert.is(again.overlay, undefined);
    }),
  );
}

Export.run();
Live.run();
