/**
 * Finding the target disk by its serial (resolve.ts) on a sysfs tree of the test's own: the
 * serials read once are kept for as long as the disk is the same one, and a disk removed and
 * another given its name is read anew.
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { resolveDisk } from '../../../../agent/src/substitution/resolve.js';
import { CommandError } from '../../../../agent/src/errors.js';

const R = suite('resolveDisk by serial');
const C = { sys: '' };
R.before.each(() => {
  C.sys = mkdtempSync(join(tmpdir(), 'vmsubst-resolve-'));
});
R.after.each(() => rmSync(C.sys, { recursive: true, force: true }));

function disk(name: string, serial: string, sectors = 2048): void {
  const d = join(C.sys, 'block', name);
  mkdirSync(d, { recursive: true });
  writeFileSync(join(d, 'serial'), `${serial}\n`);
  writeFileSync(join(d, 'size'), `${sectors}\n`);
}

const range = [{ offset: 0, length: 4096, sha256: '0'.repeat(64) }];
const noRead = (): Promise<Buffer> => Promise.reject(new Error('not read'));
const bySerial = (serial: string): ReturnType<typeof resolveDisk> =>
  resolveDisk({ serial }, range, noRead, C.sys, '/dev');

R('finds the disk with the serial, among others and skipped kinds', async () => {
  disk('vda', 'root');
  disk('vdb', 'vmsubst-data');
  disk('loop0', 'vmsubst-data');
  const d = await bySerial('vmsubst-data');
  assert.equal(d, { name: 'vdb', path: '/dev/vdb', sizeBytes: 2048 * 512 });
});

R('a disk removed and another given its name: the new one is read, not the remembered serial', async () => {
  disk('vda', 'root');
  disk('vdb', 'first');
  assert.is((await bySerial('first')).name, 'vdb');
  rmSync(join(C.sys, 'block/vdb'), { recursive: true });
  // A new directory in its place, as the kernel makes for a new disk.
  disk('vdb', 'second');
  assert.is((await bySerial('second')).name, 'vdb');
  const e = await bySerial('first').catch((x: unknown) => x);
  assert.instance(e, CommandError);
  assert.match((e as Error).message, /no disk with serial 'first'/);
});

R.run();
