/**
 * Collateral damage: a guest with a warm page cache over many files, a
 * substitution that touches one of them, then what is left of the cache of
 * the others and what reading them again costs — vmsubst against
 * drop_caches and against POSIX_FADV_DONTNEED (vmtouch -e) on the touched
 * file.
 *
 *   BENCH_COLLATERAL_FILES   untouched files (default 2000)
 *   BENCH_COLLATERAL_KIB     size of each (default 100)
 */
import { copyFileSync, mkdirSync, writeFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import type { GuestVm } from '../helpers/vm.js';
import {
  applyInto,
  artifacts,
  bootGuest,
  buildVolume,
  bundlePair,
  notifyGuest,
  patchInPlace,
  stageTable,
  versionOf,
} from './guest.js';
import { fmtMs, fmtPct, fmtStats, fmtStatsMs, stats, type Benchmark, type Section } from './table.js';

const VPROG = '/mnt/data/bin/vprog';
const VMTOUCH = '/mnt/data/bin/vmtouch';
const FILES = '/mnt/data/files';

/** vmtouch's summary: resident (or touched) pages, total pages, elapsed seconds. */
function parseVmtouch(out: string): { resident: number; total: number; ms: number } {
  const res = /Resident Pages: (\d+)\/(\d+)/.exec(out);
  const touched = /Touched Pages: (\d+)/.exec(out);
  const el = /Elapsed: ([\d.]+) seconds/.exec(out);
  if (!el || (!res && !touched)) throw new Error(`unexpected vmtouch output: ${out.slice(0, 300)}`);
  const n = Number((res ?? touched)![1]);
  return { resident: n, total: res ? Number(res[2]) : n, ms: Number(el[1]) * 1000 };
}

interface Method {
  name: string;
  /** What the guest (or host) does after the blocks are written. */
  act(vm: GuestVm, fwd: string, tmp: string): Promise<Record<string, number> | undefined>;
}

const METHODS: Method[] = [
  { name: 'vmsubst notify', act: async (vm, fwd, tmp) => (await notifyGuest(vm, fwd, tmp)).report['timings-ms'] },
  { name: 'echo 3 > drop_caches', act: async (vm) => void (await vm.sh('echo 3 > /proc/sys/vm/drop_caches')) },
  {
    name: 'vmtouch -e (POSIX_FADV_DONTNEED) on the touched file',
    act: async (vm) => void (await vm.sh(`${VMTOUCH} -e -q ${VPROG}`)),
  },
];

interface Sample {
  untouched: number;
  total: number;
  rereadMs: number;
  touchedResident: number;
  touchedTotal: number;
  exec: string;
  instance: string;
}

export const collateral: Benchmark = {
  name: 'collateral',
  summary: 'collateral damage to a warm page cache: vmsubst vs drop_caches vs fadvise DONTNEED',
  async run(ctx): Promise<Section> {
    const art = artifacts();
    const nFiles = Number(process.env['BENCH_COLLATERAL_FILES'] ?? 2000);
    const kib = Number(process.env['BENCH_COLLATERAL_KIB'] ?? 100);
    const img = buildVolume(ctx.tmp, 'collateral', Math.ceil(((nFiles * kib) / 1024) * 1.15 + 64), (root) => {
      for (let i = 0; i < nFiles; i++) {
        const d = join(root, 'files', `d${String(Math.floor(i / 100)).padStart(3, '0')}`);
        if (i % 100 === 0) mkdirSync(d, { recursive: true });
        writeFileSync(join(d, `f${String(i).padStart(5, '0')}`), randomBytes(kib * 1024));
      }
    });
    const patched = join(ctx.tmp, 'collateral-v2.img');
    patchInPlace(img, patched, '/bin/vprog', join(art.disks, 'vprog-v2'));
    const { fwd, rev } = await bundlePair(ctx.tmp, 'collateral', img, patched);
    const disk = join(ctx.tmp, 'collateral-vm.img');
    copyFileSync(img, disk);
    const vm = await bootGuest({ disk, memoryMiB: 1024 + Math.ceil((nFiles * kib) / 1024) });
    const samples = new Map<string, Sample[]>(METHODS.map((m) => [m.name, []]));
    const stages: Array<Record<string, number>> = [];
    const resident = async (path: string): Promise<{ resident: number; total: number; ms: number }> =>
      parseVmtouch(await vm.sh(`${VMTOUCH} ${path}`, 600_000));
    try {
      ctx.log(`booted (agent ready after ${fmtMs(vm.agentReadyMs)}); ${nFiles} files of ${kib} KiB`);
      // One substitution back and forth first: the agent builds its index of the volume once.
      await applyInto(vm, fwd);
      await notifyGuest(vm, fwd, ctx.tmp);
      await applyInto(vm, rev);
      await notifyGuest(vm, rev, ctx.tmp);
      for (let i = 0; i < ctx.runs; i++) {
        for (const m of METHODS) {
          // Warm: every page of every file, and a running vprog mapping the touched file.
          await vm.sh(`${VMTOUCH} -t -q ${FILES} ${VPROG}`, 600_000);
          await vm.sh(`${VPROG} 200 > /tmp/run.out 2>&1 & echo $! > /tmp/run.pid; sleep 0.3`);
          await applyInto(vm, fwd);
          const t = await m.act(vm, fwd, ctx.tmp);
          if (t) stages.push(t);
          const after = await resident(FILES);
          const touched = await resident(VPROG);
          const exec = versionOf(await vm.sh(VPROG));
          const inst = await vm.run('sleep 0.5; tail -n 1 /tmp/run.out');
          const reread = parseVmtouch(await vm.sh(`${VMTOUCH} -t ${FILES}`, 600_000));
          samples.get(m.name)!.push({
            untouched: after.resident,
            total: after.total,
            rereadMs: reread.ms,
            touchedResident: touched.resident,
            touchedTotal: touched.total,
            exec,
            instance: versionOf(inst.out),
          });
          // Back to v1: stop the program, write the old blocks, drop what is cached of vprog.
          await vm.sh('P=$(cat /tmp/run.pid); kill $P; wait $P 2>/dev/null; true');
          await applyInto(vm, rev);
          if (m.name === 'vmsubst notify') await notifyGuest(vm, rev, ctx.tmp);
          else await vm.sh(`${VMTOUCH} -e -q ${VPROG}`);
          const back = versionOf(await vm.sh(VPROG));
          if (back !== 'v1') throw new Error(`after restoring, vprog prints ${back}`);
          ctx.log(
            `run ${i + 1}, ${m.name}: untouched resident ${after.resident}/${after.total}, reread ${fmtMs(reread.ms)}, new exec ${exec}`,
          );
        }
      }
    } finally {
      vm.kill();
    }
    const uniq = (xs: string[]): string => [...new Set(xs)].join(', ');
    const rows = METHODS.map((m) => {
      const xs = samples.get(m.name)!;
      return [
        m.name,
        fmtStats(
          xs.map((x) => x.untouched / x.total),
          fmtPct,
        ),
        fmtStatsMs(xs.map((x) => x.rereadMs)),
        `${stats(xs.map((x) => x.touchedResident)).median}/${xs[0]?.touchedTotal ?? '?'} pages`,
        uniq(xs.map((x) => x.exec)),
        uniq(xs.map((x) => x.instance)),
      ];
    });
    const reread = (name: string): number => stats(samples.get(name)!.map((x) => x.rereadMs)).median;
    const ratio = reread(METHODS[1]!.name) / reread(METHODS[0]!.name);
    return {
      title: 'Collateral damage to the page cache',
      about: `
A guest (test kernel under TCG, agent running) whose volume holds ${nFiles} files of ${kib} KiB
(${((nFiles * kib) / 1024).toFixed(0)} MiB, \`/files\`) besides \`/bin/vprog\`; every page of every file is cached
(\`vmtouch -t\`), and a running \`vprog 200\` maps the program. The substitution rewrites vprog's
blocks (\`vmsubst apply\`), then one of three ways makes the guest drop the old contents:

- \`vmsubst notify\`: the agent invalidates the changed range of the touched file only;
- \`echo 3 > /proc/sys/vm/drop_caches\`: what an operator without the module does;
- \`vmtouch -e /bin/vprog\`: \`POSIX_FADV_DONTNEED\` on the touched file only, which cannot drop
  pages a process maps.

Then: the residency of the untouched files (\`vmtouch\`, mincore), what is left cached of the
touched file, what a new exec and the running instance print, and the time to read every page of
the untouched files again (\`vmtouch -t\`, its own elapsed time, inside the guest). ${ctx.runs} rounds,
the three methods interleaved; each round re-warms the cache and restores v1 (checked).`,
      tables: [
        {
          title: `Untouched files and the touched file after the substitution, ${ctx.runs} rounds`,
          command:
            'vmsubst apply collateral.fwd.bundle …; then notify | drop_caches | vmtouch -e /mnt/data/bin/vprog; vmtouch /mnt/data/files; vmtouch -t /mnt/data/files',
          columns: [
            'method',
            'untouched files still cached',
            'reading them again',
            'touched file cached afterwards',
            'new exec prints',
            'running instance prints',
          ],
          rows,
        },
        stageTable(
          'Agent report: per-stage timings of the vmsubst rounds (timings-ms)',
          'vmsubst notify collateral.fwd.bundle --json | .["timings-ms"]',
          stages,
        ),
      ],
      reading: [
        `drop_caches empties the cache of every untouched file: reading them again costs ${ratio.toFixed(1)}× what it costs after the vmsubst substitution, which leaves them cached.`,
        ...METHODS.slice(1).map((m) => {
          const xs = samples.get(m.name)!;
          return `${m.name}: a new exec printed ${uniq(xs.map((x) => x.exec))}; ${stats(xs.map((x) => x.touchedResident)).median} of the touched file's ${xs[0]?.touchedTotal ?? '?'} pages stayed cached — the ones the running vprog maps, which neither drop_caches nor POSIX_FADV_DONTNEED can drop, so the old code stays in the cache.`;
        }),
        "With vmsubst the touched file's cached pages afterwards are new ones: the module zapped the mappings of the changed range (even_cows = 0) and dropped it, and the running instance and the exec read it back from the new blocks.",
      ],
    };
  },
};
