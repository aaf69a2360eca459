/**
 * A metadata substitution in a real guest: the patch replaced /bin/tool by a
 * new inode (written beside it, renamed over it) and added /etc/added.conf.
 * After the agent's bottom-up sequence (block-device buffers → dentries →
 * inodes → file pages → buffers again) the new file shows at its path, the
 * added one is visible although the guest had cached its absence, a process
 * still running the old inode keeps running and is reported, and the ext4
 * superblock/group-descriptor buffers come back as pinned. /etc/motd is
 * replaced too, by a new inode on the old one's block (a data range of the
 * old inode changes while its name leaves it): its new content shows, and the
 * old inode's range is left to the inode step instead of failing the commit.
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { withGuest, type GuestContext, notifySerial } from '../helpers/guest-suite.js';
import { vmsubstJson } from '../helpers/cli.js';
import { withTimeout } from '../helpers/timeout.js';
import type { SubstituteReport } from '@vmsubst/common/protocol/schema';

type Ctx = GuestContext & { pid: number; oldIno: number; oldMotd: number };

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
    // The file the patch replaces on its own block, cached (dentry, inode and page) as it was.
    assert.is((await vm.sh('cat /mnt/data/etc/motd')).trim(), 'vmsubst test volume');
    const oldMotd = Number((await vm.sh('stat -c %i /mnt/data/etc/motd')).trim());
    return { pid, oldIno, oldMotd };
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

Meta('a file replaced by a new inode on its old block: new content, the old range left to the inode step', (c) =>
  withTimeout(180_000, 'reused block', async () => {
    const report = await notified(c);
    assert.is((await c.vm.sh('cat /mnt/data/etc/motd')).trim(), 'vmsubst test volume, patched');
    assert.is.not(Number((await c.vm.sh('stat -c %i /mnt/data/etc/motd')).trim()), c.oldMotd);
    // The old inode's block changed: it is a changed file of the report, its pages not dropped by
    // range (its path names the new inode), and the read-back says why it skipped it.
    const f = report.files.find((x) => x.ino === c.oldMotd);
    assert.ok(f, JSON.stringify(report.files));
    assert.is(f.path, '/mnt/data/etc/motd');
    assert.is(f['pages-dropped'], 0);
    assert.ok(
      report.readback?.skipped?.some((s) => s.path === '/mnt/data/etc/motd' && /another inode/.test(s.reason)),
      JSON.stringify(report.readback),
    );
    // Nobody holds it: the inode step evicted it, it is not reported in use.
    assert.not.ok(
      report.metadata!.inodes['in-use'].some((u) => u.ino === c.oldMotd),
      JSON.stringify(report.metadata!.inodes),
    );
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
