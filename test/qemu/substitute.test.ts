/**
 * The walking skeleton, end to end in a real guest: a running program, its
 * blocks replaced under the VM through QMP/NBD, the agent told over
 * virtio-serial, the kernel module invalidating, and the program switching to
 * the new code without a restart.
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { GuestVm } from '../helpers/vm.js';
import { guestScenario, type Scenario } from '../helpers/scenario.js';
import { guestArtifacts } from '../helpers/paths.js';
import { vmsubst, vmsubstJson } from '../helpers/cli.js';
import { guard } from '../helpers/guard.js';
import { waitFor, withTimeout } from '../helpers/timeout.js';

interface Ctx {
  scenario?: Scenario;
  vm?: GuestVm;
  bundle: string;
  pid: number;
  report?: Report;
}
interface Report {
  files: { path: string; mappers: { pid: number; comm: string }[]; 'pages-dropped': number }[];
}

const art = guestArtifacts();
const Live = suite('live substitution in a QEMU guest');
const G = guard(Live);
const C: Ctx = { bundle: '', pid: 0 };
const PROG = '/mnt/data/bin/vprog';

/** The last line the running program printed, from its output file in the guest. */
async function lastLine(vm: GuestVm): Promise<string> {
  return (await vm.sh('tail -n 1 /tmp/vprog.out')).trim();
}

if (typeof art === 'string') {
  console.log(`  skipped: ${art}`);
  Live.skip('guest artefacts are missing', () => undefined);
} else {
  Live.before(G.setup(async () => {
    const ctx = C;
    const s = await guestScenario(art, 'live');
    ctx.scenario = s;
    ctx.bundle = s.bundle;
    ctx.vm = s.vm;
    await ctx.vm.sh(`${PROG} 200 > /tmp/vprog.out 2>&1 & echo $! > /tmp/vprog.pid`);
    ctx.pid = Number((await ctx.vm.sh('cat /tmp/vprog.pid')).trim());
    await waitFor(30_000, 'v1 output', async () => ((await lastLine(ctx.vm!)).includes('version v1') ? true : undefined));
  }));
  Live.after(() => {
    C.scenario?.close();
  });

  G.test('apply writes the changed blocks into the running VM through QMP', () =>
    withTimeout(120_000, 'apply', async () => {
      const r = await vmsubstJson<{ written: number; 'already-applied'?: boolean }>(
        ['apply', C.bundle, '--qmp', C.vm!.qmpSocket, '--device', 'vblk0'],
      );
      assert.ok(r.written > 0, 'some bytes were written');
    }),
  );

  G.test('control: without notify a new exec still runs v1 (stale page cache)', () =>
    withTimeout(60_000, 'control', async () => {
      const { vm } = C;
      const out = await vm!.sh(PROG);
      assert.match(out, /version v1/);
      assert.match(await lastLine(vm!), /version v1/);
    }),
  );

  G.test('notify over virtio-serial makes the agent verify and invalidate', () =>
    withTimeout(120_000, 'notify', async () => {
      const { vm, bundle } = C;
      C.report = await vmsubstJson<Report>([
        'notify', bundle, '--to', `serial:${vm!.agentSocket}`, '--disk-serial', 'vmsubst-data',
      ]);
      const file = C.report.files.find((f) => f.path === PROG);
      assert.ok(file, `report names ${PROG}: ${JSON.stringify(C.report)}`);
      assert.ok(file.mappers.length > 0);
    }),
  );

  G.test('the running process keeps its pid and prints v2 from its next page fault', () =>
    withTimeout(60_000, 'running process', async () => {
      const { vm, pid } = C;
      const line = await waitFor(20_000, 'v2 from the running process', async () => {
        const l = await lastLine(vm!);
        return l.includes('version v2') ? l : undefined;
      });
      assert.match(line, new RegExp(`pid=${pid}$`));
      assert.is((await vm!.run(`kill -0 ${pid}`)).code, 0, 'still running');
      const out = await vm!.sh('cat /tmp/vprog.out');
      assert.not.match(out, /Segmentation|Bus error/);
      const versions = out.split('\n').filter(Boolean).map((l) => l.replace(/ pid=.*/, ''));
      const firstV2 = versions.indexOf('vprog version v2');
      assert.ok(firstV2 > 0 && versions.slice(firstV2).every((v) => v === 'vprog version v2'), 'v1 then only v2');
    }),
  );

  G.test('a new exec after the substitution runs v2', () =>
    withTimeout(60_000, 'new exec', async () => {
      assert.match(await C.vm!.sh(PROG), /version v2/);
    }),
  );

  G.test('the report names the running pid as a mapper of the program', () => {
    const file = C.report!.files.find((f) => f.path === PROG)!;
    assert.ok(
      file.mappers.some((m) => m.pid === C.pid && m.comm === 'vprog'),
      `mappers: ${JSON.stringify(file.mappers)}`,
    );
    assert.ok(file['pages-dropped'] > 0, 'pages were dropped');
  });

  G.test('a second notify is answered again without error (blocks still verify)', () =>
    withTimeout(60_000, 'second notify', async () => {
      const { vm, bundle } = C;
      const r = await vmsubst(['notify', bundle, '--to', `serial:${vm!.agentSocket}`, '--json']);
      assert.is(r.code, 0, r.stderr);
    }),
  );
}

Live.run();
