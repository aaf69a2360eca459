/**
 * `vmsubst diff` against what else could compute the change, on a 2 GiB
 * sparse image pair holding about 800 MiB of data, with a cold and a warm
 * page cache:
 *
 *   vmsubst diff     BASE PATCHED -o BUNDLE --no-hints (the images are not ext4)
 *   qemu-img delta   qemu-img create -f qcow2 -b PATCHED -F raw d.qcow2
 *                    + qemu-img rebase -b BASE -F raw d.qcow2 (the changed clusters as a qcow2)
 *   cmp -l           BASE PATCHED | wc -l (every differing byte; into a pipe, see below)
 *   cat              BASE PATCHED > /dev/null (reading both images, holes included)
 *
 * Targets: vmsubst diff no slower than the qemu-img delta in the same run, and
 * within 1.3× of cat. Cold runs drop the page cache first (needs root; listed
 * as skipped otherwise).
 *
 *   BENCH_DIFF_MIB        image size (default 2048)
 *   BENCH_DIFF_DATA_MIB   data in each image (default 800)
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { closeSync, openSync, rmSync, statSync, writeFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { CLI } from '../helpers/paths.js';

/** The shapes of the bench modules' results (test/bench/table.ts on the bench branch). */
export interface DiffBenchTable {
  title: string;
  command: string;
  columns: string[];
  rows: string[][];
  notes?: string[];
}
export interface DiffBenchSection {
  title: string;
  about: string;
  tables: DiffBenchTable[];
  reading?: string[];
}
export interface DiffBenchContext {
  tmp: string;
  runs: number;
  log(msg: string): void;
}

const MiB = 1 << 20;

interface Stats {
  median: number;
  min: number;
  max: number;
}
function stats(xs: number[]): Stats {
  const s = [...xs].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return { median: s.length % 2 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2, min: s[0]!, max: s.at(-1)! };
}
const fmtS = (ms: number): string => `${(ms / 1000).toFixed(2)} s`;
const fmtMs = (ms: number): string => `${Math.round(ms)} ms`;
const fmtStats = (xs: number[]): string => {
  const s = stats(xs);
  return `${fmtS(s.median)} (${fmtS(s.min)} – ${fmtS(s.max)})`;
};

/** A sparse image pair: data in 8 MiB segments spread over the image; the patched one differs in scattered blocks, one segment more and one fewer. */
export function makePair(
  dir: string,
  sizeMiB: number,
  dataMiB: number,
): { base: string; patched: string; changedMiB: number } {
  const base = join(dir, 'bench-base.img');
  const patched = join(dir, 'bench-patched.img');
  const seg = 8 * MiB;
  const nSeg = Math.floor(dataMiB / 8);
  const stride = Math.floor((sizeMiB * MiB) / (nSeg + 1) / seg) * seg;
  const pool = randomBytes(64 * MiB);
  for (const p of [base, patched]) {
    writeFileSync(p, '');
    execFileSync('truncate', ['-s', String(sizeMiB * MiB), p]);
  }
  const fb = openSync(base, 'r+');
  const fp = openSync(patched, 'r+');
  let changed = 0;
  try {
    for (let i = 0; i < nSeg; i++) {
      const at = i * stride;
      const data = pool.subarray((i * 4 * MiB) % (56 * MiB), ((i * 4 * MiB) % (56 * MiB)) + seg);
      if (i !== 1) writeSync(fb, data, 0, seg, at); // segment 1: only in the patched image (a hole before)
      if (i === 2) continue; // segment 2: only in the base image (a hole after)
      const copy = Buffer.from(data);
      if (i % 4 === 0) {
        // Scattered block changes: 16 blocks per fourth segment.
        for (let k = 0; k < 16; k++)
          copy[(((k * 131 + i) * 4096) % seg) + 17] = copy[(((k * 131 + i) * 4096) % seg) + 17]! ^ 0xff;
        changed += 16 * 4096;
      }
      writeSync(fp, copy, 0, seg, at);
    }
  } finally {
    closeSync(fb);
    closeSync(fp);
  }
  return { base, patched, changedMiB: changed / MiB + 16 };
}

function dropCaches(): boolean {
  try {
    execFileSync('sync');
    writeFileSync('/proc/sys/vm/drop_caches', '3\n');
    return true;
  } catch {
    return false;
  }
}

