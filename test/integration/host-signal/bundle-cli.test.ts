/**
 * The bundle commands end to end, as an operator runs them: `vmsubst diff`
 * on real ext4 images (file hints, ELF verdicts), `keygen`, `sign`, `inspect
 * --json` with and without `--trusted-key`, `apply --trusted-key`; a tampered
 * bundle is refused, a format 1 bundle still opens, and bad input fails with
 * a clear message and leaves nothing behind.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { vmsubst, vmsubstJson } from '../../helpers/cli.js';
import { buildExt4Pair, UUID, type Ext4Pair } from '../../helpers/ext4-images.js';
import {
  HEADER_BYTES,
  canonicalJson,
  encodeHeader,
  manifestId,
  type Manifest,
} from '../../../host-signal/src/bundle/index.js';
import { TempDir, image, patch, writeFormat1Bundle } from '../../unit/host-signal/fixtures.js';

const tmp = new TempDir();
const C = {} as { pair: Ext4Pair; bundle: string; key: string; pub: string; otherPub: string };

interface InspectJson {
  'data-verified': boolean;
  signature: { status: string; keyId?: string; reason?: string };
  manifest: Manifest;
}

const Cli = suite('vmsubst diff → sign → inspect (real ext4 images)');

Cli.before(async () => {
  C.pair = buildExt4Pair(tmp.path);
  C.bundle = tmp.file('patch.vsb');
  await vmsubstJson(['keygen', '--out', tmp.file('ops')]);
  await vmsubstJson(['keygen', '--out', tmp.file('other')]);
  C.key = tmp.file('ops.key');
  C.pub = tmp.file('ops.pub');
  C.otherPub = tmp.file('other.pub');
});

Cli('diff writes a bundle with base identity and file hints', async () => {
  const r = await vmsubstJson<Record<string, unknown>>([
    'diff',
    C.pair.base,
    C.pair.patched,
    '-o',
    C.bundle,
    '--label',
    'golden-1',
  ]);
  assert.is(r['hints'], 'computed');
  assert.is(r['files'], 3);
  assert.is(r['elf-code-unchanged'], 1);
  assert.is(r['elf-code-changed'], 1);
  assert.ok((r['read-bytes'] as number) < (r['base-size'] as number), 'holes skipped');
});

Cli('sign, then inspect --json with the trusted key shows everything', async () => {
  const s = await vmsubstJson<{ id: string; 'previous-id': string; 'key-id': string }>([
    'sign',
    C.bundle,
    '--key',
    C.key,
  ]);
  assert.is(s.id, s['previous-id']);
  const j = await vmsubstJson<InspectJson>(['inspect', C.bundle, '--trusted-key', C.pub]);
  assert.is(j['data-verified'], true);
  assert.equal(j.signature, { status: 'valid', keyId: s['key-id'] });
  const m = j.manifest;
  assert.is(m.format, 3);
  assert.is(m.base.label, 'golden-1');
  assert.is(m.base.filesystems![0]!.uuid, UUID);
  const verdicts = Object.fromEntries(m.files!.map((f) => [f.path, f.elf ?? 'data']));
  assert.equal(verdicts, { '/bin/grown': 'code-changed', '/bin/same': 'code-unchanged', '/etc/conf.txt': 'data' });
  const hinted = new Set(m.ranges.flatMap((r) => r.files ?? []));
  assert.equal([...hinted].sort(), [0, 1, 2]);
});

Cli('inspect for people lists the files, the verdicts and the signature', async () => {
  const r = await vmsubst(['inspect', C.bundle, '--trusted-key', C.pub]);
  assert.is(r.code, 0, r.stderr);
  assert.match(r.stdout, /signature\s+valid, key [0-9a-f]{16} \(trusted\)/);
  assert.match(r.stdout, /\/bin\/same\s+0\s+\d+\s+\d+\s+unchanged/);
  assert.match(r.stdout, /\/bin\/grown\s+0\s+\d+\s+\d+\s+changed: /);
  assert.match(r.stdout, /\/etc\/conf.txt\s+0\s+\d+\s+\d+\s+not ELF/);
  assert.match(r.stdout, new RegExp(`filesystems\\s+#0 ext4 ${UUID} "hint-test"`));
});

Cli('a bundle signed by another key is refused with --trusted-key', async () => {
  const r = await vmsubst(['inspect', C.bundle, '--trusted-key', C.otherPub, '--json']);
  assert.is(r.code, 1);
  assert.match(JSON.parse(r.stdout).error.message, /not among the trusted keys/);
});

Cli('a tampered manifest is refused by inspect and by apply, and apply writes nothing', async () => {
  const forged = tmp.file('forged.vsb');
  const file = readFileSync(C.bundle);
  const len = file.readUInt32BE(12);
  const m = JSON.parse(file.subarray(HEADER_BYTES, HEADER_BYTES + len).toString()) as Manifest;
  m.files![0]!.elf = 'code-unchanged'; // claim the binary whose code changed is safe to remap
  m.id = manifestId(m);
  const bytes = Buffer.from(canonicalJson(m));
  const out = Buffer.from(file);
  out.fill(0, 0, m.ranges[0]!['data-offset']);
  encodeHeader(bytes.length).copy(out, 0);
  bytes.copy(out, HEADER_BYTES);
  writeFileSync(forged, out);

  const r = await vmsubst(['inspect', forged, '--trusted-key', C.pub]);
  assert.is(r.code, 1);
  assert.match(r.stderr, /refused: bad signature .* altered after signing/);
  const unverified = await vmsubstJson<InspectJson>(['inspect', forged]);
  assert.is(unverified.signature.status, 'unverified');

  const target = tmp.file('target.img');
  writeFileSync(target, readFileSync(C.pair.base));
  const before = readFileSync(target);
  const a = await vmsubst(['apply', forged, '--image', target, '--trusted-key', C.pub]);
  assert.is(a.code, 1);
  assert.match(a.stderr, /altered after signing/);
  assert.ok(readFileSync(target).equals(before), 'the image was not touched');
  const ok = await vmsubst(['apply', C.bundle, '--image', target, '--trusted-key', C.pub, '--json']);
  assert.is(ok.code, 0, ok.stderr);
  assert.ok(readFileSync(target).equals(readFileSync(C.pair.patched)), 'the signed bundle applied');
});

Cli('a format 1 bundle still opens and shows as such', async () => {
  const base = image(1 << 20);
  const old = tmp.file('old.vsb');
  const id = await writeFormat1Bundle(old, base, patch(base, [[4096, 3]]));
  const j = await vmsubstJson<InspectJson>(['inspect', old]);
  assert.is(j.manifest.format, 1);
  assert.is(j.manifest.id, id);
  assert.equal(j.signature, { status: 'unsigned' });
  const human = await vmsubst(['inspect', old]);
  assert.is(human.code, 0);
  assert.match(human.stdout, /format\s+1, block size 4096/);
});

Cli('--no-hints leaves the hints out but keeps the base identity', async () => {
  const out = tmp.file('nohints.vsb');
  const r = await vmsubstJson<Record<string, unknown>>(['diff', C.pair.base, C.pair.patched, '-o', out, '--no-hints']);
  assert.is(r['hints'], 'off');
  const j = await vmsubstJson<InspectJson>(['inspect', out]);
  assert.is(j.manifest.files, undefined);
  assert.is(j.manifest.base.filesystems![0]!.uuid, UUID);
});

Cli('a qcow2 patched image gives the same ranges; hints are skipped with a note', async () => {
  const q = tmp.file('patched.qcow2');
  execFileSync('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', C.pair.patched, q]);
  const out = tmp.file('from-qcow2.vsb');
  const r = await vmsubstJson<Record<string, unknown>>(['diff', C.pair.base, q, '-o', out]);
  assert.is(r['hints'], 'unavailable');
  assert.match((r['notes'] as string[]).join('\n'), /need raw images/);
  const raw = await vmsubstJson<InspectJson>(['inspect', C.bundle]);
  const fromQ = await vmsubstJson<InspectJson>(['inspect', out]);
  const strip = (m: Manifest) => m.ranges.map((x) => [x.offset, x.length, x['old-sha256'], x['new-sha256']]);
  assert.equal(strip(fromQ.manifest), strip(raw.manifest));
});

Cli('bad input: clear errors, nothing written', async () => {
  const before = new Set(readdirSync(tmp.path));
  const cases: [string[], RegExp, number][] = [
    [['diff', C.pair.base, tmp.file('missing.img'), '-o', tmp.file('x.vsb')], /cannot open the patched image/, 1],
    [['diff', C.pair.base, tmp.file('small.img', Buffer.alloc(4096)), '-o', tmp.file('x.vsb')], /differ in size/, 1],
    [
      ['diff', C.pair.base, C.pair.patched, '-o', tmp.file('x.vsb'), '--customize', tmp.file('nope.json')],
      /--customize/,
      2,
    ],
    [['sign', C.bundle], /--key KEY is required/, 2],
    [['sign', C.bundle, '--key', C.pub], /not a readable private key/, 2],
    [['sign', tmp.file('small.img'), '--key', C.key], /bad magic|too short/, 1],
    [['inspect', C.bundle, '--trusted-key', C.key], /not a readable public key|Ed25519/, 2],
  ];
  const bundleBefore = readFileSync(C.bundle);
  for (const [args, pattern, code] of cases) {
    const r = await vmsubst(args);
    assert.is(r.code, code, `${args.join(' ')}: ${r.stderr}`);
    assert.match(r.stderr, pattern, args.join(' '));
  }
  assert.ok(!existsSync(tmp.file('x.vsb')));
  assert.ok(readFileSync(C.bundle).equals(bundleBefore));
  const after = readdirSync(tmp.path).filter((f) => !before.has(f));
  assert.equal(after, ['small.img']);
});

Cli.after(() => tmp.remove());
Cli.run();
