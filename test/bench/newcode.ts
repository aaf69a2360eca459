/**
 * Time to new code: from the host's decision to the moment a new exec of the
 * patched program prints v2, three ways on the same guest and QEMU
 * configuration, interleaved run by run:
 *   live      vmsubst apply --notify (one CLI process: verify, prepare, write, commit)
 *   reboot    vmsubst apply, then system_reset → agent ready → exec
 *   no module vmsubst apply, then in the guest kill the program, drop_caches, exec
 * Also prints the agent's per-stage timings of the live runs.
 */
import { copyFileSync } from 'node:fs';
import { join } from 'node:path';
import type { GuestVm } from '../helpers/vm.js';
import {
  applyInto,
  applyNotify,
  artifacts,
  bootGuest,
  bundlePair,
  cliStartMs,
  guestRebooted,
  notifyGuest,
  distinctOf,
  partMedians,
  perRound,
  trustedKey,
  stageTable,
  versionOf,
} from './guest.js';
import { fmtMs, fmtStats, fmtStatsMs, stats, timeAsync, type Benchmark, type Section } from './table.js';

const VPROG = '/mnt/data/bin/vprog';

/** Starts a long-running vprog (a service on the old code); its pid is in /tmp/run.pid. */
async function startInstance(vm: GuestVm): Promise<void> {
  await vm.sh(`${VPROG} 200 > /tmp/run.out 2>&1 & echo $! > /tmp/run.pid`);
  await vm.sh('sleep 0.3');
}

/** Stops it (the shell is its parent: wait reaps it, so its mappings are gone). */
const KILL = 'P=$(cat /tmp/run.pid); kill $P 2>/dev/null; wait $P 2>/dev/null; true';

/** What the running instance prints now (after a few of its 200 ms ticks). */
async function instanceVersion(vm: GuestVm): Promise<string> {
  const out = await vm.run('sleep 0.5; kill -0 $(cat /tmp/run.pid) 2>/dev/null && tail -n 1 /tmp/run.out');
  return out.code === 0 ? versionOf(out.out) : 'gone';
}

interface Sample {
  total: number;
  parts: Record<string, number>;
  exec: string;
  instance: string;
}

