/**
 * Manifest signatures, format compatibility and the hints a bundle hands to
 * the agent.
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { generateKeyPairSync } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { keyId } from '@vmsubst/common/protocol/signature';
import { validateRequest } from '@vmsubst/common/protocol/codec';
import {
  BUNDLE_FORMAT,
  Bundle,
  HEADER_BYTES,
  canonicalJson,
  checkManifestSignature,
  encodeHeader,
  fileHints,
  manifestId,
  manifestProblems,
  olderAgentArgs,
  requireTrustedSignature,
  signBundle,
  substituteArgs,
  writeBundle,
  type Manifest,
} from '../../../../host-signal/src/bundle/index.js';
import { bufferSource, diffSources } from '../../../../host-signal/src/diff/index.js';
import { BundleError } from '../../../../host-signal/src/errors.js';
import { MiB, TempDir, image, patch, writeFormat1Bundle } from '../fixtures.js';

const tmp = new TempDir();
const keys = generateKeyPairSync('ed25519');
const other = generateKeyPairSync('ed25519');
const trusted = new Map([[keyId(keys.publicKey), keys.publicKey]]);
let n = 0;

async function bundle(extra: { hints?: boolean; older?: boolean } = {}): Promise<{ path: string; manifest: Manifest }> {
  const base = image(MiB);
  const patched = patch(base, [
    [4096, 10],
    [409600, 8192],
  ]);
  const d = await diffSources(bufferSource(base), bufferSource(patched));
  const path = tmp.file(`s${++n}.vsb`);
  const files = extra.hints
    ? [
        {
          path: '/usr/bin/tool',
          filesystem: 0,
          inode: 12,
          elf: extra.older ? ('same-layout' as const) : ('code-unchanged' as const),
        },
        {
          path: '/usr/lib/libx.so',
          filesystem: 0,
          inode: 13,
          elf: extra.older ? ('new-layout' as const) : ('code-changed' as const),
          'elf-change': 'executable segment …',
        },
        { path: '/etc/conf', filesystem: 0, inode: 14 },
      ]
    : [];
  const manifest = await writeBundle(
    path,
    {
      base: {
        size: d.size,
        ...(extra.hints
          ? {
              filesystems: [
                {
                  type: 'ext4' as const,
                  offset: 0,
                  size: d.size,
                  'block-size': 4096,
                  uuid: '6b1f3c1e-0000-4000-8000-00000000b002',
                },
              ],
            }
          : {}),
      },
      blockSize: d.blockSize,
      ranges: d.ranges.map((r, i) => ({ ...r, files: extra.hints ? (i === 0 ? [0, 2] : [1]) : [] })),
      files,
    },
    bufferSource(patched),
  );
  return { path, manifest };
}

/** Rewrites the manifest in place (same length class), keeping the data offsets. */
function editManifest(path: string, edit: (m: Record<string, unknown>) => void): void {
  const file = readFileSync(path);
  const len = file.readUInt32BE(12);
  const m = JSON.parse(file.subarray(HEADER_BYTES, HEADER_BYTES + len).toString()) as Record<string, unknown>;
  edit(m);
  const bytes = Buffer.from(canonicalJson(m));
  const out = Buffer.from(file);
  out.fill(0, 0, (m['ranges'] as { 'data-offset': number }[])[0]!['data-offset']);
  encodeHeader(bytes.length, m['format'] as number).copy(out, 0);
  bytes.copy(out, HEADER_BYTES);
  writeFileSync(path, out);
}

const Sign = suite('bundle: signature');

Sign('signing keeps the id and the data offsets; the signature verifies with the public key', async () => {
  const { path, manifest } = await bundle();
  const before = readFileSync(path);
  const { manifest: signed, previousId, moved } = await signBundle(path, keys.privateKey);
  assert.is(signed.id, manifest.id);
  assert.is(previousId, manifest.id);
  assert.is(moved, false);
  const after = readFileSync(path);
  assert.is(after.length, before.length);
  const first = manifest.ranges[0]!['data-offset'];
  assert.ok(after.subarray(first).equals(before.subarray(first)), 'data untouched');
  const b = await Bundle.open(path);
  try {
    assert.equal(checkManifestSignature(b.manifest, trusted), { status: 'valid', keyId: keyId(keys.publicKey) });
    assert.is(checkManifestSignature(b.manifest, new Map()).status, 'unverified');
    assert.is(
      checkManifestSignature(b.manifest, new Map([[keyId(other.publicKey), other.publicKey]])).status,
      'unverified',
    );
  } finally {
    await b.close();
  }
});

