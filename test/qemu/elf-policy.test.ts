/**
 * ELF policy by what changed, in a real guest. A program (/bin/vxprog) linked
 * with a shared library (/lib/libvx.so), both on the test volume, is loaded by
 * the guest's glibc loader; it prints libvx's version and sleeps inside
 * libvx's vx_wait, so a return address into libvx's code is on its stack.
 * Three in-place rewrites of libvx.so (test/fixtures/build-libvx-disks.sh),
 * each applied the way users do (diff → apply --notify: prepare, write,
 * commit) and then reversed:
 *
 *   rodata  only the version string changed: the host's hint is code-unchanged,
 *           the policy remap; the running process prints v2 from its next page
 *           fault on, a new exec too;
 *   moved   the instructions of vx_wait moved inside it (same size, sections and
 *           symbols: the user's case): code-changed, pin; the sleeping process
 *           survives its return into vx_wait and keeps printing v1, a new exec
 *           prints v2, the kernel logged no trap;
 *   added   a function added before the others: code-changed, pin, the same.
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { join } from 'node:path';
import type { GuestVm } from '../helpers/vm.js';
import { startProgram, versions, withGuest, type GuestContext } from '../helpers/guest-suite.js';
import { vmsubstJson } from '../helpers/cli.js';
import { waitFor, withTimeout } from '../helpers/timeout.js';

const PROG = '/mnt/data/bin/vxprog';
const LIB = '/mnt/data/lib/libvx.so';
/** What the kernel logs when a process dies of a fault or trap in user mode. */
const FAULT = /trap|segfault|general protection|invalid opcode/;

interface PlannedJson {
  path: string;
  class: string;
  policy: string;
  'policy-from': string;
  mappers: { pid: number }[];
}
interface ApplyJson {
  status: string;
  agent: {
    'two-phase': boolean;
    prepare?: { pinned: { pid: number; status: string }[]; plan: { files: PlannedJson[] } };
    report: { files: { path: string }[] };
  };
}

const alive = async (vm: GuestVm, pid: number): Promise<boolean> => (await vm.run(`kill -0 ${pid}`)).code === 0;

/** Starts vxprog printing every 300 ms into /tmp/vx-NAME.out; returns its pid and output file once it printed. */
async function start(vm: GuestVm, name: string): Promise<{ pid: number; out: string }> {
  return { pid: await startProgram(vm, `vx-${name}`, `${PROG} 300`), out: `/tmp/vx-${name}.out` };
}

async function apply({ vm, tmp, art }: GuestContext, from: string, to: string): Promise<ApplyJson> {
  const bundle = join(tmp, `${from}-${to}.bundle`);
  await vmsubstJson(['diff', join(art.disks, `libvx-${from}.img`), join(art.disks, `libvx-${to}.img`), '-o', bundle]);
  return vmsubstJson<ApplyJson>(
    [
      'apply',
      bundle,
      '--qmp',
      vm.qmpSocket,
      '--mode',
      'nbd',
      '--notify',
      `serial:${vm.agentSocket}`,
      '--disk-serial',
      'vmsubst-data',
    ],
    240_000,
  );
}

function planned(r: ApplyJson): PlannedJson {
  assert.ok(r.agent['two-phase'], 'prepare/commit were used');
  const f = r.agent.prepare?.plan.files.find((x) => x.path === LIB);
  assert.ok(f, `libvx.so is in the plan: ${JSON.stringify(r.agent.prepare?.plan.files)}`);
  return f;
}

/** The kernel log lines (since the case began: withVariant clears the log) about a process of ours dying of a fault. */
async function faults(vm: GuestVm): Promise<string[]> {
  return (await vm.sh('dmesg')).split('\n').filter((l) => FAULT.test(l) && /vxprog|libvx/.test(l));
}

/**
 * Runs `body` with a vxprog started on v1 and `variant` applied; afterwards kills it and
 * applies the way back to v1 (whatever `body` found), so each case starts from v1.
 */
