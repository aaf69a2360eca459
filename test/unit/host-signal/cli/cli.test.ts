import { readFileSync } from 'node:fs';
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { vmsubst } from '../../../helpers/cli.js';
import { MiB, TempDir, image, patch } from '../fixtures.js';

const Cli = suite('cli');
const tmp = new TempDir();
Cli.after(() => tmp.remove());

const base = image(2 * MiB);
const patched = patch(base, [
  [4096, 1],
  [MiB, 10000],
]);
const basePath = tmp.file('base.img', base);
const patchedPath = tmp.file('patched.img', patched);

Cli('--help lists the commands and exits 0', async () => {
  const r = await vmsubst(['--help']);
  assert.is(r.code, 0);
  for (const c of ['diff', 'apply', 'notify', 'inspect']) assert.match(r.stdout, new RegExp(`\\n  ${c} `));
});

Cli('each command has --help', async () => {
  for (const c of ['diff', 'apply', 'notify', 'inspect']) {
    const r = await vmsubst([c, '--help']);
    assert.is(r.code, 0, c);
    assert.match(r.stdout, new RegExp(`^Usage: vmsubst ${c} `), c);
  }
});

Cli('no command is a usage error (exit 2)', async () => {
  assert.is((await vmsubst([])).code, 2);
});

Cli('an unknown command is a usage error (exit 2)', async () => {
  const r = await vmsubst(['frobnicate']);
  assert.is(r.code, 2);
  assert.match(r.stderr, /^vmsubst: unknown command 'frobnicate'\nhint: /);
});

Cli('an unknown option is a usage error (exit 2)', async () => {
  const r = await vmsubst(['inspect', 'x.vsb', '--bogus']);
  assert.is(r.code, 2);
  assert.match(r.stderr, /vmsubst: inspect: Unknown option '--bogus'/);
});

Cli('apply needs exactly one of --qmp and --image (exit 2)', async () => {
  assert.is((await vmsubst(['apply', 'x.vsb'])).code, 2);
  assert.is((await vmsubst(['apply', 'x.vsb', '--qmp', 'a', '--image', 'b'])).code, 2);
});

Cli('diff, inspect and apply --image work end to end with --json', async () => {
  const bundle = tmp.file('p.vsb');
  const d = await vmsubst(['diff', basePath, patchedPath, '-o', bundle, '--label', 'golden', '--json']);
  assert.is(d.code, 0, d.stderr);
  const diff = JSON.parse(d.stdout) as Record<string, unknown>;
  assert.is(diff['ranges'], 2);
  assert.is(diff['changed-bytes'], 4096 + 3 * 4096);
  assert.is(d.stderr, '', 'no progress bar when stderr is not a TTY');

  const i = await vmsubst(['inspect', bundle, '--json']);
  assert.is(i.code, 0, i.stderr);
  const inspected = JSON.parse(i.stdout) as { manifest: { id: string; base: unknown }; 'data-verified': boolean };
  assert.is(inspected.manifest.id, diff['id']);
  assert.equal(inspected.manifest.base, { size: 2 * MiB, label: 'golden' });
  assert.ok(inspected['data-verified']);

  const disk = tmp.file('disk.img', base);
  const a = await vmsubst(['apply', bundle, '--image', disk, '--json']);
  assert.is(a.code, 0, a.stderr);
  const applied = JSON.parse(a.stdout) as Record<string, unknown>;
  assert.is(applied['status'], 'applied');
  assert.is(applied['written'], 4 * 4096);
  assert.ok(readFileSync(disk).equals(patched));

  const again = JSON.parse((await vmsubst(['apply', bundle, '--image', disk, '--json'])).stdout) as Record<
    string,
    unknown
  >;
  assert.is(again['status'], 'already-applied');
  assert.is(again['written'], 0);
});

Cli('human output summarises diff and apply', async () => {
  const bundle = tmp.file('h.vsb');
  const d = await vmsubst(['diff', basePath, patchedPath, '-o', bundle]);
  assert.match(d.stdout, /h\.vsb: 2 ranges, 16 KiB changed of 2 MiB/);
  const disk = tmp.file('disk2.img', base);
  const a = await vmsubst(['apply', bundle, '--image', disk]);
  assert.match(a.stdout, /disk2\.img: raw-file: wrote 2 ranges, 16 KiB/);
});

Cli('failures print "vmsubst:" and "hint:" and exit 1', async () => {
  const r = await vmsubst(['inspect', basePath]);
  assert.is(r.code, 1);
  assert.match(r.stderr, /^vmsubst: .*not a vmsubst bundle \(bad magic\)\nhint: /);
});

Cli('with --json a failure is one JSON error document on stdout', async () => {
  const r = await vmsubst([
    'diff',
    basePath,
    tmp.file('short.img', Buffer.alloc(4096)),
    '-o',
    tmp.file('x.vsb'),
    '--json',
  ]);
  assert.is(r.code, 1);
  const doc = JSON.parse(r.stdout) as { error: { code: string; message: string; hint: string } };
  assert.is(doc.error.code, 'E_VMSUBST_DIFF');
  assert.match(doc.error.message, /differ in size/);
  assert.ok(doc.error.hint);
});

Cli('a bundle whose base differs from the image is refused and the image is unchanged', async () => {
  const bundle = tmp.file('r.vsb');
  await vmsubst(['diff', basePath, patchedPath, '-o', bundle]);
  const other = patch(base, [[4096, 2]]);
  const disk = tmp.file('other.img', other);
  const r = await vmsubst(['apply', bundle, '--image', disk]);
  assert.is(r.code, 1);
  assert.match(r.stderr, /not based on this bundle's base: 1 of 2 ranges/);
  assert.ok(readFileSync(disk).equals(other));
});

Cli.run();
