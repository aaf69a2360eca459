/**
 * The rollout scheduler against real QEMU VMs with no guest OS (firmware
 * only) and therefore no agent: concurrency, canary, stop on failure,
 * --continue, --on-no-agent fail/warn/reset, and resuming from the state file.
 * The guest suite test/qemu/rollout.test.ts covers guests with agents.
 */
import { createHash, randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { Bundle, writeBundle } from '../../../host-signal/src/bundle/index.js';
import { bufferSource, diffSources } from '../../../host-signal/src/diff/index.js';
import { rollout, type FleetMember, type RolloutResult } from '../../../host-signal/src/rollout/index.js';
import { FirmwareVm, firmwareImages, whyNoQemu } from '../../helpers/firmware-vm.js';
import { withTimeout } from '../../helpers/timeout.js';
import { vmsubst } from '../../helpers/cli.js';

const MiB = 1 << 20;
const SIZE = 8 * MiB;
const T = 120_000;
const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

interface Member {
  vm: FirmwareVm;
  image: string;
  member: FleetMember;
}

const W = { dir: '', base: Buffer.alloc(0), patched: Buffer.alloc(0), bundle: undefined as Bundle | undefined };
let started: Member[] = [];

/** A firmware VM whose disk is `content`, named `name`, with an agent address nothing answers on. */
async function member(name: string, content: Buffer): Promise<Member> {
  const dir = join(W.dir, `${name}-${randomBytes(3).toString('hex')}`);
  mkdirSync(dir);
  const image = join(dir, 'disk.img');
  writeFileSync(image, content);
  const vm = await FirmwareVm.start({ image, dir });
  const m = {
    vm,
    image,
    member: {
      name,
      qmp: vm.qmpSocket,
      device: 'vblk0',
      disk: {},
      agent: { kind: 'serial' as const, path: join(dir, 'no-agent.sock') },
    },
  };
  started.push(m);
  return m;
}

function diverged(): Buffer {
  const b = Buffer.from(W.base);
  b[MiB + 5] = b[MiB + 5]! ^ 1; // inside the bundle's second range
  return b;
}

async function image(m: Member): Promise<Buffer> {
  await m.vm.flush();
  return readFileSync(m.image);
}

const status = (r: RolloutResult): Record<string, string> => Object.fromEntries(r.vms.map((v) => [v.name, v.status]));

const Fleet = suite('rollout: the scheduler against firmware-only QEMU VMs (no agent)');
const noQemu = whyNoQemu();

Fleet.before(async () => {
  W.dir = mkdtempSync(join(tmpdir(), 'vmsubst-rollout-it-'));
  ({ base: W.base, patched: W.patched } = firmwareImages(SIZE));
  const d = await diffSources(bufferSource(W.base), bufferSource(W.patched));
  const path = join(W.dir, 'p.vsb');
  await writeBundle(path, { base: { size: SIZE }, blockSize: d.blockSize, ranges: d.ranges }, bufferSource(W.patched));
  W.bundle = await Bundle.open(path);
});
Fleet.after.each(() => {
  started.forEach((m) => m.vm.kill());
  started = [];
});
Fleet.after(async () => {
  await W.bundle?.close();
  rmSync(W.dir, { recursive: true, force: true });
});

if (noQemu) {
  console.log(`rollout-firmware.test: skipped: ${noQemu}`);
  Fleet.skip('rollout against QEMU (needs QEMU)', () => undefined);
} else {
  Fleet(
    'three at once with --continue: the diverged VM is refused and untouched, the others applied and marked not told',
    () =>
      withTimeout(T, 'continue', async () => {
        const ms = await Promise.all([member('a', W.base), member('bad', diverged()), member('c', W.base)]);
        const badBefore = sha(await image(ms[1]!));
        const running: number[] = [];
        let inFlight = 0;
        const r = await rollout(
          W.bundle!,
          ms.map((m) => m.member),
          {
            concurrency: 3,
            stopOnFailure: false,
            onStart: () => running.push(++inFlight),
            onDone: () => inFlight--,
          },
        );
        assert.equal(status(r), { a: 'applied', bad: 'refused', c: 'applied' });
        assert.ok(Math.max(...running) >= 2, `VMs ran concurrently (at most ${Math.max(...running)} at once)`);
        assert.is(r.halted, undefined);
        assert.is(r.vms[1]!.error?.code, 'E_VMSUBST_BASE_MISMATCH');
        assert.match(r.vms[1]!.error?.message ?? '', /nothing was written/);
        assert.is(r.vms[1]!.apply, undefined);
        assert.is(sha(await image(ms[1]!)), badBefore);
        for (const i of [0, 2]) {
          assert.ok((await image(ms[i]!)).equals(W.patched), `${ms[i]!.member.name} holds the patched image`);
          const v = r.vms[i]!;
          assert.is(v.agent.told, false);
          assert.ok(v.agent.unreachable, 'says why no agent answered');
          assert.ok(
            v.notes.some((n) => /not told: .*cached copies/.test(n)),
            v.notes.join('|'),
          );
        }
      }),
  );

  Fleet('stop on failure (the default), one at a time: nothing starts after the refused VM', () =>
    withTimeout(T, 'stop', async () => {
      const ms = await Promise.all([member('a', W.base), member('bad', diverged()), member('c', W.base)]);
      const r = await rollout(
        W.bundle!,
        ms.map((m) => m.member),
        { concurrency: 1 },
      );
      assert.equal(status(r), { a: 'applied', bad: 'refused', c: 'not-started' });
      assert.match(r.halted ?? '', /bad: refused/);
      assert.ok((await image(ms[2]!)).equals(W.base), 'c was not touched');
    }),
  );

  Fleet('a failed canary halts even with --continue; the others are not touched', () =>
    withTimeout(T, 'canary', async () => {
      const ms = await Promise.all([member('a', W.base), member('bad', diverged()), member('c', W.base)]);
      const r = await rollout(
        W.bundle!,
        ms.map((m) => m.member),
        { canary: 2, concurrency: 3, stopOnFailure: false },
      );
      assert.equal(status(r), { a: 'applied', bad: 'refused', c: 'not-started' });
      assert.match(r.halted ?? '', /canary/);
      assert.ok((await image(ms[2]!)).equals(W.base));
    }),
  );

  Fleet('--on-no-agent=fail writes nothing to a VM whose agent does not answer', () =>
    withTimeout(T, 'fail', async () => {
      const m = await member('a', W.base);
      const r = await rollout(W.bundle!, [m.member], { onNoAgent: 'fail' });
      assert.is(r.vms[0]!.status, 'failed');
      assert.is(r.vms[0]!.error?.code, 'E_VMSUBST_NO_AGENT');
      assert.ok((await image(m)).equals(W.base));
    }),
  );

  Fleet('--on-no-agent=reset writes, then resets the VM (system_reset), which keeps running', () =>
    withTimeout(T, 'reset', async () => {
      const m = await member('a', W.base);
      const events: string[] = [];
      m.vm.monitor.qmp.on('event', (e) => events.push(e.event));
      const r = await rollout(W.bundle!, [m.member], { onNoAgent: 'reset' });
      assert.is(r.vms[0]!.status, 'applied');
      assert.is(r.vms[0]!.reset, true);
      assert.ok(events.includes('RESET'), `QMP events: ${events.join(', ')}`);
      assert.ok((await m.vm.status()).running);
      assert.ok((await image(m)).equals(W.patched));
    }),
  );

  Fleet(
    'the CLI, one VM without a fleet file: applied, and the JSON says the guest was not told and what that means',
    () =>
      withTimeout(T, 'cli', async () => {
        const m = await member('a', W.base);
        const r = await vmsubst(['rollout', '--qmp', m.vm.qmpSocket, '--device', 'vblk0', W.bundle!.path, '--json']);
        assert.is(r.code, 0, r.stderr);
        const doc = JSON.parse(r.stdout) as {
          ok: boolean;
          vms: {
            name: string;
            status: string;
            guest: { told: boolean; meaning?: string };
            apply?: { written: number };
          }[];
        };
        assert.is(doc.ok, true);
        assert.is(doc.vms[0]!.name, 'vm');
        assert.is(doc.vms[0]!.status, 'applied');
        assert.is(doc.vms[0]!.guest.told, false);
        assert.match(doc.vms[0]!.guest.meaning ?? '', /cached copies/);
        assert.ok(doc.vms[0]!.apply!.written > 0);
        assert.ok((await image(m)).equals(W.patched));
      }),
  );

  Fleet(
    'an interrupted rollout resumes from its state file: done VMs are confirmed by their disks, not written again',
    () =>
      withTimeout(T, 'resume', async () => {
        const ms = await Promise.all([member('a', W.base), member('b', W.base)]);
        const state = join(W.dir, `state-${randomBytes(3).toString('hex')}.json`);
        const controller = new AbortController();
        // The first run is cancelled once one VM is done (as Ctrl-C does): b never starts.
        const first = await rollout(
          W.bundle!,
          ms.map((m) => m.member),
          { concurrency: 1, statePath: state, signal: controller.signal, onDone: () => controller.abort() },
        );
        assert.equal(status(first), { a: 'applied', b: 'not-started' });
        assert.is(first.halted, 'cancelled');
        const second = await rollout(
          W.bundle!,
          ms.map((m) => m.member),
          { concurrency: 2, statePath: state },
        );
        assert.equal(status(second), { a: 'done-before', b: 'applied' });
        assert.is(second.vms[0]!.apply?.status, 'already-applied');
        assert.is(second.vms[0]!.apply?.bytesWritten, 0);
        for (const m of ms) assert.ok((await image(m)).equals(W.patched));
        const recorded = JSON.parse(readFileSync(state, 'utf8')) as { vms: Record<string, { status: string }> };
        assert.equal(Object.fromEntries(Object.entries(recorded.vms).map(([k, v]) => [k, v.status])), {
          a: 'done-before',
          b: 'applied',
        });
      }),
  );
}

Fleet.run();
