/**
 * In one guest: the agent over AF_VSOCK (vsock_loopback, CID 1, the only vsock
 * peer this host can offer), its CID allow-list refusing a peer, apply
 * refusing a bundle whose old blocks are not on the VM's disk, and the kernel
 * module's ABI test. Where the host has /dev/vhost-vsock, the host→guest vsock
 * path runs too; elsewhere it is skipped with the reason.
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { closeSync, copyFileSync, openSync, readFileSync, writeSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { join } from 'node:path';
import { GuestVm, vhostVsockUnavailable } from '../helpers/vm.js';
import { withGuest } from '../helpers/guest-suite.js';
import { vmsubst, vmsubstJson } from '../helpers/cli.js';
import { withTimeout } from '../helpers/timeout.js';

const GUEST_CLI = 'node /opt/vmsubst/build/host-signal/src/cli.js';
const sha = (p: string): string => createHash('sha256').update(readFileSync(p)).digest('hex');

const Guest = withGuest(suite('agent over vsock in the guest, refusals, module ABI'), {
  name: 'vsock',
  // The agent accepts CID 1 (loopback) on its default port; a second agent with
  // the default allow-list (host only) is started by a test below.
  boot: { agentArgs: ['--allow-cid', '1', '--no-serial'] },
  async setup({ art, tmp, bundle, vm }) {
    // A bundle made against another base: its old blocks are on neither image the VM could hold.
    const other = join(tmp, 'other.img');
    copyFileSync(join(art.disks, 'base.img'), other);
    const changed = (await vmsubstJson<{ manifest: { ranges: { offset: number }[] } }>(['inspect', bundle])).manifest
      .ranges[0]!.offset;
    const fd = openSync(other, 'r+');
    writeSync(fd, Buffer.alloc(4096, 0xab), 0, 4096, changed);
    closeSync(fd);
    const reverse = join(tmp, 'rev.bundle');
    await vmsubstJson(['diff', other, join(art.disks, 'patched.img'), '-o', reverse]);
    // The guest-side CLI notifies from its own copy of the bundle.
    await vm.putFile(bundle, '/tmp/fwd.bundle');
    return { reverse };
  },
});

Guest('apply refuses a bundle whose old blocks are not on the disk, and writes nothing', (c) =>
  withTimeout(120_000, 'refusal', async () => {
    const before = sha(c.disk);
    const r = await vmsubst(['apply', c.reverse, '--qmp', c.vm.qmpSocket, '--device', 'vblk0', '--json']);
    assert.is.not(r.code, 0, 'apply must fail');
    assert.match(r.stderr + r.stdout, /not based on|do not match|mismatch/i);
    assert.is(sha(c.disk), before, 'disk byte-for-byte unchanged');
    assert.is((await c.vm.run('true')).code, 0, 'the VM still runs');
  }),
);

Guest('the agent answers substitute over AF_VSOCK (CID 1) inside the guest', (c) =>
  withTimeout(180_000, 'vsock substitute', async () => {
    const { vm } = c;
    await vm.sh('/mnt/data/bin/vprog 200 > /tmp/vprog.out 2>&1 & echo $! > /tmp/vprog.pid');
    await vmsubstJson(['apply', c.bundle, '--qmp', vm.qmpSocket, '--device', 'vblk0']);
    const out = await vm.sh(
      `${GUEST_CLI} notify /tmp/fwd.bundle --to vsock:1:5252 --disk-serial vmsubst-data --json`,
      120_000,
    );
    const report = JSON.parse(out.slice(out.indexOf('{'))) as { files: { path: string; mappers: { pid: number }[] }[] };
    const pid = Number((await vm.sh('cat /tmp/vprog.pid')).trim());
    const file = report.files.find((f) => f.path === '/mnt/data/bin/vprog');
    assert.ok(file, JSON.stringify(report));
    assert.ok(file.mappers.some((m) => m.pid === pid));
    assert.match(await vm.sh('/mnt/data/bin/vprog'), /version v2/);
  }),
);

Guest('a vsock peer outside the allow-list is refused', (c) =>
  withTimeout(120_000, 'allow-list', async () => {
    const { vm } = c;
    await vm.sh('node /opt/vmsubst/build/agent/src/main.js --vsock-port 5353 --no-serial > /tmp/agent2.log 2>&1 &');
    const r = await vm.run(`sleep 3; ${GUEST_CLI} notify /tmp/fwd.bundle --to vsock:1:5353 --json`, 120_000);
    assert.is.not(r.code, 0, r.out);
    assert.match(r.out, /CID 1 is not allowed/);
    assert.match(await vm.sh('cat /tmp/agent2.log'), /refused connection/);
  }),
);

Guest('the kernel module ABI test passes in the guest (TAP)', (c) =>
  withTimeout(420_000, 'abi test', async () => {
    // A read-write ext filesystem on a loop device, for the dirty-page cases:
    // the page query, F_UNLESS_DIRTY, F_FORCE keeping dirty pages.
    await c.vm.sh(
      'mkdir -p /mnt/rw && truncate -s 32M /tmp/rw.img && mke2fs -F /tmp/rw.img >/dev/null 2>&1 && ' +
        'mount -t ext4 -o loop /tmp/rw.img /mnt/rw && echo rw > /mnt/rw/file',
    );
    const r = await c.vm.run(
      'echo scratch > /tmp/abi-scratch; /opt/vmsubst/abi_test /mnt/data/share/filler /tmp/abi-scratch /mnt/rw/file',
      400_000,
    );
    const lines = r.out.split('\n');
    for (const l of lines.filter((x) => /^# (pin|module_version)/.test(x))) console.log(`  ${l}`);
    // The cases of this suite's file kinds ran, not skipped.
    for (const name of [
      /query pages: written without fsync/,
      /F_UNLESS_DIRTY: EBUSY with dirty pages/,
      /F_UNLESS_DIRTY drops a clean file/,
      /private mappings, F_RESUME reaches and pins every one/,
      /F_RESUME after BUDGET/,
      /F_FORCE keeps dirty pages/,
      /openers: a child's descriptor, its position and flags/,
      /openers: truncated to its capacity/,
    ]) {
      const line = lines.find((l) => name.test(l));
      assert.ok(line && /^ok \d+/.test(line) && !line.includes('# SKIP'), `${String(name)}: ${line ?? 'missing'}`);
    }
    const plan = lines.find((l) => /^1\.\.\d+$/.test(l));
    assert.ok(plan, r.out);
    const failed = lines.filter((l) => l.startsWith('not ok'));
    assert.equal(failed, [], r.out);
    assert.is(r.code, 0, r.out);
    assert.is(lines.filter((l) => /^ok \d+/.test(l)).length, Number(plan.slice(3)), r.out);
  }),
);

const why = vhostVsockUnavailable();
if (why) {
  console.log(`  skipped: host-to-guest vsock: ${why}`);
  Guest.skip('host → guest substitute over vhost-vsock-pci', () => undefined);
} else {
  Guest('host → guest substitute over vhost-vsock-pci', (c) =>
    withTimeout(240_000, 'vhost-vsock', async () => {
      const disk = join(c.tmp, 'vhost.img');
      copyFileSync(join(c.art.disks, 'base.img'), disk);
      const vm = await GuestVm.boot({ disk, vsockCid: 42 });
      try {
        await vmsubstJson(['apply', c.bundle, '--qmp', vm.qmpSocket, '--device', 'vblk0']);
        const report = await vmsubstJson<{ files: { path: string }[] }>(['notify', c.bundle, '--to', 'vsock:42:5252']);
        assert.ok(report.files.some((f) => f.path === '/mnt/data/bin/vprog'));
        assert.match(await vm.sh('/mnt/data/bin/vprog'), /version v2/);
      } finally {
        vm.kill();
      }
    }),
  );
}

Guest.run();
