/**
 * A real package upgrade, live, in the packaging suite's Debian 12 guest:
 * the immutable-root pattern. A root filesystem image (a copy of the guest's
 * golden image with the test package pkgt 1.0 installed) is attached to the
 * running guest, mounted read-only with a tmpfs overlay for writes, and runs
 * pkgt's daemons under two systemd units (RootDirectory= on the overlay) and
 * its command line tool (chroot). The patch is what an image pipeline makes:
 * `dpkg -i pkgt_2.0` into a copy of the image on the host (new inodes by
 * rename, new directory blocks, inode tables, dpkg's status). After
 * `vmsubst apply --notify`: a new exec of the tool runs 2.0 through the
 * overlay, the daemon whose policy is pin keeps answering on 1.0, the one
 * whose policy is restart is restarted on 2.0, nothing crashed, and
 * `dpkg -s` in that root says 2.0.
 */
import * as assert from 'uvu/assert';
import { spawnSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Guarded } from '../helpers/guard.js';
import type { GuestVm } from '../helpers/vm.js';
import { ROOT } from '../helpers/paths.js';
import { vmsubst } from '../helpers/cli.js';
import { waitFor, withTimeout } from '../helpers/timeout.js';
import { QmpClient } from '../../host-signal/src/qmp/index.js';

const SERIAL = 'vmsubst-sysroot';
const DEVICE = 'vblksys';
/** The read-only lower layer, the tmpfs for the overlay's upper layer, the overlay the services run in. */
const LOWER = '/sysroot.ro';
const RW = '/run/sysroot.rw';
const SYSROOT = '/sysroot';
const UNITS = { keep: 'pkgt-keep.service', restart: 'pkgt-restart.service' } as const;

interface ApplyReport {
  agent?: {
    told: boolean;
    report?: {
      restarted?: { unit: string; status: string }[];
      metadata?: {
        dentries: { dir: string; dropped: number; busy: number }[];
        inodes: { 'in-use': { ino: number; path?: string }[] };
      };
      plan?: {
        units: string[];
        'restart-required': boolean;
        reasons: string[];
        stale?: { pid: number; unit?: string; file: string; why: string }[];
      };
    };
  };
  [k: string]: unknown;
}

