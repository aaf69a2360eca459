/** `vmsubst diff`. */
import { resolve } from 'node:path';
import { performance } from 'node:perf_hooks';
import { writeBundle, type Manifest } from '../../bundle/index.js';
import { FileSource, diffImages } from '../../diff/index.js';
import { UsageError } from '../../errors.js';
import { formatBytes, formatPercent, plural } from '../format.js';
import { Output, helpRequested, parse, positionals, type Command } from '../common.js';

const HELP = `Usage: vmsubst diff BASE PATCHED -o BUNDLE [--label TEXT] [--json]

Compares two raw images of the same size in 4 KiB blocks and writes the
changed blocks, with the sha256 of their old and new content, to BUNDLE.

  -o, --output BUNDLE   bundle file to write (replaced atomically)
  --label TEXT          a name for the base image, kept in the manifest
  --json                print a summary as JSON
`;

async function run(args: string[]): Promise<void> {
  const { values, positionals: pos } = parse('diff', args, {
    output: { type: 'string', short: 'o' },
    label: { type: 'string' },
  });
  if (helpRequested(HELP, values)) return;
  const [basePath, patchedPath] = positionals('diff', pos, ['BASE', 'PATCHED']) as [string, string];
  if (values.output === undefined) throw new UsageError('diff: -o BUNDLE is required', "see 'vmsubst diff --help'");
  const out = values.output;
  if ([basePath, patchedPath].some((p) => resolve(p) === resolve(out))) {
    throw new UsageError('diff: the bundle must not overwrite an input image');
  }
  const o = new Output(values.json === true);
  const started = performance.now();
  const diff = await diffImages(basePath, patchedPath, { onProgress: (d, t) => o.progress.update('compare', d, t) });
  const patched = await FileSource.open(patchedPath);
  let manifest: Manifest;
  try {
    const base: { size: number; label?: string } = { size: diff.size };
    if (values.label !== undefined) base.label = values.label;
    manifest = await writeBundle(out, { base, blockSize: diff.blockSize, ranges: diff.ranges }, patched, {
      onProgress: (d, t) => o.progress.update('write', d, t),
    });
  } finally {
    await patched.close();
  }
  const elapsed = Math.round(performance.now() - started);
  o.result(
    { bundle: out, id: manifest.id, 'base-size': diff.size, ranges: diff.ranges.length, 'changed-bytes': diff.changedBytes, 'elapsed-ms': elapsed },
    () =>
      diff.ranges.length === 0
        ? `${out}: the images are identical; the bundle changes nothing (id ${manifest.id.slice(0, 16)})`
        : `${out}: ${plural(diff.ranges.length, 'range')}, ${formatBytes(diff.changedBytes)} changed of ${formatBytes(diff.size)} (${formatPercent(diff.changedBytes, diff.size)}), id ${manifest.id.slice(0, 16)} (${elapsed} ms)`,
  );
}

export const diffCommand: Command = { name: 'diff', synopsis: 'diff BASE PATCHED -o BUNDLE', summary: 'compute the changed blocks into a bundle', help: HELP, run };
