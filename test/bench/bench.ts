/**
 * `make bench`: what one substitution costs, step by step, measured with the
 * real CLI, a real QEMU and the real guest. Prints a table with the command
 * behind every number. Numbers go to docs/benchmarks.md by hand, with the date.
 *
 *   BENCH_IMAGE_MIB   size of the synthetic image pair for diff/apply (default 1024)
 *   BENCH_FILES       files on the pedigree-index volume (default 100000)
 *   BENCH_ONLY        'pedigree' runs the pedigree-index rows alone; 'apply-modes' the apply-mode rows
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { appendFileSync, closeSync, copyFileSync, mkdirSync, mkdtempSync, openSync, rmSync, statSync, writeFileSync, writeSync } from 'node:fs';
import { FsIndex } from '../../agent/src/pedigree/live.js';
import type { Mount } from '../../agent/src/pedigree/mounts.js';
import { randomBytes } from 'node:crypto';
import { tmpdir, cpus } from 'node:os';
import { join } from 'node:path';
import { CLI, ROOT, guestArtifacts } from '../helpers/paths.js';
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

const wall = (f: () => void): number => {
  const t0 = process.hrtime.bigint();
  f();
  return Number(process.hrtime.bigint() - t0) / 1e6;
};

/**
 * The pedigree index on a volume of BENCH_FILES files, on the host (a loop
 * mount) against batched filefrag and debugfs icheck in the same run, and in
 * the guest (index build only: the guest has no e2fsprogs).
 */
