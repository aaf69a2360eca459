/**
 * The walking skeleton, end to end in a real guest: a running program, its
 * blocks replaced under the VM through QMP/NBD, the agent told over
 * virtio-serial, the kernel module invalidating, and the program switching to
 * the new code without a restart.
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import type { GuestVm } from '../helpers/vm.js';
import { withGuest, type GuestContext, notifySerial } from '../helpers/guest-suite.js';
import { vmsubst, vmsubstJson } from '../helpers/cli.js';
import { waitFor, withTimeout } from '../helpers/timeout.js';

interface Report {
  files: { path: string; mappers: { pid: number; comm: string }[]; 'pages-dropped': number }[];
}
type Ctx = GuestContext & { pid: number };

const PROG = '/mnt/data/bin/vprog';

/** The last line the running program printed, from its output file in the guest. */
async function lastLine(vm: GuestVm): Promise<string> {
  return (await vm.sh('tail -n 1 /tmp/vprog.out')).trim();
}

/** The bundle written under the running guest; then, before any notify, what a new exec and the running program print. */
const applied = (c: Ctx): Promise<{ written: number; exec: string; running: string }> =>
  c.once('applied', async () => {
    const r = await vmsubstJson<{ written: number }>(['apply', c.bundle, '--qmp', c.vm.qmpSocket, '--device', 'vblk0']);
    return { written: r.written, exec: await c.vm.sh(PROG), running: await lastLine(c.vm) };
  });

/** Applied, then the agent told over virtio-serial: its report. */
const notified = (c: Ctx): Promise<Report> =>
  c.once('notified', async () => {
    await applied(c);
    return notifySerial<Report>(c);
  });

const Live = withGuest(suite('live substitution in a QEMU guest'), {
  name: 'live',
  async setup({ vm }) {
    await vm.sh(`${PROG} 200 > /tmp/vprog.out 2>&1 & echo $! > /tmp/vprog.pid`);
    const pid = Number((await vm.sh('cat /tmp/vprog.pid')).trim());
    await waitFor(30_000, 'v1 output', async () => ((await lastLine(vm)).includes('version v1') ? true : undefined));
    return { pid };
  },
});

Live('apply writes the changed blocks into the running VM through QMP', (c) =>
  withTimeout(120_000, 'apply', async () => {
    assert.ok((await applied(c)).written > 0, 'some bytes were written');
  }),
);

Live('control: without notify a new exec still runs v1 (stale page cache)', (c) =>
  withTimeout(120_000, 'control', async () => {
    const { exec, running } = await applied(c);
    assert.match(exec, /version v1/);
    assert.match(running, /version v1/);
  }),
);

Live('notify over virtio-serial makes the agent verify and invalidate', (c) =>
  withTimeout(180_000, 'notify', async () => {
    const report = await notified(c);
    const file = report.files.find((f) => f.path === PROG);
    assert.ok(file, `report names ${PROG}: ${JSON.stringify(report)}`);
    assert.ok(file.mappers.length > 0);
  }),
);

Live('the running process keeps its pid and prints v2 from its next page fault', (c) =>
  withTimeout(180_000, 'running process', async () => {
    const { vm, pid } = c;
    await notified(c);
    const line = await waitFor(20_000, 'v2 from the running process', async () => {
      const l = await lastLine(vm);
      return l.includes('version v2') ? l : undefined;
    });
    assert.match(line, new RegExp(`pid=${pid}$`));
    assert.is((await vm.run(`kill -0 ${pid}`)).code, 0, 'still running');
    const out = await vm.sh('cat /tmp/vprog.out');
    assert.not.match(out, /Segmentation|Bus error/);
    const versions = out
      .split('\n')
      .filter(Boolean)
      .map((l) => l.replace(/ pid=.*/, ''));
    const firstV2 = versions.indexOf('vprog version v2');
    assert.ok(firstV2 > 0 && versions.slice(firstV2).every((v) => v === 'vprog version v2'), 'v1 then only v2');
  }),
);

Live('a new exec after the substitution runs v2', (c) =>
  withTimeout(180_000, 'new exec', async () => {
    await notified(c);
    assert.match(await c.vm.sh(PROG), /version v2/);
  }),
);

Live('the report names the running pid as a mapper of the program', (c) =>
  withTimeout(180_000, 'report', async () => {
    const file = (await notified(c)).files.find((f) => f.path === PROG)!;
    assert.ok(
      file.mappers.some((m) => m.pid === c.pid && m.comm === 'vprog'),
      `mappers: ${JSON.stringify(file.mappers)}`,
    );
    assert.ok(file['pages-dropped'] > 0, 'pages were dropped');
  }),
);

Live('a second notify is answered again without error (blocks still verify)', (c) =>
  withTimeout(180_000, 'second notify', async () => {
    await notified(c);
    const r = await vmsubst(['notify', c.bundle, '--to', `serial:${c.vm.agentSocket}`, '--json']);
    assert.is(r.code, 0, r.stderr);
  }),
);

Live.run();
