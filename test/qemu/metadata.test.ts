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
import { GuestVm } from '../helpers/vm.js';
import { guestScenario, type Scenario } from '../helpers/scenario.js';
import { guestArtifacts } from '../helpers/paths.js';
import { vmsubstJson } from '../helpers/cli.js';
import { guard } from '../helpers/guard.js';
import { withTimeout } from '../helpers/timeout.js';
import type { SubstituteReport } from '@vmsubst/common/protocol/schema';

const art = guestArtifacts();
const Meta = suite('metadata substitution: new inode, added file, pinned buffers');
const G = guard(Meta);
const C = { scenario: undefined as Scenario | undefined, bundle: '', vm: undefined as GuestVm | undefined, pid: 0, oldIno: 0, report: undefined as SubstituteReport | undefined };

if (typeof art === 'string') {
  console.log(`  skipped: ${art}`);
  Meta.skip('guest artefacts are missing', () => undefined);
} else {
  Meta.before(G.setup(async () => {
    const s = await guestScenario(art, 'meta', { patched: 'renamed.img' });
    C.scenario = s;
    C.bundle = s.bundle;
    C.vm = s.vm;
    const vm = C.vm;
    await vm.sh('/mnt/data/bin/tool 200 > /tmp/tool.out 2>&1 & echo $! > /tmp/tool.pid');
    C.pid = Number((await vm.sh('cat /tmp/tool.pid')).trim());
    C.oldIno = Number((await vm.sh('stat -c %i /mnt/data/bin/tool')).trim());
    // The guest caches the absence of the file the patch adds (a negative dentry).
    assert.is.not((await vm.run('cat /mnt/data/etc/added.conf')).code, 0);
    await vmsubstJson(['apply', C.bundle, '--qmp', vm.qmpSocket, '--device', 'vblk0']);
  }));
  Meta.after(() => {
    C.scenario?.close();
  });

  G.test('control: after apply alone the guest still sees the old tree', () =>
    withTimeout(60_000, 'control', async () => {
      const vm = C.vm!;
      assert.match(await vm.sh('/mnt/data/bin/tool'), /version v1/);
      assert.is.not((await vm.run('cat /mnt/data/etc/added.conf')).code, 0);
    }),
  );

  G.test('notify runs the bottom-up sequence and reports metadata', () =>
    withTimeout(120_000, 'notify', async () => {
      C.report = await vmsubstJson<SubstituteReport>(['notify', C.bundle, '--to', `serial:${C.vm!.agentSocket}`, '--disk-serial', 'vmsubst-data']);
      const m = C.report.metadata;
      assert.ok(m, JSON.stringify(C.report));
      const kinds = new Set(m.ranges.flatMap((r) => r.kinds));
      for (const k of ['superblock-or-descriptors', 'inode-table', 'directory'] as const) assert.ok(kinds.has(k), `classified ${k}: ${[...kinds]}`);
      const bin = m.dentries.find((d) => d.dir === '/mnt/data/bin');
      assert.ok(bin && bin.names.includes('tool'), JSON.stringify(m.dentries));
      const etc = m.dentries.find((d) => d.dir === '/mnt/data/etc');
      assert.ok(etc && etc.names.includes('added.conf'), JSON.stringify(m.dentries));
    }),
  );

  G.test('the replaced file shows its new inode and content at its path', () =>
    withTimeout(60_000, 'new inode', async () => {
      const vm = C.vm!;
      assert.match(await vm.sh('/mnt/data/bin/tool'), /version v2/);
      assert.is.not(Number((await vm.sh('stat -c %i /mnt/data/bin/tool')).trim()), C.oldIno);
    }),
  );

  G.test('the added file is visible although its absence was cached', () =>
    withTimeout(60_000, 'added file', async () => {
      assert.match(await C.vm!.sh('cat /mnt/data/etc/added.conf'), /added by the patch/);
    }),
  );

  G.test('a process holding the old inode keeps running v1 and is reported as using it', () =>
    withTimeout(60_000, 'old inode', async () => {
      const vm = C.vm!;
      await vm.sh('sleep 1');
      assert.is((await vm.run(`kill -0 ${C.pid}`)).code, 0);
      assert.match(await vm.sh('tail -n 1 /tmp/tool.out'), /version v1/);
      const inUse = C.report!.metadata!.inodes['in-use'].find((u) => u.ino === C.oldIno);
      assert.ok(inUse, JSON.stringify(C.report!.metadata!.inodes));
      assert.ok(inUse.mappers.some((p) => p.pid === C.pid), JSON.stringify(inUse));
    }),
  );

  G.test('superblock and group-descriptor buffers come back as pinned, never silently dropped', () => {
    const pinned = C.report!.metadata!.pinned;
    assert.ok(pinned.some((r) => r.kinds.includes('superblock-or-descriptors')), JSON.stringify(pinned));
  });
}

Meta.run();