Sign('an altered manifest (id recomputed) no longer verifies and is refused', async () => {
  const { path } = await bundle();
  await signBundle(path, keys.privateKey);
  editManifest(path, (m) => {
    (m['base'] as Record<string, unknown>)['label'] = 'forged';
    m['id'] = manifestId(m as unknown as Manifest);
  });
  const b = await Bundle.open(path);
  try {
    const v = checkManifestSignature(b.manifest, trusted);
    assert.is(v.status, 'invalid');
    assert.throws(
      () => requireTrustedSignature(b.manifest, trusted, path),
      (e: unknown) => e instanceof BundleError && /altered/.test(e.message),
    );
  } finally {
    await b.close();
  }
});

Sign('an altered manifest without a recomputed id is refused when opened', async () => {
  const { path } = await bundle();
  await signBundle(path, keys.privateKey);
  editManifest(path, (m) => ((m['base'] as Record<string, unknown>)['label'] = 'forged'));
  const err = await Bundle.open(path).catch((e: unknown) => e);
  assert.instance(err, BundleError);
  assert.match((err as Error).message, /\/id: does not match/);
});

Sign('an unsigned bundle is refused when a trusted key is required, accepted otherwise', async () => {
  const { path } = await bundle();
  const b = await Bundle.open(path);
  try {
    assert.equal(checkManifestSignature(b.manifest, trusted), { status: 'unsigned' });
    assert.throws(() => requireTrustedSignature(b.manifest, trusted, path), /not signed/);
    assert.equal(requireTrustedSignature(b.manifest, new Map(), path), { status: 'unsigned' });
  } finally {
    await b.close();
  }
});

Sign('signing twice replaces the signature; -o leaves the original alone', async () => {
  const { path } = await bundle();
  const out = tmp.file('signed-copy.vsb');
  const original = readFileSync(path);
  await signBundle(path, keys.privateKey, out);
  assert.ok(readFileSync(path).equals(original));
  const { manifest } = await signBundle(out, other.privateKey);
  assert.is(manifest.signature!['key-id'], keyId(other.publicKey));
  const b = await Bundle.open(out);
  await b.close();
});

Sign('a corrupt bundle is not signed and nothing is written', async () => {
  const { path, manifest } = await bundle();
  const file = readFileSync(path);
  file[manifest.ranges[0]!['data-offset']] = file[manifest.ranges[0]!['data-offset']]! ^ 0xff;
  writeFileSync(path, file);
  const out = tmp.file('never.vsb');
  const err = await signBundle(path, keys.privateKey, out).catch((e: unknown) => e);
  assert.instance(err, BundleError);
  assert.ok(readFileSync(path).equals(file));
  assert.throws(() => readFileSync(out));
});

Sign.run();

const Compat = suite('bundle: format 1 compatibility');

Compat('a format 1 bundle opens, and signing it makes it format 2', async () => {
  const base = image(MiB);
  const patched = patch(base, [[8192, 100]]);
  const path = tmp.file('old.vsb');
  const id = await writeFormat1Bundle(path, base, patched);
  const b = await Bundle.open(path);
  assert.is(b.manifest.format, 1);
  assert.is(b.manifest.id, id);
  assert.equal(fileHints(b.manifest), []);
  await b.close();
  const { manifest, previousId } = await signBundle(path, keys.privateKey);
  assert.is(previousId, id);
  assert.is(manifest.format, BUNDLE_FORMAT);
  assert.is.not(manifest.id, id);
  const again = await Bundle.open(path);
  try {
    assert.is(checkManifestSignature(again.manifest, trusted).status, 'valid');
    assert.ok((await again.readData(again.manifest.ranges[0]!)).equals(patched.subarray(8192, 12288)));
  } finally {
    await again.close();
  }
});

