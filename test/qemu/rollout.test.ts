/**
 * `vmsubst rollout` and `vmsubst plan` against three real guests at once,
 * each with its own copy of the test disk:
 *   alpha  the agent running, reached over virtio-serial;
 *   beta   no agent (an unenlightened guest), reached by nothing;
 *   gamma  the agent running, reached over hybrid vsock through the stand-in
 *          muxer (test/helpers/vsock-muxer.ts, spliced to its virtio-serial
 *          port), and a DIVERGED disk: one byte of the bundle's range differs
 *          from the base, so the bundle's old hashes do not match.
 * gamma must be refused with nothing written, the rollout must halt as told,
 * and alpha and beta must end consistent. Three TCG guests share two host
 * cores: generous timeouts, modest memory.
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { createHash } from 'node:crypto';
import { copyFileSync, existsSync, openSync, readFileSync, writeFileSync, writeSync, closeSync } from 'node:fs';
import { join } from 'node:path';
import type { GuestVm, VmOptions } from '../helpers/vm.js';
import { bootGuest, withFixture, type FixtureContext } from '../helpers/guest-suite.js';
import { vmsubst, vmsubstJson } from '../helpers/cli.js';
import { sleep, withTimeout } from '../helpers/timeout.js';
import { startMuxer, type Muxer } from '../helpers/vsock-muxer.js';

const PROG = '/mnt/data/bin/vprog';
const PORT = 5252;
const MEMORY_MIB = 512;
/** Three TCG guests booting on a shared two-core host: minutes, not seconds. */
const BOOT_MS = 480_000;

interface VmJson {
  name: string;
  status: string;
  apply?: { status: string; written: number; 'pause-ms': number | null };
  guest: {
    told: boolean;
    unreachable?: string;
    meaning?: string;
    replayed?: boolean;
    mode?: string;
    report?: { files: { path: string }[] };
  };
  reset: boolean;
  notes: string[];
  error?: { code: string; message: string };
}
interface RolloutJson {
  ok: boolean;
  halted?: string;
  counts: Record<string, number>;
  vms: VmJson[];
}
interface PlanJson {
  vms: {
    name: string;
    status: string;
    plan?: { files: { path: string; policy: string }[] };
    report?: { 'dry-run': boolean };
  }[];
}

type Name = 'alpha' | 'beta' | 'gamma';
type Ctx = FixtureContext & {
  bundle: string;
  state: string;
  vms: Record<Name, GuestVm>;
  disks: Record<Name, string>;
  mux: Muxer;
};

const sha = (path: string): string => createHash('sha256').update(readFileSync(path)).digest('hex');
const byName = (r: RolloutJson, n: string): VmJson => {
  const v = r.vms.find((x) => x.name === n);
  assert.ok(v, `the result names ${n}`);
  return v;
};

/** A fleet file listing the named guests in this order. */
function fleet(c: Ctx, file: string, names: Name[]): string {
  const entry = (n: Name): Record<string, unknown> => ({
    name: n,
    qmp: c.vms[n].qmpSocket,
    ...(n === 'alpha' ? { agent: `serial:${c.vms[n].agentSocket}` } : {}),
    ...(n === 'beta' ? { agent: `serial:${c.vms[n].agentSocket}` } : {}),
    ...(n === 'gamma' ? { agent: `hvsock:${c.mux.path}:${PORT}` } : {}),
  });
  const path = join(c.tmp, file);
  writeFileSync(
    path,
    JSON.stringify({ defaults: { device: 'vblk0', disk: { serial: 'vmsubst-data' } }, vms: names.map(entry) }, null, 2),
  );
  return path;
}

async function rolloutRun(args: string[]): Promise<{ code: number; doc: RolloutJson; stderr: string }> {
  const r = await vmsubst(['rollout', ...args, '--json'], 900_000);
  let doc: RolloutJson;
  try {
    doc = JSON.parse(r.stdout) as RolloutJson;
  } catch {
    throw new Error(`rollout printed no JSON (exit ${r.code}):\n${r.stderr}\n${r.stdout}`);
  }
  return { code: r.code, doc, stderr: r.stderr };
}

