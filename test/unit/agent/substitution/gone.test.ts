/**
 * A file whose name the patched image gives to another inode (a package manager's rename): after the
 * dentry step its path reaches the new inode, so the file-page step must leave the old inode alone
 * (the inode step handled it) instead of failing the substitution; a path swapped by anything else
 * still fails it. The module is a recording stand-in here (no vmsubst.ko outside a guest); the
 * packaging suite's live upgrade runs the real one.
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { mkdtempSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { invalidateFiles } from '../../../../agent/src/substitution/invalidate.js';
import { goneKey } from '../../../../agent/src/substitution/metadata.js';
import type { FilePlan } from '../../../../agent/src/substitution/plan.js';
import type { FileReport } from '@vmsubst/common/protocol/schema';
import { CommandError } from '../../../../agent/src/errors.js';

const G = suite('file pages: a file whose name left its inode');
const dir = mkdtempSync(join(tmpdir(), 'vmsubst-gone-'));
G.after(() => rmSync(dir, { recursive: true, force: true }));

/** A file indexed as it was, then replaced by rename: the path names a new inode. */
function replacedFile(name: string): { plan: FilePlan; report: FileReport; oldIno: number } {
  const path = join(dir, name);
  writeFileSync(path, 'old');
  const st = statSync(path);
  writeFileSync(`${path}.new`, 'new');
  renameSync(`${path}.new`, path);
  assert.is.not(statSync(path).ino, st.ino);
  const plan = {
    hit: {
      file: {
        path,
        dev: Number(st.dev),
        ino: Number(st.ino),
        kind: 'file',
        mount: { readOnly: true },
        extents: [],
      },
      ranges: [{ offset: 0, length: 4096 }],
    },
    planned: { policy: 'remap', class: 'data' },
  } as unknown as FilePlan;
  const report: FileReport = {
    path,
    ino: Number(st.ino),
    ranges: [{ offset: 0, length: 4096 }],
    'pages-cached': 0,
    'pages-mapped': 0,
    'pages-dropped': 0,
    'pages-kept': 0,
    mappers: [],
  };
  return { plan, report, oldIno: Number(st.ino) };
}

function module(): { calls: number[]; deps: Parameters<typeof invalidateFiles>[2] } {
  const calls: number[] = [];
  return {
    calls,
    deps: {
      invalidateRange: async (fd) => {
        calls.push(fd);
        return { pagesCached: 0n, pagesMapped: 0n, pagesDropped: 0n, pagesKept: 0n };
      },
      forceFlag: 1,
      unlessDirtyFlag: 2,
      dropOnlyFlag: 4,
      refaultFlag: 8,
    },
  };
}

G('the patched image renamed another file over it: skipped, nothing asked of the module', async () => {
  const f = replacedFile('md5sums');
  const m = module();
  await invalidateFiles([f.plan], [f.report], m.deps, false, new Set([goneKey(f.plan.hit.file.path, f.oldIno)]));
  assert.equal(m.calls, []);
  assert.is(f.report['pages-dropped'], 0);
});

G('the patched image removed its name: skipped too', async () => {
  const f = replacedFile('removed');
  rmSync(f.plan.hit.file.path);
  const m = module();
  await invalidateFiles([f.plan], [f.report], m.deps, false, new Set([goneKey(f.plan.hit.file.path, f.oldIno)]));
  assert.equal(m.calls, []);
});

G('swapped by something else (not in the set): the substitution fails, naming the file', async () => {
  const f = replacedFile('swapped');
  const m = module();
  const e = await invalidateFiles([f.plan], [f.report], m.deps, false, new Set()).then(
    () => undefined,
    (x: unknown) => x,
  );
  assert.instance(e, CommandError);
  assert.is((e as CommandError).errorClass, 'InvalidateFailed');
  assert.match((e as CommandError).message, /swapped.*no longer the indexed file/);
  assert.equal(m.calls, []);
});

G('the same path with another inode number in the set does not excuse it', async () => {
  const f = replacedFile('other-ino');
  const m = module();
  const e = await invalidateFiles(
    [f.plan],
    [f.report],
    m.deps,
    false,
    new Set([goneKey(f.plan.hit.file.path, f.oldIno + 1)]),
  ).catch((x: unknown) => x);
  assert.instance(e, CommandError);
});

/**
 * The module's batch, as the addon runs it (open, check the inode, the ranges, close; stop at the
 * first file that fails), over the real files: a stand-in only for the ioctl.
 */
function batchModule(): { calls: string[][]; deps: Parameters<typeof invalidateFiles>[2] } {
  const calls: string[][] = [];
  const m = module();
  return {
    calls,
    deps: {
      ...m.deps,
      invalidateBatch: async (files) => {
        calls.push(files.map((f) => f.path));
        const out: Awaited<ReturnType<NonNullable<(typeof m.deps)['invalidateBatch']>>> = [];
        let stopped = false;
        for (const f of files) {
          const zero = { range: 0, pagesCached: 0n, pagesMapped: 0n, pagesDropped: 0n, pagesKept: 0n };
          if (stopped) {
            out.push({ state: 'pending', ...zero });
            continue;
          }
          let st;
          try {
            st = statSync(f.path);
          } catch (e) {
            out.push({ state: 'open-failed', error: e as Error, ...zero });
            stopped = true;
            continue;
          }
          if (st.ino !== f.ino) {
            out.push({ state: 'swapped', nowMode: st.mode, nowIno: st.ino, ...zero });
            stopped = true;
            continue;
          }
          out.push({ state: 'done', ...zero, pagesDropped: 1n });
        }
        return out;
      },
    },
  };
}

/** A file that stays the indexed one. */
function keptFile(name: string): { plan: FilePlan; report: FileReport } {
  const f = replacedFile(name);
  const st = statSync(f.plan.hit.file.path);
  (f.plan.hit.file as { ino: number }).ino = Number(st.ino);
  return { plan: f.plan, report: f.report };
}

G('batched: a name the patch gave away is skipped, the files after it are sent again', async () => {
  const a = keptFile('b-a');
  const gone = replacedFile('b-gone');
  const c = keptFile('b-c');
  const m = batchModule();
  await invalidateFiles(
    [a.plan, gone.plan, c.plan],
    [a.report, gone.report, c.report],
    m.deps,
    false,
    new Set([goneKey(gone.plan.hit.file.path, gone.oldIno)]),
  );
  assert.equal(m.calls.length, 2);
  assert.equal(m.calls[1], [c.plan.hit.file.path]);
  assert.is(a.report['pages-dropped'], 1);
  assert.is(gone.report['pages-dropped'], 0);
  assert.is(c.report['pages-dropped'], 1);
});

G('batched: a file swapped by something else fails with the message of the file-by-file path', async () => {
  const a = replacedFile('b-swapped');
  const b = keptFile('b-after');
  const m = batchModule();
  const e = await invalidateFiles([a.plan, b.plan], [a.report, b.report], m.deps, false, new Set()).catch(
    (x: unknown) => x,
  );
  assert.instance(e, CommandError);
  assert.is((e as CommandError).errorClass, 'InvalidateFailed');
  assert.match(
    (e as CommandError).message,
    /b-swapped is no longer the indexed file \(inode \d+\): it is now a regular file/,
  );
  assert.equal(m.calls.length, 1);
  assert.is(b.report['pages-dropped'], 0);
});

G.run();