Compat('format 2 fields in a format 1 manifest are refused', async () => {
  const base = image(MiB);
  const path = tmp.file('old2.vsb');
  await writeFormat1Bundle(path, base, patch(base, [[0, 1]]));
  editManifest(path, (m) => {
    m['files'] = [];
    m['id'] = manifestId(m as unknown as Manifest);
  });
  const err = await Bundle.open(path).catch((e: unknown) => e);
  assert.instance(err, BundleError);
  assert.match((err as Error).message, /\/files: not part of format 1/);
});

Compat('a range pointing past the files list is refused', async () => {
  const { path } = await bundle({ hints: true });
  editManifest(path, (m) => {
    (m['ranges'] as { files?: number[] }[])[0]!.files = [7];
    m['id'] = manifestId(m as unknown as Manifest);
  });
  const err = await Bundle.open(path).catch((e: unknown) => e);
  assert.match((err as Error).message, /\/ranges\/0\/files: index 7, but the manifest lists 3 files/);
});

Compat.run();

const Args = suite('bundle: hints to the agent');

Args('substituteArgs carries one hint per changed file, valid for the protocol', async () => {
  const { manifest } = await bundle({ hints: true });
  const args = substituteArgs(manifest, { serial: 'vmsubst-data' });
  assert.equal(args.hints, [
    { path: '/usr/bin/tool', elf: 'code-unchanged' },
    { path: '/usr/lib/libx.so', elf: 'code-changed' },
    { path: '/etc/conf' },
  ]);
  assert.ok(validateRequest.is({ execute: 'substitute', arguments: args, id: 1 }));
});

Args("an older vmsubst's verdicts (same-layout, new-layout: code not compared) are sent as code-changed", async () => {
  const { manifest } = await bundle({ hints: true, older: true });
  assert.equal(substituteArgs(manifest, { serial: 'vmsubst-data' }).hints, [
    { path: '/usr/bin/tool', elf: 'code-changed' },
    { path: '/usr/lib/libx.so', elf: 'code-changed' },
    { path: '/etc/conf' },
  ]);
});

Args(
  'an agent without "elf-code" gets the older names: code-unchanged → same-layout (remapped there), code-changed → new-layout',
  async () => {
    const { manifest } = await bundle({ hints: true });
    const args = substituteArgs(
      manifest,
      { serial: 'vmsubst-data' },
      { policies: { 'elf-code-changed': 'restart', 'elf-code-unchanged': 'pin', data: 'report' } },
    );
    const older = olderAgentArgs(args);
    assert.equal(older.hints, [
      { path: '/usr/bin/tool', elf: 'same-layout' },
      { path: '/usr/lib/libx.so', elf: 'new-layout' },
      { path: '/etc/conf' },
    ]);
    assert.equal(older.policies, { data: 'report', 'elf-same-layout': 'pin', 'elf-new-layout': 'restart' });
    assert.ok(validateRequest.is({ execute: 'substitute', arguments: older, id: 1 }));
  },
);

Args('a format 2 manifest holding a format 3 verdict is refused', async () => {
  const { manifest } = await bundle({ hints: true });
  const m = { ...manifest, format: 2 } as Manifest;
  const problems = manifestProblems({ ...m, id: manifestId(m) }, { size: Number.MAX_SAFE_INTEGER, dataStart: 0 });
  assert.ok(
    problems.some((p) => /\/files\/0\/elf: code-unchanged is not part of format 2/.test(p)),
    problems.join('; '),
  );
});

Args('a bundle without hints sends none; its customization travels unless one is given', async () => {
  const { manifest } = await bundle();
  assert.is(substituteArgs(manifest, {}).hints, undefined);
  const withCustom = { ...manifest, customization: { hostname: 'from-bundle' } } as Manifest;
  assert.equal(substituteArgs(withCustom, {}).customization, { hostname: 'from-bundle' });
  assert.equal(substituteArgs(withCustom, {}, { customization: { hostname: 'given' } }).customization, {
    hostname: 'given',
  });
});

Args.after(() => tmp.remove());
Args.run();
