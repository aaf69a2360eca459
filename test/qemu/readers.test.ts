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
import { GuestVm } from '../helpers/vm.js';
import { guestScenario, type Scenario } from '../helpers/scenario.js';
import { guestArtifacts } from '../helpers/paths.js';
import { vmsubst, vmsubstJson } from '../helpers/cli.js';
import { guard } from '../helpers/guard.js';
import { waitFor, withTimeout } from '../helpers/timeout.js';
import type { SubstituteReport } from '@vmsubst/common/protocol/schema';

const art = guestArtifacts();
const Rd = suite('readers: a script being executed is not rewritten under its shell');
const G = guard(Rd);
const C = { scenario: undefined as Scenario | undefined, vm: undefined as GuestVm | undefined, bundle: '', pid: 0 };
const SCRIPT = '/mnt/data/bin/loop.sh';
const sha = (p: string): string => createHash('sha256').update(readFileSync(p)).digest('hex');

if (typeof art === 'string') {
  console.log(`  skipped: ${art}`);
  Rd.skip('guest artefacts are missing', () => undefined);
} else {
  Rd.before(G.setup(async () => {
    C.scenario = await guestScenario(art, 'readers', { base: 'script-base.img', patched: 'script-patched.img' });
    C.vm = C.scenario.vm;
    C.bundle = C.scenario.bundle;
    await C.vm.sh(`sh ${SCRIPT} > /dev/null 2>&1 & echo $! > /tmp/loop.pid`);
    C.pid = Number((await C.vm.sh('cat /tmp/loop.pid')).trim());
    await waitFor(30_000, 'the loop runs', async () => ((await C.vm!.run('grep -q "loop v1" /tmp/loop.out')).code === 0 ? true : undefined));
  }));
  Rd.after(() => {
    C.scenario?.close();
  });

  G.test('the plan shows the shell reading the script, and that prepare will refuse it', () =>
    withTimeout(120_000, 'plan', async () => {
      const r = await vmsubstJson<SubstituteReport>(['notify', C.bundle, '--to', `serial:${C.vm!.agentSocket}`, '--disk-serial', 'vmsubst-data', '--dry-run']);
      const f = r.plan?.files.find((x) => x.path === SCRIPT);
      assert.ok(f, JSON.stringify(r.plan));
      const reader = f.readers?.find((x) => x.pid === C.pid);
      assert.ok(reader, `readers: ${JSON.stringify(f.readers)}`);
      assert.is(reader.script, true);
      assert.ok(reader.pos > 0, 'read into the script');
      assert.is(reader.handling, 'refuse');
    }),
  );

  G.test('two-phase apply is refused in prepare with ScriptInUse, and nothing is written', () =>
    withTimeout(180_000, 'refused', async () => {
      const before = sha(C.scenario!.disk);
      const r = await vmsubst(['apply', C.bundle, '--qmp', C.vm!.qmpSocket, '--device', 'vblk0', '--notify', `serial:${C.vm!.agentSocket}`, '--disk-serial', 'vmsubst-data']);
      assert.is.not(r.code, 0, `${r.stdout}\n${r.stderr}`);
      assert.match(r.stdout + r.stderr, /ScriptInUse/);
      assert.match(r.stdout + r.stderr, /loop\.sh is a script being executed by sh\[\d+\]/);
      assert.is(sha(C.scenario!.disk), before, 'the disk is unchanged');
      assert.is(sha(C.scenario!.disk), sha(join(art.disks, 'script-base.img')));
      assert.is((await C.vm!.run(`kill -0 ${C.pid}`)).code, 0, 'the loop still runs');
    }),
  );

  G.test('with --force it proceeds and says so', () =>
    withTimeout(180_000, 'forced', async () => {
      const r = await vmsubst(['apply', C.bundle, '--qmp', C.vm!.qmpSocket, '--device', 'vblk0', '--notify', `serial:${C.vm!.agentSocket}`, '--disk-serial', 'vmsubst-data', '--force', '--json']);
      assert.is(r.code, 0, `${r.stdout}\n${r.stderr}`);
      const out = JSON.parse(r.stdout) as { agent: { report: SubstituteReport } };
      const f = out.agent.report.plan?.files.find((x) => x.path === SCRIPT);
      const reader = f?.readers?.find((x) => x.pid === C.pid);
      assert.ok(reader, JSON.stringify(f));
      assert.is(reader.handling, 'forced');
      assert.match(reader.detail ?? '', /forced/);
      assert.match(f!.action, /forced/);
      assert.match(await C.vm!.sh(`cat ${SCRIPT}`), /loop v2/);
    }),
  );
}

Rd.run();
