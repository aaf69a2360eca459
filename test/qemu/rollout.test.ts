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
import { copyFileSync, existsSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync, writeSync, closeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { GuestVm, type VmOptions } from '../helpers/vm.js';
import { guestArtifacts } from '../helpers/paths.js';
import { vmsubst, vmsubstJson } from '../helpers/cli.js';
import { guard } from '../helpers/guard.js';
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
  guest: { told: boolean; unreachable?: string; meaning?: string; replayed?: boolean; mode?: string; report?: { files: { path: string }[] } };
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
  vms: { name: string; status: string; plan?: { files: { path: string; policy: string }[] }; report?: { 'dry-run': boolean } }[];
}

interface Ctx {
  tmp: string;
  bundle: string;
  vms: Record<'alpha' | 'beta' | 'gamma', GuestVm | undefined>;
  disks: Record<'alpha' | 'beta' | 'gamma', string>;
  mux?: Muxer;
  state: string;
}
const C: Ctx = { tmp: '', bundle: '', vms: { alpha: undefined, beta: undefined, gamma: undefined }, disks: { alpha: '', beta: '', gamma: '' }, state: '' };

const art = guestArtifacts();
const Rollout = suite('rollout: one bundle to three QEMU guests at once (one diverged, one without an agent)');
const G = guard(Rollout);

const sha = (path: string): string => createHash('sha256').update(readFileSync(path)).digest('hex');
const vm = (n: keyof Ctx['vms']): GuestVm => C.vms[n]!;
const byName = (r: RolloutJson, n: string): VmJson => {
  const v = r.vms.find((x) => x.name === n);
  assert.ok(v, `the result names ${n}`);
  return v;
};

