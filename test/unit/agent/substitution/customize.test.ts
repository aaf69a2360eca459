/** Customization applied under a scratch root with a scratch /proc/sys: outcomes, persistence, refusals. */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import {
  mkdirSync,
  mkdtempSync,
  readFileSync,
  rmSync,
  statSync,
  symlinkSync,
  writeFileSync,
  existsSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { customize, SYSCTL_FILE, type CustomizeOptions } from '../../../../agent/src/substitution/customize.js';

const Cz = suite('customization');
const C = { dir: '', o: undefined as unknown as CustomizeOptions };

Cz.before.each(() => {
  C.dir = mkdtempSync(join(tmpdir(), 'vmsubst-cz-'));
  const root = join(C.dir, 'root');
  const procSys = join(C.dir, 'proc-sys');
  mkdirSync(join(root, 'etc'), { recursive: true });
  mkdirSync(join(procSys, 'kernel'), { recursive: true });
  mkdirSync(join(procSys, 'vm'), { recursive: true });
  writeFileSync(join(procSys, 'kernel/hostname'), 'old\n');
  writeFileSync(join(procSys, 'vm/swappiness'), '60\n');
  C.o = { allow: ['hostname', 'file', 'sysctl'], fileRoots: ['/etc'], root, procSys };
});
Cz.after.each(() => rmSync(C.dir, { recursive: true, force: true }));

Cz('sets and persists the hostname', async () => {
  const out = await customize({ hostname: 'web-01' }, C.o);
  assert.equal(out, [{ kind: 'hostname', target: 'web-01', status: 'applied' }]);
  assert.is(readFileSync(join(C.o.root, 'etc/hostname'), 'utf8'), 'web-01\n');
  assert.is(readFileSync(join(C.o.procSys, 'kernel/hostname'), 'utf8'), 'web-01');
  assert.equal(await customize({ hostname: 'web-01' }, C.o), [
    { kind: 'hostname', target: 'web-01', status: 'unchanged' },
  ]);
});

Cz('writes a file with its mode, atomically', async () => {
  const out = await customize({ files: [{ path: '/etc/app/app.conf', content: 'x=1\n', mode: 0o640 }] }, C.o);
  assert.is(out[0]?.status, 'applied');
  const p = join(C.o.root, 'etc/app/app.conf');
  assert.is(readFileSync(p, 'utf8'), 'x=1\n');
  assert.is(statSync(p).mode & 0o777, 0o640);
  assert.not.ok(existsSync(`${p}.vmsubst-tmp`));
});

Cz('refuses files outside the allowed directories, through symlinks or dot-dots', async () => {
  symlinkSync('/', join(C.o.root, 'etc/escape'));
  const escapee = `vmsubst-escape-${process.pid}`;
  const out = await customize(
    {
      files: [
        { path: '/root/.ssh/authorized_keys', content: 'k' },
        { path: `/etc/escape/tmp/${escapee}`, content: 'k' },
        { path: '/etc/../root/x', content: 'k' },
      ],
    },
    C.o,
  );
  assert.equal(
    out.map((o) => o.status),
    ['refused', 'refused', 'refused'],
  );
  assert.not.ok(existsSync(`/tmp/${escapee}`), 'nothing written through the symlink');
});

Cz('applies sysctl values and persists them in sysctl.d, merging earlier ones', async () => {
  await customize({ sysctl: { 'vm.swappiness': 10 } }, C.o);
  writeFileSync(join(C.o.procSys, 'kernel/panic'), '0\n');
  const out = await customize({ sysctl: { 'kernel.panic': '5', 'vm.swappiness': 10 } }, C.o);
  assert.equal(
    out.map((o) => [o.target, o.status]),
    [
      ['kernel.panic', 'applied'],
      ['vm.swappiness', 'unchanged'],
    ],
  );
  assert.is(readFileSync(join(C.o.procSys, 'vm/swappiness'), 'utf8'), '10');
  const conf = readFileSync(join(C.o.root, SYSCTL_FILE), 'utf8');
  assert.match(conf, /vm\.swappiness = 10/);
  assert.match(conf, /kernel\.panic = 5/);
});

Cz('a sysctl that does not exist fails alone', async () => {
  const out = await customize({ hostname: 'h', sysctl: { 'vm.nonexistent_knob': 1 } }, C.o);
  assert.equal(
    out.map((o) => o.status),
    ['applied', 'failed'],
  );
});

Cz('kinds the guest does not allow are refused with the reason', async () => {
  const out = await customize(
    { hostname: 'h', files: [{ path: '/etc/x', content: '' }] },
    { ...C.o, allow: ['sysctl'] },
  );
  assert.equal(
    out.map((o) => o.status),
    ['refused', 'refused'],
  );
  assert.match(out[0]!.detail!, /not allowed/);
  assert.not.ok(existsSync(join(C.o.root, 'etc/hostname')));
});

Cz.run();
