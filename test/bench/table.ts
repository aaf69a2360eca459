/**
 * What every benchmark module shares: the shape of its results (tables,
 * plots, prose), statistics over repeated runs, number formats, and the
 * markdown rendering of a table.
 */

/** One table of results, with the command that produced it. */
export interface Table {
  title: string;
  /** The command (or harness call) behind the numbers; `$TMP` stands for the scratch directory. */
  command: string;
  columns: string[];
  rows: string[][];
  /** Lines printed under the table. */
  notes?: string[];
}

/** One curve of a plot: points (x, y), in the plot's units. */
export interface Series {
  name: string;
  points: Array<[number, number]>;
}

/** A plot rendered by gnuplot into docs/img/<file>.png. */
export interface Plot {
  /** File name without extension, unique across benchmarks. */
  file: string;
  title: string;
  xlabel: string;
  ylabel: string;
  logx?: boolean;
  logy?: boolean;
  series: Series[];
}

/** What one benchmark module returns: its section of docs/benchmarks.md. */
export interface Section {
  title: string;
  /** Markdown: what is measured and how to read it (printed before the tables). */
  about: string;
  tables: Table[];
  plots?: Plot[];
  /** Markdown printed after the tables (observations that depend on the numbers). */
  reading?: string[];
}

export interface BenchContext {
  /** Scratch directory, removed after the run. */
  tmp: string;
  /** Repetitions behind every median (BENCH_RUNS, at least 5 for the published numbers). */
  runs: number;
  /** Progress line on stderr. */
  log(msg: string): void;
}

/** A benchmark: test/bench/<name>.ts exports one, listed in bench.ts. */
export interface Benchmark {
  name: string;
  /** One line for `--help`. */
  summary: string;
  run(ctx: BenchContext): Promise<Section>;
}

// ---- statistics --------------------------------------------------------------

export interface Stats {
  median: number;
  min: number;
  max: number;
  n: number;
}

export function stats(xs: readonly number[]): Stats {
  if (xs.length === 0) return { median: NaN, min: NaN, max: NaN, n: 0 };
  const s = [...xs].sort((a, b) => a - b);
  const mid = s.length >> 1;
  const median = s.length % 2 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
  return { median, min: s[0]!, max: s[s.length - 1]!, n: s.length };
}

/** "12.3 ms (11.0 – 14.2)": median, then min – max, in milliseconds. */
export function fmtStatsMs(xs: readonly number[]): string {
  const s = stats(xs);
  if (s.n === 0) return '–';
  if (s.n === 1) return fmtMs(s.median);
  return `${fmtMs(s.median)} (${fmtMs(s.min)} – ${fmtMs(s.max)})`;
}

/** Same, with a formatter of the caller's choice. */
export function fmtStats(xs: readonly number[], f: (x: number) => string): string {
  const s = stats(xs);
  if (s.n === 0) return '–';
  if (s.n === 1) return f(s.median);
  return `${f(s.median)} (${f(s.min)} – ${f(s.max)})`;
}

// ---- formats -----------------------------------------------------------------

export const fmtMs = (ms: number): string =>
  !Number.isFinite(ms)
    ? '–'
    : ms >= 1000
      ? `${(ms / 1000).toFixed(2)} s`
      : ms >= 10
        ? `${ms.toFixed(1)} ms`
        : ms >= 0.1
          ? `${ms.toFixed(2)} ms`
          : `${(ms * 1000).toFixed(1)} µs`;

export function fmtBytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB'];
  let u = 0;
  while (n >= 1024 && u < units.length - 1 && n % 1024 === 0) {
    n /= 1024;
    u++;
  }
  if (n >= 1024 && u < units.length - 1) {
    n /= 1024;
    u++;
    return `${n.toFixed(1)} ${units[u]}`;
  }
  return `${n} ${units[u]}`;
}

export const fmtPct = (x: number): string => (Number.isFinite(x) ? `${(x * 100).toFixed(1)} %` : '–');

/** Wall time of a synchronous call, in ms. */
export function wall(f: () => void): number {
  const t0 = process.hrtime.bigint();
  f();
  return Number(process.hrtime.bigint() - t0) / 1e6;
}

/** Wall time of an asynchronous call, in ms, with its result. */
export async function timeAsync<T>(f: () => Promise<T>): Promise<{ ms: number; value: T }> {
  const t0 = process.hrtime.bigint();
  const value = await f();
  return { ms: Number(process.hrtime.bigint() - t0) / 1e6, value };
}

// ---- markdown ----------------------------------------------------------------

const cell = (s: string): string => s.replaceAll('|', '\\|').replaceAll('\n', ' ');

/** A table as GitHub markdown, columns padded for reading as plain text too. */
export function markdownTable(t: Table, tmp?: string): string {
  const scrub = (s: string): string => (tmp ? s.replaceAll(tmp, '$TMP') : s);
  const rows = [t.columns, ...t.rows].map((r) => r.map((c) => cell(scrub(c))));
  const widths = t.columns.map((_, i) => Math.max(3, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (r: string[]): string => `| ${widths.map((w, i) => (r[i] ?? '').padEnd(w)).join(' | ')} |`;
  const out = [
    `**${t.title}**`,
    '',
    `Command: \`${scrub(t.command)}\``,
    '',
    line(rows[0]!),
    `|${widths.map((w) => '-'.repeat(w + 2)).join('|')}|`,
  ];
  for (const r of rows.slice(1)) out.push(line(r));
  for (const n of t.notes ?? []) out.push('', scrub(n));
  return out.join('\n');
}

/** A table as plain text for the terminal (same content, no markdown emphasis). */
export function textTable(t: Table, tmp?: string): string {
  return markdownTable(t, tmp).replace(/^\*\*(.*)\*\*$/m, '$1');
}
