/**
 * `make bench`: what one substitution costs, step by step, measured with the
 * real CLI, a real QEMU and the real guest. Prints a table with the command
 * behind every number. Numbers go to docs/benchmarks.md by hand, with the date.
 *
 *   BENCH_IMAGE_MIB   size of the synthetic image pair for diff/apply (default 1024)
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { closeSync, copyFileSync, mkdtempSync, openSync, rmSync, statSync, writeSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { tmpdir, cpus } from 'node:os';
import { join } from 'node:path';
import { CLI, guestArtifacts } from '../helpers/paths.js';
import { FirmwareVm, whyNoQemu } from '../helpers/firmware-vm.js';
import { GuestVm } from '../helpers/vm.js';
import { vmsubstJson } from '../helpers/cli.js';

interface Row {
  what: string;
  value: string;
  command: string;
}
const rows: Row[] = [];
const add = (what: string, value: string, command: string): void => {
  rows.push({ what, value, command });
  console.error(`  ${what}: ${value}`);
};

/** Runs the CLI under GNU time; returns wall ms, peak RSS KiB and stdout. */
function timed(args: string[]): { ms: number; rssKiB: number; stdout: string } {
  const t0 = process.hrtime.bigint();
  const r = spawnSync('/usr/bin/time', ['-f', '%M', process.execPath, CLI, ...args], { encoding: 'utf8', maxBuffer: 64 << 20 });
  const ms = Number(process.hrtime.bigint() - t0) / 1e6;
  if (r.status !== 0) throw new Error(`vmsubst ${args.join(' ')} failed:\n${r.stderr}`);
  const rssKiB = Number(r.stderr.trim().split('\n').pop());
  return { ms, rssKiB, stdout: r.stdout };
}

const fmtMs = (ms: number): string => (ms >= 1000 ? `${(ms / 1000).toFixed(2)} s` : `${ms.toFixed(1)} ms`);

