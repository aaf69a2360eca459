/**
 * `vmsubst apply --libvirt` and `rollout --libvirt-all` against a real
 * libvirtd the suite starts (test/helpers/libvirt.ts) and TCG domains of the
 * test guest: the overlay switched in with a disk-only external snapshot, the
 * agent told over the channel libvirt declares, --commit's active block commit,
 * no taint, the refusals, and a rollout over every running domain whose disk
 * is the bundle's base. Where libvirtd cannot start, the suite says why and
 * counts as skipped.
 */
import { createHash } from 'node:crypto';
import {
  closeSync,
  copyFileSync,
  existsSync,
  openSync,
  readdirSync,
  readFileSync,
  unlinkSync,
  writeFileSync,
  writeSync,
} from 'node:fs';
import { join } from 'node:path';
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { startProgram, versions, withFixture, type FixtureContext } from '../helpers/guest-suite.js';
import { guestArtifacts } from '../helpers/paths.js';
import { vmsubst, vmsubstJson } from '../helpers/cli.js';
import { waitFor, withTimeout } from '../helpers/timeout.js';
import { Libvirtd, LibvirtGuest, libvirtUnavailable } from '../helpers/libvirt.js';
import { Bundle } from '../../host-signal/src/bundle/index.js';

const PROG = '/mnt/data/bin/vprog';

/** Started before the suite registers its tests, so that a libvirtd that cannot start skips the suite. */
async function startLibvirtd(): Promise<Libvirtd | string> {
  if (typeof guestArtifacts() === 'string') return 'guest artefacts missing';
  const why = libvirtUnavailable();
  if (why !== undefined) return why;
  return Libvirtd.start().catch((e: Error) => e.message);
}
const started = await startLibvirtd();

interface Ctx extends FixtureContext {
  d: Libvirtd;
  bundle: string;
  id: string;
  data: string;
  diverged: string;
  a: LibvirtGuest;
  running: number;
}

interface ApplyJson {
  status: string;
  'pause-ms': number | null;
  'window-ms': number | null;
  'chain-length': number;
  target: { disk: string; image: string };
  overlay?: { path: string; committed: boolean; 'commit-ms'?: number; backing: { name: string; format: string } };
  agent: { told: boolean; target?: string; 'two-phase'?: boolean };
}

const T = withFixture(suite('libvirt: apply, commit, refusals and rollout through a real libvirtd'), {
  name: 'libvirt',
  ...(typeof started === 'string' ? { unavailable: `libvirt: ${started}` } : {}),
  async setup(fx): Promise<Omit<Ctx, keyof FixtureContext>> {
    const d = started as Libvirtd;
    fx.defer(() => d.stop());
    const bundle = join(fx.tmp, 'v2.bundle');
    await vmsubstJson(['diff', join(fx.art.disks, 'base.img'), join(fx.art.disks, 'patched.img'), '-o', bundle]);
    const b = await Bundle.open(bundle);
    const { id, ranges } = b.manifest;
    await b.close();
    // The images live in libvirtd's directory (/var/tmp, readable by libvirt-qemu).
    const data = join(d.dir, 'a-data.img');
    const diverged = join(d.dir, 'a-diverged.img');
    copyFileSync(join(fx.art.disks, 'base.img'), data);
    copyFileSync(join(fx.art.disks, 'base.img'), diverged);
    // Same filesystem (UUID), but the first changed range holds neither the old nor the new content.
    const fd = openSync(diverged, 'r+');
    writeSync(fd, Buffer.alloc(64, 0x5a), 0, 64, ranges[0]!.offset);
    closeSync(fd);
    const a = await LibvirtGuest.boot(d, fx.art, {
      name: 'vmsubst-lv-a',
      disks: [
        { path: data, target: 'vdb', serial: 'vmsubst-data' },
        { path: diverged, target: 'vdc', serial: 'vmsubst-diverged' },
      ],
    });
    const running = await startProgram(a, 'running', `${PROG} 400`);
    return { d, bundle, id, data, diverged, a, running };
  },
});

const sha = (p: string): string => createHash('sha256').update(readFileSync(p)).digest('hex');
const files = (d: Libvirtd): string[] => readdirSync(d.dir).sort();
const lv = (c: Ctx, ...args: string[]): string[] => [
  'apply',
  c.bundle,
  '--libvirt',
  'vmsubst-lv-a',
  '--connect',
  c.d.uri,
  ...args,
];

