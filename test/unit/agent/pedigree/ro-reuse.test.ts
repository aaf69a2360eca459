/**
 * The agent's index of a read-only mount is used as it is by every substitution after the first:
 * nothing but the agent's own substitutions changes such a filesystem under the guest, so no pass
 * over its paths (fresh()) is paid. A read-write mount is re-checked each time, and a remount is a
 * new index. A stand-in for the mount only (a temporary directory the test calls read-only): the
 * QEMU suites run the real read-only volumes.
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { FsIndex, PedigreeService } from '../../../../agent/src/pedigree/live.js';
import type { Mount } from '../../../../agent/src/pedigree/mounts.js';

const R = suite('pedigree service: the index of a read-only mount is reused without a pass over its paths');
const C = { dir: '', passes: 0, fresh: FsIndex.prototype.fresh };

R.before(() => {
  C.dir = mkdtempSync(join(tmpdir(), 'vmsubst-ro-reuse-'));
  for (let i = 0; i < 5; i++) writeFileSync(join(C.dir, `f${i}`), Buffer.alloc(4096, i));
  FsIndex.prototype.fresh = async function (this: FsIndex) {
    C.passes++;
    return C.fresh.call(this);
  };
});
R.after(() => {
  FsIndex.prototype.fresh = C.fresh;
  rmSync(C.dir, { recursive: true, force: true });
});

const mount = (readOnly: boolean): Mount => ({ mountPoint: C.dir, devNum: '0:0', root: '/', fsType: 'ext4', readOnly });

R(
  'read-only: built once, then reused by each use, no pass; read-write: a pass per use; a remount rebuilds',
  async () => {
    const { fiemap } = await import('../../../../agent/src/native/index.js');
    const svc = new PedigreeService(fiemap, { watch: false });
    try {
      C.passes = 0;
      const a = await svc.get(mount(true), 0);
      const b = await svc.get(mount(true), 0, true);
      assert.is(a, b);
      assert.is(C.passes, 0);
      const c = await svc.get(mount(false), 0);
      assert.is.not(c, a, 'a remount read-write is a new index');
      await svc.get(mount(false), 0);
      assert.is(C.passes, 1, 'the read-write index is re-checked on its second use');
      const d = await svc.get(mount(true), 0);
      assert.is.not(d, c, 'a remount read-only is a new index');
      assert.is(C.passes, 1);
    } finally {
      await svc.close();
    }
  },
);

R.run();
