import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { appendFileSync, mkdtempSync, readFileSync, rmSync, truncateSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Journal, KEEP_IDS } from '../../../../agent/src/journal/journal.js';

const J = suite('Journal');
const C = { dir: '' };
J.before.each(() => {
  C.dir = mkdtempSync(join(tmpdir(), 'vmsubst-journal-'));
});
J.after.each(() => rmSync(C.dir, { recursive: true, force: true }));

J('remembers a done substitution across reopen', () => {
  const j = Journal.open(C.dir);
  j.begin('a1', 'test');
  j.done('a1', { files: [] });
  j.close();
  const k = Journal.open(C.dir);
  assert.is(k.get('a1')?.state, 'done');
  assert.equal(k.interrupted, []);
  k.close();
});

J('reports a begin without an outcome as interrupted', () => {
  const j = Journal.open(C.dir);
  j.begin('b2', 'test');
  j.close();
  const k = Journal.open(C.dir);
  assert.is(k.get('b2')?.state, 'interrupted');
  assert.equal(k.interrupted, ['b2']);
  k.close();
});

J("prepared and a commit's begin left to done's fsync: kept when written; lost, the entry is back a step", () => {
  const file = join(C.dir, 'journal.jsonl');
  const j = Journal.open(C.dir);
  j.prepared('p1', 'test', { id: 'p1', ranges: [] }, { pinned: [] });
  const preparedBytes = readFileSync(file).length;
  j.begin('p1', 'test', { id: 'p1', ranges: [] }, { durable: false });
  j.close();
  // The process died, the machine did not: the record is in the file, the commit was interrupted.
  const k = Journal.open(C.dir);
  assert.is(k.get('p1')?.state, 'interrupted');
  assert.equal(k.get('p1')?.last.phase, 'begin');
  k.close();
  // The machine lost the unsynced record: prepared is last again, and commit runs from it (commit.ts).
  truncateSync(file, preparedBytes);
  const m = Journal.open(C.dir);
  assert.is(m.get('p1')?.state, 'prepared');
  assert.equal(m.interrupted, []);
  m.close();
  // It lost both (the guest crashed: the pins and the page cache went with them): no entry, and a
  // commit is refused as never prepared (commit.ts).
  truncateSync(file, 0);
  const n = Journal.open(C.dir);
  assert.is(n.get('p1'), undefined);
  n.close();
});

J(
  'done, failed and aborted are in the file at once and fsynced on the next turn (after the answer); begin at once',
  async () => {
    const file = join(C.dir, 'journal.jsonl');
    const j = Journal.open(C.dir);
    j.begin('d1', 'test');
    assert.not.ok(j.unsettled, 'begin is fsynced before anything is changed');
    for (const write of [
      () => j.done('d1', { files: [] }),
      () => j.failed('d1', { class: 'VerifyMismatch', desc: 'x' }),
      () => j.aborted('d1'),
    ]) {
      const before = readFileSync(file).length;
      write();
      // Written before the caller sends its answer: an agent killed now still finds it.
      assert.ok(readFileSync(file).length > before);
      assert.ok(j.unsettled, 'the fsync waits for the next turn');
      await new Promise((r) => setImmediate(r));
      assert.not.ok(j.unsettled, 'fsynced on the next turn');
    }
    // A second record in the same turn shares the one fsync; close does not leave it out.
    j.done('d2', {});
    j.done('d3', {});
    j.close();
    assert.not.ok(j.unsettled);
    const k = Journal.open(C.dir);
    assert.is(k.get('d3')?.state, 'done');
    k.close();
    await new Promise((r) => setImmediate(r)); // the scheduled settle of the closed journal does nothing
  },
);

J('survives a torn last line', () => {
  const j = Journal.open(C.dir);
  j.begin('c3', 'test');
  j.failed('c3', { class: 'VerifyMismatch', desc: 'x' });
  j.close();
  appendFileSync(join(C.dir, 'journal.jsonl'), '{"t":"2026-');
  const k = Journal.open(C.dir);
  assert.is(k.get('c3')?.state, 'failed');
  k.close();
});

J('knows the latest entry, so only a retry of it is a replay', () => {
  const j = Journal.open(C.dir);
  j.done('ab', {});
  assert.is(j.latest()?.id, 'ab');
  j.done('ba', {});
  assert.is(j.latest()?.id, 'ba');
  assert.is.not(j.latest(), j.get('ab'));
  j.close();
});

J('lists recent entries newest first', () => {
  const j = Journal.open(C.dir);
  for (const id of ['x', 'y', 'z']) j.done(id, {});
  j.done('x', {});
  assert.equal(
    j.recent(3).map((e) => e.id),
    ['x', 'z', 'y'],
  );
  j.close();
});

J('compacts to the newest ids, keeping their outcome', () => {
  const j = Journal.open(C.dir);
  for (let i = 0; i < 4 * KEEP_IDS; i++) j.done(`id${i}`, { n: i });
  j.close();
  const lines = readFileSync(join(C.dir, 'journal.jsonl'), 'utf8').trim().split('\n');
  assert.is(lines.length, KEEP_IDS);
  const k = Journal.open(C.dir);
  assert.is(k.get('id0'), undefined);
  assert.is(k.get(`id${4 * KEEP_IDS - 1}`)?.state, 'done');
  k.close();
});

J.run();
