/** `vmsubst diff`. */
import { resolve } from 'node:path';
import { writeBundle } from '../../bundle/writer.js';
import type { BaseFilesystem, FileEntry, Manifest } from '@vmsubst/common/bundle/schema';
import { diffSources, openImage, type ImageSource } from '../../diff/index.js';
import { UsageError } from '../../errors.js';
import { baseFilesystems } from '../../hints/partitions.js';
import { formatBytes, formatPercent, plural } from '../format.js';
import { Output, helpRequested, parse, positionals, type Command } from '../common.js';
import type { DiffOutput } from '../output.js';

const HELP = `Usage: vmsubst diff BASE PATCHED -o BUNDLE [--label TEXT] [--no-hints]
                    [--customize FILE] [--json]

Compares two images of the same size (raw or qcow2) in 4 KiB blocks and
writes the changed blocks, with the sha256 of their old and new content, to
BUNDLE. Only where either image holds data is read (holes are skipped).

The manifest records the base image's ext4 and XFS filesystems (UUID, label;
bare or in MBR/GPT partitions) and, when the images are raw and debugfs
(e2fsprogs, for ext4) or xfs_db (xfsprogs, for XFS) is installed, file hints: the files of the patched image each changed
range belongs to, and for each changed ELF file whether its code changed:
code-unchanged when the program headers, every byte of the executable
segments and the tables the loader reads at run time equal the base's
(remapped: running processes fault in the new file), else code-changed
(pinned: they keep the old image). The guest agent picks its policy per
file from them. On XFS only file data is hinted: changed XFS metadata is
named in a note (the agent refuses it), and an XFS in a partition is copied
to a sparse temporary file first (xfs_db reads no offset).

  -o, --output BUNDLE   bundle file to write (replaced atomically)
  --label TEXT          a name for the base image, kept in the manifest
  --no-hints            do not compute file hints
  --customize FILE      JSON customization the guests apply after the blocks
                        (see 'vmsubst notify --help'), kept in the manifest
  --json                print a summary as JSON

Sign the bundle afterwards with 'vmsubst sign BUNDLE --key KEY'.
`;

/** Some filesystem of the base can be read: debugfs for ext4, xfs_db for XFS (the others are noted by computeHints). */
async function toolsFor(filesystems: readonly BaseFilesystem[]): Promise<boolean> {
  const { debugfsAvailable, xfsDbAvailable } = await import('../../hints/index.js');
  if (filesystems.some((f) => f.type === 'ext4') && (await debugfsAvailable())) return true;
  return filesystems.some((f) => f.type === 'xfs') && (await xfsDbAvailable());
}

