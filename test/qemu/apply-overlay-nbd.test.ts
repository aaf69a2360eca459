/**
 * Two-phase apply end to end in a real guest, in the overlay and nbd modes:
 * `vmsubst apply --notify` verifies the disk, has the agent prepare (plan, and
 * pin what the policies say while the old blocks are on disk), puts the new
 * blocks in place, commits, and renders both results. A write that fails after prepare
 * is followed by abort.
 */
import { join } from 'node:path';
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { startProgram, versions, withGuest, type GuestContext } from '../helpers/guest-suite.js';
import { vmsubst, vmsubstJson } from '../helpers/cli.js';
import { waitFor, withTimeout } from '../helpers/timeout.js';
import { notificationArgs, parseAgentTarget } from '../../host-signal/src/notify/index.js';
import { Bundle } from '../../host-signal/src/bundle/index.js';
import { applyAndTell } from '../../host-signal/src/apply/guest.js';
import type { Substitution } from '../../host-signal/src/apply/core.js';

const PROG = '/mnt/data/bin/vprog';

interface ApplyJson {
  status: string;
  mode: string;
  'pause-ms': number | null;
  overlay?: { path: string; committed: boolean };
  agent: {
    'two-phase': boolean;
    prepare?: {
      pinned: { pid: number; status: string }[];
      plan: { files: { path: string; policy: string; mappers: { pid: number }[] }[] };
    };
    report: { files: { path: string; mappers: { pid: number }[] }[] };
  };
}

type Ctx = GuestContext & { running: number };

const T = withGuest(suite('apply --notify (two-phase) in a guest: overlay and nbd modes'), {
  name: 'apply-modes',
  setup: async ({ vm }) => ({ running: await startProgram(vm, 'running', `${PROG} 400`) }),
});

/** v2 applied in overlay mode with the two-phase notification: the --json answer. */
const overlaid = (c: Ctx): Promise<ApplyJson> =>
  c.once('overlay', () =>
    vmsubstJson<ApplyJson>(
      [
        'apply',
        c.bundle,
        '--qmp',
        c.vm.qmpSocket,
        '--mode',
        'overlay',
        '--overlay',
        join(c.tmp, 'delta.qcow2'),
        '--notify',
        `serial:${c.vm.agentSocket}`,
        '--disk-serial',
        'vmsubst-data',
      ],
      240_000,
    ),
  );

T('a write that fails after prepare is followed by abort; the disk is unchanged', (c) =>
  withTimeout(180_000, 'abort', async () => {
    const bundle = await Bundle.open(c.bundle);
    try {
      const args = notificationArgs(bundle.manifest, { serial: 'vmsubst-data' });
      const out = await applyAndTell(
        async (beforeWrite): Promise<Substitution> => {
          await beforeWrite();
          throw new Error('the write failed');
        },
        { args, agent: parseAgentTarget(`serial:${c.vm.agentSocket}`), onNoAgent: 'fail' },
      );
      assert.is(out.agent.mode, undefined);
      assert.ok(out.agent.prepare, 'prepare ran before the write');
      assert.is(out.status, 'failed');
      assert.match(out.error?.message ?? '', /the write failed/);
      assert.ok(
        out.notes.some((n) => /dropped the prepared substitution \(aborted\)/.test(n)),
        JSON.stringify(out.notes),
      );
      assert.not.ok(out.agent.told);
    } finally {
      await bundle.close();
    }
    assert.match(await c.vm.sh(PROG), /version v1/);
  }),
);

T(
  'overlay mode with --notify: prepare plans, the overlay goes on top, commit reports; the running program moves to v2',
  (c) =>
    withTimeout(240_000, 'overlay', async () => {
      const { vm } = c;
      const r = await overlaid(c);
      assert.is(r.status, 'applied');
      assert.is(r.mode, 'overlay');
      assert.is(typeof r['pause-ms'], 'number');
      console.log(`  guest overlay apply: paused ${r['pause-ms']} ms`);
      assert.is(r.overlay?.committed, false);
      assert.ok(r.agent['two-phase'], 'prepare/commit were used');
      // The bundle's hint says no executable byte of vprog changed: the policy is remap, nothing is pinned.
      const planned = r.agent.prepare?.plan.files.find((f) => f.path === PROG);
      assert.is(planned?.policy, 'remap', JSON.stringify(r.agent.prepare));
      assert.ok(
        planned?.mappers.some((m) => m.pid === c.running),
        'prepare saw the running program',
      );
      assert.ok(
        r.agent.report.files.some((f) => f.path === PROG),
        JSON.stringify(r.agent.report.files),
      );
      assert.match(await vm.sh(PROG), /version v2/, 'a new exec runs v2');
      await waitFor(30_000, 'the running program switches to v2', async () =>
        (await versions(vm, '/tmp/running.out')).at(-1) === 'vprog version v2' ? true : undefined,
      );
    }),
);

T('nbd mode with --notify writes the reverse bundle into the overlay node and the guest returns to v1', (c) =>
  withTimeout(480_000, 'nbd', async () => {
    const { vm } = c;
    await overlaid(c);
    const back = join(c.tmp, 'back.bundle');
    await vmsubstJson(['diff', join(c.art.disks, 'patched.img'), join(c.art.disks, 'base.img'), '-o', back]);
    const r = await vmsubst(
      [
        'apply',
        back,
        '--qmp',
        vm.qmpSocket,
        '--mode',
        'nbd',
        '--notify',
        `serial:${vm.agentSocket}`,
        '--disk-serial',
        'vmsubst-data',
      ],
      240_000,
    );
    assert.is(r.code, 0, r.stderr);
    assert.match(r.stdout, /nbd: wrote 1 range, 4 KiB/);
    assert.match(r.stdout, /guest paused for [\d.]+ ms/);
    assert.match(r.stdout, /prepare → write → commit/);
    assert.match(r.stdout, new RegExp(`${PROG}: \\d+ pages dropped`));
    assert.match(await vm.sh(PROG), /version v1/);
  }),
);

T.run();
