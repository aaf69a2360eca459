/**
 * The two-phase substitution and the policies, in a real guest. A process
 * runs /bin/vprog (v1). A dry run returns the plan (the file, its class, the
 * process, the default `pin` policy of an ELF file whose code nobody compared) and
 * changes nothing. `prepare` pins the process while the disk still holds v1;
 * `abort` drops the preparation and a `commit` after it is refused; prepared
 * again, the host writes v2 and `commit`s: the pinned process keeps v1 for its
 * whole life, a process started after prepare moves to v2, a new exec gets v2.
 * A retried commit is answered from the journal. Then the reverse bundle, with
 * a host hint that no executable byte changed (vprog's versions differ in one
 * .rodata page), is substituted in one shot: the policy is `remap` and the
 * unpinned process moves back to v1. An older host's `same-layout` hint is
 * taken as code-changed: pin.
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { GuestVm } from '../helpers/vm.js';
import { guestScenario, type Scenario } from '../helpers/scenario.js';
import { guestArtifacts } from '../helpers/paths.js';
import { vmsubstJson } from '../helpers/cli.js';
import { guard } from '../helpers/guard.js';
import { waitFor, withTimeout } from '../helpers/timeout.js';
import { AgentConnection, notificationArgs } from '../../host-signal/src/notify/index.js';
import { Bundle, type Manifest } from '../../host-signal/src/bundle/index.js';
import { AgentError } from '../../host-signal/src/errors.js';
import type { SubstituteArgs } from '@vmsubst/common/protocol/schema';

const art = guestArtifacts();
const T = suite('two-phase: plan, prepare (pin), abort, commit, policies');
const G = guard(T);
const PROG = '/mnt/data/bin/vprog';
const DISK = { serial: 'vmsubst-data' };
const C = {
  scenario: undefined as Scenario | undefined,
  vm: undefined as GuestVm | undefined,
  conn: undefined as AgentConnection | undefined,
  manifest: undefined as Manifest | undefined,
  args: undefined as SubstituteArgs | undefined,
  pinned: 0,
  later: 0,
};
const sha = (path: string): string => createHash('sha256').update(readFileSync(path)).digest('hex');
const pidOf = async (vm: GuestVm, f: string): Promise<number> => Number((await vm.sh(`cat ${f}`)).trim());
const versions = async (vm: GuestVm, f: string): Promise<string[]> =>
  (await vm.sh(`cat ${f}`)).split('\n').filter(Boolean).map((l) => l.replace(/ pid=.*/, ''));
const startProg = async (vm: GuestVm, name: string): Promise<number> => {
  await vm.sh(`${PROG} 400 > /tmp/${name}.out 2>&1 & echo $! > /tmp/${name}.pid`);
  const pid = await pidOf(vm, `/tmp/${name}.pid`);
  await waitFor(30_000, `${name} prints`, async () => ((await versions(vm, `/tmp/${name}.out`)).length > 0 ? true : undefined));
  return pid;
};
async function loadManifest(path: string): Promise<Manifest> {
  const b = await Bundle.open(path, { verifyData: false });
  try {
    return b.manifest;
  } finally {
    await b.close();
  }
}