async function withVariant(
  c: GuestContext,
  variant: 'rodata' | 'moved' | 'added',
  body: (pid: number, out: string, r: ApplyJson) => Promise<void>,
): Promise<void> {
  const { vm } = c;
  await vm.sh('dmesg -c > /dev/null');
  const { pid, out } = await start(vm, variant);
  let applied = false;
  try {
    const before = await versions(vm, out);
    assert.ok(
      before.every((l) => l === 'libvx version v1'),
      `vxprog prints v1 before the substitution: ${before.join(', ')}`,
    );
    const r = await apply(c, 'v1', variant);
    applied = true;
    assert.is(r.status, 'applied');
    await body(pid, out, r);
  } finally {
    await vm.run(`kill ${pid}`);
    if (applied) {
      await apply(c, variant, 'v1');
      assert.match(await vm.sh(PROG), /libvx version v1/, 'back to v1');
    }
  }
}

/** A code change under pin: the sleeping process survives and keeps v1; a new exec gets v2. */
async function codeChange(c: GuestContext, variant: 'moved' | 'added'): Promise<void> {
  const { vm } = c;
  await withVariant(c, variant, async (pid, out, r) => {
    assert.match(await vm.sh(PROG), /libvx version v2/, 'a new exec runs the new library');
    // Several wake-ups: each returns from nanosleep into vx_wait's code.
    const seen = (await versions(vm, out)).length;
    await waitFor(30_000, 'vxprog wakes up five more times, or dies', async () =>
      (await versions(vm, out)).length >= seen + 5 || !(await alive(vm, pid)) ? true : undefined,
    );
    assert.equal(await faults(vm), [], 'the kernel logged no fault of vxprog');
    assert.ok(
      await alive(vm, pid),
      `the process sleeping in vx_wait survived (its output: ${(await versions(vm, out)).join(', ')})`,
    );
    const lines = await versions(vm, out);
    assert.ok(
      lines.every((l) => l === 'libvx version v1'),
      `the pinned process keeps v1: ${[...new Set(lines)].join(', ')}`,
    );
    const f = planned(r);
    assert.is(f.class, 'elf-code-changed', `the host's hint for ${variant}`);
    assert.is(f.policy, 'pin');
    assert.is(f['policy-from'], 'default');
    assert.ok(
      r.agent.prepare!.pinned.some((p) => p.pid === pid && p.status === 'pinned'),
      JSON.stringify(r.agent.prepare!.pinned),
    );
  });
}

const T = withGuest(suite('elf-policy: remap only when no executable byte changes'), {
  name: 'elf-policy',
  base: 'libvx-v1.img',
  patched: 'libvx-rodata.img',
});

T("vxprog runs from the volume with libvx.so loaded by the guest's dynamic loader", (c) =>
  withTimeout(60_000, 'loader', async () => {
    const { vm } = c;
    assert.match(await vm.sh(PROG), /^libvx version v1 pid=\d+/);
    const { pid } = await start(vm, 'loader');
    assert.match(
      await vm.sh(`cat /proc/${pid}/maps`),
      /r-xp .*\/mnt\/data\/lib\/libvx\.so/,
      'libvx.so is mapped executable',
    );
    await vm.sh(`kill ${pid}`);
  }),
);

T('only .rodata changed: code-unchanged, remap; the running process and a new exec print v2', (c) =>
  withTimeout(300_000, 'rodata', async () => {
    const { vm } = c;
    await withVariant(c, 'rodata', async (pid, out, r) => {
      await waitFor(30_000, 'the running process prints v2', async () =>
        (await versions(vm, out)).at(-1) === 'libvx version v2' ? true : undefined,
      );
      assert.match(await vm.sh(PROG), /libvx version v2/);
      assert.ok(await alive(vm, pid), 'the remapped process runs on');
      const f = planned(r);
      assert.is(f.class, 'elf-code-unchanged');
      assert.is(f.policy, 'remap');
      assert.ok(
        f.mappers.some((m) => m.pid === pid),
        'prepare saw the process mapping libvx.so',
      );
      assert.equal(
        r.agent.prepare!.pinned.filter((p) => p.pid === pid),
        [],
        'nothing pinned under remap',
      );
    });
  }),
);

T("code moved inside the function a process sleeps in (the user's case): code-changed, pin; it survives on v1", (c) =>
  withTimeout(300_000, 'moved', () => codeChange(c, 'moved')),
);

T('a function added before the others: code-changed, pin; the running process survives on v1', (c) =>
  withTimeout(300_000, 'added', () => codeChange(c, 'added')),
);

T.run();