/** Runs a refused apply and checks that nothing changed: exit status, the disks' chains, the files, the data disk. */
async function refused(c: Ctx, args: string[], message: RegExp, code = 1): Promise<string> {
  const before = { files: files(c.d), b: await c.a.chain('vdb'), c: await c.a.chain('vdc'), data: sha(c.data) };
  const r = await vmsubst(args, 120_000);
  assert.is(r.code, code, `${args.join(' ')}\n${r.stdout}\n${r.stderr}`);
  assert.match(r.stderr, message);
  assert.equal(files(c.d), before.files, 'no file was made or removed');
  assert.equal(await c.a.chain('vdb'), before.b);
  assert.equal(await c.a.chain('vdc'), before.c);
  assert.is(sha(c.data), before.data);
  return r.stderr;
}

T('bad input is refused with a clear error, exit 1, nothing changed', (c) =>
  withTimeout(300_000, 'bad input', async () => {
    await refused(
      c,
      ['apply', c.bundle, '--libvirt', 'no-such-domain', '--connect', c.d.uri],
      /no-such-domain|not found/i,
    );
    await refused(c, lv(c, '--disk', 'vdz'), /has no disk with target vdz[\s\S]*vdb \(serial vmsubst-data/);
    // Two disks hold the base's filesystem: which one is not guessed.
    await refused(c, lv(c), /2 disks of domain vmsubst-lv-a match[\s\S]*vdb[\s\S]*vdc/);
    await refused(
      c,
      [
        'apply',
        c.bundle,
        '--libvirt',
        'vmsubst-lv-a',
        '--connect',
        `qemu:///system?socket=${join(c.tmp, 'none.sock')}`,
      ],
      /cannot reach libvirtd[\s\S]*is libvirtd running/,
    );
    // A domain that is defined but shut off.
    const xml = join(c.d.dir, 'off.xml');
    writeFileSync(
      xml,
      "<domain type='qemu'><name>vmsubst-lv-off</name><memory unit='MiB'>64</memory>" +
        "<os><type arch='x86_64'>hvm</type></os></domain>",
    );
    await c.d.virsh(['define', xml]);
    try {
      await refused(
        c,
        ['apply', c.bundle, '--libvirt', 'vmsubst-lv-off', '--connect', c.d.uri],
        /is shut off[\s\S]*start it first/,
      );
    } finally {
      await c.d.virsh(['undefine', 'vmsubst-lv-off']);
    }
    // The overlay's path exists already: never replaced.
    const overlay = join(c.d.dir, `a-data.img.vmsubst-${c.id.slice(0, 12)}.qcow2`);
    writeFileSync(overlay, 'someone else’s file');
    try {
      await refused(c, lv(c, '--disk-serial', 'vmsubst-data'), /exists already; nothing was written/);
      assert.is(readFileSync(overlay, 'utf8'), 'someone else’s file');
    } finally {
      unlinkSync(overlay);
    }
    // The nbd mode would need QMP passthrough: refused unless the taint is accepted.
    await refused(
      c,
      lv(c, '--disk-serial', 'vmsubst-data', '--mode', 'nbd'),
      /tainted 'custom-monitor'[\s\S]*--allow-taint/,
      2,
    );
  }),
);

T('a diverged disk is refused: nothing written, the chain unchanged', (c) =>
  withTimeout(120_000, 'diverged', async () => {
    const before = sha(c.diverged);
    await refused(c, lv(c, '--disk', 'vdc'), /not based on this bundle's base[\s\S]*nothing was written/);
    assert.is(sha(c.diverged), before);
  }),
);

/** v2 applied to vdb, the agent told over the channel the XML declares. */
const applied = (c: Ctx): Promise<ApplyJson> =>
  c.once('apply', () => vmsubstJson<ApplyJson>(lv(c, '--disk-serial', 'vmsubst-data'), 240_000));

T('apply + notify: the overlay goes on top, the agent is told; the running program and a new exec print v2', (c) =>
  withTimeout(300_000, 'apply', async () => {
    const r = await applied(c);
    console.log(`  libvirt apply: paused ${r['pause-ms']} ms, window ${r['window-ms']} ms`);
    assert.is(r.status, 'applied');
    assert.is(r['window-ms'], 0);
    assert.type(r['pause-ms'], 'number');
    assert.is(r['chain-length'], 2);
    assert.is(r.overlay?.committed, false);
    assert.equal(r.overlay?.backing, { name: c.data, format: 'raw' });
    assert.ok(r.agent.told, JSON.stringify(r.agent));
    assert.ok(r.agent['two-phase'], 'prepare → switch → commit');
    assert.match(r.agent.target ?? '', /^serial:.*org\.vmsubst\.0$/);
    assert.equal(await c.a.chain('vdb'), [r.overlay!.path, c.data]);
    assert.match(await c.a.sh(PROG), /version v2/, 'a new exec runs v2');
    await waitFor(60_000, 'the running program prints v2', async () =>
      (await versions(c.a, '/tmp/running.out')).at(-1) === 'vprog version v2' ? true : undefined,
    );
  }),
);

/** libvirt's per-domain log since the domain's last start (the file keeps earlier runs). */
const domainLog = (name: string): string => {
  const log = readFileSync(`/var/log/libvirt/qemu/${name}.log`, 'utf8');
  return log.slice(Math.max(0, log.lastIndexOf('starting up')));
};

/** Whether libvirt reports the domain tainted: `virsh dominfo`'s messages, or its log. */
const tainted = async (c: Ctx, name: string): Promise<boolean> =>
  /taint/i.test(await c.d.virsh(['dominfo', name])) || /tainted/.test(domainLog(name));

T('the domain is not tainted (its libvirt log, virsh dominfo)', (c) =>
  withTimeout(120_000, 'taint', async () => {
    await applied(c);
    assert.match(domainLog('vmsubst-lv-a'), /starting up/);
    assert.not.match(domainLog('vmsubst-lv-a'), /taint/i);
    const info = await c.d.virsh(['dominfo', 'vmsubst-lv-a']);
    assert.match(info, /State:\s+running/);
    assert.not.match(info, /taint/i);
  }),
);

T('--commit merges the overlay down: the chain is one image again and the guest still reads v2', (c) =>
  withTimeout(300_000, 'commit', async () => {
    const first = await applied(c);
    const r = await vmsubstJson<ApplyJson>(lv(c, '--disk-serial', 'vmsubst-data', '--commit'), 240_000);
    console.log(`  libvirt commit: ${r.overlay?.['commit-ms']} ms`);
    assert.is(r.status, 'already-applied');
    assert.is(r.overlay?.committed, true);
    assert.is(r['chain-length'], 1);
    assert.equal(await c.a.chain('vdb'), [c.data]);
    assert.not.ok(existsSync(first.overlay!.path), 'the overlay file is removed');
    // Read from the disk again, not from the page cache.
    await c.a.sh('echo 3 > /proc/sys/vm/drop_caches');
    assert.match(await c.a.sh(PROG), /version v2/);
  }),
);

interface PlanJson {
  vms: { name: string; status: string; target?: string; plan?: { files: { path: string }[] } }[];
}

interface RolloutJson {
  ok: boolean;
  counts: Record<string, number>;
  vms: { name: string; status: string; guest: { told: boolean } }[];
  skipped?: { name: string; reason: string }[];
}

/** Domain a gives way to b1, b2 and one with an unrelated disk; then rollout --libvirt-all. */
const rolledOut = (c: Ctx): Promise<{ r: RolloutJson; plan: PlanJson; guests: LibvirtGuest[]; other: string }> =>
  c.once('rollout', async () => {
    await c.a.destroy();
    const b1 = join(c.d.dir, 'b1.img');
    const b2 = join(c.d.dir, 'b2.img');
    const other = join(c.d.dir, 'other.img');
    copyFileSync(join(c.art.disks, 'base.img'), b1);
    copyFileSync(join(c.art.disks, 'base.img'), b2);
    writeFileSync(other, Buffer.alloc(4 << 20));
    const data = (path: string, shareable = false) => [{ path, target: 'vdb', serial: 'vmsubst-data', shareable }];
    const guests = await Promise.all([
      LibvirtGuest.boot(c.d, c.art, { name: 'vmsubst-lv-b1', memoryMiB: 512, disks: data(b1) }),
      LibvirtGuest.boot(c.d, c.art, { name: 'vmsubst-lv-b2', memoryMiB: 512, disks: data(b2) }),
      LibvirtGuest.boot(c.d, c.art, {
        name: 'vmsubst-lv-other',
        memoryMiB: 512,
        noAgent: true,
        channel: false,
        disks: [{ path: other, target: 'vdb', serial: 'other' }],
      }),
    ]);
    c.defer(() => Promise.all(guests.map((g) => g.destroy())));
    // First the plan, from a fleet file that names the domains (the agents' addresses read from the live XML).
    const fleet = join(c.tmp, 'fleet.json');
    const vm = (name: string): object => ({ name, libvirt: `vmsubst-lv-${name}`, connect: c.d.uri });
    writeFileSync(fleet, JSON.stringify({ vms: [vm('b1'), vm('b2')], defaults: { disk: { serial: 'vmsubst-data' } } }));
    const plan = await vmsubstJson<PlanJson>(['plan', fleet, c.bundle], 240_000);
    const r = await vmsubstJson<RolloutJson>(['rollout', c.bundle, '--libvirt-all', '--connect', c.d.uri], 480_000);
    return { r, plan, guests, other };
  });

T(
  'plan from a fleet file of libvirt domains; rollout --libvirt-all: every running domain whose disk is the base, the unrelated one skipped and listed',
  (c) =>
    withTimeout(600_000, 'rollout', async () => {
      const { r, plan, guests, other } = await rolledOut(c);
      assert.equal(
        plan.vms.map((v) => [v.name, v.status]),
        [
          ['b1', 'planned'],
          ['b2', 'planned'],
        ],
        JSON.stringify(plan),
      );
      assert.match(plan.vms[0]!.target ?? '', /^serial:.*org\.vmsubst\.0$/);
      assert.ok(plan.vms[0]!.plan?.files.some((f) => f.path === PROG));
      assert.ok(r.ok, JSON.stringify(r));
      assert.equal(r.vms.map((v) => v.name).sort(), ['vmsubst-lv-b1', 'vmsubst-lv-b2']);
      assert.ok(
        r.vms.every((v) => v.status === 'applied' && v.guest.told),
        JSON.stringify(r.vms),
      );
      assert.equal(
        r.skipped?.map((s) => s.name),
        ['vmsubst-lv-other'],
      );
      assert.match(r.skipped![0]!.reason, /no disk of domain vmsubst-lv-other holds the bundle's base/);
      assert.equal(await guests[2]!.chain('vdb'), [other], 'the skipped domain is untouched');
      for (const g of guests.slice(0, 2)) assert.match(await g.sh(PROG), /version v2/);
    }),
);

T('a <shareable/> disk: no overlay (libvirt refuses one); --mode nbd --allow-taint writes in place, tainted', (c) =>
  withTimeout(400_000, 'taint', async () => {
    const [, b2] = (await rolledOut(c)).guests;
    const shared = join(c.d.dir, 't.img');
    copyFileSync(join(c.art.disks, 'base.img'), shared);
    const t = await LibvirtGuest.boot(c.d, c.art, {
      name: 'vmsubst-lv-t',
      memoryMiB: 512,
      disks: [{ path: shared, target: 'vdb', serial: 'vmsubst-data', shareable: true }],
    });
    c.defer(() => t.destroy());
    const apply = (name: string, ...more: string[]): string[] => [
      'apply',
      c.bundle,
      '--libvirt',
      name,
      '--connect',
      c.d.uri,
      ...more,
    ];
    const nbd = ['--mode', 'nbd', '--allow-taint', '--state-dir', join(c.tmp, 'state')];
    /** A refusal: exit 1, the message, the chain and the domain's taints as they were. */
    const refusedOn = async (g: LibvirtGuest, args: string[], message: RegExp): Promise<void> => {
      const chain = await g.chain('vdb');
      const r = await vmsubst(args, 120_000);
      assert.is(r.code, 1, r.stderr);
      assert.match(r.stderr, message);
      assert.equal(await g.chain('vdb'), chain);
      assert.not.ok(await tainted(c, g.name));
    };
    await refusedOn(t, apply('vmsubst-lv-t'), /is <shareable\/>: libvirt puts no qcow2 overlay[\s\S]*--allow-taint/);
    // Without <shareable/> QEMU cannot export the disk writable: refused before any QMP command, untainted.
    await refusedOn(b2!, apply('vmsubst-lv-b2', ...nbd), /not <shareable\/>[\s\S]*nothing was written/);
    const j = await vmsubstJson<ApplyJson & { mode: string; warnings: string[] }>(
      apply('vmsubst-lv-t', ...nbd),
      240_000,
    );
    console.log(`  libvirt nbd (tainted): paused ${j['pause-ms']} ms, window ${j['window-ms']} ms`);
    assert.is(j.status, 'applied');
    assert.is(j.mode, 'nbd');
    assert.ok(j.agent.told, JSON.stringify(j.agent));
    assert.ok(j.warnings.some((w) => /tainted 'custom-monitor'/.test(w)));
    assert.ok(await tainted(c, 'vmsubst-lv-t'), 'libvirt reports the taint');
    assert.equal(await t.chain('vdb'), [shared], 'written in place: no overlay');
    assert.match(await t.sh(PROG), /version v2/);
  }),
);

T.run();
