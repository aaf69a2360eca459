/**
 * The headline: time to new code on a real system. The packaging suite's
 * Debian 12 image boots under QEMU with systemd; the agent and its module are
 * installed from the .debs (DKMS builds the module in the guest). A service,
 * `vprog serve` under a systemd unit, answers on a TCP port with its version,
 * pid and the number of requests it has served (in-memory state). Four ways to
 * get the new code, interleaved round by round:
 *   live       vmsubst apply --notify (one CLI process)
 *   no module  vmsubst apply, then systemctl stop, drop_caches, systemctl start
 *   kexec      vmsubst apply, then kexec -l and systemctl kexec
 *   reboot     vmsubst apply, then systemctl reboot
 * Each ends when a new request to the service and a new exec both show v2.
 * What survived each: the service's process, its state, the page cache of
 * files the patch did not touch.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { CACHE, ROOT } from '../helpers/paths.js';
import { GuestVm } from '../helpers/vm.js';
import { waitFor, withTimeout } from '../helpers/timeout.js';
import {
  applyInto,
  applyNotify,
  artifacts,
  bundlePair,
  cliStartMs,
  distinctOf,
  partMedians,
  perRound,
  trustedKey,
  stageTable,
} from './guest.js';
import { fmtMs, fmtStats, fmtStatsMs, stats, timeAsync, type Benchmark, type Section } from './table.js';

const IMAGE = join(CACHE, 'debian-guest');
const DEBS = join(ROOT, 'build/packaging/deb');
const AGENT = 'vmsubst-agent.service';
const SERVICE = 'vprog.service';
const PORT = 7070;
const PROG = '/mnt/data/bin/vprog';
/** Files the patch does not touch, read into the page cache before every method: one on the patched volume, one on /. */
const WARM = ['/mnt/data/share/filler', '/var/tmp/warm.bin'];

const UNIT_TEXT = `[Unit]
Description=vprog, the benchmark's service (answers on 127.0.0.1:${PORT})
RequiresMountsFor=/mnt/data

[Service]
ExecStart=${PROG} serve ${PORT}

[Install]
WantedBy=multi-user.target
`;

/**
 * One guest command: polls the service every 50 ms until it answers with `want` (it may still be
 * starting after a boot). `vprog ask` is itself a new exec of the program: it prints the service's
 * answer and its own version.
 */
function untilServes(want: string, limitS = 180): string {
  return (
    `n=0; until a=$(${PROG} ask ${PORT}) && case "$a" in *"service: vprog version ${want} "*) true;; *) false;; esac; ` +
    `do n=$((n+1)); [ $n -lt ${limitS * 20} ] || { echo "$a"; exit 1; }; sleep 0.05; done; echo "$a"`
  );
}

interface Answer {
  version: string;
  pid: number;
  served: number;
  exec: string;
}

function parseAnswer(out: string): Answer {
  const s = /service: vprog version (v\d) pid=(\d+) served=(\d+)/.exec(out);
  const e = /exec: vprog version (v\d)/.exec(out);
  if (!s) throw new Error(`the service did not answer: ${out.trim().slice(0, 200)}`);
  return { version: s[1]!, pid: Number(s[2]), served: Number(s[3]), exec: e?.[1] ?? '?' };
}

interface Sample {
  total: number;
  parts: Record<string, number>;
  answer: Answer;
  before: Answer;
  /** Resident share of the WARM files afterwards, 0–1. */
  cached: number;
}

type Method = 'live' | 'nomod' | 'kexec' | 'reboot';

/** The kexec-tools packages the image lacks, or why they cannot be had. */
function kexecDebs(dir: string): string | undefined {
  const r = spawnSync(join(ROOT, 'test/guest/download-debs.sh'), ['kexec-tools', dir, join(IMAGE, 'root.img')], {
    encoding: 'utf8',
  });
  if (r.status === 0) return undefined;
  return r.stderr.trim().split('\n').pop() ?? `download-debs.sh exited ${r.status}`;
}

/** Why the benchmark cannot run here, or undefined. */
function unavailable(): string | undefined {
  if (existsSync(join(IMAGE, 'unavailable.txt'))) return readFileSync(join(IMAGE, 'unavailable.txt'), 'utf8').trim();
  if (!existsSync(join(IMAGE, 'root.img'))) return `${join(IMAGE, 'root.img')} is missing (make debian-guest)`;
  if (!existsSync(DEBS) || !readdirSync(DEBS).some((f) => f.startsWith('vmsubst-agent_')))
    return `no vmsubst-agent .deb in ${DEBS} (make deb)`;
  return undefined;
}