async function run(args: string[]): Promise<void> {
  const { values, positionals: pos } = parse('diff', args, {
    output: { type: 'string', short: 'o' },
    label: { type: 'string' },
    'no-hints': { type: 'boolean' },
    customize: { type: 'string' },
  });
  if (helpRequested(HELP, values)) return;
  const [basePath, patchedPath] = positionals('diff', pos, ['BASE', 'PATCHED']) as [string, string];
  if (values.output === undefined) throw new UsageError('diff: -o BUNDLE is required', "see 'vmsubst diff --help'");
  const out = values.output;
  if ([basePath, patchedPath].some((p) => resolve(p) === resolve(out))) {
    throw new UsageError('diff: the bundle must not overwrite an input image');
  }
  // Modules that load only when used: the customization schema (and ajv) for
  // --customize, debugfs, xfs_db and the ext4 reader for the file hints.
  const customization =
    values.customize === undefined
      ? undefined
      : await (await import('../customization.js')).loadCustomization(values.customize);
  const o = new Output(values.json === true);
  const started = performance.now();
  const base = await openImage(basePath, 'base');
  let patched: ImageSource | undefined;
  try {
    patched = await openImage(patchedPath, 'patched');
    const diff = await diffSources(base, patched, { onProgress: (d, t) => o.progress.update('compare', d, t) });
    const compareMs = Math.round(performance.now() - started);

    // Base identity and file hints.
    const notes: string[] = [];
    let filesystems: BaseFilesystem[] = await baseFilesystems(base);
    let files: FileEntry[] = [];
    let rangeFiles: number[][] = [];
    let hints: 'computed' | 'off' | 'unavailable' = 'off';
    if (values['no-hints'] !== true && diff.ranges.length > 0) {
      if (filesystems.length === 0) {
        hints = 'unavailable';
        notes.push('no ext4 or XFS filesystem in the base image: no file hints');
      } else if (base.format !== 'raw' || patched.format !== 'raw') {
        hints = 'unavailable';
        notes.push(
          'file hints need raw images (debugfs reads files, not qcow2): convert with `qemu-img convert -O raw`, or ' +
            'pass --no-hints',
        );
      } else if (!(await toolsFor(filesystems))) {
        hints = 'unavailable';
        const tools = new Set(filesystems.map((f) => (f.type === 'xfs' ? 'xfs_db (xfsprogs)' : 'debugfs (e2fsprogs)')));
        notes.push(`${[...tools].join(' and ')} not installed: no file hints`);
      } else {
        o.progress.clear();
        const { computeHints } = await import('../../hints/index.js');
        const h = await computeHints(
          { path: basePath, source: base },
          { path: patchedPath, source: patched },
          diff.ranges,
        );
        ({ filesystems, files, rangeFiles } = h);
        notes.push(...h.notes);
        hints = 'computed';
      }
    }
    const hintsMs = Math.round(performance.now() - started) - compareMs;

    const baseInfo: { size: number; label?: string; filesystems?: BaseFilesystem[] } = { size: diff.size, filesystems };
    if (values.label !== undefined) baseInfo.label = values.label;
    const manifest: Manifest = await writeBundle(
      out,
      {
        base: baseInfo,
        blockSize: diff.blockSize,
        ranges: diff.ranges.map((r, i) => ({ ...r, files: rangeFiles[i] ?? [] })),
        files,
        ...(customization ? { customization } : {}),
      },
      patched,
      { onProgress: (d, t) => o.progress.update('write', d, t), ...(diff.newData ? { newData: diff.newData } : {}) },
    );
    const elapsed = Math.round(performance.now() - started);
    const elf = files.filter((f) => f.elf !== undefined);
    if (!o.json) for (const n of notes) process.stderr.write(`note: ${n}\n`);
    o.result<typeof DiffOutput>(
      {
        bundle: out,
        id: manifest.id,
        'base-size': diff.size,
        'read-bytes': diff.readBytes,
        ranges: diff.ranges.length,
        'changed-bytes': diff.changedBytes,
        filesystems: filesystems.length,
        hints,
        files: files.length,
        'elf-code-unchanged': elf.filter((f) => f.elf === 'code-unchanged').length,
        'elf-code-changed': elf.filter((f) => f.elf !== 'code-unchanged').length,
        notes,
        // Whether the native comparison could be used (two raw files); absent otherwise.
        ...(diff.native ? { native: diff.native } : {}),
        'elapsed-ms': elapsed,
        'compare-ms': compareMs,
        'hints-ms': hintsMs,
      },
      () => {
        if (diff.ranges.length === 0)
          return `${out}: the images are identical; the bundle changes nothing (id ${manifest.id.slice(0, 16)})`;
        const lines = [
          `${out}: ${plural(diff.ranges.length, 'range')}, ${formatBytes(diff.changedBytes)} changed of ` +
            `${formatBytes(diff.size)} (${formatPercent(diff.changedBytes, diff.size)}), id ` +
            `${manifest.id.slice(0, 16)} (${elapsed} ms)`,
          `read ${formatBytes(diff.readBytes)} of each image ` +
            `(${formatPercent(diff.size - diff.readBytes, diff.size)} holes skipped)`,
        ];
        if (hints === 'computed') {
          lines.push(
            `${plural(files.length, 'changed file')} in ${plural(filesystems.length, 'filesystem')}; ELF: ` +
              `${elf.filter((f) => f.elf === 'code-unchanged').length} with code unchanged (remap), ` +
              `${elf.filter((f) => f.elf !== 'code-unchanged').length} with code changed (pin) ('vmsubst inspect' ` +
              `lists them)`,
          );
        }
        return lines.join('\n');
      },
    );
  } finally {
    await patched?.close();
    await base.close();
  }
}

export const diffCommand: Command = { help: HELP, run };
