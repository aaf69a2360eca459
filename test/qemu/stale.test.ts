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
import { withGuest, type GuestContext } from '../helpers/guest-suite.js';
import { vmsubst, vmsubstJson } from '../helpers/cli.js';
import { waitFor, withTimeout } from '../helpers/timeout.js';
import type { ReturnOf, SubstituteReport } from '@vmsubst/common/protocol/schema';

type Stale = ReturnOf<'stale'>;
type Ctx = GuestContext & { renamed: string; prog: number; tool: number };

const St = withGuest(suite('stale: processes still running old content'), {
  name: 'stale',
  requires: ['renamed.img'],
  async setup({ art, tmp, vm }) {
    const renamed = join(tmp, 'renamed.bundle');
    await vmsubstJson(['diff', join(art.disks, 'base.img'), join(art.disks, 'renamed.img'), '-o', renamed]);
    await vm.sh('/mnt/data/bin/vprog 600 > /tmp/prog.out 2>&1 & echo $! > /tmp/prog.pid');
    await vm.sh('/mnt/data/bin/tool 600 > /tmp/tool.out 2>&1 & echo $! > /tmp/tool.pid');
    const prog = Number((await vm.sh('cat /tmp/prog.pid')).trim());
    const tool = Number((await vm.sh('cat /tmp/tool.pid')).trim());
    await waitFor(30_000, 'both print', async () =>
      (await vm.run('grep -q v1 /tmp/prog.out && grep -q v1 /tmp/tool.out')).code === 0 ? true : undefined,
    );
    return { renamed, prog, tool };
  },
});

/** vprog substituted in place under the pin policy: the agent's report. */
const pinnedInPlace = (c: Ctx): Promise<SubstituteReport> =>
  c.once('pinned', async () => {
    await vmsubstJson(['apply', c.bundle, '--qmp', c.vm.qmpSocket, '--device', 'vblk0']);
    return vmsubstJson<SubstituteReport>([
      'notify',
      c.bundle,
      '--to',
      `serial:${c.vm.agentSocket}`,
      '--disk-serial',
      'vmsubst-data',
      '--policy',
      '/bin/vprog=pin',
    ]);
  });

St('nothing is stale before any substitution', (c) =>
  withTimeout(60_000, 'none', async () => {
    const r = await vmsubstJson<Stale>(['stale', '--to', `serial:${c.vm.agentSocket}`]);
    assert.not.ok(
      r.processes.some((p) => p.pid === c.prog || p.pid === c.tool),
      JSON.stringify(r),
    );
  }),
);

St('an in-place substitution under pin: the process is listed as pinned', (c) =>
  withTimeout(180_000, 'pinned', async () => {
    const { vm } = c;
    const rep = await pinnedInPlace(c);
    assert.ok(
      rep.pinned?.some((p) => p.pid === c.prog && p.status === 'pinned'),
      JSON.stringify(rep.pinned),
    );
    const r = await vmsubstJson<Stale>(['stale', '--to', `serial:${vm.agentSocket}`]);
    const e = r.processes.find((p) => p.pid === c.prog);
    assert.ok(e, JSON.stringify(r));
    assert.is(e.why, 'pinned');
    assert.is(e.file, '/mnt/data/bin/vprog');
    assert.is(e.comm, 'vprog');
    assert.is(e.substitution, rep.id);
  }),
);

St('the dry-run plan of a metadata substitution predicts who keeps the replaced inode', (c) =>
  withTimeout(120_000, 'predict', async () => {
    const r = await vmsubstJson<SubstituteReport>([
      'notify',
      c.renamed,
      '--to',
      `serial:${c.vm.agentSocket}`,
      '--disk-serial',
      'vmsubst-data',
      '--dry-run',
    ]);
    const e = r.plan?.stale?.find((p) => p.pid === c.tool);
    assert.ok(e, JSON.stringify(r.plan));
    assert.is(e.why, 'old-inode');
    assert.is(e.file, '/mnt/data/bin/tool');
  }),
);

St('after it, the process is listed as old-inode, on the host and in the guest', (c) =>
  withTimeout(360_000, 'old-inode', async () => {
    const { vm } = c;
    await pinnedInPlace(c);
    await vmsubstJson(['apply', c.renamed, '--qmp', vm.qmpSocket, '--device', 'vblk0']);
    await vmsubstJson(['notify', c.renamed, '--to', `serial:${vm.agentSocket}`, '--disk-serial', 'vmsubst-data']);
    const r = await vmsubstJson<Stale>(['stale', '--to', `serial:${vm.agentSocket}`]);
    const tool = r.processes.find((p) => p.pid === c.tool);
    assert.ok(tool, JSON.stringify(r));
    assert.is(tool.why, 'old-inode');
    assert.is(tool.file, '/mnt/data/bin/tool');
    assert.ok(
      r.processes.some((p) => p.pid === c.prog && p.why === 'pinned'),
      'the pin is still listed',
    );
    const g = await vm.run('node /opt/vmsubst/build/agent/src/main.js stale --json');
    assert.is(g.code, 0, g.out);
    const inGuest = JSON.parse(g.out.slice(g.out.indexOf('{'))) as Stale;
    assert.ok(
      inGuest.processes.some((p) => p.pid === c.tool && p.why === 'old-inode'),
      g.out,
    );
    assert.ok(
      inGuest.processes.some((p) => p.pid === c.prog && p.why === 'pinned'),
      g.out,
    );
    const human = await vmsubst(['stale', '--to', `serial:${vm.agentSocket}`]);
    assert.is(human.code, 0, human.stderr);
    assert.match(human.stdout, new RegExp(`${c.tool}\\s+tool\\s+-\\s+old-inode\\s+/mnt/data/bin/tool`));
  }),
);

St.run();
