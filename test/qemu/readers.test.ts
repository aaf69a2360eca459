/**
 * Readers in the middle of a file, in a real guest: `sh /mnt/data/bin/loop.sh`
 * runs a loop from the test volume; a bundle rewrites the script in place.
 * The plan shows the shell as the script's reader (fd, position); two-phase
 * apply is refused in prepare (`ScriptInUse`) and nothing is written; with
 * --force it proceeds and the report says it was forced.
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { withGuest } from '../helpers/guest-suite.js';
import { vmsubst, vmsubstJson } from '../helpers/cli.js';
import { waitFor, withTimeout } from '../helpers/timeout.js';
import type { SubstituteReport } from '@vmsubst/common/protocol/schema';

const SCRIPT = '/mnt/data/bin/loop.sh';
const sha = (p: string): string => createHash('sha256').update(readFileSync(p)).digest('hex');

const Rd = withGuest(suite('readers: a script being executed is not rewritten under its shell'), {
  name: 'readers',
  base: 'script-base.img',
  patched: 'script-patched.img',
  async setup({ vm }) {
    await vm.sh(`sh ${SCRIPT} > /dev/null 2>&1 & echo $! > /tmp/loop.pid`);
    const pid = Number((await vm.sh('cat /tmp/loop.pid')).trim());
    await waitFor(30_000, 'the loop runs', async () =>
      (await vm.run('grep -q "loop v1" /tmp/loop.out')).code === 0 ? true : undefined,
    );
    return { pid };
  },
});

Rd('the plan shows the shell reading the script, and that prepare will refuse it', (c) =>
  withTimeout(120_000, 'plan', async () => {
    const r = await vmsubstJson<SubstituteReport>([
      'notify',
      c.bundle,
      '--to',
      `serial:${c.vm.agentSocket}`,
      '--disk-serial',
      'vmsubst-data',
      '--dry-run',
    ]);
    const f = r.plan?.files.find((x) => x.path === SCRIPT);
    assert.ok(f, JSON.stringify(r.plan));
    const reader = f.readers?.find((x) => x.pid === c.pid);
    assert.ok(reader, `readers: ${JSON.stringify(f.readers)}`);
    assert.is(reader.script, true);
    assert.ok(reader.pos > 0, 'read into the script');
    assert.is(reader.handling, 'refuse');
  }),
);

Rd('two-phase apply is refused in prepare with ScriptInUse, and nothing is written', (c) =>
  withTimeout(180_000, 'refused', async () => {
    const before = sha(c.disk);
    const r = await vmsubst([
      'apply',
      c.bundle,
      '--qmp',
      c.vm.qmpSocket,
      '--device',
      'vblk0',
      '--notify',
      `serial:${c.vm.agentSocket}`,
      '--disk-serial',
      'vmsubst-data',
    ]);
    assert.is.not(r.code, 0, `${r.stdout}\n${r.stderr}`);
    assert.match(r.stdout + r.stderr, /ScriptInUse/);
    assert.match(r.stdout + r.stderr, /loop\.sh is a script being executed by sh\[\d+\]/);
    assert.is(sha(c.disk), before, 'the disk is unchanged');
    assert.is(sha(c.disk), sha(join(c.art.disks, 'script-base.img')));
    assert.is((await c.vm.run(`kill -0 ${c.pid}`)).code, 0, 'the loop still runs');
  }),
);

Rd('with --force it proceeds and says so', (c) =>
  withTimeout(180_000, 'forced', async () => {
    const r = await vmsubst([
      'apply',
      c.bundle,
      '--qmp',
      c.vm.qmpSocket,
      '--device',
      'vblk0',
      '--notify',
      `serial:${c.vm.agentSocket}`,
      '--disk-serial',
      'vmsubst-data',
      '--force',
      '--json',
    ]);
    assert.is(r.code, 0, `${r.stdout}\n${r.stderr}`);
    const out = JSON.parse(r.stdout) as { agent: { report: SubstituteReport } };
    const f = out.agent.report.plan?.files.find((x) => x.path === SCRIPT);
    const reader = f?.readers?.find((x) => x.pid === c.pid);
    assert.ok(reader, JSON.stringify(f));
    assert.is(reader.handling, 'forced');
    assert.match(reader.detail ?? '', /forced/);
    assert.match(f!.action, /forced/);
    assert.match(await c.vm.sh(`cat ${SCRIPT}`), /loop v2/);
  }),
);

Rd.run();
