/**
 * Customization against a hostile file tree under its root: a symlink planted
 * where the temp file goes, a symlinked parent directory, a symlinked
 * directory to be created below, an over-long hostname, sysctl values with
 * control characters. Files outside the root stay as they were (by hash and
 * mode), and no directory is created outside it.
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { createHash } from 'node:crypto';
import {
  chmodSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { customize, type CustomizeOptions } from '../../../../agent/src/substitution/customize.js';
import { argsValidator } from '@vmsubst/common/protocol/codec';

const A = suite('adversarial: customization does not leave its root');
const C = { dir: '', outside: '', victim: '', o: undefined as unknown as CustomizeOptions };

A.before.each(() => {
  C.dir = mkdtempSync(join(tmpdir(), 'vmsubst-adv-cz-'));
  const root = join(C.dir, 'root');
  const procSys = join(C.dir, 'proc-sys');
  C.outside = join(C.dir, 'outside');
  mkdirSync(join(root, 'etc'), { recursive: true });
  mkdirSync(join(procSys, 'kernel'), { recursive: true });
  mkdirSync(join(procSys, 'vm'), { recursive: true });
  mkdirSync(C.outside);
  writeFileSync(join(procSys, 'kernel/hostname'), 'old\n');
  writeFileSync(join(procSys, 'vm/swappiness'), '60\n');
  C.victim = join(C.outside, 'shadow');
  writeFileSync(C.victim, 'root:secret:1:0:99999:7:::\n');
  chmodSync(C.victim, 0o600);
  C.o = { allow: ['hostname', 'file', 'sysctl'], fileRoots: ['/etc'], root, procSys };
});
A.after.each(() => rmSync(C.dir, { recursive: true, force: true }));

const fingerprint = (p: string): string =>
  `${createHash('sha256').update(readFileSync(p)).digest('hex')} ${(statSync(p).mode & 0o7777).toString(8)}`;

A('a symlink planted at the temp file name is not followed (content and mode outside unchanged)', async () => {
  const before = fingerprint(C.victim);
  const target = join(C.o.root, 'etc/app.conf');
  // Where the old code put its temp file, and a spread of other plausible names.
  symlinkSync(C.victim, `${target}.vmsubst-tmp`);
  symlinkSync(C.victim, join(C.o.root, 'etc/.app.conf.vmsubst-tmp'));
  const out = await customize({ files: [{ path: '/etc/app.conf', content: 'pwned\n', mode: 0o666 }] }, C.o);
  assert.is(out[0]?.status, 'applied', JSON.stringify(out));
  assert.is(fingerprint(C.victim), before, 'the file outside the root is untouched');
  assert.is(readFileSync(target, 'utf8'), 'pwned\n');
  assert.is(statSync(target).mode & 0o777, 0o666);
  assert.ok(statSync(target).isFile());
});

A('a symlinked parent directory is refused and nothing outside is touched', async () => {
  const before = fingerprint(C.victim);
  symlinkSync(C.outside, join(C.o.root, 'etc/sub'));
  const out = await customize({ files: [{ path: '/etc/sub/shadow', content: 'pwned\n', mode: 0o644 }] }, C.o);
  assert.is(out[0]?.status, 'refused', JSON.stringify(out));
  assert.match(out[0]!.detail!, /symlink/);
  assert.is(fingerprint(C.victim), before);
  assert.equal(readdirSync(C.outside), ['shadow'], 'no file added outside');
});

A('no directory is created outside the root through a symlinked component', async () => {
  symlinkSync(C.outside, join(C.o.root, 'etc/sub'));
  const out = await customize({ files: [{ path: '/etc/sub/new/deep/x.conf', content: 'x\n' }] }, C.o);
  assert.is(out[0]?.status, 'refused');
  assert.not.ok(existsSync(join(C.outside, 'new')), 'mkdir followed the symlink');
  assert.equal(readdirSync(C.outside), ['shadow']);
});

A('a target that is a symlink is refused', async () => {
  const before = fingerprint(C.victim);
  symlinkSync(C.victim, join(C.o.root, 'etc/passwd'));
  const out = await customize({ files: [{ path: '/etc/passwd', content: 'x\n', mode: 0o777, uid: 0 }] }, C.o);
  assert.is(out[0]?.status, 'refused');
  assert.is(fingerprint(C.victim), before);
});

A('sysctl values with control characters are refused by the schema and by the code', async () => {
  const bad = {
    id: 'ab'.repeat(16),
    disk: {},
    ranges: [{ offset: 0, length: 4096, sha256: '0'.repeat(64) }],
    customization: { sysctl: { 'vm.swappiness': '10\nkernel.modprobe = /tmp/x' } },
  };
  assert.ok(argsValidator('substitute').problems(bad).length > 0, 'the schema refuses a newline');
  const tab = { ...bad, customization: { sysctl: { 'vm.swappiness': '10\u0001' } } };
  assert.ok(argsValidator('substitute').problems(tab).length > 0, 'and other control characters');
  const out = await customize({ sysctl: { 'vm.swappiness': '10\nkernel.modprobe = /tmp/x' } }, C.o);
  assert.is(out[0]?.status, 'refused');
  assert.is(readFileSync(join(C.o.procSys, 'vm/swappiness'), 'utf8'), '60\n');
  assert.not.ok(existsSync(join(C.o.root, 'etc/sysctl.d/90-vmsubst.conf')));
});

A('a hostname over 64 bytes is refused by the schema and by the code', async () => {
  const long = `${'a'.repeat(40)}.${'b'.repeat(40)}`;
  const args = {
    id: 'ab'.repeat(16),
    disk: {},
    ranges: [{ offset: 0, length: 4096, sha256: '0'.repeat(64) }],
    customization: { hostname: long },
  };
  assert.ok(argsValidator('substitute').problems(args).length > 0);
  assert.equal(argsValidator('substitute').problems({ ...args, customization: { hostname: 'a'.repeat(63) } }), []);
  const out = await customize({ hostname: long }, C.o);
  assert.is(out[0]?.status, 'refused');
  assert.match(out[0]!.detail!, /64 bytes/);
  assert.is(readFileSync(join(C.o.procSys, 'kernel/hostname'), 'utf8'), 'old\n');
});

A('the sysctl.d directory is not created through a symlinked /etc/sysctl.d', async () => {
  symlinkSync(C.outside, join(C.o.root, 'etc/sysctl.d'));
  const out = await customize({ sysctl: { 'vm.swappiness': 10 } }, C.o);
  assert.equal(readdirSync(C.outside), ['shadow'], 'nothing written outside');
  const persist = out.find((x) => x.target === '/etc/sysctl.d/90-vmsubst.conf');
  assert.is(persist?.status, 'refused', JSON.stringify(out));
  assert.match(persist!.detail!, /not persisted.*symlink/);
});

A.run();