async function pedigreeBench(tmp: string): Promise<void> {
  const nFiles = Number(process.env['BENCH_FILES'] ?? 100_000);
  const img = join(tmp, 'many.img');
  const t0 = Date.now();
  execFileSync(join(ROOT, 'test/fixtures/build-many-files.sh'), [img, String(nFiles), '2G'], { stdio: 'ignore' });
  add(`pedigree: ${nFiles}-file volume built`, fmtMs(Date.now() - t0), `test/fixtures/build-many-files.sh many.img ${nFiles} 2G`);
  const mnt = join(tmp, 'mnt');
  mkdirSync(mnt);
  let loop = '';
  try {
    loop = execFileSync('losetup', ['-f', '--show', '-r', img], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] }).trim();
    execFileSync('mount', ['-t', 'ext4', '-o', 'ro', loop, mnt], { stdio: ['ignore', 'pipe', 'pipe'] });
  } catch (e) {
    if (loop) execFileSync('losetup', ['-d', loop]);
    add('pedigree (host)', `skipped: no loop mount here (${(e as Error).message.split('\n')[0]})`, 'losetup -f --show -r; mount -o ro');
    loop = '';
  }
  if (loop) {
    try {
      const { fiemap } = await import('../../agent/src/native/index.js');
      const mount: Mount = { mountPoint: mnt, devNum: '0:0', root: '/', fsType: 'ext4', readOnly: true };
      const list = join(tmp, 'files.list');
      execFileSync('sh', ['-c', `find ${mnt} -type f -print0 > ${list}`]);
      const filefrag = (): number => wall(() => execFileSync('sh', ['-c', `xargs -0 -a ${list} filefrag -e > /dev/null`]));
      filefrag(); // warm: the dentry, inode and extent caches are hot for both
      await FsIndex.build(mount, 0, fiemap, { watch: false });
      const ff = Math.min(filefrag(), filefrag(), filefrag());
      const builds: number[] = [];
      let fs: FsIndex | undefined;
      for (let i = 0; i < 3; i++) {
        fs = undefined;
        const t = process.hrtime.bigint();
        fs = await FsIndex.build(mount, 0, fiemap, { watch: false });
        builds.push(Number(process.hrtime.bigint() - t) / 1e6);
      }
      // Heap of an index, in a fresh process with a real gc: used heap with the index minus without.
      const memScript =
        `const { FsIndex } = await import('${join(ROOT, 'build/agent/src/pedigree/live.js')}'); const { fiemap } = await import('${join(ROOT, 'build/agent/src/native/index.js')}');` +
        `gc(); const h0 = process.memoryUsage().heapUsed; const fs = await FsIndex.build(${JSON.stringify(mount)}, 0, fiemap, { watch: false });` +
        `gc(); console.log(process.memoryUsage().heapUsed - h0, fs.index.size);`;
      const [heap, extents] = execFileSync(process.execPath, ['--expose-gc', '--input-type=module', '-e', memScript], { encoding: 'utf8' }).trim().split(' ').map(Number) as [number, number];
      const idx = fs!;
      const nIndexed = [...idx.byPath.values()].filter((f) => f.kind === 'file').length;
      const build = Math.min(...builds);
      add('pedigree host: index build (warm, best of 3)', `${fmtMs(build)}, ${Math.round(nIndexed / (build / 1000))} files/s`, `FsIndex.build on a loop-mounted ro image (${nIndexed} files, ${idx.byPath.size - nIndexed} dirs)`);
      add('pedigree host: batched filefrag (warm, best of 3)', `${fmtMs(ff)}, ${Math.round(nIndexed / (ff / 1000))} files/s`, 'find MNT -type f -print0 > list; xargs -0 -a list filefrag -e');
      add('pedigree host: index build vs batched filefrag', `${(ff / build).toFixed(2)}× (target ≥ 2×)`, '');
      const count = Number(/Block count:\s+(\d+)/.exec(execFileSync('debugfs', ['-R', 'stats', img], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }))![1]);
      const blocks = Array.from({ length: 1000 }, (_, i) => Math.floor(((i + 0.5) / 1000) * count));
      const ic = wall(() => execFileSync('debugfs', ['-R', `icheck ${blocks.join(' ')}`, img], { stdio: ['ignore', 'pipe', 'ignore'] }));
      add('pedigree host: debugfs icheck, 1000 blocks', fmtMs(ic), 'debugfs -R "icheck B1 … B1000" many.img');
      add('pedigree host: memory per extent', `${Math.round(heap / extents)} bytes (${extents} extents, ${(heap / 1048576).toFixed(0)} MiB heap, paths and directory entries included)`, 'node --expose-gc: heapUsed after gc with the index minus before');
      const n = 100_000;
      const lt = wall(() => {
        for (let i = 0; i < n; i++) idx.index.lookup([{ offset: Math.floor(Math.random() * count) * 4096, length: 4096 }]);
      });
      add('pedigree host: lookup of one 4 KiB range', `${((lt / n) * 1000).toFixed(2)} µs`, `${n} random PedigreeIndex.lookup calls`);
      const paths = [...idx.byPath.values()].filter((f) => f.kind === 'file').slice(0, 2000).map((f) => f.path);
      const rt = wall(() => {
        for (const p of paths) idx.remap(p);
      });
      add('pedigree host: one-file re-map (what a chokidar event does)', `${((rt / paths.length) * 1000).toFixed(1)} µs`, `FsIndex.remap of ${paths.length} files, average`);
      const tf = process.hrtime.bigint();
      await idx.fresh();
      const fv = Number(process.hrtime.bigint() - tf) / 1e6;
      add('pedigree host: re-validation before a lookup (nothing changed)', fmtMs(fv), 'FsIndex.fresh() (one lstat per indexed path)');
    } finally {
      execFileSync('umount', [mnt]);
      execFileSync('losetup', ['-d', loop]);
    }
  }
  // chokidar end to end on a writable directory: file written → index current.
  const wdir = join(tmp, 'watched');
  mkdirSync(wdir);
  for (let i = 0; i < 1000; i++) writeFileSync(join(wdir, `f${i}`), 'x');
  const { fiemap } = await import('../../agent/src/native/index.js');
  const live = await FsIndex.build({ mountPoint: wdir, devNum: '0:0', root: '/', fsType: 'ext4', readOnly: false }, 0, fiemap);
  await live.watching;
  const lat: number[] = [];
  for (let i = 0; i < 50; i++) {
    const p = join(wdir, `f${i}`);
    const before = live.updates;
    const t = process.hrtime.bigint();
    appendFileSync(p, 'more data\n');
    while (live.updates === before) await new Promise((r) => setImmediate(r));
    lat.push(Number(process.hrtime.bigint() - t) / 1e6);
  }
  await live.close();
  lat.sort((a, b) => a - b);
  add('pedigree host: write → chokidar event → index current', `median ${fmtMs(lat[25]!)}`, '50 appends to files of a watched 1000-file directory (host filesystem)');

  const art = guestArtifacts();
  if (typeof art === 'string') {
    add('pedigree guest', `skipped: ${art}`, '');
    return;
  }
  const disk = join(tmp, 'guest-base.img');
  copyFileSync(join(art.disks, 'base.img'), disk);
  const vm = await GuestVm.boot({ disk, extraDisk: img, noAgent: true });
  try {
    const script = "import('/opt/vmsubst/build/agent/src/pedigree/live.js').then(async ({ FsIndex }) => { const { fiemap } = await import('/opt/vmsubst/build/agent/src/native/index.js'); " +
      "const m = { mountPoint: '/mnt/extra', devNum: '0:0', root: '/', fsType: 'ext4', readOnly: true }; await FsIndex.build(m, 0, fiemap, { watch: false }); " +
      "const t = performance.now(); const fs = await FsIndex.build(m, 0, fiemap, { watch: false }); console.log('BUILD', performance.now() - t, fs.byPath.size); })";
    const out = await vm.sh(`node -e "${script}"`, 900_000);
    const m = /BUILD ([\d.]+) (\d+)/.exec(out)!;
    const ms = Number(m[1]);
    add('pedigree guest: index build (warm, TCG)', `${fmtMs(ms)}, ${Math.round(nFiles / (ms / 1000))} files/s`, 'FsIndex.build on /mnt/extra in the guest (second build)');
  } finally {
    vm.kill();
  }
}

