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
import { startProgram, versions, withGuest, type GuestContext } from '../helpers/guest-suite.js';
import { vmsubstJson } from '../helpers/cli.js';
import { waitFor, withTimeout } from '../helpers/timeout.js';
import { AgentConnection, notificationArgs } from '../../host-signal/src/notify/index.js';
import { Bundle, type Manifest } from '../../host-signal/src/bundle/index.js';
import { AgentError } from '../../host-signal/src/errors.js';
import type { SubstituteArgs } from '@vmsubst/common/protocol/schema';

const PROG = '/mnt/data/bin/vprog';
const DISK = { serial: 'vmsubst-data' };
const sha = (path: string): string => createHash('sha256').update(readFileSync(path)).digest('hex');
const startProg = (c: GuestContext, name: string): Promise<number> => startProgram(c.vm, name, `${PROG} 400`);
async function loadManifest(path: string): Promise<Manifest> {
  const b = await Bundle.open(path, { verifyData: false });
  try {
    return b.manifest;
  } finally {
    await b.close();
  }
}

type Ctx = GuestContext & { conn: AgentConnection; manifest: Manifest; args: SubstituteArgs };
type Prepared = Awaited<ReturnType<AgentConnection['prepare']>>;
type Aborted = Awaited<ReturnType<AgentConnection['abort']>>;
type Committed = Awaited<ReturnType<AgentConnection['commit']>>;

const T = withGuest(suite('two-phase: plan, prepare (pin), abort, commit, policies'), {
  name: 'two-phase',
  async setup(c) {
    const manifest = await loadManifest(c.bundle);
    // Without the bundle's hints: an ELF file whose code nobody compared gets the default `pin`.
    const { hints: _hints, ...args } = notificationArgs(manifest, DISK);
    const conn = await AgentConnection.open(`serial:${c.vm.agentSocket}`);
    c.defer(() => conn.close());
    return { manifest, args, conn };
  },
});

/** The process that prepare pins, running v1 from the start. */
const pinnedProgram = (c: Ctx): Promise<number> => c.once('pinned program', () => startProg(c, 'pinned'));

/** Prepared (and prepared again), aborted, then a commit tried: the answers, and the commit's refusal. */
const aborted = (c: Ctx): Promise<{ p: Prepared; again: Prepared; a: Aborted; refusal: unknown }> =>
  c.once('aborted', async () => {
    await pinnedProgram(c);
    const p = await c.conn.prepare(c.args);
    const again = await c.conn.prepare(c.args);
    const a = await c.conn.abort(c.args.id, p.token);
    const refusal = await c.conn.commit(c.args.id, p.token).then(
      () => undefined,
      (e: unknown) => e,
    );
    return { p, again, a, refusal };
  });

/** After the abort: prepared anew, a later process started, v2 written, committed. */
const committed = (c: Ctx): Promise<{ p: Prepared; later: number; r: Committed }> =>
  c.once('committed', async () => {
    await aborted(c);
    const p = await c.conn.prepare(c.args);
    const later = await startProg(c, 'later');
    await vmsubstJson(['apply', c.bundle, '--qmp', c.vm.qmpSocket, '--device', 'vblk0']);
    return { p, later, r: await c.conn.commit(c.args.id, p.token) };
  });

T('the agent announces the two-phase capability', ({ conn }) => {
  assert.ok(conn.supports('two-phase'), JSON.stringify(conn.agent));
});

T('a dry run returns the plan and changes nothing', (c) =>
  withTimeout(120_000, 'plan', async () => {
    const { vm, conn, args } = c;
    const pinned = await pinnedProgram(c);
    const before = sha(c.disk);
    const r = await conn.substitute({ ...args, 'dry-run': true });
    assert.is(r['dry-run'], true);
    const plan = r.plan!;
    assert.ok(plan, 'the report carries the plan');
    const f = plan.files.find((x) => x.path === PROG);
    assert.ok(f, JSON.stringify(plan.files));
    assert.is(f.class, 'elf-code-changed', 'an ELF file without a hint is taken as changed in code');
    assert.is(f.policy, 'pin');
    assert.is(f['policy-from'], 'default');
    const m = f.mappers.find((x) => x.pid === pinned);
    assert.ok(m && m['mapped-bytes'] > 0, JSON.stringify(f.mappers));
    assert.ok(plan['pin-bytes'] >= m['mapped-bytes']);
    assert.ok(
      plan.blocks.some((b) => b.class === 'file-data'),
      JSON.stringify(plan.blocks),
    );
    assert.is(plan['restart-required'], false);
    assert.is(sha(c.disk), before, 'the disk is unchanged');
    const status = JSON.parse(await vm.sh('node /opt/vmsubst/build/agent/src/main.js status --json')) as {
      substitutions: { id: string }[];
    };
    assert.not.ok(
      status.substitutions.some((s) => s.id === args.id),
      'a dry run is not journaled',
    );
  }),
);