/** Wall time of one command; `onStdout` gets its output. */
function timeCmd(cmd: string, args: string[], onStdout?: (text: string) => void): number {
  const t0 = process.hrtime.bigint();
  const r = spawnSync(cmd, args, { stdio: ['ignore', onStdout ? 'pipe' : 'ignore', 'pipe'], maxBuffer: 16 << 20 });
  const ms = Number(process.hrtime.bigint() - t0) / 1e6;
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} exited ${r.status}: ${r.stderr?.toString() ?? ''}`);
  onStdout?.(r.stdout.toString());
  return ms;
}

export async function runDiffBench(ctx: DiffBenchContext): Promise<DiffBenchSection> {
  const sizeMiB = Number(process.env['BENCH_DIFF_MIB'] ?? 2048);
  const dataMiB = Number(process.env['BENCH_DIFF_DATA_MIB'] ?? 800);
  ctx.log(`diff: making a ${sizeMiB} MiB pair with ${dataMiB} MiB of data`);
  const { base, patched } = makePair(ctx.tmp, sizeMiB, dataMiB);
  const allocated = (p: string): number => (statSync(p).blocks * 512) / MiB;
  const [allocBase, allocPatched] = [allocated(base), allocated(patched)];
  const bundle = join(ctx.tmp, 'bench.vsb');
  const delta = join(ctx.tmp, 'bench-delta.qcow2');
  let lastCompareMs = NaN;
  const compare: { cold: number[]; warm: number[] } = { cold: [], warm: [] };
  const caCerts = (process.env['NODE_EXTRA_CA_CERTS'] ?? '') !== '';
  const tools: { name: string; command: string; run(): number }[] = [
    {
      name: 'vmsubst diff',
      command: `vmsubst diff BASE PATCHED -o BUNDLE --no-hints --json`,
      run: () =>
        timeCmd(
          CLI,
          ['diff', base, patched, '-o', bundle, '--no-hints', '--json'],
          (out) => (lastCompareMs = (JSON.parse(out) as { 'compare-ms': number })['compare-ms']),
        ),
    },
    // What node itself costs to start (every vmsubst time includes it and the module loading), started as the
    // vmsubst executable's #! line starts it: without NODE_EXTRA_CA_CERTS (code-cache.ts, restoreExtraCaCerts).
    {
      name: 'node -e 0',
      command: caCerts ? 'env -u NODE_EXTRA_CA_CERTS node -e 0' : 'node -e 0',
      run: () =>
        caCerts
          ? timeCmd('env', ['-u', 'NODE_EXTRA_CA_CERTS', process.execPath, '-e', '0'])
          : timeCmd(process.execPath, ['-e', '0']),
    },
    // Node plus loading the (bundled) CLI with its code cache: the floor under every vmsubst command.
    {
      name: 'vmsubst start-up',
      command: 'vmsubst --version',
      run: () => timeCmd(CLI, ['--version']),
    },
    // The same plus diff's own modules (evaluated when the command runs), loaded to print its help.
    {
      name: 'vmsubst diff start-up',
      command: 'vmsubst diff --help',
      run: () => timeCmd(CLI, ['diff', '--help']),
    },
    {
      name: 'qemu-img delta',
      command: 'qemu-img create -f qcow2 -b PATCHED -F raw d.qcow2 && qemu-img rebase -b BASE -F raw d.qcow2',
      run: () => {
        rmSync(delta, { force: true });
        return (
          timeCmd('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', patched, '-F', 'raw', delta]) +
          timeCmd('qemu-img', ['rebase', '-b', base, '-F', 'raw', delta])
        );
      },
    },
    // Into a pipe: GNU cmp writing to /dev/null stops at the first difference, like cmp -s.
    {
      name: 'cmp -l',
      command: 'cmp -l BASE PATCHED | wc -l',
      run: () => timeCmd('sh', ['-c', `cmp -l "${base}" "${patched}" | wc -l > /dev/null`]),
    },
    {
      name: 'cat both',
      command: 'cat BASE PATCHED > /dev/null',
      run: () => timeCmd('sh', ['-c', `cat "${base}" "${patched}" > /dev/null`]),
    },
  ];
  const canDrop = dropCaches();
  const times = new Map<string, { cold: number[]; warm: number[] }>(tools.map((t) => [t.name, { cold: [], warm: [] }]));
  for (let run = 0; run < ctx.runs; run++) {
    // Interleaved, so that a change in the machine's load hits every tool alike.
    for (const t of tools) {
      if (canDrop) {
        dropCaches();
        times.get(t.name)!.cold.push(t.run());
        if (t.name === 'vmsubst diff') compare.cold.push(lastCompareMs);
      }
      t.run(); // warms the cache for the next
      times.get(t.name)!.warm.push(t.run());
      if (t.name === 'vmsubst diff') compare.warm.push(lastCompareMs);
      ctx.log(
        `diff: run ${run + 1}/${ctx.runs} ${t.name}: warm ${fmtS(times.get(t.name)!.warm.at(-1)!)}${canDrop ? `, cold ${fmtS(times.get(t.name)!.cold.at(-1)!)}` : ''}`,
      );
    }
  }
  const summary = JSON.parse(
    execFileSync(CLI, ['diff', base, patched, '-o', bundle, '--no-hints', '--json'], {
      encoding: 'utf8',
    }),
  ) as Record<string, number>;
  const med = (name: string, which: 'cold' | 'warm'): number => stats(times.get(name)![which]).median;
  const rows = tools.map((t) => [
    t.name,
    fmtStats(times.get(t.name)!.warm),
    canDrop ? fmtStats(times.get(t.name)!.cold) : 'skipped: cannot drop caches (not root)',
    `\`${t.command}\``,
  ]);
  rows.splice(1, 0, [
    'vmsubst diff: open + compare only',
    fmtStats(compare.warm),
    canDrop ? fmtStats(compare.cold) : '–',
    '`compare-ms` of the same runs (`--json`): without node start-up, module loading and the bundle write',
  ]);
  const ratio = (a: string, b: string, w: 'cold' | 'warm'): string => (med(a, w) / med(b, w)).toFixed(2);
  // A difference of medians below zero is the machine's noise, not a saving: said as such.
  const more = (ms: number): string => (ms >= 0 ? `${fmtMs(ms)} more` : `no more, within the runs' spread`);
  const cmpRatio = (b: string, w: 'cold' | 'warm'): string => (stats(compare[w]).median / med(b, w)).toFixed(2);
  const reading = [
    `warm: vmsubst diff / qemu-img delta = ${ratio('vmsubst diff', 'qemu-img delta', 'warm')} (target ≤ 1), vmsubst diff / cat both = ${ratio('vmsubst diff', 'cat both', 'warm')} (target ≤ 1.3)`,
    ...(canDrop
      ? [
          `cold: vmsubst diff / qemu-img delta = ${ratio('vmsubst diff', 'qemu-img delta', 'cold')}, vmsubst diff / cat both = ${ratio('vmsubst diff', 'cat both', 'cold')}`,
        ]
      : []),
    `the comparison alone (compare-ms): / qemu-img delta = ${cmpRatio('qemu-img delta', 'warm')} warm${canDrop ? `, ${cmpRatio('qemu-img delta', 'cold')} cold` : ''}; / cat both = ${cmpRatio('cat both', 'warm')} warm${canDrop ? `, ${cmpRatio('cat both', 'cold')} cold` : ''}`,
    `without its start-up (vmsubst diff − vmsubst diff --help, warm): / cat both = ${((med('vmsubst diff', 'warm') - med('vmsubst diff start-up', 'warm')) / med('cat both', 'warm')).toFixed(2)}`,
    `start-up, warm: node ${fmtS(med('node -e 0', 'warm'))}; loading the CLI ${more(med('vmsubst start-up', 'warm') - med('node -e 0', 'warm'))} (vmsubst --version: the bundle, compiled from V8's code cache), diff's own modules ${more(med('vmsubst diff start-up', 'warm') - med('vmsubst start-up', 'warm'))} (vmsubst diff --help: a command's modules are evaluated when it runs, diff's without the schemas and ajv)`,
    ...(caCerts
      ? [
          "this machine's environment sets NODE_EXTRA_CA_CERTS, which node reads and parses at every start, before any script runs (about 40 ms here): the vmsubst executable's #! line starts node without it (vmsubst makes no TLS connection; the processes it starts get it back), and the node -e 0 row is started the same way",
        ]
      : []),
    `vmsubst diff read ${(summary['read-bytes']! / MiB).toFixed(0)} MiB of each image (the union of their data), compared in ${summary['compare-ms']} ms of its ${summary['elapsed-ms']} ms (the rest: writing the ${(summary['changed-bytes']! / MiB).toFixed(1)} MiB bundle); node's start-up is in every vmsubst time`,
  ];
  rmSync(base, { force: true });
  rmSync(patched, { force: true });
  rmSync(bundle, { force: true });
  rmSync(delta, { force: true });
  return {
    title: 'Diff: vmsubst diff against a qemu-img delta, cmp and cat',
    about: `A ${sizeMiB} MiB sparse raw pair with ${Math.round(allocBase)} / ${Math.round(allocPatched)} MiB allocated (8 MiB data segments; the patched image has scattered 4 KiB changes, one segment the base lacks and lacks one the base has). Median of ${ctx.runs} runs (min – max); the tools run interleaved. Cold: \`echo 3 > /proc/sys/vm/drop_caches\` before each command.`,
    tables: [
      {
        title: `Time to compute the change (${ctx.runs} runs)`,
        command: 'test/bench/diff.ts',
        columns: ['tool', 'warm', 'cold', 'command'],
        rows,
      },
    ],
    reading,
  };
}

/** The benchmark as the bench modules declare themselves (name, summary, run). */
export const diff = {
  name: 'diff',
  summary: 'vmsubst diff vs qemu-img rebase delta, cmp -l and cat, cold and warm, 2 GiB sparse pair',
  run: runDiffBench,
};