/** A fleet file listing the named guests in this order. */
function fleet(file: string, names: (keyof Ctx['vms'])[]): string {
  const entry = (n: keyof Ctx['vms']): Record<string, unknown> => ({
    name: n,
    qmp: vm(n).qmpSocket,
    ...(n === 'alpha' ? { agent: `serial:${vm(n).agentSocket}` } : {}),
    ...(n === 'beta' ? { agent: `serial:${vm(n).agentSocket}` } : {}),
    ...(n === 'gamma' ? { agent: `hvsock:${C.mux!.path}:${PORT}` } : {}),
  });
  const path = join(C.tmp, file);
  writeFileSync(path, JSON.stringify({ defaults: { device: 'vblk0', disk: { serial: 'vmsubst-data' } }, vms: names.map(entry) }, null, 2));
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

if (typeof art === 'string') {
  console.log(`  skipped: ${art}`);
  Rollout.skip('guest artefacts are missing', () => undefined);
} else {
  Rollout.before(G.setup(async () => {
    C.tmp = mkdtempSync(join(tmpdir(), 'vmsubst-rollout-'));
    C.state = join(C.tmp, 'rollout.state');
    C.bundle = join(C.tmp, 'v2.bundle');
    await vmsubstJson(['diff', join(art.disks, 'base.img'), join(art.disks, 'patched.img'), '-o', C.bundle]);
    const manifest = (await vmsubstJson<{ manifest: { ranges: { offset: number; length: number }[] } }>(['inspect', C.bundle])).manifest;
    for (const n of ['alpha', 'beta', 'gamma'] as const) {
      C.disks[n] = join(C.tmp, `${n}.img`);
      copyFileSync(join(art.disks, 'base.img'), C.disks[n]);
    }
    // gamma diverges from the base: the last byte of the bundle's first range (padding after
    // vprog's version string) differs, so the range holds neither the old nor the new content.
    const r0 = manifest.ranges[0]!;
    const fd = openSync(C.disks.gamma, 'r+');
    const at = r0.offset + r0.length - 1;
    const b = Buffer.alloc(1);
    b[0] = readFileSync(C.disks.gamma).subarray(at, at + 1)[0]! ^ 0xff;
    writeSync(fd, b, 0, 1, at);
    closeSync(fd);
    // Booted a few seconds apart (the initramfs unpacking of three TCG guests at once crowds two
    // cores); the rollouts below then drive all three at once.
    const boot = async (delayMs: number, opts: Omit<VmOptions, 'bootTimeoutMs' | 'memoryMiB'>): Promise<GuestVm> => {
      await sleep(delayMs);
      return withTimeout(BOOT_MS + 60_000, 'boot', () => GuestVm.boot({ ...opts, memoryMiB: MEMORY_MIB, bootTimeoutMs: BOOT_MS }));
    };
    const boots = await Promise.allSettled([
      boot(0, { disk: C.disks.alpha }),
      boot(15_000, { disk: C.disks.beta, noAgent: true, reboot: true }),
      boot(30_000, { disk: C.disks.gamma }),
    ]);
    const names = ['alpha', 'beta', 'gamma'] as const;
    boots.forEach((b, i) => {
      if (b.status === 'fulfilled') C.vms[names[i]!] = b.value;
    });
    const failed = boots.find((b): b is PromiseRejectedResult => b.status === 'rejected');
    if (failed) throw failed.reason;
    C.mux = await startMuxer(join(C.tmp, 'gamma.vsock'), new Map([[PORT, vm('gamma').agentSocket]]));
    // beta has no agent to drop its caches: run the program once so its pages are cached (stale later).
    assert.match(await vm('beta').sh(PROG), /version v1/);
  }));
  Rollout.after(async () => {
    await C.mux?.close();
    for (const v of Object.values(C.vms)) v?.kill();
    if (C.tmp) rmSync(C.tmp, { recursive: true, force: true });
  });

  G.test('plan asks each agent for its dry run and writes nothing', () =>
    withTimeout(300_000, 'plan', async () => {
      const before = { alpha: sha(C.disks.alpha), beta: sha(C.disks.beta), gamma: sha(C.disks.gamma) };
      const r = await vmsubst(['plan', fleet('plan.json', ['alpha', 'beta', 'gamma']), C.bundle, '--json'], 300_000);
      const doc = JSON.parse(r.stdout) as PlanJson;
      const st = Object.fromEntries(doc.vms.map((v) => [v.name, v.status]));
      assert.is(st['alpha'], 'planned', `alpha: ${JSON.stringify(doc.vms[0])} ${r.stderr}`);
      assert.is(st['gamma'], 'planned', `gamma (hybrid vsock): ${JSON.stringify(doc.vms[2])} ${r.stderr}`);
      assert.is(st['beta'], 'no-agent');
      assert.is(r.code, 1, 'not every agent returned a plan (beta has none)');
      for (const v of doc.vms.filter((x) => x.report)) assert.is(v.report!['dry-run'], true);
      for (const n of ['alpha', 'gamma']) {
        const p = doc.vms.find((v) => v.name === n)!.plan!;
        assert.ok(p.files.some((f) => f.path === PROG && f.policy), `${n}: ${JSON.stringify(p)}`);
      }
      assert.equal({ alpha: sha(C.disks.alpha), beta: sha(C.disks.beta), gamma: sha(C.disks.gamma) }, before, 'no disk changed');
    }),
  );

  G.test('a diverged canary is refused and halts the rollout: no other VM is touched', () =>
    withTimeout(600_000, 'canary', async () => {
      const before = { alpha: sha(C.disks.alpha), beta: sha(C.disks.beta), gamma: sha(C.disks.gamma) };
      const { code, doc } = await rolloutRun([fleet('canary.json', ['gamma', 'alpha', 'beta']), C.bundle, '--canary', '1', '--concurrency', '3']);
      assert.is(code, 1);
      assert.is(byName(doc, 'gamma').status, 'refused');
      assert.is(byName(doc, 'gamma').error?.code, 'E_VMSUBST_BASE_MISMATCH');
      assert.is(byName(doc, 'alpha').status, 'not-started');
      assert.is(byName(doc, 'beta').status, 'not-started');
      assert.match(doc.halted ?? '', /canary/);
      assert.equal({ alpha: sha(C.disks.alpha), beta: sha(C.disks.beta), gamma: sha(C.disks.gamma) }, before, 'no disk changed');
    }),
  );

  G.test('--on-no-agent=fail refuses the unenlightened guest before writing', () =>
    withTimeout(300_000, 'no agent: fail', async () => {
      const before = sha(C.disks.beta);
      const { code, doc } = await rolloutRun([fleet('beta.json', ['beta']), C.bundle, '--on-no-agent', 'fail']);
      assert.is(code, 1);
      const b = byName(doc, 'beta');
      assert.is(b.status, 'failed');
      assert.is(b.error?.code, 'E_VMSUBST_NO_AGENT');
      assert.ok(b.guest.unreachable, 'says why no agent answered');
      assert.is(sha(C.disks.beta), before);
    }),
  );

  G.test('all three at once (--continue): gamma refused, alpha applied and told, beta applied but not told', () =>
    withTimeout(900_000, 'rollout', async () => {
      const gammaBefore = sha(C.disks.gamma);
      const { code, doc, stderr } = await rolloutRun([fleet('all.json', ['alpha', 'beta', 'gamma']), C.bundle, '--concurrency', '3', '--continue', '--state', C.state]);
      assert.is(code, 1, stderr);
      const [a, b, g] = [byName(doc, 'alpha'), byName(doc, 'beta'), byName(doc, 'gamma')];
      assert.is(g.status, 'refused', JSON.stringify(g));
      assert.is(g.error?.code, 'E_VMSUBST_BASE_MISMATCH');
      assert.not.ok(g.notes.some((n) => /prepared substitution/.test(n)), `gamma was refused before prepare (nothing pinned): ${g.notes.join(' | ')}`);
      assert.is(g.apply, undefined, 'nothing written to gamma');
      assert.is(sha(C.disks.gamma), gammaBefore, "gamma's disk is unchanged");
      assert.is(a.status, 'applied', JSON.stringify(a));
      assert.ok(a.apply!.written > 0);
      assert.is(a.guest.told, true);
      assert.is(a.guest.mode, 'two-phase', 'prepare before the write, commit after');
      assert.ok(a.guest.report!.files.some((f) => f.path === PROG), JSON.stringify(a.guest.report));
      assert.is(b.status, 'applied', JSON.stringify(b));
      assert.is(b.guest.told, false);
      assert.match(b.guest.meaning ?? '', /not told.*cached copies/);
      assert.is(b.reset, false);
      assert.equal(doc.counts, { applied: 2, 'done-before': 0, refused: 1, failed: 0, 'not-started': 0 });
      assert.ok(existsSync(C.state), 'the state file was written');
    }),
  );

  G.test('alpha runs v2 in a new exec; beta (not told) still serves its cached v1', () =>
    withTimeout(300_000, 'consistency', async () => {
      assert.match(await vm('alpha').sh(PROG), /version v2/);
      assert.match(await vm('beta').sh(PROG), /version v1/, 'the documented staleness of an unenlightened guest');
    }),
  );

  G.test('the same rollout with its state file resumes: alpha and beta are confirmed, not redone', () =>
    withTimeout(900_000, 'resume', async () => {
      const { code, doc } = await rolloutRun([fleet('all.json', ['alpha', 'beta', 'gamma']), C.bundle, '--concurrency', '3', '--continue', '--state', C.state]);
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

  G.test('--on-no-agent=reset resets the unenlightened guest, which comes back running v2', () =>
    withTimeout(900_000, 'reset', async () => {
      const b0 = vm('beta').boots;
      const { code, doc } = await rolloutRun([fleet('beta.json', ['beta']), C.bundle, '--on-no-agent', 'reset']);
      assert.is(code, 0);
      const b = byName(doc, 'beta');
      assert.is(b.status, 'applied');
      assert.is(b.guest.told, false);
      assert.is(b.reset, true);
      await vm('beta').waitForBoot(b0 + 1, 600_000);
      assert.match(await vm('beta').sh(PROG, 120_000), /version v2/);
    }),
  );
}

Rollout.run();
