/**
 * The journal in a real guest: an agent killed right after journaling the
 * start of a substitution is restarted, the host's retry completes it (and
 * says so), a repeat of the same id is answered from the journal without
 * acting again, and `vmsubst-agent status` shows the outcome.
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { startAgent, withGuest, type GuestContext } from '../helpers/guest-suite.js';
import { vmsubst, vmsubstJson, type CliRun } from '../helpers/cli.js';
import type { RunResult } from '../helpers/vm.js';
import { withTimeout } from '../helpers/timeout.js';
import type { SubstituteReport } from '@vmsubst/common/protocol/schema';

/** An agent that dies right after journaling the start, and the host's notify to it; then the guest's status. */
const crashed = (c: GuestContext): Promise<{ notify: CliRun; status: RunResult }> =>
  c.once('crashed', async () => {
    await startAgent(c.vm, { env: 'VMSUBST_FAULT=crash-after-begin', log: '/tmp/agent-crash.log' });
    const notify = await vmsubst([
      'notify',
      c.bundle,
      '--to',
      `serial:${c.vm.agentSocket}`,
      '--timeout',
      '20',
      '--json',
    ]);
    return { notify, status: await c.vm.run('node /opt/vmsubst/build/agent/src/main.js status --json') };
  });

/** Crashed, then an agent started again (indexing /mnt/data at start: the retry joins that build) and the host's retry. */
const recovered = (c: GuestContext): Promise<{ startLog: string; report: SubstituteReport }> =>
  c.once('recovered', async () => {
    await crashed(c);
    await startAgent(c.vm, { log: '/tmp/agent.log', args: '--index /mnt/data' });
    const startLog = await c.vm.sh('cat /tmp/agent.log');
    return {
      startLog,
      report: await vmsubstJson<SubstituteReport>(['notify', c.bundle, '--to', `serial:${c.vm.agentSocket}`]),
    };
  });

const Jr = withGuest(suite('journal: crash recovery and idempotent answers in the guest'), {
  name: 'journal',
  boot: { noAgent: true },
  async setup({ vm, bundle }) {
    await vmsubstJson(['apply', bundle, '--qmp', vm.qmpSocket, '--device', 'vblk0']);
  },
});

Jr('an agent killed mid-substitution leaves it journaled as interrupted', (c) =>
  withTimeout(120_000, 'crash', async () => {
    const { notify, status: st } = await crashed(c);
    assert.is.not(notify.code, 0, 'the notify cannot succeed: the agent died');
    assert.is(st.code, 2, st.out);
    const status = JSON.parse(st.out.slice(st.out.indexOf('{'))) as { substitutions: { state: string }[] };
    assert.is(status.substitutions[0]?.state, 'interrupted');
  }),
);

Jr('after restart the host retry completes it and says it recovered', (c) =>
  withTimeout(240_000, 'recover', async () => {
    const { vm } = c;
    const { startLog, report } = await recovered(c);
    assert.match(startLog, /interrupted/);
    assert.is(report.recovered, true);
    assert.not.ok(report.replayed);
    assert.ok(report.files.some((f) => f.path === '/mnt/data/bin/vprog' && f['pages-dropped'] >= 0));
    assert.match(await vm.sh('/mnt/data/bin/vprog'), /version v2/);
    const log = await vm.sh('cat /tmp/agent.log');
    assert.match(log, /index ready at start .*\/mnt\/data/);
    assert.is(log.match(/pedigree index built/g)?.length, 1, `one build of the index:\n${log}`);
  }),
);

Jr('a repeated id is answered from the journal without acting again', (c) =>
  withTimeout(240_000, 'replay', async () => {
    const { vm } = c;
    await recovered(c);
    const before = (await vm.sh('grep -c "substitute {" /tmp/agent.log')).trim();
    const report = await vmsubstJson<SubstituteReport>(['notify', c.bundle, '--to', `serial:${vm.agentSocket}`]);
    assert.is(report.replayed, true);
    assert.is((await vm.sh('grep -c "substitute {" /tmp/agent.log')).trim(), before, 'no second run');
    assert.match(await vm.sh('cat /tmp/agent.log'), /answered from the journal/);
    const st = await vm.run('node /opt/vmsubst/build/agent/src/main.js status --json');
    assert.is(st.code, 0, st.out);
  }),
);

Jr.run();