const Rollout = withFixture(
  suite('rollout: one bundle to three QEMU guests at once (one diverged, one without an agent)'),
  {
    name: 'rollout',
    async setup(c): Promise<Omit<Ctx, keyof FixtureContext>> {
      const { art, tmp } = c;
      const state = join(tmp, 'rollout.state');
      const bundle = join(tmp, 'v2.bundle');
      await vmsubstJson(['diff', join(art.disks, 'base.img'), join(art.disks, 'patched.img'), '-o', bundle]);
      const manifest = (
        await vmsubstJson<{ manifest: { ranges: { offset: number; length: number }[] } }>(['inspect', bundle])
      ).manifest;
      const disks = { alpha: join(tmp, 'alpha.img'), beta: join(tmp, 'beta.img'), gamma: join(tmp, 'gamma.img') };
      for (const d of Object.values(disks)) copyFileSync(join(art.disks, 'base.img'), d);
      // gamma diverges from the base: the last byte of the bundle's first range (padding after
      // vprog's version string) differs, so the range holds neither the old nor the new content.
      const r0 = manifest.ranges[0]!;
      const fd = openSync(disks.gamma, 'r+');
      const at = r0.offset + r0.length - 1;
      const b = Buffer.alloc(1);
      b[0] = readFileSync(disks.gamma).subarray(at, at + 1)[0]! ^ 0xff;
      writeSync(fd, b, 0, 1, at);
      closeSync(fd);
      // Booted a few seconds apart (the initramfs unpacking of three TCG guests at once crowds two
      // cores); the rollouts below then drive all three at once. Each is killed at the suite's end.
      const boot = async (delayMs: number, opts: Omit<VmOptions, 'bootTimeoutMs' | 'memoryMiB'>): Promise<GuestVm> => {
        await sleep(delayMs);
        return bootGuest(c, { ...opts, memoryMiB: MEMORY_MIB, bootTimeoutMs: BOOT_MS }, BOOT_MS + 60_000);
      };
      const boots = await Promise.allSettled([
        boot(0, { disk: disks.alpha }),
        boot(15_000, { disk: disks.beta, noAgent: true, reboot: true }),
        boot(30_000, { disk: disks.gamma }),
      ]);
      const failed = boots.find((x): x is PromiseRejectedResult => x.status === 'rejected');
      if (failed) throw failed.reason;
      const [alpha, beta, gamma] = boots.map((x) => (x as PromiseFulfilledResult<GuestVm>).value) as [
        GuestVm,
        GuestVm,
        GuestVm,
      ];
      const mux = await startMuxer(join(tmp, 'gamma.vsock'), new Map([[PORT, gamma.agentSocket]]));
      c.defer(() => mux.close());
      // beta has no agent to drop its caches: run the program once so its pages are cached (stale later).
      assert.match(await beta.sh(PROG), /version v1/);
      return { bundle, state, disks, vms: { alpha, beta, gamma }, mux };
    },
  },
);

/** The rollout to all three at once (--continue, with a state file), gamma's disk hash before it, and the result. */
const rolledOut = (c: Ctx): Promise<{ gammaBefore: string; code: number; doc: RolloutJson; stderr: string }> =>
  c.once('rolled out', async () => {
    const gammaBefore = sha(c.disks.gamma);
    return {
      gammaBefore,
      ...(await rolloutRun([
        fleet(c, 'all.json', ['alpha', 'beta', 'gamma']),
        c.bundle,
        '--concurrency',
        '3',
        '--continue',
        '--state',
        c.state,
      ])),
    };
  });

Rollout('plan asks each agent for its dry run and writes nothing', (c) =>
  withTimeout(300_000, 'plan', async () => {
    const before = { alpha: sha(c.disks.alpha), beta: sha(c.disks.beta), gamma: sha(c.disks.gamma) };
    const r = await vmsubst(['plan', fleet(c, 'plan.json', ['alpha', 'beta', 'gamma']), c.bundle, '--json'], 300_000);
    const doc = JSON.parse(r.stdout) as PlanJson;
    const st = Object.fromEntries(doc.vms.map((v) => [v.name, v.status]));
    assert.is(st['alpha'], 'planned', `alpha: ${JSON.stringify(doc.vms[0])} ${r.stderr}`);
    assert.is(st['gamma'], 'planned', `gamma (hybrid vsock): ${JSON.stringify(doc.vms[2])} ${r.stderr}`);
    assert.is(st['beta'], 'no-agent');
    assert.is(r.code, 1, 'not every agent returned a plan (beta has none)');
    for (const v of doc.vms.filter((x) => x.report)) assert.is(v.report!['dry-run'], true);
    for (const n of ['alpha', 'gamma']) {
      const p = doc.vms.find((v) => v.name === n)!.plan!;
      assert.ok(
        p.files.some((f) => f.path === PROG && f.policy),
        `${n}: ${JSON.stringify(p)}`,
      );
    }
    assert.equal(
      { alpha: sha(c.disks.alpha), beta: sha(c.disks.beta), gamma: sha(c.disks.gamma) },
      before,
      'no disk changed',
    );
  }),
);

Rollout('a diverged canary is refused and halts the rollout: no other VM is touched', (c) =>
  withTimeout(600_000, 'canary', async () => {
    const before = { alpha: sha(c.disks.alpha), beta: sha(c.disks.beta), gamma: sha(c.disks.gamma) };
    const { code, doc } = await rolloutRun([
      fleet(c, 'canary.json', ['gamma', 'alpha', 'beta']),
      c.bundle,
      '--canary',
      '1',
      '--concurrency',
      '3',
    ]);
    assert.is(code, 1);
    assert.is(byName(doc, 'gamma').status, 'refused');
    assert.is(byName(doc, 'gamma').error?.code, 'E_VMSUBST_BASE_MISMATCH');
    assert.is(byName(doc, 'alpha').status, 'not-started');
    assert.is(byName(doc, 'beta').status, 'not-started');
    assert.match(doc.halted ?? '', /canary/);
    assert.equal(
      { alpha: sha(c.disks.alpha), beta: sha(c.disks.beta), gamma: sha(c.disks.gamma) },
      before,
      'no disk changed',
    );
  }),
);