async function waitActive(vm: GuestVm, unit: string): Promise<void> {
  await waitFor(
    300_000,
    `${unit} active`,
    async () => ((await vm.run(`systemctl is-active ${unit}`)).out.trim() === 'active' ? true : undefined),
    250,
  );
}

/** The resident share of the WARM files (vmtouch: mincore). */
async function residency(vm: GuestVm): Promise<number> {
  const out = await vm.sh(`vmtouch ${WARM.join(' ')}`);
  const m = /Resident Pages: (\d+)\/(\d+)/.exec(out);
  if (!m) throw new Error(`vmtouch printed no residency: ${out}`);
  return Number(m[1]) / Number(m[2]);
}

/** Reads the WARM files into the page cache and asks the service once: the state before a method. */
async function before(vm: GuestVm): Promise<Answer> {
  await vm.sh(`cat ${WARM.join(' ')} > /dev/null`);
  return parseAnswer(await vm.sh(untilServes('v1', 30)));
}

/** The `systemd-analyze time` of the boot that just ended: kernel, initrd and userspace seconds. */
async function bootStages(vm: GuestVm): Promise<Record<string, number>> {
  const out = await vm.sh('systemd-analyze time 2>&1 | head -n 1 || true');
  const stages: Record<string, number> = {};
  for (const m of out.matchAll(/([\d.]+)(ms|s) \((\w+)\)/g)) stages[m[3]!] = Number(m[1]) * (m[2] === 's' ? 1000 : 1);
  return stages;
}

