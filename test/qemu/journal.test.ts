/**
 * The journal in a real guest: an agent killed right after journaling the
 * start of a substitution is restarted, the host's retry completes it (and
 * says so), a repeat of the same id is answered from the journal without
 * acting again, and `vmsubst-agent status` shows the outcome.
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
const Jr = suite('journal: crash recovery and idempotent answers in the guest');
const G = guard(Jr);
const C = { scenario: undefined as Scenario | undefined, bundle: '', vm: undefined as GuestVm | undefined };
const AGENT = 'node /opt/vmsubst/build/agent/src/main.js --no-vsock';

async function startAgent(vm: GuestVm, env: string, log: string, args = ''): Promise<void> {
  await vm.sh(`${env} ${AGENT} ${args} > ${log} 2>&1 &`);
  await waitFor(60_000, 'agent ready', async () => ((await vm.run(`grep -q "info: ready" ${log}`)).code === 0 ? true : undefined), 200);
}

if (typeof art === 'string') {
  console.log(`  skipped: ${art}`);
  Jr.skip('guest artefacts are missing', () => undefined);
} else {
  Jr.before(G.setup(async () => {
    const s = await guestScenario(art, 'journal', { boot: { noAgent: true } });
    C.scenario = s;
    C.bundle = s.bundle;
    C.vm = s.vm;
    await vmsubstJson(['apply', C.bundle, '--qmp', C.vm.qmpSocket, '--device', 'vblk0']);
  }));
  Jr.after(() => {
    C.scenario?.close();
  });

  G.test('an agent killed mid-substitution leaves it journaled as interrupted', () =>
    withTimeout(120_000, 'crash', async () => {
      const vm = C.vm!;
      await startAgent(vm, 'VMSUBST_FAULT=crash-after-begin', '/tmp/agent-crash.log');
      const r = await vmsubst(['notify', C.bundle, '--to', `serial:${vm.agentSocket}`, '--timeout', '20', '--json']);
      assert.is.not(r.code, 0, 'the notify cannot succeed: the agent died');
      const st = await vm.run('node /opt/vmsubst/build/agent/src/main.js status --json');
      assert.is(st.code, 2, st.out);
      const status = JSON.parse(st.out.slice(st.out.indexOf('{'))) as { substitutions: { state: string }[] };
      assert.is(status.substitutions[0]?.state, 'interrupted');
    }),
  );

  G.test('after restart the host retry completes it and says it recovered', () =>
    withTimeout(120_000, 'recover', async () => {
      const vm = C.vm!;
      // --index: the index of /mnt/data is built at start; the retry's substitution joins that build.
      await startAgent(vm, '', '/tmp/agent.log', '--index /mnt/data');
      assert.match(await vm.sh('cat /tmp/agent.log'), /interrupted/);
      const report = await vmsubstJson<SubstituteReport>(['notify', C.bundle, '--to', `serial:${vm.agentSocket}`]);
      assert.is(report.recovered, true);
      assert.not.ok(report.replayed);
      assert.ok(report.files.some((f) => f.path === '/mnt/data/bin/vprog' && f['pages-dropped'] >= 0));
      assert.match(await vm.sh('/mnt/data/bin/vprog'), /version v2/);
      const log = await vm.sh('cat /tmp/agent.log');
      assert.match(log, /index ready at start .*\/mnt\/data/);
      assert.is(log.match(/pedigree index built/g)?.length, 1, `one build of the index:\n${log}`);
    }),
  );

  G.test('a repeated id is answered from the journal without acting again', () =>
    withTimeout(120_000, 'replay', async () => {
      const vm = C.vm!;
      const before = (await vm.sh('grep -c "substitute {" /tmp/agent.log')).trim();
      const report = await vmsubstJson<SubstituteReport>(['notify', C.bundle, '--to', `serial:${vm.agentSocket}`]);
      assert.is(report.replayed, true);
      assert.is((await vm.sh('grep -c "substitute {" /tmp/agent.log')).trim(), before, 'no second run');
      assert.match(await vm.sh('cat /tmp/agent.log'), /answered from the journal/);
      const st = await vm.run('node /opt/vmsubst/build/agent/src/main.js status --json');
      assert.is(st.code, 0, st.out);
    }),
  );
}

Jr.run();