if (typeof art === 'string') {
  console.log(`  skipped: ${art}`);
  T.skip('guest artefacts are missing', () => undefined);
} else {
  T.before(G.setup(async () => {
    C.scenario = await guestScenario(art, 'two-phase');
    C.vm = C.scenario.vm;
    C.manifest = await loadManifest(C.scenario.bundle);
    // Without the bundle's hints: an ELF file whose code nobody compared gets the default `pin`.
    const { hints: _hints, ...unhinted } = notificationArgs(C.manifest, DISK);
    C.args = unhinted;
    C.conn = await AgentConnection.open(`serial:${C.vm.agentSocket}`);
  }));
  T.after(() => {
    C.conn?.close();
    C.scenario?.close();
  });

  G.test('the agent announces the two-phase capability', () => {
    assert.ok(C.conn!.supports('two-phase'), JSON.stringify(C.conn!.agent));
  });

  G.test('a dry run returns the plan and changes nothing', () =>
    withTimeout(120_000, 'plan', async () => {
      const vm = C.vm!;
      C.pinned = await startProg(vm, 'pinned');
      const before = sha(C.scenario!.disk);
      const r = await C.conn!.substitute({ ...C.args!, 'dry-run': true });
      assert.is(r['dry-run'], true);
      const plan = r.plan!;
      assert.ok(plan, 'the report carries the plan');
      const f = plan.files.find((x) => x.path === PROG);
      assert.ok(f, JSON.stringify(plan.files));
      assert.is(f.class, 'elf-code-changed', 'an ELF file without a hint is taken as changed in code');
      assert.is(f.policy, 'pin');
      assert.is(f['policy-from'], 'default');
      const m = f.mappers.find((x) => x.pid === C.pinned);
      assert.ok(m && m['mapped-bytes'] > 0, JSON.stringify(f.mappers));
      assert.ok(plan['pin-bytes'] >= m['mapped-bytes']);
      assert.ok(plan.blocks.some((b) => b.class === 'file-data'), JSON.stringify(plan.blocks));
      assert.is(plan['restart-required'], false);
      assert.is(sha(C.scenario!.disk), before, 'the disk is unchanged');
      const status = JSON.parse(await vm.sh('node /opt/vmsubst/build/agent/src/main.js status --json')) as { substitutions: { id: string }[] };
      assert.not.ok(status.substitutions.some((s) => s.id === C.args!.id), 'a dry run is not journaled');
    }),
  );

  G.test('prepare pins the process mapping the ELF file; abort drops it; commit is then refused', () =>
    withTimeout(120_000, 'prepare/abort', async () => {
      const p = await C.conn!.prepare(C.args!);
      const pin = p.pinned.find((x) => x.pid === C.pinned);
      assert.ok(pin && pin.status === 'pinned' && pin['bytes-copied'] > 0, JSON.stringify(p.pinned));
      const again = await C.conn!.prepare(C.args!);
      assert.is(again.replayed, true, 'a repeated prepare is answered from the journal');
      const a = await C.conn!.abort(C.args!.id, p.token);
      assert.is(a.status, 'aborted');
      assert.ok(a['pins-kept'].some((x) => x.pid === C.pinned));
      try {
        await C.conn!.commit(C.args!.id, p.token);
        assert.unreachable('commit after abort must be refused');
      } catch (e) {
        assert.instance(e, AgentError);
        assert.is((e as AgentError).errorClass, 'NotPrepared');
      }
    }),
  );

  G.test('prepare, write, commit: the pinned process keeps v1, a later one and a new exec get v2', () =>
    withTimeout(180_000, 'commit', async () => {
      const vm = C.vm!;
      const p = await C.conn!.prepare(C.args!);
      assert.not.ok(p.replayed, 'prepared anew after the abort');
      C.later = await startProg(vm, 'later');
      await vmsubstJson(['apply', C.scenario!.bundle, '--qmp', vm.qmpSocket, '--device', 'vblk0']);
      const r = await C.conn!.commit(C.args!.id, p.token);
      assert.is(r.id, C.args!.id);
      assert.ok(r['verified-bytes'] > 0);
      assert.ok(r.plan?.files.some((f) => f.path === PROG && f.policy === 'pin'));
      assert.ok(r.pinned?.some((x) => x.pid === C.pinned), 'the report carries prepare\'s pins');
      for (const k of ['verify', 'map', 'classify', 'module', 'report', 'total'] as const) assert.type(r['timings-ms'][k], 'number', k);
      await waitFor(30_000, 'later switches to v2', async () => ((await versions(vm, '/tmp/later.out')).at(-1) === 'vprog version v2' ? true : undefined));
      assert.match(await vm.sh(PROG), /version v2/);
      await vm.sh('sleep 2');
      const pinned = await versions(vm, '/tmp/pinned.out');
      assert.ok(pinned.every((v) => v === 'vprog version v1'), `pinned: ${[...new Set(pinned)]}`);
      assert.is((await vm.run(`kill -0 ${C.pinned}`)).code, 0, 'the pinned process is alive');
      const retry = await C.conn!.commit(C.args!.id, p.token);
      assert.is(retry.replayed, true, 'a retried commit is answered from the journal');
      const late = await C.conn!.abort(C.args!.id, p.token);
      assert.is(late.status, 'committed');
    }),
  );

  G.test('the reverse bundle with a code-unchanged hint is remapped: the unpinned process moves back to v1', () =>
    withTimeout(180_000, 'reverse', async () => {
      const vm = C.vm!;
      const back = join(C.scenario!.tmp, 'back.bundle');
      await vmsubstJson(['diff', join(art.disks, 'patched.img'), join(art.disks, 'base.img'), '-o', back]);
      const manifest = await loadManifest(back);
      const args = { ...notificationArgs(manifest, DISK), hints: [{ path: '/bin/vprog', elf: 'code-unchanged' as const }] };
      const older = (await C.conn!.substitute({ ...args, hints: [{ path: '/bin/vprog', elf: 'same-layout' as const }], 'dry-run': true })).plan!;
      const o = older.files.find((x) => x.path === PROG)!;
      assert.is(o.class, 'elf-code-changed', "an older host's same-layout (code not compared) is taken as code-changed");
      assert.is(o.policy, 'pin');
      const plan = (await C.conn!.substitute({ ...args, 'dry-run': true })).plan!;
      const f = plan.files.find((x) => x.path === PROG)!;
      assert.is(f.class, 'elf-code-unchanged');
      assert.is(f.policy, 'remap');
      await vmsubstJson(['apply', back, '--qmp', vm.qmpSocket, '--device', 'vblk0']);
      const r = await C.conn!.substitute(args);
      assert.not.ok(r.pinned, 'nothing pinned under remap');
      await waitFor(30_000, 'later switches back to v1', async () => ((await versions(vm, '/tmp/later.out')).at(-1) === 'vprog version v1' ? true : undefined));
      assert.match(await vm.sh(PROG), /version v1/);
    }),
  );

  G.test("the bundle's own hint (computed by diff from the images) says vprog's code is unchanged: remap", () =>
    withTimeout(120_000, 'hinted plan', async () => {
      const args = notificationArgs(C.manifest!, DISK, { dryRun: true });
      assert.ok(args.hints?.some((h) => h.path === '/bin/vprog' && h.elf === 'code-unchanged'), JSON.stringify(args.hints));
      const f = (await C.conn!.substitute(args)).plan!.files.find((x) => x.path === PROG)!;
      assert.is(f.class, 'elf-code-unchanged');
      assert.is(f.policy, 'remap');
    }),
  );

  G.test('a notification policy overrides the default: report leaves the mapping alone', () =>
    withTimeout(180_000, 'report', async () => {
      const vm = C.vm!;
      const args = notificationArgs(C.manifest!, DISK, { policies: { files: { '/bin/vprog': 'report' } } });
      const plan = (await C.conn!.substitute({ ...args, 'dry-run': true })).plan!;
      const f = plan.files.find((x) => x.path === PROG)!;
      assert.is(f.policy, 'report');
      assert.is(f['policy-from'], 'notification');
      assert.match(f.action, /reported/);
    }),
  );
}

T.run();