/**
 * The pause of each apply mode for a 4 MiB bundle (64 ranges of 64 KiB over
 * a 64 MiB disk), the median of 3 runs, each into a fresh firmware-only VM
 * (raw-file: a fresh image). The target is a pause of at most 20 ms.
 */
async function applyModesBench(tmp: string): Promise<void> {
  const dir = join(tmp, 'modes');
  mkdirSync(dir);
  const base = join(dir, 'base.img');
  const patched = join(dir, 'patched.img');
  const size = 64 << 20;
  const data = randomBytes(size);
  data[510] = 0; // no boot signature: the firmware must not run random bytes
  data[511] = 0;
  writeFileSync(base, data);
  for (let i = 0; i < 64; i++) randomBytes(64 << 10).copy(data, i * (1 << 20) + 8192);
  writeFileSync(patched, data);
  const bundle = join(dir, 'b.bundle');
  timed(['diff', base, patched, '-o', bundle, '--json']);
  const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
  const img = join(dir, 'disk.img');
  const noQemu = whyNoQemu();
  for (const mode of ['nbd', 'overlay'] as const) {
    if (noQemu) {
      add(`apply --mode ${mode} (4 MiB)`, `skipped: ${noQemu}`, '');
      continue;
    }
    const pauses: number[] = [];
    const windows: number[] = [];
    for (let run = 0; run < 3; run++) {
      copyFileSync(base, img);
      const vm = await FirmwareVm.start({ image: img, dir });
      try {
        const r = JSON.parse(timed(['apply', bundle, '--qmp', vm.qmpSocket, '--mode', mode, '--json']).stdout) as { 'pause-ms': number; 'window-ms': number; overlay?: { path: string } };
        pauses.push(r['pause-ms']);
        windows.push(r['window-ms']);
        if (r.overlay) rmSync(r.overlay.path, { force: true });
      } finally {
        vm.kill();
      }
    }
    add(`apply --mode ${mode} (4 MiB): guest paused / disk mixed`, `${fmtMs(median(pauses))} / ${fmtMs(median(windows))}`, `vmsubst apply b.bundle --qmp SOCK --mode ${mode} --json (median of 3, firmware-only VM under TCG)`);
  }
  const windows: number[] = [];
  for (let run = 0; run < 3; run++) {
    copyFileSync(base, img);
    windows.push((JSON.parse(timed(['apply', bundle, '--image', img, '--mode', 'raw-file', '--json']).stdout) as { 'window-ms': number })['window-ms']);
  }
  add('apply --mode raw-file (4 MiB): write window', fmtMs(median(windows)), 'vmsubst apply b.bundle --image IMG --mode raw-file --json (median of 3; not paused)');
}

async function main(): Promise<void> {
  if (process.env['BENCH_ONLY'] === 'apply-modes') {
    const tmp = mkdtempSync(join(tmpdir(), 'vmsubst-bench-'));
    try {
      await applyModesBench(tmp);
    } finally {
      rmSync(tmp, { recursive: true, force: true });
    }
    printTable('');
    return;
  }
  if (process.env['BENCH_ONLY'] === 'pedigree') {
    const tmp = mkdtempSync(join(tmpdir(), 'vmsubst-bench-'));
    try {
      await pedigreeBench(tmp);
    } finally {
      rmSync(tmp, { recursive: true, force: true });
    }
    printTable('');
    return;
  }
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

    await applyModesBench(tmp);
    await pedigreeBench(tmp);
    printTable(tmp);
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
}

function printTable(tmp: string): void {
  const w1 = Math.max(...rows.map((r) => r.what.length));
  const w2 = Math.max(...rows.map((r) => r.value.length));
  console.log(`\n| ${'measure'.padEnd(w1)} | ${'value'.padEnd(w2)} | command |`);
  console.log(`|${'-'.repeat(w1 + 2)}|${'-'.repeat(w2 + 2)}|---------|`);
  for (const r of rows) console.log(`| ${r.what.padEnd(w1)} | ${r.value.padEnd(w2)} | ${r.command ? '`' + (tmp ? r.command.replaceAll(tmp, '$TMP') : r.command) + '`' : ''} |`);
}

main().catch((e: unknown) => {
  console.error(`bench failed: ${(e as Error).stack ?? String(e)}`);
  process.exit(1);
});
