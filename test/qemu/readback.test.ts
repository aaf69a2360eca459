/**
 * The end-to-end invariant in a real guest: after the invalidation the agent
 * reads every changed file range back through the filesystem and compares it
 * with what it verified on the disk. With the module call skipped
 * (VMSUBST_FAULT=skip-invalidate: the invalidation "succeeds" without doing
 * anything) the cached old program is still what the guest reads: the host's
 * notify exits non-zero with `Stale` naming the file, and no content. Without
 * the fault the same bundle succeeds and the report has the read-back stage.
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { startAgent, stopAgent, withGuest } from '../helpers/guest-suite.js';
import { vmsubst, vmsubstJson } from '../helpers/cli.js';
import { withTimeout } from '../helpers/timeout.js';
import type { SubstituteReport } from '@vmsubst/common/protocol/schema';

const PROG = '/mnt/data/bin/vprog';

const Rb = withGuest(suite('read-back: never success while the guest still reads old content'), {
  name: 'readback',
  boot: { noAgent: true },
  async setup({ vm, bundle }) {
    // The program's pages are cached (v1); then the host writes v2 under the guest.
    assert.match(await vm.sh(PROG), /version v1/);
    await vmsubstJson(['apply', bundle, '--qmp', vm.qmpSocket, '--device', 'vblk0']);
  },
});

// Each test starts its own agent by hand and stops it after.
Rb('an invalidation that silently does nothing: notify fails with Stale naming the file', (c) =>
  withTimeout(180_000, 'stale', async () => {
    const { vm } = c;
    await startAgent(vm, { env: 'VMSUBST_FAULT=skip-invalidate', log: '/tmp/agent-fault.log' });
    try {
      const r = await vmsubst([
        'notify',
        c.bundle,
        '--to',
        `serial:${vm.agentSocket}`,
        '--disk-serial',
        'vmsubst-data',
      ]);
      assert.is.not(r.code, 0, `notify must fail:\n${r.stdout}\n${r.stderr}`);
      assert.match(r.stderr, /Stale/);
      assert.match(r.stderr, /\/mnt\/data\/bin\/vprog \(inode \d+\) at \d+\+\d+/);
      assert.not.match(r.stdout, /verified/, 'never reported as done');
      assert.not.match(r.stderr, /version v[12]/, 'no guest content in the answer');
      // The guest indeed still runs the old program: what the agent caught.
      assert.match(await vm.sh(PROG), /version v1/);
      const st = await vm.run('node /opt/vmsubst/build/agent/src/main.js status --json');
      assert.match(st.out, /"state": "failed"/);
    } finally {
      await stopAgent(vm);
    }
  }),
);

Rb('without the fault the same bundle succeeds and reports the read-back stage', (c) =>
  withTimeout(180_000, 'ok', async () => {
    const { vm } = c;
    await startAgent(vm, { log: '/tmp/agent.log' });
    try {
      const report = await vmsubstJson<SubstituteReport>([
        'notify',
        c.bundle,
        '--to',
        `serial:${vm.agentSocket}`,
        '--disk-serial',
        'vmsubst-data',
      ]);
      const t = report['timings-ms'];
      assert.type(t.readback, 'number');
      assert.ok(report.readback, JSON.stringify(report));
      assert.ok(report.readback.files >= 1 && report.readback.bytes > 0, JSON.stringify(report.readback));
      assert.not.ok(report.readback.mixed);
      console.log(
        `    read-back: ${report.readback.bytes} bytes of ${report.readback.files} file(s) in ${(t.readback ?? 0).toFixed(1)} ms (verify ${t.verify.toFixed(1)}, module ${t.module?.toFixed(1)}, total ${t.total.toFixed(1)} ms)`,
      );
      assert.match(await vm.sh(PROG), /version v2/);
      const human = await vmsubst(['notify', c.bundle, '--to', `serial:${vm.agentSocket}`]);
      assert.is(human.code, 0, human.stderr);
    } finally {
      await stopAgent(vm);
    }
  }),
);

Rb.run();
