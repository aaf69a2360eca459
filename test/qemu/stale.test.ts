/**
 * Who still runs old content, in a real guest. vprog is substituted in place
 * (same inode) with the `pin` policy: its running process keeps the old image
 * — needrestart cannot see it, `stale` names it `pinned` from the journal.
 * Then a metadata bundle replaces /bin/tool by a new inode: its dry-run plan
 * predicts the running tool process, and after it `stale` names the process
 * `old-inode`. Both on the host (`vmsubst stale`) and in the guest
 * (`vmsubst-agent stale`).
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { join } from 'node:path';
import { GuestVm } from '../helpers/vm.js';
import { guestScenario, type Scenario } from '../helpers/scenario.js';
import { guestArtifacts } from '../helpers/paths.js';
import { vmsubst, vmsubstJson } from '../helpers/cli.js';
import { guard } from '../helpers/guard.js';
import { waitFor, withTimeout } from '../helpers/timeout.js';
import type { ReturnOf, SubstituteReport } from '@vmsubst/common/protocol/schema';

type Stale = ReturnOf<'stale'>;
const art = guestArtifacts();
const St = suite('stale: processes still running old content');
const G = guard(St);
const C = { scenario: undefined as Scenario | undefined, vm: undefined as GuestVm | undefined, renamed: '', prog: 0, tool: 0 };

if (typeof art === 'string') {
  console.log(`  skipped: ${art}`);
  St.skip('guest artefacts are missing', () => undefined);
} else {
  St.before(G.setup(async () => {
    C.scenario = await guestScenario(art, 'stale');
    C.vm = C.scenario.vm;
    C.renamed = join(C.scenario.tmp, 'renamed.bundle');
    await vmsubstJson(['diff', join(art.disks, 'base.img'), join(art.disks, 'renamed.img'), '-o', C.renamed]);
    const vm = C.vm;
    await vm.sh('/mnt/data/bin/vprog 600 > /tmp/prog.out 2>&1 & echo $! > /tmp/prog.pid');
    await vm.sh('/mnt/data/bin/tool 600 > /tmp/tool.out 2>&1 & echo $! > /tmp/tool.pid');
    C.prog = Number((await vm.sh('cat /tmp/prog.pid')).trim());
    C.tool = Number((await vm.sh('cat /tmp/tool.pid')).trim());
    await waitFor(30_000, 'both print', async () => ((await vm.run('grep -q v1 /tmp/prog.out && grep -q v1 /tmp/tool.out')).code === 0 ? true : undefined));
  }));
  St.after(() => {
    C.scenario?.close();
  });

  G.test('nothing is stale before any substitution', () =>
    withTimeout(60_000, 'none', async () => {
      const r = await vmsubstJson<Stale>(['stale', '--to', `serial:${C.vm!.agentSocket}`]);
      assert.not.ok(r.processes.some((p) => p.pid === C.prog || p.pid === C.tool), JSON.stringify(r));
    }),
  );

  G.test('an in-place substitution under pin: the process is listed as pinned', () =>
    withTimeout(180_000, 'pinned', async () => {
      const vm = C.vm!;
      await vmsubstJson(['apply', C.scenario!.bundle, '--qmp', vm.qmpSocket, '--device', 'vblk0']);
      const rep = await vmsubstJson<SubstituteReport>(['notify', C.scenario!.bundle, '--to', `serial:${vm.agentSocket}`, '--disk-serial', 'vmsubst-data', '--policy', '/bin/vprog=pin']);
      assert.ok(rep.pinned?.some((p) => p.pid === C.prog && p.status === 'pinned'), JSON.stringify(rep.pinned));
      const r = await vmsubstJson<Stale>(['stale', '--to', `serial:${vm.agentSocket}`]);
      const e = r.processes.find((p) => p.pid === C.prog);
      assert.ok(e, JSON.stringify(r));
      assert.is(e.why, 'pinned');
      assert.is(e.file, '/mnt/data/bin/vprog');
      assert.is(e.comm, 'vprog');
      assert.is(e.substitution, rep.id);
    }),
  );

  G.test('the dry-run plan of a metadata substitution predicts who keeps the replaced inode', () =>
    withTimeout(120_000, 'predict', async () => {
      const r = await vmsubstJson<SubstituteReport>(['notify', C.renamed, '--to', `serial:${C.vm!.agentSocket}`, '--disk-serial', 'vmsubst-data', '--dry-run']);
      const e = r.plan?.stale?.find((p) => p.pid === C.tool);
      assert.ok(e, JSON.stringify(r.plan));
      assert.is(e.why, 'old-inode');
      assert.is(e.file, '/mnt/data/bin/tool');
    }),
  );

  G.test('after it, the process is listed as old-inode, on the host and in the guest', () =>
    withTimeout(180_000, 'old-inode', async () => {
      const vm = C.vm!;
      await vmsubstJson(['apply', C.renamed, '--qmp', vm.qmpSocket, '--device', 'vblk0']);
      await vmsubstJson(['notify', C.renamed, '--to', `serial:${vm.agentSocket}`, '--disk-serial', 'vmsubst-data']);
      const r = await vmsubstJson<Stale>(['stale', '--to', `serial:${vm.agentSocket}`]);
      const tool = r.processes.find((p) => p.pid === C.tool);
      assert.ok(tool, JSON.stringify(r));
      assert.is(tool.why, 'old-inode');
      assert.is(tool.file, '/mnt/data/bin/tool');
      assert.ok(r.processes.some((p) => p.pid === C.prog && p.why === 'pinned'), 'the pin is still listed');
      const g = await vm.run('node /opt/vmsubst/build/agent/src/main.js stale --json');
      assert.is(g.code, 0, g.out);
      const inGuest = JSON.parse(g.out.slice(g.out.indexOf('{'))) as Stale;
      assert.ok(inGuest.processes.some((p) => p.pid === C.tool && p.why === 'old-inode'), g.out);
      assert.ok(inGuest.processes.some((p) => p.pid === C.prog && p.why === 'pinned'), g.out);
      const human = await vmsubst(['stale', '--to', `serial:${vm.agentSocket}`]);
      assert.is(human.code, 0, human.stderr);
      assert.match(human.stdout, new RegExp(`${C.tool}\\s+tool\\s+-\\s+old-inode\\s+/mnt/data/bin/tool`));
    }),
  );
}

St.run();
