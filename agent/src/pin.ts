/**
 * `vmsubst-agent pin FILE…`: give every process that maps the files privately
 * its own copy of the mapped pages, while the disk still holds the old blocks,
 * so that it keeps running a consistent old image after a substitution while
 * new execs get the new file. Prints the memory this costs per process.
 * The `prepare` phase of a two-phase substitution does the same for the
 * processes whose policy is `pin`.
 */
import { open } from 'node:fs/promises';
import { parseArgs } from 'node:util';

export const PIN_USAGE = `Usage: vmsubst-agent pin [--json] FILE...

Gives each process that maps FILE privately its own copy of the mapped pages (the kernel's
write-fault path; content unchanged), so a later substitution of FILE's blocks leaves it on the
old image. Reports the bytes copied per process. Run it before the host writes the new blocks.
`;

/** Pages copied per ioctl call; the loop continues while the module reports more work. */
const PAGES_PER_CALL = 4096;
/** A bound on calls per file, so a file mapped by ever more processes cannot keep us here. */
const MAX_CALLS = 1024;

export interface PinReport {
  path: string;
  processes: { pid: number; comm: string; 'bytes-copied': number; 'bytes-private': number; 'bytes-failed': number; exited: boolean }[];
  'bytes-copied': number;
  'shared-unpinned': { pid: number; comm: string }[];
}

type Native = typeof import('./native/index.js');

export async function pinFile(native: Native, path: string): Promise<PinReport> {
  const fh = await open(path, 'r');
  try {
    const size = BigInt((await fh.stat()).size);
    const procs = new Map<number, PinReport['processes'][number]>();
    const shared = new Map<number, string>();
    let copied = 0;
    for (let call = 0; call < MAX_CALLS; call++) {
      const r = await native.pinMappers(fh.fd, 0n, size > 0n ? size : 1n, PAGES_PER_CALL);
      copied += Number(r.bytesCopied);
      for (const p of r.pinned) {
        const e = procs.get(p.pid) ?? { pid: p.pid, comm: p.comm, 'bytes-copied': 0, 'bytes-private': 0, 'bytes-failed': 0, exited: false };
        e['bytes-copied'] += Number(p.bytesCopied);
        e['bytes-private'] = Math.max(e['bytes-private'], Number(p.bytesPrivate));
        e['bytes-failed'] += Number(p.bytesFailed);
        e.exited ||= p.exited;
        procs.set(p.pid, e);
      }
      for (const m of r.unpinned) shared.set(m.pid, m.comm);
      if (!r.budgetExhausted && !r.truncated) break;
    }
    return {
      path,
      processes: [...procs.values()],
      'bytes-copied': copied,
      'shared-unpinned': [...shared].map(([pid, comm]) => ({ pid, comm })),
    };
  } finally {
    await fh.close();
  }
}

export async function pinCommand(argv: string[], out: (s: string) => void): Promise<number> {
  const { values, positionals } = parseArgs({ args: argv, strict: true, allowPositionals: true, options: { json: { type: 'boolean' }, help: { type: 'boolean', short: 'h' } } });
  if (values.help || positionals.length === 0) {
    out(PIN_USAGE);
    return values.help ? 0 : 2;
  }
  const native = await import('./native/index.js');
  const reports: PinReport[] = [];
  for (const p of positionals) reports.push(await pinFile(native, p));
  if (values.json) {
    out(JSON.stringify(reports, null, 2) + '\n');
  } else {
    for (const r of reports) {
      out(`${r.path}: ${r['bytes-copied']} bytes copied\n`);
      for (const p of r.processes) out(`  ${p.comm}[${p.pid}] ${p['bytes-copied']} bytes copied, ${p['bytes-private']} bytes private${p['bytes-failed'] ? `, ${p['bytes-failed']} failed` : ''}${p.exited ? ' (exited)' : ''}\n`);
      for (const s of r['shared-unpinned']) out(`  ${s.comm}[${s.pid}] maps it shared: cannot be pinned\n`);
    }
  }
  return 0;
}
