/**
 * The journal under damage: a crash mid-write leaves a torn last line, which
 * must be cut before the next record is appended (else the two glue into one
 * unreadable line and the new record is lost on reload); a corrupt line in the
 * middle is reported (log, `vmsubst-agent status` text and --json), never
 * dropped silently, and compaction moves it to a quarantine file.
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { appendFileSync, existsSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Journal, KEEP_IDS } from '../../../../agent/src/journal/journal.js';
import { status } from '../../../../agent/src/cli/status.js';

const J = suite('adversarial: journal torn tail and corrupt lines');
const C = { dir: '' };
J.before.each(() => {
  C.dir = mkdtempSync(join(tmpdir(), 'vmsubst-adv-journal-'));
});
J.after.each(() => rmSync(C.dir, { recursive: true, force: true }));

const file = (): string => join(C.dir, 'journal.jsonl');

J('a torn last line is cut before the next append, so the new record survives a reload', () => {
  const j = Journal.open(C.dir);
  j.begin('aa11', 'test');
  j.done('aa11', { files: [] });
  j.close();
  const whole = statSync(file()).size;
  appendFileSync(file(), '{"t":"2026-12-01T00:00:00.000Z","id":"bb22","pha'); // crash mid-write
  const k = Journal.open(C.dir);
  assert.ok(k.tornBytes > 0, 'the torn tail is noticed');
  assert.is(statSync(file()).size, whole, 'and cut at open');
  k.begin('cc33', 'test');
  k.done('cc33', { files: [{ path: '/x' }] });
  k.close();
  const l = Journal.open(C.dir);
  assert.is(l.get('cc33')?.state, 'done', 'the record appended after the torn line is read back');
  assert.is(l.get('aa11')?.state, 'done');
  assert.equal(l.corrupt, [], 'nothing was glued into a corrupt line');
  l.close();
  for (const line of readFileSync(file(), 'utf8').trim().split('\n')) JSON.parse(line);
});

J('a partial write inside the process is cut before the next record', () => {
  const j = Journal.open(C.dir);
  j.done('dd44', {});
  appendFileSync(file(), '{"t":"x","id":"half'); // e.g. ENOSPC cut a write short
  j.done('ee55', {});
  j.close();
  const k = Journal.open(C.dir);
  assert.is(k.get('ee55')?.state, 'done');
  assert.equal(k.corrupt, []);
  k.close();
});

J('a corrupt line in the middle is reported, and the records around it are kept', () => {
  const j = Journal.open(C.dir);
  j.done('ff66', {});
  j.close();
  appendFileSync(file(), 'garbage{{\n{"no":"id"}\n');
  const k = Journal.open(C.dir);
  k.done('gg77', {});
  k.close();
  const l = Journal.open(C.dir);
  assert.is(l.corrupt.length, 2, JSON.stringify(l.corrupt));
  assert.is(l.corrupt[0]!.line, 2);
  assert.match(l.corrupt[0]!.reason, /not JSON/);
  assert.is(l.corrupt[1]!.line, 3);
  assert.match(l.corrupt[1]!.reason, /not a journal record/);
  assert.is(l.get('ff66')?.state, 'done');
  assert.is(l.get('gg77')?.state, 'done');
  l.close();
});

J('status shows corrupt lines in text and JSON and does not change the file', async () => {
  const j = Journal.open(C.dir);
  j.done('hh88', { files: [] });
  j.close();
  appendFileSync(file(), 'not json at all\n{"t":"x","id":"ii99","pha');
  const before = readFileSync(file());
  let text = '';
  await status(['--state-dir', C.dir, '--kmod-device', join(C.dir, 'no-such-device')], (s) => (text += s));
  assert.match(text, /journal CORRUPT line 2: not JSON/);
  assert.match(text, /torn last line/);
  let json = '';
  await status(['--json', '--state-dir', C.dir, '--kmod-device', join(C.dir, 'no-such-device')], (s) => (json += s));
  const st = JSON.parse(json) as {
    'journal-problems': { corrupt: { line: number; reason: string }[]; 'torn-tail-bytes': number };
  };
  assert.is(st['journal-problems'].corrupt.length, 1);
  assert.is(st['journal-problems'].corrupt[0]!.line, 2);
  assert.ok(st['journal-problems']['torn-tail-bytes'] > 0);
  assert.ok(readFileSync(file()).equals(before), 'status is read-only');
});

J('compaction moves corrupt lines to the quarantine file instead of dropping them', () => {
  writeFileSync(file(), 'bad line one\n', { mode: 0o600 });
  const j = Journal.open(C.dir);
  for (let i = 0; i < 4 * KEEP_IDS; i++) j.done(`id${i}`, {});
  j.close();
  assert.ok(existsSync(j.quarantinePath));
  assert.match(readFileSync(j.quarantinePath, 'utf8'), /bad line one/);
  assert.is(statSync(j.quarantinePath).mode & 0o777, 0o600);
  const k = Journal.read(C.dir);
  assert.equal(k.corrupt, []);
  assert.is(k.quarantined(), 1);
});

J.run();