Rollout('--on-no-agent=fail refuses the unenlightened guest before writing', (c) =>
  withTimeout(300_000, 'no agent: fail', async () => {
    const before = sha(c.disks.beta);
    const { code, doc } = await rolloutRun([fleet(c, 'beta.json', ['beta']), c.bundle, '--on-no-agent', 'fail']);
    assert.is(code, 1);
    const b = byName(doc, 'beta');
    assert.is(b.status, 'failed');
    assert.is(b.error?.code, 'E_VMSUBST_NO_AGENT');
    assert.ok(b.guest.unreachable, 'says why no agent answered');
    assert.is(sha(c.disks.beta), before);
  }),
);

Rollout('all three at once (--continue): gamma refused, alpha applied and told, beta applied but not told', (c) =>
  withTimeout(900_000, 'rollout', async () => {
    const { gammaBefore, code, doc, stderr } = await rolledOut(c);
    assert.is(code, 1, stderr);
    const [a, b, g] = [byName(doc, 'alpha'), byName(doc, 'beta'), byName(doc, 'gamma')];
    assert.is(g.status, 'refused', JSON.stringify(g));
    assert.is(g.error?.code, 'E_VMSUBST_BASE_MISMATCH');
    assert.not.ok(
      g.notes.some((n) => /prepared substitution/.test(n)),
      `gamma was refused before prepare (nothing pinned): ${g.notes.join(' | ')}`,
    );
    assert.is(g.apply, undefined, 'nothing written to gamma');
    assert.is(sha(c.disks.gamma), gammaBefore, "gamma's disk is unchanged");
    assert.is(a.status, 'applied', JSON.stringify(a));
    assert.ok(a.apply!.written > 0);
    assert.is(a.guest.told, true);
    assert.is(a.guest.mode, 'two-phase', 'prepare before the write, commit after');
    assert.ok(
      a.guest.report!.files.some((f) => f.path === PROG),
      JSON.stringify(a.guest.report),
    );
    assert.is(b.status, 'applied', JSON.stringify(b));
    assert.is(b.guest.told, false);
    assert.match(b.guest.meaning ?? '', /not told.*cached copies/);
    assert.is(b.reset, false);
    assert.equal(doc.counts, { applied: 2, 'done-before': 0, refused: 1, failed: 0, 'not-started': 0 });
    assert.ok(existsSync(c.state), 'the state file was written');
  }),
);

Rollout('alpha runs v2 in a new exec; beta (not told) still serves its cached v1', (c) =>
  withTimeout(1_200_000, 'consistency', async () => {
    await rolledOut(c);
    assert.match(await c.vms.alpha.sh(PROG), /version v2/);
    assert.match(await c.vms.beta.sh(PROG), /version v1/, 'the documented staleness of an unenlightened guest');
  }),
);

Rollout('the same rollout with its state file resumes: alpha and beta are confirmed, not redone', (c) =>
  withTimeout(1_800_000, 'resume', async () => {
    await rolledOut(c);
    const { code, doc } = await rolloutRun([
      fleet(c, 'all.json', ['alpha', 'beta', 'gamma']),
      c.bundle,
      '--concurrency',
      '3',
      '--continue',
      '--state',
      c.state,
    ]);
    assert.is(code, 1);
    const [a, b, g] = [byName(doc, 'alpha'), byName(doc, 'beta'), byName(doc, 'gamma')];
    assert.is(a.status, 'done-before', JSON.stringify(a));
    assert.is(a.guest.replayed, true, 'the agent answered from its journal');
    assert.is(a.apply, undefined, 'alpha was not written again');
    assert.is(b.status, 'done-before', JSON.stringify(b));
    assert.is(b.apply?.status, 'already-applied', 'beta was confirmed by its disk content');
    assert.is(b.apply?.written, 0);
    assert.is(b.reset, false);
    assert.is(g.status, 'refused');
  }),
);

Rollout('--on-no-agent=reset resets the unenlightened guest, which comes back running v2', (c) =>
  withTimeout(1_800_000, 'reset', async () => {
    await rolledOut(c);
    const b0 = c.vms.beta.boots;
    const { code, doc } = await rolloutRun([fleet(c, 'beta.json', ['beta']), c.bundle, '--on-no-agent', 'reset']);
    assert.is(code, 0);
    const b = byName(doc, 'beta');
    assert.is(b.status, 'applied');
    assert.is(b.guest.told, false);
    assert.is(b.reset, true);
    await c.vms.beta.waitForBoot(b0 + 1, 600_000);
    assert.match(await c.vms.beta.sh(PROG, 120_000), /version v2/);
  }),
);

Rollout.run();
