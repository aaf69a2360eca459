/** `vmsubst export`. */
import { exportOverlay, DEFAULT_CLUSTER_SIZE, type ExportResult } from '../../apply/overlay.js';
import { Bundle } from '../../bundle/index.js';
import { UsageError } from '../../errors.js';
import { formatBytes, plural } from '../format.js';
import { Output, helpRequested, parse, positionals, type Command } from '../common.js';
import type { ExportOutput } from '../output.js';

const HELP = `Usage: vmsubst export BUNDLE --qcow2 OUT --base BASE [--backing NAME | --no-backing]
                      [--cluster-size BYTES] [--json]

Writes the bundle as a qcow2 overlay (a "delta disk"): an image that
allocates exactly the clusters the bundle changes and reads everything else
from its backing file, so OUT over BASE reads identical to the patched image
(check it with 'qemu-img compare OUT PATCHED'). Nothing is written unless
every range of BASE holds the bundle's old content; OUT must not exist.

  --qcow2 OUT          the overlay to write
  --base BASE          the image the bundle was made from (raw or qcow2). Where
                       a cluster is larger than the bundle's blocks, the
                       unchanged part of a changed cluster is copied from here
  --backing NAME       the backing file OUT names (default: BASE; a relative
                       name is relative to OUT's directory, as QEMU reads it).
                       Name the disk the overlay will sit on, e.g. a VM's own
                       clone of the golden image, when it is not BASE
  --no-backing         name no backing file (for blockdev-add with an explicit
                       backing, or qemu-img rebase -u later)
  --cluster-size BYTES qcow2 cluster size, a power of two from 512 to 2M
                       (default ${DEFAULT_CLUSTER_SIZE / 1024}K, QEMU's default; the bundle's block size
                       makes the overlay hold only changed bytes)
  --json               print the result as JSON
`;

function parseSize(text: string): number {
  const m = /^(\d+)([kKmM]?)$/.exec(text);
  if (!m) throw new UsageError(`export: --cluster-size ${text}: expected a number of bytes, optionally with K or M`);
  return Number(m[1]) * (m[2] === '' ? 1 : /k/i.test(m[2]!) ? 1024 : 1 << 20);
}

async function run(args: string[]): Promise<void> {
  const { values, positionals: pos } = parse('export', args, {
    qcow2: { type: 'string' },
    base: { type: 'string' },
    backing: { type: 'string' },
    'no-backing': { type: 'boolean' },
    'cluster-size': { type: 'string' },
  });
  if (helpRequested(HELP, values)) return;
  const [bundlePath] = positionals('export', pos, ['BUNDLE']) as [string];
  if (values.qcow2 === undefined)
    throw new UsageError('export: --qcow2 OUT is required', "see 'vmsubst export --help'");
  if (values.base === undefined)
    throw new UsageError(
      'export: --base BASE is required: it is checked against the bundle and fills partly changed clusters',
      "see 'vmsubst export --help'",
    );
  if (values.backing !== undefined && values['no-backing'])
    throw new UsageError('export: give --backing or --no-backing, not both');
  const clusterSize = values['cluster-size'] === undefined ? undefined : parseSize(values['cluster-size']);

  const o = new Output(values.json === true);
  const bundle = await Bundle.open(bundlePath, { onProgress: (d, t) => o.progress.update('check', d, t) });
  let result: ExportResult;
  try {
    result = await exportOverlay(bundle, values.qcow2, {
      base: values.base,
      ...(values.backing !== undefined ? { backing: values.backing } : {}),
      ...(values['no-backing'] ? { noBacking: true } : {}),
      ...(clusterSize !== undefined ? { clusterSize } : {}),
      onProgress: (phase, d, t) => o.progress.update(phase, d, t),
    });
  } finally {
    await bundle.close();
  }
  o.result<typeof ExportOutput>(
    {
      id: result.id,
      path: result.path,
      'file-size': result.fileSize,
      'cluster-size': result.clusterSize,
      'data-clusters': result.dataClusters,
      'changed-bytes': result.changedBytes,
      'filled-bytes': result.filledBytes,
      backing: result.backing,
    },
    () =>
      [
        `${result.path}: qcow2 overlay, ${plural(result.dataClusters, 'cluster')} of ` +
          `${formatBytes(result.clusterSize)} (${formatBytes(result.changedBytes)} changed, ` +
          `${formatBytes(result.filledBytes)} copied from the base), ${formatBytes(result.fileSize)}`,
        result.backing ? `backing file: ${result.backing.name} (${result.backing.format})` : 'no backing file recorded',
      ].join('\n'),
  );
}

export const exportCommand: Command = { help: HELP, run };
