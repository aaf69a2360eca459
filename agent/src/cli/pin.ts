/**
 * `vmsubst-agent pin FILE…`: pin every process that maps the files privately
 * (substitution/pin.ts) and print the memory this costs per process.
 */
import { parseArgs } from 'node:util';
import { pinFile, type PinReport } from '../substitution/pin.js';

export const PIN_USAGE = `Usage: vmsubst-agent pin [--json] FILE...

Gives each process that maps FILE privately its own copy of the mapped pages (the kernel's
write-fault path; content unchanged), so a later substitution of FILE's blocks leaves it on the
old image. Reports the bytes copied per process. Run it before the host writes the new blocks.
`;

export async function pinCommand(argv: string[], out: (s: string) => void): Promise<number> {
  const { values, positionals } = parseArgs({
    args: argv,
    strict: true,
    allowPositionals: true,
    options: { json: { type: 'boolean' }, help: { type: 'boolean', short: 'h' } },
  });
  if (values.help || positionals.length === 0) {
    out(PIN_USAGE);
    return values.help ? 0 : 2;
  }
  const { KmodDevice } = await import('../native/index.js');
  const device = new KmodDevice();
  const reports: PinReport[] = [];
  try {
    for (const p of positionals) reports.push(await pinFile(device, p));
  } finally {
    device.close();
  }
  const incomplete = reports.some((r) => !r.complete);
  if (values.json) {
    out(JSON.stringify(reports, null, 2) + '\n');
  } else {
    for (const r of reports) {
      out(`${r.path}: ${r['bytes-copied']} bytes copied\n`);
      for (const p of r.processes)
        out(
          `  ${p.comm}[${p.pid}] ${p['bytes-copied']} bytes copied, ${p['bytes-private']} bytes private${p['bytes-failed'] ? `, ${p['bytes-failed']} failed` : ''}${p.exited ? ' (exited)' : ''}\n`,
        );
      for (const s of r['shared-unpinned']) out(`  ${s.comm}[${s.pid}] maps it shared: cannot be pinned\n`);
      for (const n of r['not-pinned'].filter((x) => x.reason === 'not-reached'))
        out(`  ${n.pid ? `${n.comm}[${n.pid}] ` : ''}not pinned: ${n.detail}\n`);
      if (!r.complete) out(`  INCOMPLETE: not every private mapping was reached (${r.mappings} in ${r.calls} calls)\n`);
    }
  }
  return incomplete ? 1 : 0;
}
