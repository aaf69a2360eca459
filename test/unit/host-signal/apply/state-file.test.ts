/** The apply's per-VM state file: keyed by the QMP socket's real path, written atomically, validated on read. */
import { mkdirSync, mkdtempSync, readdirSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { processStart, stateDir, StateStore, type ApplyRecord } from '../../../../host-signal/src/apply/state-file.js';
import { TargetError } from '../../../../host-signal/src/errors.js';

const S = suite('apply state file');
let dir = '';
S.before.each(() => {
  dir = mkdtempSync(join(tmpdir(), 'vmsubst-state-'));
});
S.after.each(() => rmSync(dir, { recursive: true, force: true }));

function record(qmp: string, over: Partial<ApplyRecord> = {}): ApplyRecord {
  return {
    format: 1,
    pid: 999_999_999,
    'pid-start': '1',
    'started-at': '2026-12-05T00:00:00.000Z',
    qmp,
    uuid: '00000000-0000-0000-0000-000000000000',
    bundle: { id: 'ab'.repeat(32) },
    mode: 'nbd',
    node: 'disk0',
    'socket-dir': '/tmp/x.d',
    'nbd-socket': '/tmp/x.d/nbd.sock',
    export: 'vmsubst-0',
    bitmap: 'vmsubst-0',
    'was-running': true,
    paused: false,
    phase: 'verifying',
    ...over,
  };
}

S('one file per VM, keyed by the real path of its QMP socket', async () => {
  const store = new StateStore(join(dir, 'state'));
  writeFileSync(join(dir, 'a.qmp'), '');
  symlinkSync(join(dir, 'a.qmp'), join(dir, 'link.qmp'));
  const a = await store.fileFor(join(dir, 'a.qmp'));
  assert.is(await store.fileFor(join(dir, 'link.qmp')), a);
  assert.is(await store.fileFor(join(dir, '.', 'a.qmp')), a);
  assert.is.not(await store.fileFor(join(dir, 'b.qmp')), a);
  assert.match(a, /\/qmp-[0-9a-f]{16}\.json$/);
});

S('written whole (no temporary left), 0600 in a 0700 directory; read back equal; removed', async () => {
  const store = new StateStore(join(dir, 'state'));
  const qmp = join(dir, 'a.qmp');
  writeFileSync(qmp, '');
  const file = await store.fileFor(qmp);
  await store.write(file, record(qmp));
  await store.write(file, record(qmp, { paused: true }));
  assert.equal(readdirSync(join(dir, 'state')), [file.split('/').at(-1)]);
  assert.is(statSync(file).mode & 0o777, 0o600);
  assert.is(statSync(join(dir, 'state')).mode & 0o777, 0o700);
  const got = await store.read(qmp);
  assert.equal(got?.record, record(qmp, { paused: true }));
  assert.ok(store.isLive(file, { ...got!.record, pid: process.pid }), 'this process, while its apply runs');
  store.release(file);
  assert.not.ok(store.isLive(file, { ...got!.record, pid: process.pid }));
  await store.remove(file);
  assert.is(await store.read(qmp), undefined);
});

S('a record of another process is live only while that process (same start time) runs', () => {
  const store = new StateStore(dir);
  const me = processStart(process.pid)!;
  assert.ok(me);
  assert.ok(store.isLive('x', record('/q', { pid: process.ppid, 'pid-start': processStart(process.ppid)! })));
  assert.not.ok(store.isLive('x', record('/q', { pid: process.ppid, 'pid-start': '1' })), 'a reused pid');
  assert.not.ok(store.isLive('x', record('/q', { pid: 999_999_999 })));
});

S('a file that is not a valid record is refused with a hint, never guessed at', async () => {
  const store = new StateStore(dir);
  const qmp = join(dir, 'a.qmp');
  const file = await store.fileFor(qmp);
  mkdirSync(dir, { recursive: true });
  writeFileSync(file, '{"format": 1');
  const e1 = await store.read(qmp).catch((e: unknown) => e);
  assert.instance(e1, TargetError);
  assert.match((e1 as TargetError).message, /is not JSON/);
  writeFileSync(file, JSON.stringify({ ...record(qmp), extra: 1 }));
  const e2 = await store.read(qmp).catch((e: unknown) => e);
  assert.match((e2 as TargetError).message, /is not valid/);
  assert.match((e2 as TargetError).hint ?? '', /check the VM by hand/);
});

S('the directory: the option, else VMSUBST_STATE_DIR, else /run/vmsubst', () => {
  const saved = process.env['VMSUBST_STATE_DIR'];
  try {
    delete process.env['VMSUBST_STATE_DIR'];
    assert.is(stateDir(), '/run/vmsubst');
    process.env['VMSUBST_STATE_DIR'] = '/x';
    assert.is(stateDir(), '/x');
    assert.is(stateDir('/y'), '/y');
  } finally {
    if (saved === undefined) delete process.env['VMSUBST_STATE_DIR'];
    else process.env['VMSUBST_STATE_DIR'] = saved;
  }
});

S('a directory that cannot be made is an error naming VMSUBST_STATE_DIR', async () => {
  writeFileSync(join(dir, 'file'), '');
  const store = new StateStore(join(dir, 'file', 'sub'));
  const e = await store.write(join(dir, 'file', 'sub', 'x.json'), record('/q')).catch((err: unknown) => err);
  assert.instance(e, TargetError);
  assert.match((e as TargetError).hint ?? '', /VMSUBST_STATE_DIR/);
});

S.run();