export const newcode: Benchmark = {
  name: 'newcode',
  summary: 'time to new code: apply+notify vs reboot vs drop_caches+restart (ratio reboot/live)',
  async run(ctx): Promise<Section> {
    const art = artifacts();
    const base = join(art.disks, 'base.img');
    const disk = join(ctx.tmp, 'newcode.img');
    copyFileSync(base, disk);
    const { fwd, rev } = await bundlePair(ctx.tmp, 'vprog', base, join(art.disks, 'patched.img'));
    const vm = await bootGuest({ disk });
    const live: Sample[] = [];
    const reboot: Sample[] = [];
    const nomod: Sample[] = [];
    const stages: Array<Record<string, number>> = [];
    const cliStart: number[] = [];
    let wrongOrder = '';
    try {
      const bootMs = vm.bootMs;
      const readyMs = vm.agentReadyMs;
      ctx.log(`booted: console ${fmtMs(bootMs)}, agent ${fmtMs(readyMs)}`);
      const check = async (want: string): Promise<void> => {
        const v = versionOf(await vm.sh(VPROG));
        if (v !== want) throw new Error(`expected vprog ${want} after restoring, got ${v}`);
      };
      for (let i = 0; i < ctx.runs; i++) {
        // live: apply --notify, one CLI process
        cliStart.push(await cliStartMs());
        await trustedKey(vm, ctx.tmp); // once per boot, outside the timing: the guest trusts the host's key
        await startInstance(vm);
        {
          const t0 = performance.now();
          const n = await applyNotify(vm, fwd, ctx.tmp);
          const e = await timeAsync(() => vm.sh(VPROG));
          const total = performance.now() - t0;
          stages.push(n.report['timings-ms']);
          live.push({
            total,
            parts: { 'apply --notify': n.ms, exec: e.ms },
            exec: versionOf(e.value),
            instance: await instanceVersion(vm),
          });
        }
        await vm.sh(KILL);
        await applyInto(vm, rev);
        await notifyGuest(vm, rev, ctx.tmp);
        await check('v1');

        // no module: apply, then kill, drop_caches, exec
        await startInstance(vm);
        {
          const t0 = performance.now();
          const a = await applyInto(vm, fwd);
          const g = await timeAsync(() => vm.sh(`${KILL}; echo 3 > /proc/sys/vm/drop_caches; ${VPROG}`));
          const total = performance.now() - t0;
          nomod.push({
            total,
            parts: { apply: a.ms, 'kill + drop_caches + exec': g.ms },
            exec: versionOf(g.value),
            instance: 'killed',
          });
        }
        await applyInto(vm, rev);
        await vm.sh('echo 3 > /proc/sys/vm/drop_caches');
        await check('v1');

        // reboot: apply, system_reset, agent ready, exec
        await startInstance(vm);
        {
          const t0 = performance.now();
          const a = await applyInto(vm, fwd);
          const r = await vm.reset();
          guestRebooted(vm);
          const e = await timeAsync(() => vm.sh(VPROG));
          const total = performance.now() - t0;
          reboot.push({
            total,
            parts: {
              apply: a.ms,
              'reset → console': r.consoleMs,
              'console → agent ready': r.agentMs - r.consoleMs,
              exec: e.ms,
            },
            exec: versionOf(e.value),
            instance: 'gone (rebooted)',
          });
        }
        await applyInto(vm, rev);
        await notifyGuest(vm, rev, ctx.tmp);
        await check('v1');
        ctx.log(
          `run ${i + 1}: live ${fmtMs(live[i]!.total)}, no module ${fmtMs(nomod[i]!.total)}, reboot ${fmtMs(reboot[i]!.total)}`,
        );
      }
      // The order an operator may try first: drop_caches while the program still maps the file.
      await startInstance(vm);
      await applyInto(vm, fwd);
      wrongOrder = versionOf(await vm.sh(`echo 3 > /proc/sys/vm/drop_caches; ${KILL}; ${VPROG}`));
      ctx.log(`drop_caches before kill: new exec prints ${wrongOrder}`);
    } finally {
      vm.kill();
    }
    const ratio = (xs: Sample[]): number[] => perRound(xs, live);
    const r2 = (x: number): string => `${x.toFixed(1)}×`;
    const partsOf = partMedians;
    const outcome = distinctOf<Sample>;
    const row = (name: string, xs: Sample[], keepsRunning: string): string[] => [
      name,
      fmtStatsMs(xs.map((x) => x.total)),
      partsOf(xs),
      outcome(xs, (s) => s.exec),
      `${outcome(xs, (s) => s.instance)}${keepsRunning}`,
    ];
    const bOverA = stats(ratio(reboot));
    return {
      title: 'Time to new code',
      about: `
From the host's decision (the bundle is on the hypervisor host) to the moment a **new exec** of
the patched program (\`/bin/vprog\` of the test volume: one changed 4 KiB block) prints \`v2\`. Same
guest and QEMU configuration for all three (Debian cloud kernel under TCG, the 32 MiB test
volume as virtio-blk, agent on virtio-serial); one long-running \`vprog 200\` (a service on the old
code) is running at the decision. The three methods run interleaved, ${ctx.runs} rounds, so drift of
the shared machine hits them alike; the ratios are per round.

- **live**: \`vmsubst apply --notify\`, one CLI process: it verifies the disk (QMP + NBD), has the
  agent prepare, writes, and has the agent commit (verify, map, classify, the module), then the exec.
- **reboot**: \`vmsubst apply\`, then QMP \`system_reset\`, the console shell back, the agent ready
  (a system's services up), then the exec.
- **no module**: \`vmsubst apply\`, then in the guest kill the program, \`echo 3 >
  /proc/sys/vm/drop_caches\`, exec. (The kill must come first: drop_caches cannot drop pages a
  process maps; see the last row.)

Every time includes the CLI's start and the console round trip of the exec, the same for all.
After each round the reverse bundle restores v1 (checked). Every notification carries a one-file
customization so that its id is new (the agent answers a repeated id from its journal).`,
      tables: [
        {
          title: `Host decision → new exec prints v2, ${ctx.runs} interleaved rounds`,
          command:
            'vmsubst apply vprog.fwd.bundle --qmp SOCK --device vblk0 --notify serial:SOCK --json | vmsubst apply … ; QMP system_reset | vmsubst apply … ; kill; echo 3 > /proc/sys/vm/drop_caches; /mnt/data/bin/vprog',
          columns: ['method', 'time to new code', 'parts (medians)', 'new exec prints', 'running instance afterwards'],
          rows: [
            row('live (apply --notify)', live, ' (kept running; its next fault reads the new page)'),
            ['of which the CLI start (vmsubst --version, alone)', fmtStatsMs(cliStart), '', '', ''],
            row('reboot (system_reset)', reboot, ''),
            row('no module (kill, drop_caches, restart)', nomod, ' (a restart is a new process)'),
            ['no module, drop_caches before the kill (once)', '', '', wrongOrder, 'killed'],
          ],
        },
        {
          title: 'Headline ratios (per round, same run)',
          command: 'time(reboot) / time(live), time(no module) / time(live)',
          columns: ['ratio', 'median (min – max)'],
          rows: [
            ['reboot / live', fmtStats(ratio(reboot), r2)],
            ['no module / live', fmtStats(ratio(nomod), r2)],
          ],
        },
        stageTable(
          `Agent report: per-stage timings of the live runs (timings-ms)`,
          'vmsubst apply … --notify … --json | .agent.report["timings-ms"]',
          stages,
        ),
      ],
      reading: [
        `A reboot costs ${bOverA.median.toFixed(1)}× the live substitution here (per-round ratio, median), and it ends every running process; the live substitution leaves the running instance running, printing ${outcome(live, (s) => s.instance)} from its next fault on (the \`remap\` policy: vprog's layout did not change).`,
        `The no-module recipe took ${stats(ratio(nomod)).median.toFixed(1)}× the live time on this tiny volume, but it kills the program, and drop_caches drops the page cache of every file in the guest (the collateral benchmark shows what reading them again costs). Done in the order an operator may try first (drop_caches while the program still runs), a new exec printed ${wrongOrder}: the pages a process maps are not dropped.`,
        `Under TCG node itself is slow: of the live time, ${fmtMs(stats(cliStart).median)} is the CLI's start alone (its own row), the rest the disk's verification, the write and the agent's work (the stage table shows the agent's own share). The reboot time is the kernel and node starting, which KVM also shortens, but not to zero.`,
      ],
    };
  },
};