export const headline: Benchmark = {
  name: 'headline',
  summary: 'time to new code on the Debian systemd guest: live vs systemctl reboot vs kexec vs restart',
  async run(ctx): Promise<Section> {
    const why = unavailable();
    if (why) throw new Error(`the Debian guest cannot run here: ${why}`);
    const art = artifacts();
    const base = join(art.disks, 'base.img');
    const { fwd, rev } = await bundlePair(ctx.tmp, 'vprog', base, join(art.disks, 'patched.img'));
    const disk = join(ctx.tmp, 'data.img');
    copyFileSync(base, disk);

    // The extra disk: the packages, kexec-tools, the initrd for kexec, vmtouch, the service's unit.
    const tree = join(ctx.tmp, 'extra');
    mkdirSync(join(tree, 'debs'), { recursive: true });
    for (const f of readdirSync(DEBS)) copyFileSync(join(DEBS, f), join(tree, 'debs', f));
    const kexecWhy = kexecDebs(join(CACHE, 'guest-debs/kexec-tools'));
    if (!kexecWhy) {
      mkdirSync(join(tree, 'kexec'));
      for (const f of readdirSync(join(CACHE, 'guest-debs/kexec-tools')).filter((f) => f.endsWith('.deb')))
        copyFileSync(join(CACHE, 'guest-debs/kexec-tools', f), join(tree, 'kexec', f));
    } else ctx.log(`kexec: not measured: ${kexecWhy}`);
    copyFileSync(join(IMAGE, 'initramfs.cpio'), join(tree, 'initramfs.cpio'));
    copyFileSync('/usr/bin/vmtouch', join(tree, 'vmtouch'));
    writeFileSync(join(tree, SERVICE), UNIT_TEXT);
    const extra = join(ctx.tmp, 'extra.img');
    execFileSync('mkfs.ext4', ['-q', '-F', '-d', tree, extra, '128M']);
    const root = join(ctx.tmp, 'root.qcow2');
    execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', '-F', 'raw', '-b', join(IMAGE, 'root.img'), root]);

    const vm = await withTimeout(420_000, 'boot', () =>
      GuestVm.boot({
        disk,
        extraDisk: extra,
        memoryMiB: 1536,
        bootTimeoutMs: 400_000,
        reboot: true,
        system: {
          rootImage: root,
          rootFormat: 'qcow2',
          initrd: join(IMAGE, 'initramfs.cpio'),
          append: ['systemd.show_status=0', 'rd.udev.log_level=3', 'udev.log_level=3'],
        },
      }),
    );
    const samples: Record<Method, Sample[]> = { live: [], nomod: [], kexec: [], reboot: [] };
    const stages: Array<Record<string, number>> = [];
    const boots: Record<'kexec' | 'reboot', Array<Record<string, number>>> = { kexec: [], reboot: [] };
    const agentAfterBoot: number[] = [];
    const cliStart: number[] = [];
    let installMs = 0;
    try {
      ctx.log(`booted in ${fmtMs(vm.bootMs)}; installing the packages (DKMS builds the module in the guest)`);
      const console = async (): Promise<void> => {
        await vm.sh('export SYSTEMD_PAGER=cat SYSTEMD_COLORS=0 TERM=dumb');
      };
      await console();
      await vm.sh('mkdir -p /mnt/pkgs && mount -o ro /dev/disk/by-id/virtio-vmsubst-extra /mnt/pkgs');
      await vm.sh('systemctl start mnt-data.mount || mountpoint -q /mnt/data', 360_000);
      const t0 = performance.now();
      await vm.sh(
        'dpkg -i /mnt/pkgs/debs/vmsubst-dkms_*.deb /mnt/pkgs/debs/vmsubst-agent_*.deb > /root/install.log 2>&1',
        900_000,
      );
      installMs = performance.now() - t0;
      if (!kexecWhy) {
        // Reboots stay reboots: kexec-tools must not turn `systemctl reboot` into a kexec.
        await vm.sh(
          "echo 'kexec-tools kexec-tools/load_kexec boolean false' | debconf-set-selections && " +
            'DEBIAN_FRONTEND=noninteractive dpkg -i /mnt/pkgs/kexec/*.deb > /root/kexec-install.log 2>&1 && ' +
            'cp /mnt/pkgs/initramfs.cpio /boot/vmsubst-initrd.cpio',
          300_000,
        );
      }
      await vm.sh(
        `install -m 0755 /mnt/pkgs/vmtouch /usr/local/bin/vmtouch && cp /mnt/pkgs/${SERVICE} /etc/systemd/system/ && ` +
          `systemctl daemon-reload && systemctl enable --now ${SERVICE} && ` +
          'dd if=/dev/urandom of=/var/tmp/warm.bin bs=1M count=8 status=none',
      );
      await waitActive(vm, AGENT);
      await trustedKey(vm, ctx.tmp, async () => {
        await vm.sh(`systemctl restart ${AGENT}`, 300_000);
        await waitActive(vm, AGENT);
      });
      ctx.log(`installed in ${fmtMs(installMs)}; the agent and ${SERVICE} are active`);

      /** Back to v1 after a method: the agent must be up again after a boot; the service remaps to v1. */
      const restore = async (): Promise<void> => {
        await waitActive(vm, AGENT);
        await applyNotify(vm, rev, ctx.tmp);
        parseAnswer(await vm.sh(untilServes('v1', 30)));
      };
      const measure = async (
        method: Method,
        run: () => Promise<{ parts: Record<string, number>; out: string }>,
      ): Promise<void> => {
        const b = await before(vm);
        const t = performance.now();
        const r = await run();
        const total = performance.now() - t;
        const answer = parseAnswer(r.out);
        if (answer.version !== 'v2' || answer.exec !== 'v2')
          throw new Error(`${method}: the service answered ${answer.version}, a new exec printed ${answer.exec}`);
        samples[method].push({ total, parts: r.parts, answer, before: b, cached: await residency(vm) });
      };
      const rebootBy = async (how: 'kexec' | 'reboot'): Promise<Record<string, number>> => {
        const parts: Record<string, number> = {};
        parts['apply'] = (await applyInto(vm, fwd)).ms;
        if (how === 'kexec') {
          const k = await timeAsync(() =>
            vm.sh('kexec -l /boot/vmlinuz-$(uname -r) --initrd=/boot/vmsubst-initrd.cpio --reuse-cmdline', 120_000),
          );
          parts['kexec -l'] = k.ms;
        }
        const n = vm.boots;
        const t = performance.now();
        vm.send(`systemctl ${how}`);
        await vm.waitForBoot(n + 1, 400_000);
        parts[`${how} → console`] = performance.now() - t;
        return parts;
      };

      // An agent in service has substituted before: one round trip, untimed, so that the first
      // measured one is not its first (index built, code compiled, journal open).
      await applyNotify(vm, fwd, ctx.tmp, { plain: true });
      await restore();
      const clock = 'cat /sys/devices/system/clocksource/clocksource0/current_clocksource';
      const clocks: Record<string, string> = { boot: (await vm.sh(clock)).trim() };

      for (let i = 0; i < ctx.runs; i++) {
        cliStart.push(await cliStartMs());
        await measure('live', async () => {
          // The bundle alone; its id is never the agent's latest (every restore's is fresh).
          const n = await applyNotify(vm, fwd, ctx.tmp, { plain: true });
          stages.push({
            ...Object.fromEntries(Object.entries(n.phases ?? {}).map(([k, v]) => [`host phase: ${k}`, v])),
            ...Object.fromEntries(Object.entries(n.prepare ?? {}).map(([k, v]) => [`prepare: ${k}`, v])),
            ...Object.fromEntries(Object.entries(n.report['timings-ms']).map(([k, v]) => [`commit: ${k}`, v])),
          });
          const g = await timeAsync(() => vm.sh(untilServes('v2')));
          return { parts: { 'apply --notify': n.ms, 'request + exec': g.ms }, out: g.value };
        });
        await restore();

        await measure('nomod', async () => {
          const a = await applyInto(vm, fwd);
          const g = await timeAsync(() =>
            vm.sh(
              `systemctl stop ${SERVICE} && echo 3 > /proc/sys/vm/drop_caches && systemctl start ${SERVICE} && ${untilServes('v2')}`,
            ),
          );
          return { parts: { apply: a.ms, 'stop, drop_caches, start, request + exec': g.ms }, out: g.value };
        });
        await restore();

        for (const how of kexecWhy ? (['reboot'] as const) : (['kexec', 'reboot'] as const)) {
          await measure(how, async () => {
            const parts = await rebootBy(how);
            const g = await timeAsync(() => vm.sh(untilServes('v2')));
            parts['console → request + exec'] = g.ms;
            return { parts, out: g.value };
          });
          const t = performance.now();
          await console();
          await waitActive(vm, AGENT);
          agentAfterBoot.push(performance.now() - t);
          boots[how].push(await bootStages(vm));
          clocks[how] ??= (await vm.sh(clock)).trim();
          await restore();
        }
        const line = (m: Method): string => (samples[m][i] ? `${m} ${fmtMs(samples[m][i]!.total)}` : `${m} –`);
        ctx.log(`round ${i + 1}: ${(['live', 'nomod', 'kexec', 'reboot'] as const).map(line).join(', ')}`);
      }
      ctx.log(`clocksource after each kind of boot: ${JSON.stringify(clocks)}`);
    } finally {
      vm.kill();
    }
    return report(ctx.runs, samples, stages, boots, agentAfterBoot, cliStart, installMs, kexecWhy);
  },
};

