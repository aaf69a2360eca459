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
import { GuestVm } from '../helpers/vm.js';
import { guestScenario, type Scenario } from '../helpers/scenario.js';
import { guestArtifacts } from '../helpers/paths.js';
import { vmsubst, vmsubstJson } from '../helpers/cli.js';
import { guard } from '../helpers/guard.js';
import { waitFor, withTimeout } from '../helpers/timeout.js';
import type { SubstituteReport } from '@vmsubst/common/protocol/schema';

const art = guestArtifacts();
const Rb = suite('read-back: never success while the guest still reads old content');
const G = guard(Rb);
const C = { scenario: undefined as Scenario | undefined, vm: undefined as GuestVm | undefined, bundle: '' };
const PROG = '/mnt/data/bin/vprog';
const AGENT = 'node /opt/vmsubst/build/agent/src/main.js --no-vsock';

async function startAgent(vm: GuestVm, env: string, log: string): Promise<void> {
  await vm.sh(`${env} ${AGENT} > ${log} 2>&1 & echo $! > /tmp/agent.pid`);
  await waitFor(60_000, 'agent ready', async () => ((await vm.run(`grep -q "info: ready" ${log}`)).code === 0 ? true : undefined), 200);
}
async function stopAgent(vm: GuestVm): Promise<void> {
  await vm.sh('kill $(cat /tmp/agent.pid); while kill -0 $(cat /tmp/agent.pid) 2>/dev/null; do sleep 0.1; done; true');
}

if (typeof art === 'string') {
  console.log(`  skipped: ${art}`);
  Rb.skip('guest artefacts are missing', () => undefined);
} else {
  Rb.before(G.setup(async () => {
    C.scenario = await guestScenario(art, 'readback', { boot: { noAgent: true } });
    C.vm = C.scenario.vm;
    C.bundle = C.scenario.bundle;
    // The program's pages are cached (v1); then the host writes v2 under the guest.
    assert.match(await C.vm.sh(PROG), /version v1/);
    await vmsubstJson(['apply', C.bundle, '--qmp', C.vm.qmpSocket, '--device', 'vblk0']);
  }));
  Rb.after(() => {
    C.scenario?.close();
  });

  G.test('an invalidation that silently does nothing: notify fails with Stale naming the file', () =>
    withTimeout(180_000, 'stale', async () => {
      const vm = C.vm!;
      await startAgent(vm, 'VMSUBST_FAULT=skip-invalidate', '/tmp/agent-fault.log');
      const r = await vmsubst(['notify', C.bundle, '--to', `serial:${vm.agentSocket}`, '--disk-serial', 'vmsubst-data']);
      assert.is.not(r.code, 0, `notify must fail:\n${r.stdout}\n${r.stderr}`);
      assert.match(r.stderr, /Stale/);
      assert.match(r.stderr, /\/mnt\/data\/bin\/vprog \(inode \d+\) at \d+\+\d+/);
      assert.not.match(r.stdout, /verified/, 'never reported as done');
      assert.not.match(r.stderr, /version v[12]/, 'no guest content in the answer');
      // The guest indeed still runs the old program: what the agent caught.
      assert.match(await vm.sh(PROG), /version v1/);
      const st = await vm.run('node /opt/vmsubst/build/agent/src/main.js status --json');
      assert.match(st.out, /"state": "failed"/);
      await stopAgent(vm);
    }),
  );

  G.test('without the fault the same bundle succeeds and reports the read-back stage', () =>
    withTimeout(180_000, 'ok', async () => {
      const vm = C.vm!;
      await startAgent(vm, '', '/tmp/agent.log');
      const report = await vmsubstJson<SubstituteReport>(['notify', C.bundle, '--to', `serial:${vm.agentSocket}`, '--disk-serial', 'vmsubst-data']);
      const t = report['timings-ms'];
      assert.type(t.readback, 'number');
      assert.ok(report.readback, JSON.stringify(report));
      assert.ok(report.readback.files >= 1 && report.readback.bytes > 0, JSON.stringify(report.readback));
      assert.not.ok(report.readback.mixed);
      console.log(`    read-back: ${report.readback.bytes} bytes of ${report.readback.files} file(s) in ${(t.readback ?? 0).toFixed(1)} ms (verify ${t.verify.toFixed(1)}, module ${t.module?.toFixed(1)}, total ${t.total.toFixed(1)} ms)`);
      assert.match(await vm.sh(PROG), /version v2/);
      const human = await vmsubst(['notify', C.bundle, '--to', `serial:${vm.agentSocket}`]);
      assert.is(human.code, 0, human.stderr);
    }),
  );
}

Rb.run();
