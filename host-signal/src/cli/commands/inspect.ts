/** `vmsubst inspect`. */
import { Bundle } from '../../bundle/index.js';
import { formatBytes, formatPercent, plural, table } from '../format.js';
import { Output, helpRequested, parse, positionals, type Command } from '../common.js';

const HELP = `Usage: vmsubst inspect BUNDLE [--json]

Checks a bundle (header, manifest, every range's data against its sha256)
and shows its manifest.

  --json   print the manifest as JSON
`;

async function run(args: string[]): Promise<void> {
  const { values, positionals: pos } = parse('inspect', args, {});
  if (helpRequested(HELP, values)) return;
  const [bundlePath] = positionals('inspect', pos, ['BUNDLE']) as [string];
  const o = new Output(values.json === true);
  const bundle = await Bundle.open(bundlePath, { onProgress: (d, t) => o.progress.update('check', d, t) });
  try {
    const m = bundle.manifest;
    o.result({ path: bundlePath, 'file-size': bundle.fileSize, 'data-verified': bundle.verified, manifest: m }, () => {
      const changed = bundle.dataBytes;
      const head = table([
        ['bundle', `${bundlePath} (${formatBytes(bundle.fileSize)}), data verified`],
        ['id', m.id],
        ['format', `${m.format}, block size ${m['block-size']}, made by vmsubst ${m['tool-version']} at ${m.created}`],
        ['base', `${formatBytes(m.base.size)} (${m.base.size} bytes)${m.base.label !== undefined ? `, ${m.base.label}` : ''}`],
        ['changes', `${plural(m.ranges.length, 'range')}, ${formatBytes(changed)} (${formatPercent(changed, m.base.size)} of the base)`],
      ]);
      if (m.ranges.length === 0) return head;
      const limit = 20;
      const rows = [['offset', 'length', 'old sha256', 'new sha256']];
      for (const r of m.ranges.slice(0, limit)) {
        rows.push([String(r.offset), String(r.length), r['old-sha256'].slice(0, 16), r['new-sha256'].slice(0, 16)]);
      }
      const more = m.ranges.length > limit ? `\n... ${m.ranges.length - limit} more (--json lists all)` : '';
      return `${head}\n\n${table(rows)}${more}`;
    });
  } finally {
    await bundle.close();
  }
}

export const inspectCommand: Command = { name: 'inspect', synopsis: 'inspect BUNDLE', summary: 'verify a bundle and show what it changes', help: HELP, run };
