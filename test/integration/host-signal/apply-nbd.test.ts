/**
 * The nbd apply mode against a real QEMU (firmware only, no guest OS): a
 * 4 MiB bundle written through a private NBD export, the pause window
 * reported, nothing left behind, guest writes during the verification caught
 * by the dirty bitmap, and bad input refused with nothing changed.
 */
import { mkdirSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { vmsubst, vmsubstJson } from '../../helpers/cli.js';
import { withTimeout } from '../../helpers/timeout.js';
import { whyNoQemu } from '../../helpers/firmware-vm.js';
import {
  MiB,
  applyWorld,
  assertNbdServerFree,
  deviceWrite,
  firmwareSuite,
  qemuState,
  rangesNew,
  rejected,
  type ApplyWorld,
} from '../../helpers/apply-world.js';
import { applyToQemu } from '../../../host-signal/src/apply/index.js';
import { BaseMismatchError } from '../../../host-signal/src/errors.js';

const SIZE = 64 * MiB;
const TEST_TIMEOUT = 90_000;
/** 4 MiB in 64 ranges of 64 KiB, one per MiB, plus a one-byte change in the last block. */
const EDITS: [number, number][] = [
  ...Array.from({ length: 64 }, (_, i): [number, number] => [i * MiB + 8192, 64 << 10]),
  [SIZE - 1, 1],
];
/** A block no range touches. */
const UNCHANGED = 32 * MiB + 512 * 1024;

const noQemu = whyNoQemu();
const S = suite('apply --mode nbd (QEMU, NBD export through QMP)');
const F = firmwareSuite(S, () => applyWorld('nbd', SIZE, EDITS));
let W: ApplyWorld;
S.before.each(() => {
  W = F.world();
});
const startVm = F.startVm;

if (noQemu) {
  console.log(`apply-nbd.test: skipped: ${noQemu}`);
  S.skip('nbd mode (needs QEMU)', () => undefined);
} else {
  S('a 4 MiB bundle: every range holds its new content, the guest is resumed, the pause is reported', () =>
    withTimeout(TEST_TIMEOUT, 'nbd 4 MiB', async () => {
      const { vm, image } = await startVm('fresh', W.base);
      const r = await applyToQemu(W.bundle, vm.qmpSocket, { device: 'vblk0' });
      assert.is(r.mode, 'nbd');
      assert.is(r.status, 'applied');
      assert.is(r.bytesWritten, W.changedBytes);
      assert.ok(W.changedBytes >= 4 * MiB);
      assert.is(r.recheck, 'clean', 'the firmware wrote nothing during the verification');
      assert.ok(typeof r.pauseMs === 'number' && r.pauseMs > 0, `pause ${r.pauseMs}`);
      assert.ok(
        typeof r.windowMs === 'number' && r.windowMs <= r.pauseMs,
        `window ${r.windowMs} inside the pause ${r.pauseMs}`,
      );
      console.log(
        `  nbd: ${(W.changedBytes / MiB).toFixed(2)} MiB in ${r.rangesWritten} ranges: guest paused ${r.pauseMs} ms, writes ${r.windowMs} ms, verify (guest running) ${r.timingsMs.verify} ms, total ${r.elapsedMs} ms (QEMU TCG, loaded host)`,
      );
      assert.ok((await vm.status()).running);
      await vm.flush();
      assert.ok(rangesNew(W.manifest, image).every(Boolean), 'sha256 of every range is its new-sha256');
      assert.ok(readFileSync(image).equals(W.patched), 'and nothing else changed');
    }),
  );

  S('nothing is left behind: no export, NBD server, dirty bitmap, block node or socket directory', () =>
    withTimeout(TEST_TIMEOUT, 'cleanup', async () => {
      const { vm, dir } = await startVm('cleanup', W.base);
      const before = await qemuState(vm.monitor);
      const work = join(dir, 'work');
      mkdirSync(work);
      await applyToQemu(W.bundle, vm.qmpSocket, { workDir: work });
      assert.equal(await qemuState(vm.monitor), before);
      assert.equal(before, { exports: [], nodes: ['disk0', 'file0'], bitmaps: [], jobs: [] });
      assert.equal(readdirSync(work), []);
      await assertNbdServerFree(vm.monitor, dir);
    }),
  );

  S('a guest write elsewhere during the verification is seen at the pause: verified again, then written', () =>
    withTimeout(TEST_TIMEOUT, 'reverify', async () => {
      const { vm, image } = await startVm('guestwrite', W.base);
      const r = await applyToQemu(W.bundle, vm.qmpSocket, {
        beforeWrite: () => deviceWrite(vm.monitor, UNCHANGED, 4096, 0x33),
      });
      assert.is(r.status, 'applied');
      assert.is(r.recheck, 'reverified');
      await vm.flush();
      const disk = readFileSync(image);
      assert.ok(rangesNew(W.manifest, disk).every(Boolean));
      assert.ok(disk.subarray(UNCHANGED, UNCHANGED + 4096).equals(Buffer.alloc(4096, 0x33)), "the guest's write stays");
    }),
  );

  S('a guest write into a changed range during the verification is refused at the pause; nothing is written', () =>
    withTimeout(TEST_TIMEOUT, 'race', async () => {
      const { vm, image, dir } = await startVm('race', W.base);
      const before = await qemuState(vm.monitor);
      const target = W.manifest.ranges[5]!.offset;
      const err = await rejected(
        applyToQemu(W.bundle, vm.qmpSocket, { beforeWrite: () => deviceWrite(vm.monitor, target, 4096, 0x44) }),
      );
      assert.instance(err, BaseMismatchError);
      assert.match(
        err.message,
        new RegExp(`1 of ${W.manifest.ranges.length} ranges hold neither.*at offset ${target}`),
      );
      assert.ok((await vm.status()).running, 'resumed');
      assert.equal(await qemuState(vm.monitor), before);
      await assertNbdServerFree(vm.monitor, dir);
      await vm.flush();
      const expect = Buffer.from(W.base);
      expect.fill(0x44, target, target + 4096);
      assert.ok(readFileSync(image).equals(expect), 'only the guest write changed the disk');
    }),
  );

  S('a disk that diverged from the base is refused: nothing written, QEMU state unchanged', () =>
    withTimeout(TEST_TIMEOUT, 'diverged', async () => {
      const content = Buffer.from(W.base);
      const at = W.manifest.ranges[10]!.offset + 100;
      content[at] = content[at]! ^ 0xff;
      const { vm, image, dir } = await startVm('diverged', content);
      const before = await qemuState(vm.monitor);
      const r = await vmsubst(['apply', W.bundlePath, '--qmp', vm.qmpSocket, '--json']);
      assert.is(r.code, 1, r.stderr);
      const doc = JSON.parse(r.stdout) as { error: { code: string; message: string } };
      assert.is(doc.error.code, 'E_VMSUBST_BASE_MISMATCH');
      assert.match(doc.error.message, /nothing was written/);
      assert.ok((await vm.status()).running);
      assert.equal(await qemuState(vm.monitor), before);
      await assertNbdServerFree(vm.monitor, dir);
      await vm.flush();
      assert.ok(readFileSync(image).equals(content));
    }),
  );

  S('a disk of another size is refused before anything is exported', () =>
    withTimeout(TEST_TIMEOUT, 'size', async () => {
      const content = W.base.subarray(0, 32 * MiB);
      const { vm, image } = await startVm('small', content);
      const before = await qemuState(vm.monitor);
      const err = await rejected(applyToQemu(W.bundle, vm.qmpSocket, {}));
      assert.instance(err, BaseMismatchError);
      assert.match(err.message, /is 33554432 bytes, the base image was 67108864 bytes/);
      assert.equal(await qemuState(vm.monitor), before);
      assert.ok(readFileSync(image).equals(content));
    }),
  );

  S('the CLI reports the mode, pause-ms and window-ms in JSON; a second apply writes nothing and does not pause', () =>
    withTimeout(TEST_TIMEOUT, 'cli', async () => {
      const { vm, image } = await startVm('cli', W.base);
      const r = await vmsubstJson<Record<string, unknown>>([
        'apply',
        W.bundlePath,
        '--qmp',
        vm.qmpSocket,
        '--mode',
        'nbd',
      ]);
      assert.is(r['mode'], 'nbd');
      assert.is(r['status'], 'applied');
      assert.is(typeof r['pause-ms'], 'number');
      assert.is(typeof r['window-ms'], 'number');
      assert.is(r['recheck'], 'clean');
      const again = await vmsubstJson<Record<string, unknown>>(['apply', W.bundlePath, '--qmp', vm.qmpSocket]);
      assert.is(again['status'], 'already-applied');
      assert.is(again['pause-ms'], null, 'nothing to write: the guest is not paused');
      await vm.flush();
      assert.ok(rangesNew(W.manifest, image).every(Boolean));
    }),
  );

  S(
    'no agent: apply writes, and the result says the guest was not told and what that means (--on-no-agent=warn, the default)',
    () =>
      withTimeout(TEST_TIMEOUT, 'not told', async () => {
        const { vm, image, dir } = await startVm('nottold', W.base);
        const plain = await vmsubst(['apply', W.bundlePath, '--qmp', vm.qmpSocket]);
        assert.is(plain.code, 0, plain.stderr);
        assert.match(
          plain.stdout,
          /NOT TOLD \(no agent address was given \(--notify\)\): the guest was not told: it keeps serving cached copies/,
        );
        // Silent agent address: a unix socket nobody listens on.
        const { vm: vm2, image: image2 } = await startVm('nottold2', W.base);
        const r = await vmsubstJson<{
          status: string;
          agent: { told: boolean; target: string; unreachable: string; meaning: string };
          reset: boolean;
        }>(['apply', W.bundlePath, '--qmp', vm2.qmpSocket, '--notify', `unix:${join(dir, 'nobody.sock')}`]);
        assert.is(r.status, 'applied');
        assert.is(r.agent.told, false);
        assert.match(r.agent.target, /nobody\.sock/);
        assert.match(r.agent.unreachable, /nobody\.sock/);
        assert.match(r.agent.meaning, /cached copies .* until they are evicted/);
        assert.is(r.reset, false);
        await vm.flush();
        await vm2.flush();
        assert.ok(readFileSync(image).equals(W.patched));
        assert.ok(readFileSync(image2).equals(W.patched));
      }),
  );

  S('no agent, --on-no-agent=fail: an error, nothing written, QEMU state unchanged', () =>
    withTimeout(TEST_TIMEOUT, 'no agent fail', async () => {
      const { vm, image, dir } = await startVm('noagentfail', W.base);
      const before = await qemuState(vm.monitor);
      const r = await vmsubst([
        'apply',
        W.bundlePath,
        '--qmp',
        vm.qmpSocket,
        '--notify',
        `unix:${join(dir, 'nobody.sock')}`,
        '--on-no-agent',
        'fail',
        '--json',
      ]);
      assert.is(r.code, 1, r.stderr);
      const doc = JSON.parse(r.stdout) as { error: { code: string; message: string; hint: string } };
      assert.is(doc.error.code, 'E_VMSUBST_NO_AGENT');
      assert.match(doc.error.message, /no agent answered .*nobody\.sock.*nothing written/);
      assert.match(doc.error.hint, /--on-no-agent=warn/);
      assert.equal(await qemuState(vm.monitor), before);
      await vm.flush();
      assert.ok(readFileSync(image).equals(W.base));
    }),
  );

  S('no agent, --on-no-agent=reset: written, then the VM is reset (system_reset) and keeps running', () =>
    withTimeout(TEST_TIMEOUT, 'no agent reset', async () => {
      const { vm, image } = await startVm('noagentreset', W.base);
      const events: string[] = [];
      vm.monitor.qmp.on('event', (e) => events.push(e.event));
      const r = await vmsubstJson<{ status: string; reset: boolean; notes: string[] }>([
        'apply',
        W.bundlePath,
        '--qmp',
        vm.qmpSocket,
        '--on-no-agent',
        'reset',
      ]);
      assert.is(r.status, 'applied');
      assert.is(r.reset, true);
      assert.ok(
        r.notes.some((n) => /reset \(QMP system_reset\)/.test(n)),
        JSON.stringify(r.notes),
      );
      assert.ok(events.includes('RESET'), `QMP events: ${events.join(', ')}`);
      assert.ok((await vm.status()).running);
      await vm.flush();
      assert.ok(readFileSync(image).equals(W.patched));
    }),
  );
}

const Usage = suite('apply: mode combinations');
let U: ApplyWorld;
Usage.before(async () => {
  U = await applyWorld('usage', MiB, [[4096, 10]]);
});
Usage.after(async () => {
  await U?.bundle.close();
  if (U) rmSync(U.dir, { recursive: true, force: true });
});

Usage('wrong combinations of target and mode are usage errors (exit 2) and touch nothing', async () => {
  const img = join(U.dir, 'untouched.img');
  writeFileSync(img, U.base);
  const cases: [string[], RegExp][] = [
    [['--qmp', '/nonexistent.qmp', '--mode', 'raw-file'], /raw-file writes an image file/],
    [['--image', img, '--mode', 'nbd'], /--mode nbd writes through QEMU/],
    [['--image', img, '--mode', 'overlay'], /--mode overlay writes through QEMU/],
    [['--qmp', '/nonexistent.qmp', '--commit'], /--overlay and --commit go with --mode overlay/],
    [
      ['--qmp', '/nonexistent.qmp', '--mode', 'nbd', '--overlay', '/tmp/x.qcow2'],
      /--overlay and --commit go with --mode overlay/,
    ],
    [['--qmp', '/nonexistent.qmp', '--mode', 'fast'], /--mode fast: expected one of nbd, overlay, raw-file/],
    [['--image', img, '--disk-serial', 'x'], /--disk-serial goes with --notify/],
    [['--image', img, '--qmp', '/nonexistent.qmp'], /exactly one of --qmp SOCK, --image PATH or --libvirt DOMAIN/],
    [['--image', img, '--libvirt', 'dom'], /exactly one of --qmp SOCK, --image PATH or --libvirt DOMAIN/],
    [['--image', img, '--device', 'vblk0'], /--device and --node go with --qmp/],
    [
      ['--image', img, '--on-no-agent', 'reset'],
      /--on-no-agent=reset restarts the VM with QMP system_reset: give --qmp/,
    ],
    [['--image', img, '--on-no-agent', 'maybe'], /--on-no-agent maybe: expected fail, warn or reset/],
  ];
  for (const [args, message] of cases) {
    const r = await vmsubst(['apply', U.bundlePath, ...args]);
    assert.is(r.code, 2, `${args.join(' ')}: ${r.stderr}`);
    assert.match(r.stderr, message);
  }
  assert.ok(readFileSync(img).equals(U.base));
});

S.run();
Usage.run();