async function main(): Promise<void> {
  const mib = Number(process.env['BENCH_IMAGE_MIB'] ?? 1024);
  const tmp = mkdtempSync(join(tmpdir(), 'vmsubst-bench-'));
  try {
    // A 1 GiB image pair: 256 scattered 4 KiB changes plus one 8 MiB run.
    const base = join(tmp, 'base.img');
    const patched = join(tmp, 'patched.img');
    execFileSync('dd', ['if=/dev/urandom', `of=${base}`, 'bs=1M', `count=${mib}`, 'status=none']);
    copyFileSync(base, patched);
    const fd = openSync(patched, 'r+');
    for (let i = 0; i < 256; i++) {
      const block = Math.floor(((i + 0.5) / 256) * (mib * 256 - 1));
      writeSync(fd, randomBytes(4096), 0, 4096, block * 4096);
    }
    writeSync(fd, randomBytes(8 << 20), 0, 8 << 20, Math.floor(mib / 2) * (1 << 20) + 4096 * 7);
    closeSync(fd);
    const bundle = join(tmp, 'b.bundle');
    console.error(`vmsubst bench: ${mib} MiB image pair, ${cpus().length} CPUs, ${new Date().toISOString()}`);

    const diffArgs = ['diff', base, patched, '-o', bundle, '--json'];
    timed(diffArgs); // warm the host page cache: the number below is the CPU-bound scan
    const d = timed(diffArgs);
    const diff = JSON.parse(d.stdout) as { ranges: number; 'changed-bytes': number };
    add('diff: wall time (warm cache)', fmtMs(d.ms), `vmsubst ${diffArgs.join(' ')}`);
    add('diff: scan rate', `${(mib / (d.ms / 1000)).toFixed(0)} MiB/s`, '(image size / wall time)');
    add('diff: peak RSS', `${(d.rssKiB / 1024).toFixed(0)} MiB`, '/usr/bin/time -f %M');
    add('diff: result', `${diff.ranges} ranges, ${(diff['changed-bytes'] / 1048576).toFixed(2)} MiB changed, bundle ${(statSync(bundle).size / 1048576).toFixed(2)} MiB`, '');

    const img = join(tmp, 'target.img');
    copyFileSync(base, img);
    const a = timed(['apply', bundle, '--image', img, '--json']);
    add('apply --image: wall time', fmtMs(a.ms), `vmsubst apply ${bundle} --image ${img} --json`);
    add('apply --image: peak RSS', `${(a.rssKiB / 1024).toFixed(0)} MiB`, '/usr/bin/time -f %M');

    const noQemu = whyNoQemu();
    if (noQemu) {
      add('apply --qmp', `skipped: ${noQemu}`, '');
    } else {
      copyFileSync(base, img);
      const vm = await FirmwareVm.start({ image: img, dir: tmp });
      try {
        const q = timed(['apply', bundle, '--qmp', vm.qmpSocket, '--device', 'vblk0', '--json']);
        const r = JSON.parse(q.stdout) as { 'pause-ms': number; written: number };
        add('apply --qmp: VM paused (stop → cont)', fmtMs(r['pause-ms']), `vmsubst apply ${bundle} --qmp SOCK --device vblk0 --json (QEMU TCG, firmware only)`);
        add('apply --qmp: wall time', fmtMs(q.ms), '');
      } finally {
        vm.kill();
      }
    }

    const art = guestArtifacts();
    if (typeof art === 'string') {
      add('guest notify', `skipped: ${art}`, '');
    } else {
      const disk = join(tmp, 'guest.img');
      copyFileSync(join(art.disks, 'base.img'), disk);
      const gb = join(tmp, 'vprog.bundle');
      await vmsubstJson(['diff', join(art.disks, 'base.img'), join(art.disks, 'patched.img'), '-o', gb]);
      const vm = await GuestVm.boot({ disk });
      try {
        add('guest boot to console / agent ready (TCG)', `${fmtMs(vm.bootMs)} / ${fmtMs(vm.agentReadyMs)}`, 'GuestVm.boot (test/helpers/vm.ts)');
        await vm.sh('/mnt/data/bin/vprog 200 > /tmp/v.out 2>&1 &');
        const q = timed(['apply', gb, '--qmp', vm.qmpSocket, '--device', 'vblk0', '--json']);
        add('guest apply (1 block): VM paused', fmtMs((JSON.parse(q.stdout) as { 'pause-ms': number })['pause-ms']), `vmsubst apply vprog.bundle --qmp SOCK --device vblk0`);
        const n = timed(['notify', gb, '--to', `serial:${vm.agentSocket}`, '--json']);
        const t = (JSON.parse(n.stdout) as { 'timings-ms': Record<string, number> })['timings-ms'];
        add('notify round trip (CLI start included)', fmtMs(n.ms), `vmsubst notify vprog.bundle --to serial:SOCK --json`);
        add('agent: verify / map / invalidate / total', ['verify', 'map', 'invalidate', 'total'].map((k) => fmtMs(t[k] ?? NaN)).join(' / '), 'report timings-ms (guest under TCG)');
      } finally {
        vm.kill();
      }
    }

    const w1 = Math.max(...rows.map((r) => r.what.length));
    const w2 = Math.max(...rows.map((r) => r.value.length));
    console.log(`\n| ${'measure'.padEnd(w1)} | ${'value'.padEnd(w2)} | command |`);
    console.log(`|${'-'.repeat(w1 + 2)}|${'-'.repeat(w2 + 2)}|---------|`);
    for (const r of rows) console.log(`| ${r.what.padEnd(w1)} | ${r.value.padEnd(w2)} | ${r.command ? '`' + r.command.replaceAll(tmp, '$TMP') + '`' : ''} |`);
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
}

main().catch((e: unknown) => {
  console.error(`bench failed: ${(e as Error).stack ?? String(e)}`);
  process.exit(1);
});