function host(cmd: string, args: string[]): string {
  const r = spawnSync(cmd, args, { encoding: 'utf8', maxBuffer: 64 << 20 });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} exited ${r.status}\n${r.stderr}${r.stdout}`);
  return r.stdout;
}

const unit = (name: string, exe: string): string => `[Unit]
Description=pkgt test daemon (${name})
[Service]
RootDirectory=${SYSROOT}
ExecStart=${exe} ${name} /var/log/pkgt-${name}.out
`;

async function lastLine(vm: GuestVm, name: string): Promise<string> {
  return (await vm.sh(`tail -n 1 ${SYSROOT}/var/log/pkgt-${name}.out 2>/dev/null; true`)).trim();
}

/** `name pid PID daemon V lib V (check N)` → pid and versions. */
function parseLine(line: string): { pid: number; daemon: string; lib: string } | undefined {
  const m = /pid (\d+) daemon (\S+) lib (\S+)/.exec(line);
  return m ? { pid: Number(m[1]), daemon: m[2]!, lib: m[3]! } : undefined;
}

async function answering(
  vm: GuestVm,
  name: string,
  what: string,
  ok: (l: { pid: number; daemon: string; lib: string }) => boolean,
): Promise<{ pid: number; daemon: string; lib: string }> {
  try {
    return await waitFor(
      60_000,
      what,
      async () => {
        const l = parseLine(await lastLine(vm, name));
        return l && ok(l) ? l : undefined;
      },
      250,
    );
  } catch (e) {
    const why = await vm.run(
      `tail -n 3 ${SYSROOT}/var/log/pkgt-${name}.out; systemctl status pkgt-${name}.service --no-pager 2>&1 | tail -n 12`,
    );
    throw new Error(`${(e as Error).message}\n${why.out}`);
  }
}

/**
 * Registers the live upgrade's tests on the packaging suite's guest (the packaged agent installed
 * and running); `ctx()` gives the guest and a scratch directory on the host.
 */
export function liveUpgradeTests(
  G: Guarded,
  ctx: () => { vm: GuestVm; tmp: string; restartAgent: () => Promise<void> },
  times: Record<string, number | string>,
): void {
  const S: { dir: string; before?: Record<'keep' | 'restart', { pid: number }>; report?: ApplyReport } = { dir: '' };

  G.test('live upgrade: pkgt 1.0 runs from a read-only root image with a tmpfs overlay (two units, a CLI)', () =>
    withTimeout(300_000, 'live upgrade setup', async () => {
      const { vm, tmp } = ctx();
      S.dir = join(tmp, 'pkgup');
      const t0 = Date.now();
      host(join(ROOT, 'test/fixtures/build-pkgup.sh'), [S.dir, join(ROOT, '.cache/debian-guest/root.img')]);
      const bundle = join(S.dir, 'pkgt.bundle');
      host(process.execPath, [
        join(ROOT, 'build/host-signal/src/cli/vmsubst.mjs'),
        'diff',
        join(S.dir, 'base.img'),
        join(S.dir, 'patched.img'),
        '-o',
        bundle,
        '--json',
      ]);
      times['upgradeImagesMs'] = Date.now() - t0;

      // The volume, hot-plugged the way a VM manager adds a disk: share-rw so the NBD export can write it.
      const qmp = await QmpClient.connect(vm.qmpSocket);
      try {
        await qmp.execute('blockdev-add', {
          driver: 'file',
          filename: join(S.dir, 'base.img'),
          'node-name': 'sysfile',
          cache: { direct: false },
        });
        await qmp.execute('blockdev-add', { driver: 'raw', file: 'sysfile', 'node-name': 'sys0' });
        await qmp.execute('device_add', {
          driver: 'virtio-blk-pci',
          drive: 'sys0',
          id: DEVICE,
          serial: SERIAL,
          'share-rw': true,
        });
      } finally {
        qmp.close();
      }
      await waitFor(
        60_000,
        'the hot-plugged disk',
        async () => ((await vm.run(`test -b /dev/disk/by-id/virtio-${SERIAL}`)).code === 0 ? true : undefined),
        500,
      );
      await vm.sh(`mkdir -p ${LOWER} ${RW} ${SYSROOT} && mount -o ro /dev/disk/by-id/virtio-${SERIAL} ${LOWER}`);
      await vm.sh(`mount -t tmpfs -o mode=0755 sysroot-rw ${RW} && mkdir ${RW}/upper ${RW}/work`);
      await vm.sh(`mount -t overlay sysroot -o lowerdir=${LOWER},upperdir=${RW}/upper,workdir=${RW}/work ${SYSROOT}`);
      await vm.sh(`printf '%s' '${unit('keep', '/usr/sbin/pkgt-keepd')}' > /run/systemd/system/${UNITS.keep}`);
      await vm.sh(`printf '%s' '${unit('restart', '/usr/sbin/pkgt-restartd')}' > /run/systemd/system/${UNITS.restart}`);
      // The operator's policies for the two daemons (the library: the default for changed code, pin),
      // and the volume indexed when the agent starts (a whole Debian root: a minute under TCG).
      await vm.sh(
        `mkdir -p /etc/vmsubst && echo '{"policies":{"files":{"/usr/sbin/pkgt-keepd":"pin","/usr/sbin/pkgt-restartd":"restart"}},"indexAtStart":["${LOWER}"]}' > /etc/vmsubst/agent.json`,
      );
      await ctx().restartAgent();
      await vm.sh(`systemctl daemon-reload && systemctl start ${UNITS.keep} ${UNITS.restart}`, 120_000);
      const keep = await answering(vm, 'keep', 'pkgt-keep on 1.0', (l) => l.lib === '1.0' && l.daemon === '1.0');
      const restart = await answering(vm, 'restart', 'pkgt-restart on 1.0', (l) => l.lib === '1.0');
      S.before = { keep, restart };
      assert.match(await vm.sh(`chroot ${SYSROOT} /usr/bin/pkgt`), /^pkgt 1\.0 lib 1\.0 /m);
      assert.match(await vm.sh(`chroot ${SYSROOT} dpkg -s pkgt`), /^Version: 1\.0$/m);
      assert.match(await vm.sh(`grep ' ${SYSROOT} ' /proc/mounts`), /overlay/);
      assert.match(await vm.sh(`grep ' ${LOWER} ' /proc/mounts`), /ext4 ro,/);
      await vm.sh('dmesg -C');
    }),
  );

  G.test(
    'live upgrade: apply --notify of dpkg -i pkgt_2.0: new execs run 2.0, pin keeps 1.0, restart restarts on 2.0, dpkg -s says 2.0',
    () =>
      withTimeout(540_000, 'live upgrade', async () => {
        const { vm } = ctx();
        const t0 = Date.now();
        const r = await vmsubst(
          [
            'apply',
            join(S.dir, 'pkgt.bundle'),
            '--qmp',
            vm.qmpSocket,
            '--device',
            DEVICE,
            '--notify',
            `serial:${vm.agentSocket}`,
            '--disk-serial',
            SERIAL,
            '--timeout',
            '400',
            '--json',
          ],
          480_000,
        );
        times['upgradeApplyMs'] = Date.now() - t0;
        assert.is(r.code, 0, `apply --notify exited ${r.code}\n${r.stderr}\n${r.stdout}`);
        S.report = JSON.parse(r.stdout) as ApplyReport;
        writeFileSync(join(ROOT, 'build/packaging/live-upgrade-report.json'), JSON.stringify(S.report, null, 2) + '\n');
        const n = S.report.agent?.report;
        assert.ok(n, r.stdout);
        const restarted = n?.restarted ?? [];
        assert.equal(
          restarted.map((x) => `${x.unit} ${x.status}`),
          [`${UNITS.restart} restarted`],
          JSON.stringify(n?.plan),
        );

        // A new exec through the overlay: the new tool and the new library.
        assert.match(await vm.sh(`chroot ${SYSROOT} /usr/bin/pkgt`), /^pkgt 2\.0 lib 2\.0 /m);
        assert.match(await vm.sh(`chroot ${SYSROOT} dpkg -s pkgt`), /^Version: 2\.0$/m);
        assert.match(await vm.sh(`cat ${SYSROOT}/usr/share/doc/pkgt/README`), /^pkgt 2\.0:/);
        // pin: the same process, still on 1.0 and still answering.
        const keepLine = await lastLine(vm, 'keep');
        await waitFor(
          10_000,
          'pkgt-keep answers again',
          async () => ((await lastLine(vm, 'keep')) !== keepLine ? true : undefined),
          250,
        );
        const keep = parseLine(await lastLine(vm, 'keep'))!;
        assert.equal(keep, { pid: S.before!.keep.pid, daemon: '1.0', lib: '1.0' }, 'pinned daemon keeps 1.0');
        // restart: a new process of its unit, on 2.0.
        const restart = await answering(vm, 'restart', 'pkgt-restart on 2.0', (l) => l.lib === '2.0');
        assert.is.not(restart.pid, S.before!.restart.pid);
        assert.is(restart.daemon, '2.0');
        assert.is(
          (await vm.sh(`systemctl is-active ${UNITS.keep} ${UNITS.restart}`)).trim().split(/\s+/).join(' '),
          'active active',
        );
        // Nothing crashed, nothing faulted.
        const dmesg = await vm.sh('dmesg');
        assert.not.match(dmesg, /traps:|segfault|general protection|invalid opcode|BUG:|Oops/, dmesg);
        // The agent names who still runs the old files.
        const stale = await vm.sh('vmsubst-agent stale --json');
        const procs = (JSON.parse(stale.slice(stale.indexOf('{'))) as { processes: { pid: number; why: string }[] })
          .processes;
        assert.ok(
          procs.some((p) => p.pid === S.before!.keep.pid && p.why === 'old-inode'),
          stale,
        );
        // The restarted daemon runs the new files, seen through the overlay: not listed.
        assert.not.ok(
          procs.some((p) => p.pid === restart.pid),
          stale,
        );
        times['upgradeStale'] = JSON.stringify(
          (
            JSON.parse(stale.slice(stale.indexOf('{'))) as { processes: { pid: number; why: string; file: string }[] }
          ).processes.map((p) => `${p.pid}:${p.why}:${p.file}`),
        );
      }),
  );

  G.test('live upgrade: cleanup (units stopped, overlay and volume unmounted)', () =>
    withTimeout(120_000, 'live upgrade cleanup', async () => {
      const { vm } = ctx();
      await vm.sh(
        `systemctl stop ${UNITS.keep} ${UNITS.restart}; rm -f /run/systemd/system/pkgt-*.service /etc/vmsubst/agent.json; rmdir /etc/vmsubst 2>/dev/null; systemctl daemon-reload`,
        90_000,
      );
      await vm.sh(`umount ${SYSROOT} && umount ${RW} && umount ${LOWER}`);
    }),
  );
}
