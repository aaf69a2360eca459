/** `vmsubst inspect`. */
import {
  Bundle,
  checkManifestSignature,
  requireTrustedSignature,
  type Manifest,
  type SignatureStatus,
} from '../../bundle/index.js';
import { formatBytes, formatPercent, plural, table } from '../format.js';
import { Output, helpRequested, loadPublicKeys, parse, positionals, type Command } from '../common.js';
import type { InspectOutput } from '../output.js';

const HELP = `Usage: vmsubst inspect BUNDLE [--trusted-key PUB]... [--all] [--json]

Checks a bundle (header, manifest, every range's data against its sha256)
and shows its manifest: the base image's identity (size, ext4 filesystems
and their UUIDs), the changed ranges, the changed files each range belongs
to with the ELF verdict of each (code unchanged, or changed and where), the customization and the signature.

  --trusted-key PUB  check the signature with this Ed25519 public key
                     (repeatable); a bundle not validly signed by one of them
                     is refused (exit status 1)
  --all              list every range and file (default: the first 20)
  --json             print the manifest and the checks as JSON
`;

const LIMIT = 20;

async function run(args: string[]): Promise<void> {
  const { values, positionals: pos } = parse('inspect', args, {
    'trusted-key': { type: 'string', multiple: true },
    all: { type: 'boolean' },
  });
  if (helpRequested(HELP, values)) return;
  const [bundlePath] = positionals('inspect', pos, ['BUNDLE']) as [string];
  const trusted = await loadPublicKeys(values['trusted-key'] ?? []);
  const o = new Output(values.json === true);
  const bundle = await Bundle.open(bundlePath, { onProgress: (d, t) => o.progress.update('check', d, t) });
  try {
    const m = bundle.manifest;
    const signature =
      trusted.size > 0 ? requireTrustedSignature(m, trusted, bundlePath) : checkManifestSignature(m, trusted);
    const limit = values.all ? Infinity : LIMIT;
    const json = {
      path: bundlePath,
      'file-size': bundle.fileSize,
      'data-verified': bundle.verified,
      signature,
      manifest: m,
    };
    o.result<typeof InspectOutput>(json, () => human(bundlePath, bundle, m, signature, limit));
  } finally {
    await bundle.close();
  }
}

function signatureText(s: SignatureStatus): string {
  switch (s.status) {
    case 'unsigned':
      return 'none';
    case 'valid':
      return `valid, key ${s.keyId} (trusted)`;
    case 'unverified':
      return `key ${s.keyId}, not verified: ${s.reason}`;
    case 'invalid':
      return `INVALID: ${s.reason}`;
  }
}

function human(path: string, bundle: Bundle, m: Manifest, signature: SignatureStatus, limit: number): string {
  const changed = bundle.dataBytes;
  const files = m.files ?? [];
  const head: string[][] = [
    ['bundle', `${path} (${formatBytes(bundle.fileSize)}), data verified`],
    ['id', m.id],
    ['format', `${m.format}, block size ${m['block-size']}, made by vmsubst ${m['tool-version']} at ${m.created}`],
    [
      'base',
      `${formatBytes(m.base.size)} (${m.base.size} bytes)${m.base.label !== undefined ? `, ${m.base.label}` : ''}`,
    ],
  ];
  for (const [i, f] of (m.base.filesystems ?? []).entries()) {
    const where =
      f.partition !== undefined
        ? `partition ${f.partition} (${f['partition-table']}) at ${f.offset}`
        : `at ${f.offset}`;
    head.push([
      i === 0 ? 'filesystems' : '',
      `#${i} ${f.type} ${f.uuid}${f.label !== undefined ? ` "${f.label}"` : ''}, ${formatBytes(f.size)} ${where}`,
    ]);
  }
  head.push([
    'changes',
    `${plural(m.ranges.length, 'range')}, ${formatBytes(changed)} (${formatPercent(changed, m.base.size)} of the base)`,
  ]);
  if (m.format >= 2) {
    const elf = files.filter((f) => f.elf !== undefined);
    head.push([
      'files',
      files.length === 0
        ? 'no file hints'
        : `${plural(files.length, 'changed file')}; ELF: ` +
          `${elf.filter((f) => f.elf === 'code-unchanged').length} with code unchanged, ` +
          `${elf.filter((f) => f.elf !== 'code-unchanged').length} with code changed`,
    ]);
  }
  if (m.customization) {
    const c = m.customization;
    const parts = [
      ...(c.hostname !== undefined ? [`hostname ${c.hostname}`] : []),
      ...(c.files ? [plural(c.files.length, 'file')] : []),
      ...(c.sysctl ? [plural(Object.keys(c.sysctl).length, 'sysctl value')] : []),
    ];
    head.push(['customize', parts.join(', ') || 'empty']);
  }
  head.push(['signature', signatureText(signature)]);
  const out = [table(head)];
  if (m.ranges.length > 0) {
    const rows = [['offset', 'length', 'old sha256', 'new sha256', 'files']];
    for (const r of m.ranges.slice(0, limit)) {
      const names = (r.files ?? []).map((i) => files[i]?.path ?? `#${i}`);
      const shown = names.length > 3 ? `${names.slice(0, 3).join(', ')} +${names.length - 3}` : names.join(', ');
      rows.push([
        String(r.offset),
        String(r.length),
        r['old-sha256'].slice(0, 16),
        r['new-sha256'].slice(0, 16),
        shown || '-',
      ]);
    }
    const more =
      m.ranges.length > limit ? `\n... ${m.ranges.length - limit} more ranges (--all or --json lists all)` : '';
    out.push(`${table(rows)}${more}`);
  }
  if (files.length > 0) {
    const rows = [['file', 'fs', 'inode', 'ranges', 'ELF code']];
    const counts = new Map<number, number>();
    for (const r of m.ranges) for (const i of r.files ?? []) counts.set(i, (counts.get(i) ?? 0) + 1);
    for (const [i, f] of files.slice(0, limit).entries()) {
      const verdict =
        f.elf === undefined
          ? 'not ELF'
          : f.elf === 'code-unchanged'
            ? 'unchanged'
            : f.elf === 'same-layout'
              ? 'same layout (older vmsubst: code not compared, taken as changed)'
              : `changed: ${f['elf-change'] ?? ''}`.trim();
      rows.push([f.path, String(f.filesystem), String(f.inode), String(counts.get(i) ?? 0), verdict]);
    }
    const more = files.length > limit ? `\n... ${files.length - limit} more files (--all or --json lists all)` : '';
    out.push(`${table(rows)}${more}`);
  }
  return out.join('\n\n');
}

export const inspectCommand: Command = { help: HELP, run };