T('prepare pins the process mapping the ELF file; abort drops it; commit is then refused', (c) =>
  withTimeout(120_000, 'prepare/abort', async () => {
    const pinned = await pinnedProgram(c);
    const { p, again, a, refusal } = await aborted(c);
    const pin = p.pinned.find((x) => x.pid === pinned);
    assert.ok(pin && pin.status === 'pinned' && pin['bytes-copied'] > 0, JSON.stringify(p.pinned));
    assert.is(again.replayed, true, 'a repeated prepare is answered from the journal');
    assert.is(a.status, 'aborted');
    assert.ok(a['pins-kept'].some((x) => x.pid === pinned));
    assert.ok(refusal, 'commit after abort must be refused');
    assert.instance(refusal, AgentError);
    assert.is((refusal as AgentError).errorClass, 'NotPrepared');
  }),
);

T('prepare, write, commit: the pinned process keeps v1, a later one and a new exec get v2', (c) =>
  withTimeout(360_000, 'commit', async () => {
    const { vm, conn, args } = c;
    const pinnedPid = await pinnedProgram(c);
    const { p, r } = await committed(c);
    assert.not.ok(p.replayed, 'prepared anew after the abort');
    assert.is(r.id, args.id);
    assert.ok(r['verified-bytes'] > 0);
    assert.ok(r.plan?.files.some((f) => f.path === PROG && f.policy === 'pin'));
    assert.ok(
      r.pinned?.some((x) => x.pid === pinnedPid),
      "the report carries prepare's pins",
    );
    for (const k of ['verify', 'map', 'classify', 'module', 'report', 'total'] as const)
      assert.type(r['timings-ms'][k], 'number', k);
    await waitFor(30_000, 'later switches to v2', async () =>
      (await versions(vm, '/tmp/later.out')).at(-1) === 'vprog version v2' ? true : undefined,
    );
    assert.match(await vm.sh(PROG), /version v2/);
    await vm.sh('sleep 2');
    const pinned = await versions(vm, '/tmp/pinned.out');
    assert.ok(
      pinned.every((v) => v === 'vprog version v1'),
      `pinned: ${[...new Set(pinned)]}`,
    );
    assert.is((await vm.run(`kill -0 ${pinnedPid}`)).code, 0, 'the pinned process is alive');
    const retry = await conn.commit(args.id, p.token);
    assert.is(retry.replayed, true, 'a retried commit is answered from the journal');
    const late = await conn.abort(args.id, p.token);
    assert.is(late.status, 'committed');
  }),
);

T('the reverse bundle with a code-unchanged hint is remapped: the unpinned process moves back to v1', (c) =>
  withTimeout(480_000, 'reverse', async () => {
    const { vm, conn } = c;
    await committed(c);
    const back = join(c.tmp, 'back.bundle');
    await vmsubstJson(['diff', join(c.art.disks, 'patched.img'), join(c.art.disks, 'base.img'), '-o', back]);
    const manifest = await loadManifest(back);
    const args = {
      ...notificationArgs(manifest, DISK),
      hints: [{ path: '/bin/vprog', elf: 'code-unchanged' as const }],
    };
    const older = (
      await conn.substitute({ ...args, hints: [{ path: '/bin/vprog', elf: 'same-layout' as const }], 'dry-run': true })
    ).plan!;
    const o = older.files.find((x) => x.path === PROG)!;
    assert.is(o.class, 'elf-code-changed', "an older host's same-layout (code not compared) is taken as code-changed");
    assert.is(o.policy, 'pin');
    const plan = (await conn.substitute({ ...args, 'dry-run': true })).plan!;
    const f = plan.files.find((x) => x.path === PROG)!;
    assert.is(f.class, 'elf-code-unchanged');
    assert.is(f.policy, 'remap');
    await vmsubstJson(['apply', back, '--qmp', vm.qmpSocket, '--device', 'vblk0']);
    const r = await conn.substitute(args);
    assert.not.ok(r.pinned, 'nothing pinned under remap');
    await waitFor(30_000, 'later switches back to v1', async () =>
      (await versions(vm, '/tmp/later.out')).at(-1) === 'vprog version v1' ? true : undefined,
    );
    assert.match(await vm.sh(PROG), /version v1/);
  }),
);

T("the bundle's own hint (computed by diff from the images) says vprog's code is unchanged: remap", (c) =>
  withTimeout(120_000, 'hinted plan', async () => {
    const { conn } = c;
    const args = notificationArgs(c.manifest, DISK, { dryRun: true });
    assert.ok(
      args.hints?.some((h) => h.path === '/bin/vprog' && h.elf === 'code-unchanged'),
      JSON.stringify(args.hints),
    );
    const f = (await conn.substitute(args)).plan!.files.find((x) => x.path === PROG)!;
    assert.is(f.class, 'elf-code-unchanged');
    assert.is(f.policy, 'remap');
  }),
);

T('a notification policy overrides the default: report leaves the mapping alone', (c) =>
  withTimeout(180_000, 'report', async () => {
    const { conn } = c;
    const args = notificationArgs(c.manifest, DISK, { policies: { files: { '/bin/vprog': 'report' } } });
    const plan = (await conn.substitute({ ...args, 'dry-run': true })).plan!;
    const f = plan.files.find((x) => x.path === PROG)!;
    assert.is(f.policy, 'report');
    assert.is(f['policy-from'], 'notification');
    assert.match(f.action, /reported/);
  }),
);

T.run();
