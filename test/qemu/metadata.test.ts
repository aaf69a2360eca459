/**
 * A metadata substitution in a real guest: the patch replaced /bin/tool by a
 * new inode (written beside it, renamed over it) and added /etc/added.conf.
 * After the agent's bottom-up sequence (block-device buffers → dentries →
 * inodes → file pages → buffers again) the new file shows at its path, the
 * added one is visible although the guest had cached its absence, a process
 * still running the old inode keeps running and is reported, and the ext4
 * superblock/group-descriptor buffers come back as pinned.
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { withGuest, type GuestContext, notifySerial } from '../helpers/guest-suite.js';
import { vmsubstJson } from '../helpers/cli.js';
import { withTimeout } from '../helpers/timeout.js';
import type { SubstituteReport } from '@vmsubst/common/protocol/schema';

type Ctx = GuestContext & { pid: number; oldIno: number };

/** After apply alone, before notify: what a new exec prints and whether the added file opens. */
const applied = (c: Ctx): Promise<{ exec: string; addedCode: number }> =>
  c.once('applied', async () => {
    await vmsubstJson(['apply', c.bundle, '--qmp', c.vm.qmpSocket, '--device', 'vblk0']);
    return {
      exec: await c.vm.sh('/mnt/data/bin/tool'),
      addedCode: (await c.vm.run('cat /mnt/data/etc/added.conf')).code,
    };
  });

/** Applied, then the agent told: its report. */
const notified = (c: Ctx): Promise<SubstituteReport> =>
  c.once('notified', async () => {
    await applied(c);
    return notifySerial<SubstituteReport>(c);
  });

const Meta = withGuest(suite('metadata substitution: new inode, added file, pinned buffers'), {
  name: 'meta',
  patched: 'renamed.img',
  async setup({ vm }) {
    await vm.sh('/mnt/data/bin/tool 200 > /tmp/tool.out 2>&1 & echo $! > /tmp/tool.pid');
    const pid = Number((await vm.sh('cat /tmp/tool.pid')).trim());
    const oldIno = Number((await vm.sh('stat -c %i /mnt/data/bin/tool')).trim());
    // The guest caches the absence of the file the patch adds (a negative dentry).
    assert.is.not((await vm.run('cat /mnt/data/etc/added.conf')).code, 0);
    return { pid, oldIno };
  },
});

Meta('control: after apply alone the guest still sees the old tree', (c) =>
  withTimeout(120_000, 'control', async () => {
    const { exec, addedCode } = await applied(c);
    assert.match(exec, /version v1/);
    assert.is.not(addedCode, 0);
  }),
);

Meta('notify runs the bottom-up sequence and reports metadata', (c) =>
  withTimeout(180_000, 'notify', async () => {
    const report = await notified(c);
    const m = report.metadata;
    assert.ok(m, JSON.stringify(report));
    const kinds = new Set(m.ranges.flatMap((r) => r.kinds));
    for (const k of ['superblock-or-descriptors', 'inode-table', 'directory'] as const)
      assert.ok(kinds.has(k), `classified ${k}: ${[...kinds]}`);
    const bin = m.dentries.find((d) => d.dir === '/mnt/data/bin');
    assert.ok(bin && bin.names.includes('tool'), JSON.stringify(m.dentries));
    const etc = m.dentries.find((d) => d.dir === '/mnt/data/etc');
    assert.ok(etc && etc.names.includes('added.conf'), JSON.stringify(m.dentries));
  }),
);

Meta('the replaced file shows its new inode and content at its path', (c) =>
  withTimeout(180_000, 'new inode', async () => {
    await notified(c);
    assert.match(await c.vm.sh('/mnt/data/bin/tool'), /version v2/);
    assert.is.not(Number((await c.vm.sh('stat -c %i /mnt/data/bin/tool')).trim()), c.oldIno);
  }),
);

Meta('the added file is visible although its absence was cached', (c) =>
  withTimeout(180_000, 'added file', async () => {
    await notified(c);
    assert.match(await c.vm.sh('cat /mnt/data/etc/added.conf'), /added by the patch/);
  }),
);

Meta('a process holding the old inode keeps running v1 and is reported as using it', (c) =>
  withTimeout(180_000, 'old inode', async () => {
    const { vm } = c;
    const report = await notified(c);
    await vm.sh('sleep 1');
    assert.is((await vm.run(`kill -0 ${c.pid}`)).code, 0);
    assert.match(await vm.sh('tail -n 1 /tmp/tool.out'), /version v1/);
    const inUse = report.metadata!.inodes['in-use'].find((u) => u.ino === c.oldIno);
    assert.ok(inUse, JSON.stringify(report.metadata!.inodes));
    assert.ok(
      inUse.mappers.some((p) => p.pid === c.pid),
      JSON.stringify(inUse),
    );
  }),
);

Meta('superblock and group-descriptor buffers come back as pinned, never silently dropped', (c) =>
  withTimeout(180_000, 'pinned buffers', async () => {
    const pinned = (await notified(c)).metadata!.pinned;
    assert.ok(
      pinned.some((r) => r.kinds.includes('superblock-or-descriptors')),
      JSON.stringify(pinned),
    );
  }),
);

Meta.run();
