/**
 * `make bench`: runs the benchmarks (one module each in test/bench/, each
 * exporting a Benchmark whose run() returns its section), prints every table,
 * rewrites their sections of docs/benchmarks.md and renders the plots into
 * docs/img/.
 *
 *   node build/test/bench/bench.js [--only NAME[,NAME…]] [--runs N] [--no-doc] [--list]
 *
 *   BENCH_RUNS   repetitions behind every median (default 5)
 *   BENCH_ONLY   same as --only
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { ROOT } from '../helpers/paths.js';
import { machineLine, renderPlot, sectionMarkdown, writeDoc } from './report.js';
import { textTable, type Benchmark } from './table.js';
import { pipeline } from './pipeline.js';
import { pedigree } from './pedigree.js';
import { pause } from './pause.js';
import { newcode } from './newcode.js';
import { headline } from './headline.js';
import { curves } from './curves.js';
import { collateral } from './collateral.js';
import { diff } from './diff.js';

/** Every benchmark, in the order `make bench` runs them and docs/benchmarks.md lists them. */
const BENCHMARKS: Benchmark[] = [pipeline, newcode, headline, collateral, curves, pause, pedigree, diff];

const USAGE = `Usage: node build/test/bench/bench.js [--only NAME[,NAME...]] [--runs N] [--no-doc] [--list]

Runs the benchmarks, prints their tables, replaces their sections of
docs/benchmarks.md and renders their plots into docs/img/.

  --only NAMES  run these benchmarks only (comma-separated; also BENCH_ONLY)
  --runs N      repetitions behind every median (default BENCH_RUNS or 5)
  --no-doc      print the tables, leave docs/ alone
  --list        list the benchmarks and exit
`;

async function main(): Promise<number> {
  const { values } = parseArgs({
    options: {
      only: { type: 'string', multiple: true },
      runs: { type: 'string' },
      'no-doc': { type: 'boolean' },
      list: { type: 'boolean' },
      help: { type: 'boolean', short: 'h' },
    },
  });
  if (values.help) {
    process.stdout.write(USAGE);
    return 0;
  }
  if (values.list) {
    for (const b of BENCHMARKS) console.log(`${b.name.padEnd(12)} ${b.summary}`);
    return 0;
  }
  const onlyArg = values.only ?? (process.env['BENCH_ONLY'] ? [process.env['BENCH_ONLY']] : []);
  const only = onlyArg
    .flatMap((s) => s.split(','))
    .map((s) => s.trim())
    .filter(Boolean);
  const unknown = only.filter((n) => !BENCHMARKS.some((b) => b.name === n));
  if (unknown.length) {
    console.error(
      `bench: no benchmark named ${unknown.join(', ')}; known: ${BENCHMARKS.map((b) => b.name).join(', ')}`,
    );
    return 2;
  }
  const runs = Number(values.runs ?? process.env['BENCH_RUNS'] ?? 5);
  if (!Number.isInteger(runs) || runs < 1) {
    console.error(`bench: --runs must be a positive integer, not ${values.runs ?? process.env['BENCH_RUNS']}`);
    return 2;
  }
  const chosen = only.length ? BENCHMARKS.filter((b) => only.includes(b.name)) : BENCHMARKS;
  const runStart = Date.now();
  const fresh = new Map<string, string>();
  let failed = 0;
  for (const b of chosen) {
    const tmp = mkdtempSync(join(tmpdir(), `vmsubst-bench-${b.name}-`));
    const t0 = Date.now();
    const startLoad = loadavg();
    console.error(`\n== ${b.name}: ${b.summary}`);
    try {
      const s = await b.run({
        tmp,
        runs,
        log: (m) => console.error(`  [${b.name} ${((Date.now() - t0) / 1000).toFixed(0)} s] ${m}`),
      });
      for (const t of s.tables) console.log(`\n${textTable(t, tmp)}`);
      console.error(`== ${b.name} done in ${((Date.now() - t0) / 1000).toFixed(0)} s`);
      if (!values['no-doc']) {
        for (const p of s.plots ?? []) {
          const why = renderPlot(p, join(ROOT, 'docs/img'));
          if (why) console.error(`  plot ${p.file}: not rendered: ${why}`);
        }
        fresh.set(b.name, sectionMarkdown(b.name, s, machineLine(startLoad), tmp, (Date.now() - t0) / 1000));
      }
    } catch (e) {
      failed++;
      console.error(`bench ${b.name} failed: ${(e as Error).stack ?? String(e)}`);
    } finally {
      rmSync(tmp, { recursive: true, force: true });
    }
  }
  if (!values['no-doc'] && fresh.size > 0) {
    const full = chosen.length === BENCHMARKS.length && fresh.size === BENCHMARKS.length;
    const summary = full
      ? `Last full run: ${new Date(runStart).toISOString().slice(0, 16).replace('T', ' ')} UTC, ${((Date.now() - runStart) / 60000).toFixed(1)} min for every benchmark, ${runs} runs per median.`
      : undefined;
    writeDoc(
      join(ROOT, 'docs/benchmarks.md'),
      BENCHMARKS.map((b) => b.name),
      fresh,
      summary,
    );
    console.error(`\ndocs/benchmarks.md: ${[...fresh.keys()].join(', ')} rewritten`);
  }
  return failed ? 1 : 0;
}

main().then(
  (code) => process.exit(code),
  (e: unknown) => {
    console.error(`bench failed: ${(e as Error).stack ?? String(e)}`);
    process.exit(1);
  },
);
