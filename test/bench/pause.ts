/**
 * The pause window of `vmsubst apply` into a running VM (stop → write → cont,
 * reported as `pause-ms`) against the bundle size, for every apply mode this
 * vmsubst has. A firmware-only VM is enough: the pause does not depend on
 * what the guest runs.
 *
 *   BENCH_PAUSE_MAX_MIB   largest bundle (default 256)
 */
import { execFileSync } from 'node:child_process';
import { closeSync, copyFileSync, openSync, writeSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { vmsubst, vmsubstJson } from '../helpers/cli.js';
import { FirmwareVm, whyNoQemu } from '../helpers/firmware-vm.js';
import { fmtBytes, fmtStatsMs, stats, type Benchmark, type Plot, type Section } from './table.js';

/**
 * One way `vmsubst apply` writes into a running VM. `args` builds the
 * arguments after the bundle; `missing` says why this vmsubst cannot do it
 * (from `vmsubst apply --help`), or undefined.
 */
interface ApplyMode {
  name: string;
  args(vm: FirmwareVm, image: string): string[];
  missing(help: string): string | undefined;
  /** Applied to the image file with no VM running (the figure is the write window). */
  noVm?: boolean;
}

const hasMode =
  (mode: string) =>
  (help: string): string | undefined =>
    new RegExp(`--mode[^\\n]*${mode}`).test(help) ? undefined : `this vmsubst apply has no --mode ${mode}`;

/** Every apply mode; a mode the CLI does not offer is listed as skipped. */
export const APPLY_MODES: ApplyMode[] = [
  // A writable NBD export of the drive, written by the CLI (the default mode).
  { name: 'nbd', args: (vm) => ['--qmp', vm.qmpSocket, '--device', 'vblk0'], missing: () => undefined },
  // A qcow2 delta inserted over the drive with blockdev-snapshot.
  {
    name: 'overlay',
    args: (vm) => ['--qmp', vm.qmpSocket, '--device', 'vblk0', '--mode', 'overlay'],
    missing: hasMode('overlay'),
  },
  // The raw image file written through the page cache, as for Firecracker or Cloud Hypervisor: no
  // QEMU holds it (vmsubst refuses an image QEMU has open), nothing is paused; its write window is the figure.
  {
    name: 'raw-file',
    args: (_vm, image) => ['--image', image, '--mode', 'raw-file'],
    missing: hasMode('raw-file'),
    noVm: true,
  },
];

const KiB = 1024;
const MiB = 1024 * KiB;

export const pause: Benchmark = {
  name: 'pause',
  summary: 'VM pause window of apply against bundle size (4 KiB … 256 MiB), per apply mode',
  async run(ctx): Promise<Section> {
    const why = whyNoQemu();
    if (why) throw new Error(why);
    const maxMiB = Number(process.env['BENCH_PAUSE_MAX_MIB'] ?? 256);
    const sizes = [4 * KiB, 64 * KiB, MiB, 4 * MiB, 16 * MiB, 256 * MiB].filter((s) => s <= maxMiB * MiB);
    const imageBytes = (maxMiB + 16) * MiB;
    const base = join(ctx.tmp, 'pause-base.img');
    execFileSync('dd', ['if=/dev/urandom', `of=${base}`, 'bs=1M', `count=${imageBytes / MiB}`, 'status=none']);
    // Per size: the patched image has one contiguous changed run of that size at 8 MiB;
    // the forward bundle base → patched and the reverse one, applied in turn, are both samples.
    const bundles = new Map<number, [string, string]>();
    for (const size of sizes) {
      const patched = join(ctx.tmp, 'pause-patched.img');
      copyFileSync(base, patched);
      const fd = openSync(patched, 'r+');
      for (let off = 0; off < size; off += MiB)
        writeSync(fd, randomBytes(Math.min(MiB, size - off)), 0, Math.min(MiB, size - off), 8 * MiB + off);
      closeSync(fd);
      const fwd = join(ctx.tmp, `pause-${size}.fwd.bundle`);
      const rev = join(ctx.tmp, `pause-${size}.rev.bundle`);
      await vmsubstJson(['diff', base, patched, '-o', fwd], 600_000);
      await vmsubstJson(['diff', patched, base, '-o', rev], 600_000);
      bundles.set(size, [fwd, rev]);
    }
    const help = (await vmsubst(['apply', '--help'])).stdout;
    const rows: string[][] = [];
    const plot: Plot = {
      file: 'pause-vs-bundle',
      title: 'VM pause window of vmsubst apply against bundle size (QEMU TCG)',
      xlabel: 'changed bytes in the bundle (KiB)',
      ylabel: 'pause-ms (median)',
      logx: true,
      logy: true,
      series: [],
    };
    const skipped: string[] = [];
    const fourMiB: Array<[string, number]> = [];
    for (const mode of APPLY_MODES) {
      const missing = mode.missing(help);
      if (missing) {
        skipped.push(`${mode.name}: skipped (${missing})`);
        ctx.log(`${mode.name}: skipped (${missing})`);
        continue;
      }
      const points: Array<[number, number]> = [];
      for (const size of sizes) {
        const image = join(ctx.tmp, 'pause-vm.img');
        copyFileSync(base, image);
        const vm = mode.noVm ? undefined : await FirmwareVm.start({ image, dir: ctx.tmp }, `vm-${mode.name}-${size}`);
        const pauses: number[] = [];
        const walls: number[] = [];
        try {
          for (let i = 0; i < ctx.runs; i++) {
            const b = bundles.get(size)![i % 2];
            const r = await vmsubst(['apply', b!, ...mode.args(vm!, image), '--json'], 900_000);
            if (r.code !== 0)
              throw new Error(`vmsubst apply (${mode.name}, ${fmtBytes(size)}) exited ${r.code}: ${r.stderr}`);
            const j = JSON.parse(r.stdout) as { 'pause-ms': number | null; 'window-ms'?: number };
            pauses.push(j['pause-ms'] ?? j['window-ms'] ?? NaN);
            walls.push(r.ms);
          }
        } finally {
          vm?.kill();
        }
        ctx.log(`${mode.name} ${fmtBytes(size)}: pause ${fmtStatsMs(pauses)}, wall ${fmtStatsMs(walls)}`);
        rows.push([
          mode.name,
          fmtBytes(size),
          fmtStatsMs(pauses),
          fmtStatsMs(walls),
          (size / MiB / (stats(pauses).median / 1000)).toFixed(1),
        ]);
        points.push([size / KiB, stats(pauses).median]);
        if (size === 4 * MiB && !mode.noVm) fourMiB.push([mode.name, stats(pauses).median]);
      }
      plot.series.push({ name: mode.name, points });
    }
    return {
      title: 'Pause window against bundle size',
      about: `
Each mode verifies the old blocks first, while the guest runs (a dirty bitmap catches a guest write
in between; then the ranges are checked again inside the pause). \`--json\` reports \`pause-ms\`, the
time between \`stop\` and \`cont\` when the guest's vCPUs do not run: in \`nbd\` mode it covers the
writes over the private NBD export, in \`overlay\` mode only the \`blockdev-snapshot\` switch to a
qcow2 overlay built beforehand. \`raw-file\` (for VMMs that read a raw image through the host's page
cache; no QEMU holds the image) pauses nothing: its row is \`window-ms\`, the time from the first to
the last \`pwrite\`, during which the disk holds a mix of old and new ranges. The VM here is firmware-only QEMU (TCG, 64 MiB, the image as virtio-blk with
\`share-rw=on\`): the pause does not depend on what the guest runs. The image is ${fmtBytes(imageBytes)} of
random data; each bundle changes one contiguous run of the given size. The forward bundle and its
reverse are applied in turn to a fresh VM per size, ${ctx.runs} applies per size and mode, every one
a sample. Modes: ${APPLY_MODES.map((m) => `\`${m.name}\``).join(', ')} (the ones this vmsubst lacks are listed as skipped).`,
      tables: [
        {
          title: `Pause window per apply mode and bundle size, ${ctx.runs} applies each`,
          command: 'vmsubst apply $TMP/pause-SIZE.{fwd,rev}.bundle --qmp SOCK --device vblk0 [--mode MODE] --json',
          columns: ['mode', 'changed', 'pause-ms', 'apply wall time (CLI start included)', 'MiB/s in the pause'],
          rows,
          notes: skipped,
        },
      ],
      plots: [plot],
      reading: [
        'In `nbd` mode the pause is a fixed cost (stop, one QMP query of the dirty bitmap, cont: about 8 ms under TCG) plus the writes over the private NBD export, which grow with the changed bytes. The writes go out in 256 KiB NBD requests, all at once (host-signal/src/nbd/client.ts, REQUEST_BYTES); before the pause the drive is flushed, so the flush `stop` does finds little to write.',
        'In `overlay` mode the pause is flat: the overlay is written and added before the pause, which covers only the switch; the price is the overlay file until it is committed (`--commit`, block-commit while the guest runs).',
        "`raw-file` pauses nothing; its write window grows with the bytes at the page cache's rate.",
        `Target, a pause of at most 20 ms for a 4 MiB bundle: ${target4MiB(fourMiB)}.`,
      ],
    };
  },
};

/** Says, per QEMU mode, whether the median pause for 4 MiB met the 20 ms target. */
function target4MiB(fourMiB: ReadonlyArray<[string, number]>): string {
  if (fourMiB.length === 0) return 'no 4 MiB row (BENCH_PAUSE_MAX_MIB below 4)';
  return fourMiB
    .map(([mode, median]) => `\`${mode}\` ${median <= 20 ? 'meets it' : 'misses it'} (median ${median.toFixed(1)} ms)`)
    .join('; ');
}
