/**
 * The host side of one substitution on a large image pair: `vmsubst diff`
 * (scan rate, memory) and `vmsubst apply --image`.
 *
 *   BENCH_IMAGE_MIB   size of the synthetic image pair (default 1024)
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { closeSync, copyFileSync, openSync, statSync, writeSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { CLI } from '../helpers/paths.js';
import { fmtBytes, fmtMs, fmtStats, fmtStatsMs, stats, type Benchmark, type Section } from './table.js';

/** Runs the CLI under GNU time; returns wall ms, peak RSS KiB and stdout. */
export function timedCli(args: string[]): { ms: number; rssKiB: number; stdout: string } {
  const t0 = process.hrtime.bigint();
  const r = spawnSync('/usr/bin/time', ['-f', '%M', CLI, ...args], {
    encoding: 'utf8',
    maxBuffer: 64 << 20,
  });
  const ms = Number(process.hrtime.bigint() - t0) / 1e6;
  if (r.status !== 0) throw new Error(`vmsubst ${args.join(' ')} failed:\n${r.stderr}`);
  const rssKiB = Number(r.stderr.trim().split('\n').pop());
  return { ms, rssKiB, stdout: r.stdout };
}

/** Writes `count` random 4 KiB blocks spread evenly over `path` (a file of `blocks` blocks). */
export function scatterBlocks(path: string, blocks: number, count: number): void {
  const fd = openSync(path, 'r+');
  try {
    for (let i = 0; i < count; i++)
      writeSync(fd, randomBytes(4096), 0, 4096, Math.floor(((i + 0.5) / count) * (blocks - 1)) * 4096);
  } finally {
    closeSync(fd);
  }
}

export const pipeline: Benchmark = {
  name: 'pipeline',
  summary: 'host side: vmsubst diff (scan rate, RSS) and apply --image on a large image pair',
  async run(ctx): Promise<Section> {
    const mib = Number(process.env['BENCH_IMAGE_MIB'] ?? 1024);
    const base = join(ctx.tmp, 'pipe-base.img');
    const patched = join(ctx.tmp, 'pipe-patched.img');
    execFileSync('dd', ['if=/dev/urandom', `of=${base}`, 'bs=1M', `count=${mib}`, 'status=none']);
    copyFileSync(base, patched);
    scatterBlocks(patched, mib * 256, 256);
    const fd = openSync(patched, 'r+');
    writeSync(fd, randomBytes(8 << 20), 0, 8 << 20, Math.floor(mib / 2) * (1 << 20) + 4096 * 7);
    closeSync(fd);
    const bundle = join(ctx.tmp, 'pipe.bundle');
    const diffArgs = ['diff', base, patched, '-o', bundle, '--json'];
    timedCli(diffArgs); // warm the host page cache: the runs below measure the scan, not the disk
    const diffs = Array.from({ length: ctx.runs }, () => timedCli(diffArgs));
    ctx.log(`diff: ${fmtStatsMs(diffs.map((d) => d.ms))}`);
    const d = JSON.parse(diffs[0]!.stdout) as { ranges: number; 'changed-bytes': number };
    const img = join(ctx.tmp, 'pipe-target.img');
    const applies = Array.from({ length: ctx.runs }, () => {
      copyFileSync(base, img);
      return timedCli(['apply', bundle, '--image', img, '--json']);
    });
    ctx.log(`apply --image: ${fmtStatsMs(applies.map((a) => a.ms))}`);
    const rss = (xs: typeof diffs): string =>
      fmtStats(
        xs.map((x) => x.rssKiB / 1024),
        (m) => `${m.toFixed(0)} MiB`,
      );
    const rate = stats(diffs.map((x) => mib / (x.ms / 1000)));
    return {
      title: 'Host pipeline: diff and apply into an image',
      about: `
A synthetic image pair of ${mib} MiB of random data (BENCH_IMAGE_MIB); the patched copy has 256
scattered 4 KiB changes and one 8 MiB run. \`vmsubst diff\` runs once to warm the host page
cache, then ${ctx.runs} times: the numbers are the CPU-bound scan. \`apply --image\` writes the
bundle into a fresh copy of the base each run. Peak RSS from GNU time.`,
      tables: [
        {
          title: `vmsubst diff and apply --image, ${ctx.runs} runs`,
          command: `vmsubst diff $TMP/pipe-base.img $TMP/pipe-patched.img -o $TMP/pipe.bundle --json; vmsubst apply $TMP/pipe.bundle --image $TMP/pipe-target.img --json`,
          columns: ['measure', 'median (min – max)'],
          rows: [
            ['diff: wall time (warm cache)', fmtStatsMs(diffs.map((x) => x.ms))],
            ['diff: scan rate', `${rate.median.toFixed(0)} MiB/s (${rate.min.toFixed(0)} – ${rate.max.toFixed(0)})`],
            ['diff: peak RSS', rss(diffs)],
            [
              'diff: result',
              `${d.ranges} ranges, ${fmtBytes(d['changed-bytes'])} changed, bundle ${fmtBytes(statSync(bundle).size)}`,
            ],
            ['apply --image: wall time', fmtStatsMs(applies.map((x) => x.ms))],
            ['apply --image: peak RSS', rss(applies)],
          ],
        },
      ],
      reading: [
        `The diff is a sequential scan; ${fmtMs(stats(diffs.map((x) => x.ms)).median)} for ${mib} MiB is the rate a golden image of that size costs once per patch, not per VM.`,
        'The pause window of an apply into a running VM is a separate benchmark (pause), against bundle size.',
      ],
    };
  },
};
