/**
 * Cost curves of the guest side: the module's invalidation time against the
 * cached pages of a file, against the processes mapping it, and against the
 * number of files in one substitution. A harness in the guest
 * (test/bench/guest-curve.mjs) makes the agent's per-file calls (open,
 * VMSUBST_IOC_INVALIDATE_RANGE through the addon, close) and times them.
 *
 *   BENCH_CURVE_MAX_MIB   largest cached file (default 1024)
 *   BENCH_CURVE_FILES     largest number of files (default 1000; 10000 takes ~10 min under TCG)
 *   BENCH_CURVE_PROCS     largest number of mapping processes (default 256)
 *   BENCH_CURVE_IDLE      largest number of idle processes (default 1000)
 */
import { execFileSync } from 'node:child_process';
import { copyFileSync, mkdirSync, writeFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { ROOT } from '../helpers/paths.js';
import { bootGuest, buildVolume } from './guest.js';
import { fmtMs, fmtStatsMs, stats, type Benchmark, type Plot, type Section, type Table } from './table.js';

const geometric = (from: number, to: number, factor: number): number[] => {
  const xs: number[] = [];
  for (let x = from; x <= to; x *= factor) xs.push(x);
  if (xs[xs.length - 1] !== to) xs.push(to);
  return xs;
};

interface Inval {
  ms: number;
  cached: number;
  dropped: number;
  mapped: number;
  kept: number;
}

function parse<T>(out: string): T[] {
  return out
    .split('\n')
    .filter((l) => l.startsWith('CURVE '))
    .map((l) => JSON.parse(l.slice(6)) as T);
}

/** The two report-capacity settings of the files curve, as the table names them. */
const MAX_CAPS = "maximum (the addon's default)";
const AGENT_CAPS = 'none, file by file (as the agent called it)';
const BATCH = 'none, one batch call for all files (as the agent calls it)';

export const curves: Benchmark = {
  name: 'curves',
  summary: 'guest cost curves: invalidation vs cached pages, vs mapping processes, vs files per substitution',
  async run(ctx): Promise<Section> {
    const maxMiB = Number(process.env['BENCH_CURVE_MAX_MIB'] ?? 1024);
    const maxFiles = Number(process.env['BENCH_CURVE_FILES'] ?? 1000);
    const maxProcs = Number(process.env['BENCH_CURVE_PROCS'] ?? 256);
    const maxIdle = Number(process.env['BENCH_CURVE_IDLE'] ?? 1000);
    const mibs = geometric(1, maxMiB, 4);
    const procs = geometric(1, maxProcs, 4);
    const files = geometric(1, maxFiles, 10);
    const img = buildVolume(ctx.tmp, 'curves', Math.ceil(maxMiB * 1.1 + maxFiles * 0.01 + 128), (root) => {
      mkdirSync(join(root, 'big'));
      mkdirSync(join(root, 'small'));
      mkdirSync(join(root, 'bench'));
      execFileSync('dd', [
        'if=/dev/urandom',
        `of=${join(root, 'big/file')}`,
        'bs=1M',
        `count=${maxMiB}`,
        'status=none',
      ]);
      writeFileSync(join(root, 'small/file'), randomBytes(1 << 20));
      copyFileSync(join(ROOT, 'test/bench/guest-curve.mjs'), join(root, 'bench/curve.mjs'));
      for (let i = 0; i < maxFiles; i++) {
        const d = join(root, 'many', `d${String(Math.floor(i / 100)).padStart(4, '0')}`);
        if (i % 100 === 0) mkdirSync(d, { recursive: true });
        writeFileSync(join(d, `f${String(i).padStart(5, '0')}`), randomBytes(4096));
      }
    });
    ctx.log(`volume built: ${maxMiB} MiB file, ${maxFiles} files`);
    const vm = await bootGuest({ disk: img, noAgent: true, memoryMiB: maxMiB + 1024 });
    const node = (args: string): Promise<string> => vm.sh(`node /mnt/data/bench/curve.mjs ${args}`, 3_600_000);
    let pages: Array<{ mib: number; small: Inval; big: Inval }>;
    let mappers: Array<Inval & { n: number }>;
    let many: Array<{ k: number; caps: string | number; ms: number; dropped: number }>;
    let idle: Array<{ n: number; procs: number; module: number; proc: number; found: boolean; source: string }>;
    const idles = [10, 100, 1000].filter((n) => n <= maxIdle);
    try {
      const t0 = Date.now();
      pages = parse(await node(`pages /mnt/data/big/file /mnt/data/small/file ${ctx.runs} ${mibs.join(' ')}`));
      ctx.log(`pages curve: ${fmtMs(Date.now() - t0)}`);
      const t1 = Date.now();
      mappers = parse(await node(`mappers /mnt/data/bin/vprog ${ctx.runs} ${procs.join(' ')}`));
      ctx.log(`mappers curve: ${fmtMs(Date.now() - t1)}`);
      const t2 = Date.now();
      many = parse(await node(`files /mnt/data/many ${ctx.runs} ${files.join(' ')}`));
      ctx.log(`files curve: ${fmtMs(Date.now() - t2)}`);
      const t3 = Date.now();
      idle = parse(await node(`idle /mnt/data/bin/vprog ${ctx.runs} ${idles.join(' ')}`));
      ctx.log(`idle processes curve: ${fmtMs(Date.now() - t3)}`);
    } finally {
      vm.kill();
    }

    const by = <T, K>(xs: T[], key: (x: T) => K): Map<K, T[]> => {
      const m = new Map<K, T[]>();
      for (const x of xs) m.set(key(x), [...(m.get(key(x)) ?? []), x]);
      return m;
    };
    const perPage = (ms: number[], pagesN: number[]): string => {
      const p = stats(pagesN).median;
      return p > 0 ? `${((stats(ms).median * 1000) / p).toFixed(2)} µs` : '–';
    };

    const pagesT: Table = {
      title: `Invalidation time against cached pages, ${ctx.runs} runs per size`,
      command: `node /mnt/data/bench/curve.mjs pages /mnt/data/big/file /mnt/data/small/file ${ctx.runs} ${mibs.join(' ')} (in the guest)`,
      columns: [
        'read of the file',
        'pages dropped (readahead included)',
        'whole-file invalidation',
        'per page',
        'a 1 MiB file, the same cache beside it',
      ],
      rows: [],
    };
    const pagesPlot: Plot = {
      file: 'curve-pages',
      title: 'Invalidation time against cached pages (guest under TCG)',
      xlabel: 'MiB of the file in the page cache (pages dropped × 4 KiB)',
      ylabel: 'ms (median)',
      logx: true,
      logy: true,
      series: [],
    };
    const bigPts: Array<[number, number]> = [];
    const smallPts: Array<[number, number]> = [];
    for (const [mib, xs] of by(pages, (x) => x.mib)) {
      const bms = xs.map((x) => x.big.ms);
      const dropped = xs.map((x) => x.big.dropped);
      pagesT.rows.push([
        `${mib} MiB`,
        String(stats(dropped).median),
        fmtStatsMs(bms),
        perPage(bms, dropped),
        fmtStatsMs(xs.map((x) => x.small.ms)),
      ]);
      const droppedMiB = (stats(dropped).median * 4096) / 2 ** 20;
      bigPts.push([droppedMiB, stats(bms).median]);
      smallPts.push([droppedMiB, stats(xs.map((x) => x.small.ms)).median]);
    }
    pagesPlot.series.push(
      { name: 'the file, this much cached', points: bigPts },
      { name: 'a 1 MiB file, this much of another file cached', points: smallPts },
    );

    const procT: Table = {
      title: `Invalidation time against processes mapping the file, ${ctx.runs} runs per count`,
      command: `node /mnt/data/bench/curve.mjs mappers /mnt/data/bin/vprog ${ctx.runs} ${procs.join(' ')} (in the guest)`,
      columns: ['processes', 'pages dropped', 'pages mapped (by any process)', 'invalidation', 'per process'],
      rows: [],
    };
    const procPts: Array<[number, number]> = [];
    for (const [n, xs] of by(mappers, (x) => x.n)) {
      const ms = xs.map((x) => x.ms);
      procT.rows.push([
        String(n),
        String(stats(xs.map((x) => x.dropped)).median),
        String(stats(xs.map((x) => x.mapped)).median),
        fmtStatsMs(ms),
        fmtMs(stats(ms).median / n),
      ]);
      procPts.push([n, stats(ms).median]);
    }
    const filesT: Table = {
      title: `Invalidation time against files in one substitution (one 4 KiB page each), ${ctx.runs} runs per count`,
      command: `node /mnt/data/bench/curve.mjs files /mnt/data/many ${ctx.runs} ${files.join(' ')} (in the guest)`,
      columns: ['files', 'report capacities', 'pages dropped', 'open + invalidate + close, all files', 'per file'],
      rows: [],
    };
    const fileSeries = new Map<string, Array<[number, number]>>();
    for (const xs of by(many, (x) => `${x.caps} ${x.k}`).values()) {
      const k = xs[0]!.k;
      const caps =
        xs[0]!.caps === 'default'
          ? MAX_CAPS
          : xs[0]!.caps === 'batch'
            ? BATCH
            : xs[0]!.caps === 0
              ? AGENT_CAPS
              : `${xs[0]!.caps} outcomes, ${xs[0]!.caps} mappers`;
      const ms = xs.map((x) => x.ms);
      filesT.rows.push([
        String(k),
        caps,
        String(stats(xs.map((x) => x.dropped)).median),
        fmtStatsMs(ms),
        fmtMs(stats(ms).median / k),
      ]);
      fileSeries.set(caps, [...(fileSeries.get(caps) ?? []), [k, stats(ms).median]]);
    }
    const filePts = fileSeries.get(AGENT_CAPS) ?? [];
    const idleT: Table = {
      title: `Finding who uses a changed file against idle processes in the guest, ${ctx.runs} runs per count`,
      command: `node /mnt/data/bench/curve.mjs idle /mnt/data/bin/vprog ${ctx.runs} ${idles.join(' ')} (in the guest)`,
      columns: [
        'idle processes',
        'processes in all',
        'through the module',
        'through /proc (no module)',
        'both found the two users',
      ],
      rows: [],
    };
    const idleSeries = { module: [] as Array<[number, number]>, proc: [] as Array<[number, number]> };
    for (const [n, xs] of by(idle, (x) => x.n)) {
      idleT.rows.push([
        String(n),
        String(xs[0]!.procs),
        fmtStatsMs(xs.map((x) => x.module)),
        fmtStatsMs(xs.map((x) => x.proc)),
        xs.every((x) => x.found) ? 'yes' : 'NO',
      ]);
      idleSeries.module.push([n, stats(xs.map((x) => x.module)).median]);
      idleSeries.proc.push([n, stats(xs.map((x) => x.proc)).median]);
    }
    const perFile = (caps: string): number => {
      const pts = fileSeries.get(caps) ?? [];
      const last = pts[pts.length - 1];
      return last ? last[1] / last[0] : NaN;
    };
    const capRatio = perFile(MAX_CAPS) / perFile(AGENT_CAPS);
    const fileLine = (xs: Array<[number, number]>): string => {
      const a = xs[0];
      const b = xs[xs.length - 1];
      return a && b ? `${(b[1] / a[1]).toFixed(0)}× the time for ${(b[0] / a[0]).toFixed(0)}× the` : '';
    };
    return {
      title: 'Cost curves of the guest side',
      about: `
What the module's invalidation costs as the work grows. The guest (test kernel under TCG, ${maxMiB + 1024} MiB,
no agent running) mounts a volume built for this (\`/big/file\` of ${maxMiB} MiB of random data, \`/small/file\` of
1 MiB, ${maxFiles} files of 4 KiB under \`/many\`, \`/bin/vprog\`), read-only as the test volume is. A
harness run by the guest's node, \`test/bench/guest-curve.mjs\`, makes the calls the agent makes
per file in its module stage (open, \`VMSUBST_IOC_INVALIDATE_RANGE\` over the file's range through the
addon, close) and times them with \`performance.now()\`; every sample re-warms what it invalidates.

- **Cached pages**: the first N MiB of \`/big/file\` are read (N = ${mibs.join(', ')} MiB), then the
  whole file's range is invalidated: affected pages = N MiB. Beside it, a 1 MiB file is invalidated
  while those N MiB of the other file stay cached: the rest of the cache.
  ${maxMiB < 1024 ? `Scaled to ${maxMiB} MiB at most (BENCH_CURVE_MAX_MIB) to fit the test guest under TCG.` : ''}
- **Mapping processes**: N = ${procs.join(', ')} processes run \`/bin/vprog\` (each has printed a line,
  so its pages are faulted in), then the whole file is invalidated: the module walks the file's
  \`i_mmap\` tree and zaps every mapping's PTEs (\`even_cows = 0\`).
- **Files per substitution**: N = ${files.join(', ')} files of one cached page each, invalidated in one
  loop as the agent does for the files of one substitution; once with the report arrays at their maximum
  (the addon's default) and once with none (the agent uses only the counts); then all of them in one
  batch call of the addon, as the agent does now (the stat that gives each file's inode is not timed:
  the agent has it from its index).
  ${maxFiles < 10_000 ? `Scaled to ${maxFiles} files (BENCH_CURVE_FILES; the 10k point costs about ten minutes under TCG here): the cost is linear per file.` : ''}
- **Idle processes**: what the agent's classify stage spends finding the users of a changed file
  (the processes that map it, the descriptors that hold it open) with N = ${idles.join(', ')} processes
  in the guest that have nothing to do with it (\`sleep\`), one process running \`/bin/vprog\` and one
  holding it open. Through the module (\`QUERY_MAPPERS\` over the file's reverse map, \`QUERY_OPENERS\`
  in one pass of the kernel over the descriptor tables: what the agent uses) and through /proc (every
  process's maps and descriptors: the fallback without the module). Both must find the two users.`,
      tables: [pagesT, procT, filesT, idleT],
      plots: [
        pagesPlot,
        {
          file: 'curve-mappers',
          title: 'Invalidation time against processes mapping the file (guest under TCG)',
          xlabel: 'processes mapping /bin/vprog',
          ylabel: 'ms (median)',
          logx: true,
          logy: true,
          series: [{ name: 'whole-file invalidation of vprog', points: procPts }],
        },
        {
          file: 'curve-idle',
          title: 'Finding the users of a changed file against idle processes (guest under TCG)',
          xlabel: 'idle processes in the guest',
          ylabel: 'ms (median)',
          logx: true,
          logy: true,
          series: [
            { name: 'through the module (the agent)', points: idleSeries.module },
            { name: 'through /proc (no module)', points: idleSeries.proc },
          ],
        },
        {
          file: 'curve-files',
          title: 'Invalidation time against files in one substitution (guest under TCG)',
          xlabel: 'files (one cached page each)',
          ylabel: 'ms (median)',
          logx: true,
          logy: true,
          series: [...fileSeries].map(([name, points]) => ({ name: `report capacities: ${name}`, points })),
        },
      ],
      reading: [
        (() => {
          const last = bigPts[bigPts.length - 1];
          const smallMs = smallPts.map((p) => p[1]);
          return `Cached pages: ${fileLine(bigPts)} cached pages; at the largest size the cost is ${last ? ((last[1] * 1000) / ((last[0] * 2 ** 20) / 4096)).toFixed(1) : '?'} µs per page dropped, so the time is linear in the affected pages once the fixed cost of one call (tens of ms on this loaded TCG guest) is paid. The 1 MiB file invalidated beside them stays between ${fmtMs(Math.min(...smallMs))} and ${fmtMs(Math.max(...smallMs))} (medians) whatever else is cached: flat in the rest of the cache.`;
        })(),
        (() => {
          const ms = procPts.map((p) => p[1]);
          const first = procPts[0];
          const last = procPts[procPts.length - 1];
          return first && last && last[1] < 2 * first[1]
            ? `Processes: from ${first[0]} to ${last[0]} mapping processes the medians stay between ${fmtMs(Math.min(...ms))} and ${fmtMs(Math.max(...ms))}: the rmap walk and the PTE zap of one ${stats(mappers.map((x) => x.dropped)).median}-page file per mapping are lost in the noise of one call on this loaded machine. The cost per mapping is small next to the fixed cost of a call.`
            : `Processes: ${fileLine(procPts)} processes: the rmap walk and the PTE zap are per mapping.`;
        })(),
        `Files: file by file, ${fileLine(filePts)} files: a fixed cost per file (open, one ioctl on the thread pool, close); in one batch call (the addon opens, checks, invalidates and closes every file on one thread-pool job) ${fmtMs(perFile(BATCH))} per file against ${fmtMs(perFile(AGENT_CAPS))} at the largest count.`,
        `Report arrays: with them at their maximum (4096 outcomes and 4096 mappers, the addon's default) each call allocates and zeroes about 300 KiB in the addon and the module; without them, a call at the largest count costs ${(1 / capRatio).toFixed(2)}× as much.`,
        (() => {
          const m = idleSeries.module;
          const p = idleSeries.proc;
          const a = m[0];
          const b = m[m.length - 1];
          const pa = p[0];
          const pb = p[p.length - 1];
          return a && b && pa && pb
            ? `Idle processes: from ${a[0]} to ${b[0]} idle processes the module's answer goes from ${fmtMs(a[1])} to ${fmtMs(b[1])} (${(b[1] / a[1]).toFixed(1)}×), the /proc scan from ${fmtMs(pa[1])} to ${fmtMs(pb[1])} (${(pb[1] / pa[1]).toFixed(1)}×): the kernel's pass over the descriptor tables costs microseconds per process, the scan a few system calls per process and per descriptor.`
            : '';
        })(),
        'All under TCG on a machine shared with other jobs (see the min – max spreads), where every system call and page-table operation is emulated: read the slopes, not the absolute values, which KVM divides by a large factor.',
      ],
    };
  },
};
