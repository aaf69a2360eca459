/**
 * The benchmark report helpers: statistics, markdown tables, the sectioned
 * docs/benchmarks.md writer (a partial run keeps the other sections), and
 * gnuplot rendering (skipped, with the reason, without gnuplot).
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fmtStatsMs, markdownTable, stats } from '../../bench/table.js';
import { renderPlot, sectionMarkdown, writeDoc } from '../../bench/report.js';

const s = suite('bench report');
let tmp = '';
s.before(() => {
  tmp = mkdtempSync(join(tmpdir(), 'vmsubst-bench-report-'));
});
s.after(() => rmSync(tmp, { recursive: true, force: true }));

s('stats: median of odd and even counts, min and max', () => {
  assert.equal(stats([5, 1, 3]), { median: 3, min: 1, max: 5, n: 3 });
  assert.equal(stats([4, 1, 3, 2]).median, 2.5);
  assert.ok(Number.isNaN(stats([]).median));
  assert.is(fmtStatsMs([10, 30, 20]), '20.0 ms (10.0 ms – 30.0 ms)');
});

s('markdownTable: command, header, escaped cells, scratch directory hidden', () => {
  const md = markdownTable({ title: 'T', command: `run ${tmp}/x`, columns: ['a', 'b'], rows: [['1|2', 'y']] }, tmp);
  assert.match(md, '**T**');
  assert.match(md, 'Command: `run $TMP/x`');
  assert.match(md, '| 1\\|2 | y   |');
  assert.not.match(md, tmp);
});

s('writeDoc: replaces the sections that ran, keeps the others in order', () => {
  const path = join(tmp, 'benchmarks.md');
  const sec = (name: string, text: string): string =>
    sectionMarkdown(name, { title: name, about: text, tables: [] }, 'here', tmp, 1);
  writeDoc(
    path,
    ['a', 'b'],
    new Map([
      ['a', sec('a', 'first a')],
      ['b', sec('b', 'first b')],
    ]),
    'Last full run: then.',
  );
  writeDoc(path, ['a', 'b'], new Map([['b', sec('b', 'second b')]]));
  const doc = readFileSync(path, 'utf8');
  assert.match(doc, 'first a');
  assert.match(doc, 'second b');
  assert.not.match(doc, 'first b');
  assert.ok(doc.indexOf('<!-- bench:a -->') < doc.indexOf('<!-- bench:b -->'));
  assert.match(doc, 'Last full run: then.');
});

s('renderPlot: a PNG from gnuplot', () => {
  if (spawnSync('gnuplot', ['--version']).error) {
    console.log('  skipped: gnuplot is not installed (scripts/setup.sh installs gnuplot-nox)');
    return;
  }
  const why = renderPlot(
    {
      file: 'p',
      title: 't',
      xlabel: 'x',
      ylabel: 'y',
      logx: true,
      series: [
        {
          name: 's',
          points: [
            [1, 2],
            [4, 8],
          ],
        },
      ],
    },
    tmp,
  );
  assert.is(why, undefined);
  const png = readFileSync(join(tmp, 'p.png'));
  assert.equal([...png.subarray(1, 4)], [0x50, 0x4e, 0x47]);
  assert.ok(statSync(join(tmp, 'p.png')).size > 1000);
  assert.is(
    renderPlot({ file: 'q', title: 't', xlabel: 'x', ylabel: 'y', series: [{ name: 's', points: [] }] }, tmp),
    'no points',
  );
});

s.run();
