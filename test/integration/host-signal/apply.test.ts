/**
 * `vmsubst apply` against real QEMU (firmware only, no guest OS) and against
 * raw image files. Every QEMU test starts its own VM and kills it afterwards.
 */
import { mkdirSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { vmsubstJson } from '../../helpers/cli.js';
import { withTimeout } from '../../helpers/timeout.js';
import { applyToImage, applyToQemu } from '../../../host-signal/src/apply/index.js';
import { BaseMismatchError, TargetError } from '../../../host-signal/src/errors.js';
import { whyNoQemu } from '../../helpers/firmware-vm.js';
import { MiB, applyWorld, diskCopy, firmwareSuite, rejected, sha, type ApplyWorld } from '../../helpers/apply-world.js';

const B = 4096;
const SIZE = 16 * MiB;
const TEST_TIMEOUT = 60_000;

/** Where the changes are: a run inside block 0, one over four blocks, one byte, the last block. */
const EDITS: [number, number][] = [
  [1024, 16],
  [MiB + 100, 3 * B],
  [8 * MiB + B, 1],
  [SIZE - 10, 10],
];
/** A block offset inside a changed range. */
const CHANGED_BLOCK = 8 * MiB + B;
const makeWorld = (): Promise<ApplyWorld> => applyWorld('apply-it', SIZE, EDITS);

const noQemu = whyNoQemu();
const Live = suite('apply: running QEMU (NBD export through QMP)');
const Image = suite('apply: raw image file');
const F = firmwareSuite(Live, makeWorld);
let W: ApplyWorld;
Live.before.each(() => {
  W = F.world();
});

if (noQemu) {
  console.log(`apply.test: QEMU suites skipped: ${noQemu}`);
  Live.skip('apply writes the changed blocks into a running VM (needs QEMU)', () => undefined);
} else {
  Live('apply writes exactly the changed blocks and the VM runs afterwards', () =>
    withTimeout(TEST_TIMEOUT, 'apply', async () => {
      const { vm, image } = await F.startVm('fresh', W.base);
      const r = await applyToQemu(W.bundle, vm.qmpSocket, { device: 'vblk0' });
      assert.is(r.status, 'applied');
      assert.is(r.bytesWritten, W.changedBytes);
      assert.is(r.rangesWritten, W.bundle.manifest.ranges.length);
      assert.equal(r.target, { kind: 'qemu', qmp: vm.qmpSocket, node: 'disk0', device: 'vblk0' });
      assert.is(r.vmStatus, 'running');
      assert.ok(r.resumed);
      assert.ok(typeof r.pauseMs === 'number' && r.pauseMs > 0, `pause ${r.pauseMs}`);
      assert.equal(r.warnings, []);
      const after = await vm.status();
      assert.ok(after.running);
      assert.is(after.status, 'running');
      await vm.flush();
      assert.ok(readFileSync(image).equals(W.patched), 'the image equals PATCHED');
    }),
  );

  Live('a second apply reports already-applied and writes nothing', () =>
    withTimeout(TEST_TIMEOUT, 'second apply', async () => {
      const { vm, image } = await F.startVm('twice', W.base);
      await applyToQemu(W.bundle, vm.qmpSocket, { device: 'vblk0' });
      await vm.flush();
      const before = sha(readFileSync(image));
      const r = await applyToQemu(W.bundle, vm.qmpSocket, { device: 'vblk0' });
      assert.is(r.status, 'already-applied');
      assert.is(r.bytesWritten, 0);
      assert.is(r.rangesWritten, 0);
      assert.ok((await vm.status()).running);
      await vm.flush();
      assert.is(sha(readFileSync(image)), before);
    }),
  );

  Live('a disk that differs from the base in a changed block is refused and left byte-for-byte unchanged', () =>
    withTimeout(TEST_TIMEOUT, 'mismatch', async () => {
      const content = Buffer.from(W.base);
      content[CHANGED_BLOCK + 7] = content[CHANGED_BLOCK + 7]! ^ 0xff; // neither old nor new
      const { vm, image } = await F.startVm('diverged', content);
      const err = await rejected(applyToQemu(W.bundle, vm.qmpSocket, { device: 'vblk0' }));
      assert.instance(err, BaseMismatchError);
      assert.match(err.message, /not based on this bundle's base: 1 of 4 ranges hold neither/);
      assert.match(err.message, new RegExp(`at offset ${CHANGED_BLOCK}`));
      assert.ok((await vm.status()).running, 'the VM was resumed');
      await vm.flush();
      assert.ok(readFileSync(image).equals(content), 'disk unchanged');
    }),
  );

  Live('a target of the wrong size is refused', () =>
    withTimeout(TEST_TIMEOUT, 'wrong size', async () => {
      const content = W.base.subarray(0, 8 * MiB);
      const { vm, image } = await F.startVm('small', content);
      const err = await rejected(applyToQemu(W.bundle, vm.qmpSocket, { device: 'vblk0' }));
      assert.instance(err, BaseMismatchError);
      assert.match(
        err.message,
        /target is not based on this bundle's base: drive vblk0 is 8388608 bytes, the base image was 16777216 bytes/,
      );
      assert.ok((await vm.status()).running);
      assert.ok(readFileSync(image).equals(content));
    }),
  );

  Live('a VM that was not running is written but not started', () =>
    withTimeout(TEST_TIMEOUT, 'paused VM', async () => {
      const { vm, image } = await F.startVm('paused', W.base, { paused: true });
      const r = await applyToQemu(W.bundle, vm.qmpSocket, { node: 'disk0' });
      assert.is(r.status, 'applied');
      assert.is(r.vmStatus, 'prelaunch');
      assert.is(r.pauseMs, null);
      assert.not.ok(r.resumed);
      assert.is((await vm.status()).running, false);
      assert.ok(readFileSync(image).equals(W.patched));
    }),
  );

  Live('the export, the NBD server and the socket directory are gone afterwards', () =>
    withTimeout(TEST_TIMEOUT, 'cleanup', async () => {
      const { vm, dir } = await F.startVm('cleanup', W.base);
      const work = join(dir, 'work');
      mkdirSync(work);
      await applyToQemu(W.bundle, vm.qmpSocket, { workDir: work });
      assert.equal(await vm.monitor.queryBlockExports(), []);
      assert.equal(readdirSync(work), []);
      // QEMU has one NBD server; starting one proves vmsubst's was stopped.
      await vm.monitor.nbdServerStartUnix(join(dir, 'probe.sock'));
      await vm.monitor.nbdServerStop();
    }),
  );

  Live('a device without share-rw=on is refused with a hint to set it, and nothing is left behind', () =>
    withTimeout(TEST_TIMEOUT, 'share-rw', async () => {
      const { vm, image, dir } = await F.startVm('noshare', W.base, { shareRw: false });
      const err = await rejected(applyToQemu(W.bundle, vm.qmpSocket, { device: 'vblk0' }));
      assert.instance(err, TargetError);
      assert.match(err.message, /Permission conflict/);
      assert.match((err as TargetError).hint ?? '', /share-rw=on/);
      assert.ok((await vm.status()).running);
      assert.ok(readFileSync(image).equals(W.base));
      await vm.monitor.nbdServerStartUnix(join(dir, 'probe.sock'));
      await vm.monitor.nbdServerStop();
    }),
  );

  Live('an NBD server already running in QEMU is reported as such', () =>
    withTimeout(TEST_TIMEOUT, 'nbd busy', async () => {
      const { vm, image, dir } = await F.startVm('busy', W.base);
      await vm.monitor.nbdServerStartUnix(join(dir, 'other.sock'));
      const err = await rejected(applyToQemu(W.bundle, vm.qmpSocket, { device: 'vblk0' }));
      assert.instance(err, TargetError);
      assert.match(err.message, /an NBD server is already running in this QEMU/);
      assert.ok(readFileSync(image).equals(W.base));
      await vm.monitor.nbdServerStop();
    }),
  );

  Live('an unknown device is refused, naming the devices there are', () =>
    withTimeout(TEST_TIMEOUT, 'unknown device', async () => {
      const { vm } = await F.startVm('nodev', W.base);
      const err = await rejected(applyToQemu(W.bundle, vm.qmpSocket, { device: 'vblk9' }));
      assert.instance(err, TargetError);
      assert.match(err.message, /no block device 'vblk9'/);
      assert.match((err as TargetError).hint ?? '', /vblk0 \(node disk0\)/);
    }),
  );

  Live('the CLI applies through QMP and reports JSON', () =>
    withTimeout(TEST_TIMEOUT, 'cli apply', async () => {
      const { vm, image } = await F.startVm('cli', W.base);
      const r = await vmsubstJson<Record<string, unknown>>([
        'apply',
        W.bundlePath,
        '--qmp',
        vm.qmpSocket,
        '--device',
        'vblk0',
      ]);
      assert.is(r['status'], 'applied');
      assert.is(r['written'], W.changedBytes);
      assert.is(typeof r['pause-ms'], 'number');
      assert.is(r['vm-status'], 'running');
      await vm.flush();
      assert.ok(readFileSync(image).equals(W.patched));
    }),
  );

  Live('applying into the image of a running VM directly is refused (QEMU holds its lock)', () =>
    withTimeout(TEST_TIMEOUT, 'locked image', async () => {
      const { image } = await F.startVm('locked', W.base);
      const err = await rejected(applyToImage(W.bundle, image));
      assert.instance(err, TargetError);
      assert.match(err.message, /is locked/);
      assert.ok(readFileSync(image).equals(W.base));
    }),
  );
}

let IW: ApplyWorld;
Image.before(async () => {
  IW = await makeWorld();
});
Image.after(async () => {
  await IW?.bundle.close();
  if (IW) rmSync(IW.dir, { recursive: true, force: true });
});

Image('apply --image writes the changed blocks', () =>
  withTimeout(TEST_TIMEOUT, 'image apply', async () => {
    const { image } = diskCopy(IW, 'img-fresh', IW.base);
    const r = await applyToImage(IW.bundle, image);
    assert.is(r.status, 'applied');
    assert.is(r.bytesWritten, IW.changedBytes);
    assert.ok(readFileSync(image).equals(IW.patched));
  }),
);

Image('a second apply --image reports already-applied and writes nothing', () =>
  withTimeout(TEST_TIMEOUT, 'image twice', async () => {
    const { image } = diskCopy(IW, 'img-twice', IW.patched);
    const r = await applyToImage(IW.bundle, image);
    assert.is(r.status, 'already-applied');
    assert.is(r.bytesWritten, 0);
    assert.ok(readFileSync(image).equals(IW.patched));
  }),
);

Image('an image that differs from the base in a changed block is refused and unchanged', () =>
  withTimeout(TEST_TIMEOUT, 'image mismatch', async () => {
    const content = Buffer.from(IW.base);
    content[CHANGED_BLOCK] = content[CHANGED_BLOCK]! ^ 1;
    const { image } = diskCopy(IW, 'img-diverged', content);
    const err = await rejected(applyToImage(IW.bundle, image));
    assert.instance(err, BaseMismatchError);
    assert.ok(readFileSync(image).equals(content));
  }),
);

Image('an image of the wrong size is refused', () =>
  withTimeout(TEST_TIMEOUT, 'image size', async () => {
    const content = Buffer.concat([IW.base, Buffer.alloc(B)]);
    const { image } = diskCopy(IW, 'img-big', content);
    const err = await rejected(applyToImage(IW.bundle, image));
    assert.instance(err, BaseMismatchError);
    assert.ok(readFileSync(image).equals(content));
  }),
);

Live.run();
Image.run();
