import { readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { validateRequest } from '@vmsubst/common/protocol/codec';
import {
  BUNDLE_FORMAT,
  Bundle,
  DATA_ALIGN,
  HEADER_BYTES,
  canonicalJson,
  encodeHeader,
  manifestId,
  substituteArgs,
  writeBundle,
  type Manifest,
} from '../../../../host-signal/src/bundle/index.js';
import { bufferSource, diffSources } from '../../../../host-signal/src/diff/index.js';
import { BundleError, DiffError } from '../../../../host-signal/src/errors.js';
import { KiB, MiB, TempDir, image, patch } from '../fixtures.js';

const B = 4 * KiB;
const tmp = new TempDir();
let n = 0;

/** A bundle on disk from a base image and edits; returns its path and the images. */
async function makeBundle(edits: [number, number][], size = 1 * MiB, label?: string) {
  const base = image(size);
  const patched = patch(base, edits);
  const d = await diffSources(bufferSource(base), bufferSource(patched));
  const path = tmp.file(`b${++n}.vsb`);
  const manifest = await writeBundle(
    path,
    { base: label ? { size, label } : { size }, blockSize: d.blockSize, ranges: d.ranges },
    bufferSource(patched),
  );
  return { path, base, patched, manifest };
}

/** Reads a bundle file's manifest and each range's data. */
function dissect(path: string): { manifest: Manifest; data: Buffer[] } {
  const file = readFileSync(path);
  const len = file.readUInt32BE(12);
  const manifest = JSON.parse(file.subarray(HEADER_BYTES, HEADER_BYTES + len).toString()) as Manifest;
  const data = manifest.ranges.map((r) => file.subarray(r['data-offset'], r['data-offset'] + r.length));
  return { manifest, data };
}

/**
 * Rewrites a bundle after `mutate` edits its manifest (as plain JSON). The id is
 * recomputed and the data laid out afresh unless told otherwise, so a test
 * breaks exactly one thing.
 */
function rewrite(
  path: string,
  mutate: (m: Record<string, any>) => void,
  opts: { keepId?: boolean; keepOffsets?: boolean } = {},
): void {
  const { manifest, data } = dissect(path);
  const m = structuredClone(manifest) as Record<string, any>;
  mutate(m);
  let start = DATA_ALIGN;
  let bytes: Buffer;
  for (;;) {
    if (!opts.keepOffsets) {
      let cursor = start;
      for (const r of m['ranges'] as { length: number; 'data-offset': number }[]) {
        r['data-offset'] = cursor;
        cursor = Math.ceil((cursor + r.length) / DATA_ALIGN) * DATA_ALIGN;
      }
    }
    if (!opts.keepId) m['id'] = manifestId(m as Manifest);
    bytes = Buffer.from(canonicalJson(m));
    const need = Math.ceil((HEADER_BYTES + bytes.length) / DATA_ALIGN) * DATA_ALIGN;
    if (need <= start || opts.keepOffsets) break;
    start = need;
  }
  const ranges = m['ranges'] as { length: number; 'data-offset': number }[];
  const dataStart = Math.ceil((HEADER_BYTES + bytes.length) / DATA_ALIGN) * DATA_ALIGN;
  // Data is placed only where it fits the file sensibly; the reader must catch the rest.
  const placed = ranges.flatMap((r, i) =>
    data[i] && r['data-offset'] >= dataStart && r['data-offset'] < 1 << 30 ? [{ r, d: data[i]! }] : [],
  );
  const end = Math.max(dataStart, ...placed.map(({ r }) => r['data-offset'] + r.length));
  const out = Buffer.alloc(end);
  encodeHeader(bytes.length).copy(out, 0);
  bytes.copy(out, HEADER_BYTES);
  for (const { r, d } of placed) d.subarray(0, r.length).copy(out, r['data-offset']);
  writeFileSync(path, out);
}

async function refused(path: string, pattern: RegExp): Promise<BundleError> {
  const err = await Bundle.open(path).catch((e: unknown) => e);
  assert.instance(err, BundleError, `expected a BundleError, got ${String(err)}`);
  assert.match((err as Error).message, pattern);
  assert.is((err as BundleError).code, 'E_VMSUBST_BUNDLE');
  return err as BundleError;
}

const RoundTrip = suite('bundle: round trip');

RoundTrip('a written bundle opens with the same manifest and data', async () => {
  const { path, patched, manifest } = await makeBundle(
    [
      [B, 1],
      [10 * B, 3 * B],
    ],
    1 * MiB,
    'golden-2026-11',
  );
  const bundle = await Bundle.open(path);
  try {
    assert.ok(bundle.verified);
    assert.equal(bundle.manifest, manifest);
    assert.is(bundle.manifest.format, BUNDLE_FORMAT);
    assert.is(bundle.manifest['block-size'], B);
    assert.equal(bundle.manifest.base, { size: 1 * MiB, label: 'golden-2026-11' });
    assert.equal(
      bundle.manifest.ranges.map((r) => [r.offset, r.length]),
      [
        [B, B],
        [10 * B, 3 * B],
      ],
    );
    for (const r of bundle.manifest.ranges) {
      assert.ok((await bundle.readData(r)).equals(patched.subarray(r.offset, r.offset + r.length)));
      assert.is(r['data-offset'] % DATA_ALIGN, 0);
    }
    assert.is(bundle.dataBytes, 4 * B);
  } finally {
    await bundle.close();
  }
});

RoundTrip('the id is the sha256 of the canonical manifest without id', async () => {
  const { manifest } = await makeBundle([[0, 1]]);
  assert.match(manifest.id, /^[0-9a-f]{64}$/);
  assert.is(manifestId(manifest), manifest.id);
  const { id: _id, ...body } = manifest;
  assert.is.not(manifestId({ ...body, created: '2000-01-01T00:00:00.000Z' }), manifest.id);
});

RoundTrip('the file starts with the magic, the version and the manifest length', async () => {
  const { path } = await makeBundle([[0, 1]]);
  const file = readFileSync(path);
  assert.is(file.subarray(0, 8).toString('latin1'), 'VMSUBST\0');
  assert.is(file.readUInt32BE(8), BUNDLE_FORMAT);
  const len = file.readUInt32BE(12);
  assert.ok(JSON.parse(file.subarray(16, 16 + len).toString()));
});

RoundTrip('identical images give a bundle with no ranges', async () => {
  const { path } = await makeBundle([]);
  const bundle = await Bundle.open(path);
  assert.is(bundle.manifest.ranges.length, 0);
  assert.is(bundle.fileSize, DATA_ALIGN);
  await bundle.close();
});

RoundTrip('no temporary file is left behind', async () => {
  await makeBundle([[0, 1]]);
  assert.ok(readdirSync(tmp.path).every((f) => !f.endsWith('.tmp')));
});

RoundTrip('a patched image that changes while the bundle is written is refused and nothing is left', async () => {
  const base = image(1 * MiB);
  const patched = patch(base, [[0, 1]]);
  const d = await diffSources(bufferSource(base), bufferSource(patched));
  patched[5] = patched[5]! ^ 1;
  const path = tmp.file('changed.vsb');
  const err = await writeBundle(
    path,
    { base: { size: 1 * MiB }, blockSize: B, ranges: d.ranges },
    bufferSource(patched),
  ).catch((e: unknown) => e);
  assert.instance(err, DiffError);
  assert.match((err as Error).message, /changed while the bundle was written/);
  assert.not.ok(readdirSync(tmp.path).some((f) => f.includes('changed.vsb')));
});

const Refused = suite('bundle: refused');

Refused('corrupt range data is refused before anything is written', async () => {
  const { path, manifest } = await makeBundle([
    [B, 1],
    [20 * B, 1],
  ]);
  const file = readFileSync(path);
  const at = manifest.ranges[1]!['data-offset'] + 7;
  file[at] = file[at]! ^ 0xff;
  writeFileSync(path, file);
  const err = await refused(path, /corrupt data/);
  assert.match(err.message, /\/ranges\/1: data does not match new-sha256/);
});

Refused('corrupt data passes an open without verification, which is marked unverified', async () => {
  const { path, manifest } = await makeBundle([[B, 1]]);
  const file = readFileSync(path);
  const at = manifest.ranges[0]!['data-offset'];
  file[at] = file[at]! ^ 0xff;
  writeFileSync(path, file);
  const bundle = await Bundle.open(path, { verifyData: false });
  assert.not.ok(bundle.verified);
  await bundle.close();
});

Refused('an unknown top-level manifest field is refused', async () => {
  const { path } = await makeBundle([[B, 1]]);
  rewrite(path, (m) => (m['signatures'] = 'x'));
  await refused(path, /invalid manifest.*unknown field 'signatures'/);
});

Refused('an unknown field in a range is refused', async () => {
  const { path } = await makeBundle([[B, 1]]);
  rewrite(path, (m) => (m['ranges'][0]['file'] = '/bin/sh'));
  await refused(path, /\/ranges\/0: unknown field 'file'/);
});

Refused('a manifest whose id does not match its content is refused', async () => {
  const { path } = await makeBundle([[B, 1]]);
  rewrite(path, (m) => (m['base']['label'] = 'tampered'), { keepId: true });
  await refused(path, /\/id: does not match/);
});

Refused('a range beyond the base image is refused', async () => {
  const { path } = await makeBundle([[B, 1]]);
  rewrite(path, (m) => (m['base']['size'] = B));
  await refused(path, /\/ranges\/0: ends at 8192, beyond the base image's 4096 bytes/);
});

Refused('a data offset beyond the end of the file is refused', async () => {
  const { path } = await makeBundle([[B, 1]]);
  rewrite(path, (m) => (m['ranges'][0]['data-offset'] = 1 << 30), { keepOffsets: true });
  await refused(path, /data-offset: data ends at \d+, beyond the end of the file/);
});

Refused('data overlapping the manifest is refused', async () => {
  const { path } = await makeBundle([[B, 1]]);
  rewrite(path, (m) => (m['ranges'][0]['data-offset'] = 0), { keepOffsets: true });
  await refused(path, /overlaps the manifest/);
});

Refused('overlapping ranges are refused', async () => {
  const { path } = await makeBundle([
    [B, 1],
    [3 * B, 1],
  ]);
  rewrite(path, (m) => {
    m['ranges'][1]['offset'] = 0;
    m['ranges'][1]['length'] = 2 * B;
  });
  await refused(path, /\/ranges\/1: overlaps or precedes the previous range/);
});

Refused('unsorted ranges are refused', async () => {
  const { path } = await makeBundle([
    [B, 1],
    [3 * B, 1],
  ]);
  rewrite(path, (m) => (m['ranges'] = [m['ranges'][1], m['ranges'][0]]));
  await refused(path, /sorted/);
});

Refused('a bad magic is refused', async () => {
  const { path } = await makeBundle([[B, 1]]);
  const file = readFileSync(path);
  file.write('NOTVMSUB', 0, 'latin1');
  writeFileSync(path, file);
  await refused(path, /bad magic/);
});

Refused('an unsupported format version is refused', async () => {
  const { path } = await makeBundle([[B, 1]]);
  const file = readFileSync(path);
  file.writeUInt32BE(4, 8);
  writeFileSync(path, file);
  await refused(path, /unsupported bundle format version 4/);
});

Refused('a truncated bundle is refused', async () => {
  const { path } = await makeBundle([[B, 1]]);
  const file = readFileSync(path);
  writeFileSync(path, file.subarray(0, file.length - 1));
  await refused(path, /beyond the end of the file/);
});

Refused('what a host crash can leave of a bundle written without fsync is refused', async () => {
  // writeBundle does not fsync (bundle/writer.ts): empty, cut anywhere, or full length with data never written back.
  const { path } = await makeBundle([
    [B, 2],
    [40, 1],
  ]);
  const whole = readFileSync(path);
  writeFileSync(path, Buffer.alloc(0));
  await refused(path, /./);
  for (const cut of [HEADER_BYTES - 3, HEADER_BYTES + 10, whole.length - 4096]) {
    writeFileSync(path, whole.subarray(0, cut));
    await refused(path, /./);
  }
  const zeroed = Buffer.from(whole);
  zeroed.fill(0, whole.length - 4096);
  writeFileSync(path, zeroed);
  await refused(path, /does not match new-sha256/);
});

Refused('trailing bytes after the data are refused', async () => {
  const { path } = await makeBundle([[B, 1]]);
  writeFileSync(path, Buffer.concat([readFileSync(path), Buffer.alloc(1)]));
  await refused(path, /its data ends at/);
});

Refused('a manifest that is not JSON is refused', async () => {
  const { path } = await makeBundle([[B, 1]]);
  const file = readFileSync(path);
  file[HEADER_BYTES] = 0x5c; // the opening '{' becomes a backslash
  writeFileSync(path, file);
  await refused(path, /not JSON/);
});

const Args = suite('bundle: substituteArgs');
Args.after(() => tmp.remove()); // the last suite of this file

Args('builds valid protocol arguments from the manifest', async () => {
  const { manifest } = await makeBundle([
    [B, 1],
    [10 * B, 2 * B],
  ]);
  const args = substituteArgs(manifest, { serial: 'vmsubst-data' });
  assert.equal(args, {
    id: manifest.id,
    disk: { serial: 'vmsubst-data' },
    ranges: manifest.ranges.map((r) => ({ offset: r.offset, length: r.length, sha256: r['new-sha256'] })),
  });
  assert.equal(validateRequest.problems({ execute: 'substitute', arguments: args, id: 1 }), []);
});

Args('carries dry-run when asked', async () => {
  const { manifest } = await makeBundle([[B, 1]]);
  assert.is(substituteArgs(manifest, {}, { dryRun: true })['dry-run'], true);
});

Args('refuses a bundle without ranges', async () => {
  const { manifest } = await makeBundle([]);
  assert.throws(
    () => substituteArgs(manifest, {}),
    (e: unknown) => e instanceof BundleError && /nothing to notify/.test(e.message),
  );
});

Args('refuses a disk path the protocol does not accept', async () => {
  const { manifest } = await makeBundle([[B, 1]]);
  assert.throws(
    () => substituteArgs(manifest, { path: 'vdb' }),
    (e: unknown) => e instanceof BundleError && /\/disk\/path/.test(e.message),
  );
});

RoundTrip.run();
Refused.run();
Args.run();