function report(
  runs: number,
  samples: Record<Method, Sample[]>,
  stages: Array<Record<string, number>>,
  boots: Record<'kexec' | 'reboot', Array<Record<string, number>>>,
  agentAfterBoot: number[],
  cliStart: number[],
  installMs: number,
  kexecWhy: string | undefined,
): Section {
  const live = samples.live;
  const ratio = (xs: Sample[]): number[] => perRound(xs, live);
  const r1 = (x: number): string => `${x.toFixed(1)}×`;
  const partsOf = partMedians;
  const distinct = distinctOf<Sample>;
  // The same pid alone does not say it: a boot starts the service under the same pid often enough. Its request
  // count going on does (a new process counts from 1).
  const same = (s: Sample): boolean => s.answer.pid === s.before.pid && s.answer.served > s.before.served;
  const kept = (s: Sample): string => (same(s) ? 'same process' : 'new process');
  const state = (s: Sample): string =>
    same(s) ? 'kept (request count went on)' : `lost (count restarted at ${s.answer.served})`;
  const cache = (s: Sample): string => `${(s.cached * 100).toFixed(0)} % resident`;
  const names: Record<Method, string> = {
    live: 'live (vmsubst apply --notify)',
    nomod: 'no module (stop, drop_caches, start)',
    kexec: 'systemctl kexec',
    reboot: 'systemctl reboot',
  };
  const methods = (['live', 'nomod', 'kexec', 'reboot'] as const).filter((m) => samples[m].length > 0);
  const row = (m: Method): string[] => {
    const xs = samples[m];
    return [
      names[m],
      fmtStatsMs(xs.map((x) => x.total)),
      partsOf(xs),
      `${distinct(xs, (s) => s.answer.version)} / ${distinct(xs, (s) => s.answer.exec)}`,
      distinct(xs, kept),
      distinct(xs, state),
      distinct(xs, cache),
    ];
  };
  const bootRows = (['kexec', 'reboot'] as const)
    .filter((m) => boots[m].length > 0)
    .map((m) => {
      const keys = [...new Set(boots[m].flatMap((b) => Object.keys(b)))];
      return [
        names[m],
        keys.map((k) => `${k} ${fmtMs(stats(boots[m].map((b) => b[k] ?? 0)).median)}`).join(' + ') || '–',
      ];
    });
  const rebootRatio = stats(ratio(samples.reboot)).median;
  return {
    title: 'Headline: time to new code on a Debian 12 system with systemd',
    about: `
The packaging suite's guest: Debian 12 (debootstrap) with systemd, Debian's node 18, the Debian
cloud kernel under TCG (no KVM), 2 vCPUs, 1.5 GiB. \`vmsubst-dkms\` and \`vmsubst-agent\` are
installed from this tree's .debs (DKMS built the module in the guest in ${fmtMs(installMs)});
udev and systemd start the agent on its virtio-serial port. The service is \`vprog serve\` from the
patched volume (\`/mnt/data\`, ext4, mounted read-only by fstab) under a systemd unit: it answers
each connection on 127.0.0.1:${PORT} with its version (one 4 KiB page of read-only data, the
block the patch changes), its pid and how many requests it has served.

From the host's decision (the bundle is on the hypervisor host) until **a new request to the
service and a new exec of the program both show v2**, four ways, interleaved, ${runs} rounds (the
ratios are per round, so drift of the shared machine hits all alike):

- **live**: \`vmsubst apply --notify\`, one CLI process: verify the disk (QMP + NBD), the agent
  prepares, the write, the agent commits (verify, map, classify, the module); then the request.
- **no module**: \`vmsubst apply\`, then \`systemctl stop\`, \`echo 3 > /proc/sys/vm/drop_caches\`,
  \`systemctl start\` (the stop first: pages a process maps are not dropped).
- **kexec**: \`vmsubst apply\`, \`kexec -l\` of the same kernel and initrd, \`systemctl kexec\`:
  systemd stops everything, no firmware.
- **reboot**: \`vmsubst apply\`, \`systemctl reboot\`: systemd stops everything, QEMU resets, the
  firmware, kernel and systemd start again.

The boot-based times end when the service answers v2 (polled every 50 ms from the console shell,
which systemd starts before the service). Before each method the two files that the patch does
not touch (\`${WARM.join('`, `')}\`, 9 MiB) are read into the page cache; afterwards \`vmtouch\`
says how much of them is still there. The live runs apply the bundle as it is; between methods
the reverse bundle restores v1 live (checked), with a signed one-file customization so that its
id is new every time (the agent answers a repeat of its latest id from its journal).`,
    tables: [
      {
        title: `Host decision → the service and a new exec show v2, ${runs} interleaved rounds`,
        command:
          'vmsubst apply vprog.fwd.bundle --qmp SOCK --device vblk0 --notify serial:SOCK --json | vmsubst apply …; systemctl stop vprog; echo 3 > /proc/sys/vm/drop_caches; systemctl start vprog | vmsubst apply …; kexec -l …; systemctl kexec | vmsubst apply …; systemctl reboot',
        columns: [
          'method',
          'time to new code',
          'parts (medians)',
          'service / new exec',
          'service process',
          'its in-memory state',
          'untouched files cached',
        ],
        rows: [
          ...methods.map(row),
          ['of which the CLI start (vmsubst --version, alone)', fmtStatsMs(cliStart), '', '', '', '', ''],
        ],
        notes: kexecWhy ? [`kexec not measured: ${kexecWhy}`] : [],
      },
      {
        title: 'Headline ratios (per round, same run)',
        command: 'time(method) / time(live)',
        columns: ['ratio', 'median (min – max)'],
        rows: (['reboot', 'kexec', 'nomod'] as const)
          .filter((m) => samples[m].length > 0)
          .map((m) => [`${names[m]} / live`, fmtStats(ratio(samples[m]), r1)]),
      },
      {
        title: 'Where a boot spends its time (systemd-analyze time, medians)',
        command: 'systemd-analyze time',
        columns: ['method', 'stages'],
        rows: bootRows,
      },
      stageTable(
        "The live runs' stages: the CLI's phases (wall time, host), the agent's prepare and commit (guest)",
        'vmsubst apply … --notify … --json | ."phases-ms", .agent.prepare["timings-ms"], .agent.report["timings-ms"]',
        stages,
      ),
    ],
    reading: [
      `A \`systemctl reboot\` costs ${r1(rebootRatio)} the live substitution here (median of per-round ratios; target ≥ 50×)${samples.kexec.length ? `, \`systemctl kexec\` ${r1(stats(ratio(samples.kexec)).median)}` : ''}. Both end the service's process, lose its state and empty the page cache; the agent itself was active again ${fmtMs(stats(agentAfterBoot).median)} after the console came back.`,
      `Live, the service kept its process and its state and now answers from the new page; the untouched files stayed cached (${distinct(live, cache)}).`,
      `The no-module restart took ${r1(stats(ratio(samples.nomod)).median)} the live time: a small service restarts fast, but it is a new process (its state is gone) and drop_caches emptied the cache of every file (${distinct(samples.nomod, cache)}).`,
      `Under TCG every guest instruction is emulated: the agent's work and the boots are both slowed, KVM shortens both. The CLI's start (${fmtMs(stats(cliStart).median)}) is host time, in every live run.`,
    ],
  };
}
