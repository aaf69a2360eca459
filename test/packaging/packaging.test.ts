/**
 * The packages, proven: what `make deb` and `make rpm` built (contents,
 * scriptlets, lintian), then a real install into a debootstrapped Debian 12
 * guest booted under QEMU with systemd: DKMS compiles the module in the guest,
 * udev and systemd start the packaged agent on Debian's node 18, a live
 * substitution from the host goes through it, an upgrade restarts it and keeps
 * its journal, and a purge leaves nothing behind.
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { spawnSync } from 'node:child_process';
import {
  copyFileSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { GuestVm } from '../helpers/vm.js';
import { CACHE, ROOT, guestArtifacts } from '../helpers/paths.js';
import { vmsubstJson } from '../helpers/cli.js';
import { guard } from '../helpers/guard.js';
import { waitFor, withTimeout } from '../helpers/timeout.js';
import { QmpClient } from '../../host-signal/src/qmp/index.js';
import { liveUpgradeTests } from './live-upgrade.js';

const PKG = join(ROOT, 'build/packaging');
const IMAGE = join(CACHE, 'debian-guest');
const PROG = '/mnt/data/bin/vprog';
const UNIT = 'vmsubst-agent.service';

/** Runs a host command; returns stdout, throws with stderr on failure. */
function host(cmd: string, args: string[], env: NodeJS.ProcessEnv = process.env): string {
  const r = spawnSync(cmd, args, { encoding: 'utf8', env, maxBuffer: 64 << 20 });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} exited ${r.status}\n${r.stderr}${r.stdout}`);
  return r.stdout;
}

function findPackage(dir: string, re: RegExp): string {
  const name = existsSync(dir) ? readdirSync(dir).find((f) => re.test(f)) : undefined;
  if (!name) throw new Error(`no package matching ${re} in ${dir} (run make deb rpm)`);
  return join(dir, name);
}

const times: Record<string, number | string> = {};
function timed<T>(name: string, fn: () => Promise<T>): Promise<T> {
  const t0 = Date.now();
  return fn().finally(() => {
    times[name] = Date.now() - t0;
  });
}

// ---- the packages on the host ---------------------------------------------------------------------

const Pkgs = suite('packaging: make deb / make rpm');
const debs = { agent: '', dkms: '' };
const rpms = { agent: '', dkms: '' };
let extracted = '';

Pkgs.before(() => {
  debs.agent = findPackage(join(PKG, 'deb'), /^vmsubst-agent_.*_amd64\.deb$/);
  debs.dkms = findPackage(join(PKG, 'deb'), /^vmsubst-dkms_.*_all\.deb$/);
  rpms.agent = findPackage(join(PKG, 'rpm'), /^vmsubst-agent-.*\.x86_64\.rpm$/);
  rpms.dkms = findPackage(join(PKG, 'rpm'), /^vmsubst-dkms-.*\.noarch\.rpm$/);
  extracted = mkdtempSync(join(tmpdir(), 'vmsubst-pkg-'));
  host('dpkg-deb', ['-x', debs.agent, extracted]);
});
Pkgs.after(() => {
  if (extracted) rmSync(extracted, { recursive: true, force: true });
});

Pkgs('vmsubst-agent.deb holds the agent, its addon, its runtime dependencies, the unit and the udev rule', () => {
  const files = host('dpkg-deb', ['-c', debs.agent]);
  for (const f of [
    './usr/bin/vmsubst-agent',
    './usr/lib/vmsubst/build/agent/src/main.js',
    './usr/lib/vmsubst/agent/build/Release/vmsubst_native.node',
    './usr/lib/vmsubst/node_modules/ajv/package.json',
    './usr/lib/vmsubst/node_modules/@sinclair/typebox/package.json',
    './usr/lib/vmsubst/node_modules/chokidar/package.json',
    './lib/systemd/system/vmsubst-agent.service',
    './lib/udev/rules.d/60-vmsubst.rules',
    './usr/share/doc/vmsubst-agent/copyright',
  ])
    assert.ok(files.includes(f), `${f} in the package`);
  assert.not.ok(files.includes('node_modules/node-addon-api'), 'node-addon-api is build-only');
  assert.not.ok(/\.map$/m.test(files), 'no source maps');
  const control = host('dpkg-deb', ['-f', debs.agent, 'Depends']);
  assert.match(control, /nodejs \(>= 18\)/);
  assert.match(control, /vmsubst-dkms \(>= /);
  assert.match(control, /libc6 \(>= /, 'shared-library dependencies of the addon');
});

Pkgs('vmsubst-dkms.deb holds the module source with dkms.conf and the scripts that drive dkms', () => {
  const files = host('dpkg-deb', ['-c', debs.dkms]);
  const ver = /PACKAGE_VERSION="([^"]+)"/.exec(readFileSync(join(ROOT, 'kmod/dkms.conf'), 'utf8'))![1]!;
  for (const f of ['dkms.conf', 'Kbuild', 'Makefile', 'main.c', 'include/uapi/linux/vmsubst.h']) {
    assert.ok(files.includes(`./usr/src/vmsubst-${ver}/${f}`), `${f} in /usr/src/vmsubst-${ver}`);
  }
  assert.not.match(files, /\.(o|ko|mod\.c)$/m, 'no build products');
  const dir = mkdtempSync(join(tmpdir(), 'vmsubst-ctl-'));
  try {
    host('dpkg-deb', ['-e', debs.dkms, dir]);
    assert.match(
      readFileSync(join(dir, 'postinst'), 'utf8'),
      new RegExp(`vmsubst-dkms-ctl install ${ver.replace(/\./g, '\\.')}`),
    );
    assert.match(
      readFileSync(join(dir, 'prerm'), 'utf8'),
      new RegExp(`vmsubst-dkms-ctl remove ${ver.replace(/\./g, '\\.')}`),
    );
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

Pkgs('lintian reports no errors for either .deb', () => {
  const r = spawnSync('lintian', ['--tag-display-limit', '0', debs.agent, debs.dkms], { encoding: 'utf8' });
  const out = `${r.stdout}${r.stderr}`;
  const errors = out.split('\n').filter((l) => /^E: /.test(l));
  assert.equal(errors, [], out);
  assert.ok(r.status === 0 || r.status === 1, `lintian ran (exit ${r.status}): ${out}`);
});

Pkgs('the unit is Type=notify, restarts on failure and is sandboxed with the devices it needs', () => {
  const unit = readFileSync(join(extracted, 'lib/systemd/system/vmsubst-agent.service'), 'utf8');
  for (const line of [
    'Type=notify',
    'Restart=on-failure',
    'ExecStart=/usr/bin/vmsubst-agent',
    'NoNewPrivileges=yes',
    'ProtectSystem=strict',
    'DevicePolicy=closed',
    'DeviceAllow=block-* r',
    'DeviceAllow=char-misc rw',
    'DeviceAllow=char-virtio-portsdev rw',
    'StateDirectory=vmsubst',
    'ProtectKernelModules=yes',
  ])
    assert.ok(unit.split('\n').includes(line), `unit has ${line}`);
  assert.match(unit, /^WatchdogSec=\d+/m);
  const rule = readFileSync(join(extracted, 'lib/udev/rules.d/60-vmsubst.rules'), 'utf8');
  assert.match(
    rule,
    /SUBSYSTEM=="virtio-ports", ATTR\{name\}=="org\.vmsubst\.0".*ENV\{SYSTEMD_WANTS\}\+="vmsubst-agent\.service"/,
  );
});

Pkgs(`the packaged agent and its addon load on this host's node (${process.version})`, () => {
  const main = join(extracted, 'usr/lib/vmsubst/build/agent/src/main.js');
  const cfg = JSON.parse(host(process.execPath, [main, '--print-config'])) as { serial: string; stateDir: string };
  assert.is(cfg.serial, '/dev/virtio-ports/org.vmsubst.0');
  assert.is(cfg.stateDir, '/var/lib/vmsubst');
  const native = join(extracted, 'usr/lib/vmsubst/build/agent/src/native/index.js');
  const path = host(process.execPath, [
    '--input-type=module',
    '-e',
    `const m = await import(${JSON.stringify(native)}); process.stdout.write(m.nativeAddonPath())`,
  ]);
  assert.is(
    path,
    join(extracted, 'usr/lib/vmsubst/agent/build/Release/vmsubst_native.node'),
    'the packaged addon, not the tree',
  );
});

Pkgs('the .rpm files list the same contents (rpm -qpl)', () => {
  const agent = host('rpm', ['-qpl', rpms.agent]);
  for (const f of [
    '/usr/bin/vmsubst-agent',
    '/usr/lib/vmsubst/agent/build/Release/vmsubst_native.node',
    '/usr/lib/vmsubst/node_modules/chokidar/package.json',
    '/usr/lib/systemd/system/vmsubst-agent.service',
    '/usr/lib/udev/rules.d/60-vmsubst.rules',
  ])
    assert.ok(agent.split('\n').includes(f), `${f} in the agent rpm`);
  assert.not.ok(agent.includes('node-addon-api'));
  const dkms = host('rpm', ['-qpl', rpms.dkms]);
  assert.match(dkms, /^\/usr\/src\/vmsubst-[0-9.]+\/dkms\.conf$/m);
  assert.match(dkms, /^\/usr\/lib\/vmsubst-dkms\/vmsubst-dkms-ctl$/m);
  assert.match(dkms, /^\/usr\/lib\/modules-load\.d\/vmsubst\.conf$/m);
  const requires = host('rpm', ['-qp', '--requires', rpms.agent]);
  assert.match(requires, /^nodejs >= 18$/m);
  assert.match(requires, /^vmsubst-dkms >= /m);
});

Pkgs(
  'the .rpm scriptlets: dkms install in %posttrans, dkms remove in %preun, restart on upgrade (rpm -qp --scripts)',
  () => {
    const dkms = host('rpm', ['-qp', '--scripts', rpms.dkms]);
    assert.match(
      dkms,
      /posttrans scriptlet[^\n]*\n(?:.*\n)*?\/usr\/lib\/vmsubst-dkms\/vmsubst-dkms-ctl install [0-9.]+/,
    );
    assert.match(
      dkms,
      /preuninstall scriptlet[^\n]*\n(?:.*\n)*?\/usr\/lib\/vmsubst-dkms\/vmsubst-dkms-ctl remove [0-9.]+/,
    );
    const agent = host('rpm', ['-qp', '--scripts', rpms.agent]);
    assert.match(
      agent,
      /postinstall scriptlet[\s\S]*systemctl daemon-reload[\s\S]*systemctl start vmsubst-agent\.service/,
    );
    assert.match(agent, /preuninstall scriptlet[\s\S]*"\$1" -eq 0[\s\S]*disable --now vmsubst-agent\.service/);
    assert.match(
      agent,
      /postuninstall scriptlet[\s\S]*try-restart vmsubst-agent\.service[\s\S]*rm -rf \/var\/lib\/vmsubst/,
    );
  },
);

Pkgs.run();

// ---- the install into a Debian 12 guest -----------------------------------------------------------

interface Report {
  id?: string;
  replayed?: boolean;
  files: { path: string; mappers: { pid: number; comm: string }[]; 'pages-dropped': number }[];
}
interface AgentState {
  pid: number;
  invocation: string;
  restarts: number;
}

const Guest = suite('packaging: install into a Debian 12 guest under systemd');
const G = guard(Guest);
const art = guestArtifacts();
const unavailable = existsSync(join(IMAGE, 'unavailable.txt'))
  ? readFileSync(join(IMAGE, 'unavailable.txt'), 'utf8').trim()
  : undefined;
const imageMissing = !existsSync(join(IMAGE, 'root.img'))
  ? `${join(IMAGE, 'root.img')} is missing (make test-packaging builds it)`
  : undefined;
const why = typeof art === 'string' ? art : (unavailable ?? imageMissing);

const C: {
  tmp: string;
  vm?: GuestVm;
  bundle: string;
  pid: number;
  before?: AgentState;
  report?: Report;
  owned: number;
} = {
  tmp: '',
  bundle: '',
  pid: 0,
  owned: 0,
};

async function agentState(vm: GuestVm): Promise<AgentState> {
  const out = await vm.sh(`systemctl show -p MainPID -p InvocationID -p NRestarts ${UNIT}`);
  const v = (k: string): string => new RegExp(`^${k}=(.*)$`, 'm').exec(out)?.[1] ?? '';
  return { pid: Number(v('MainPID')), invocation: v('InvocationID'), restarts: Number(v('NRestarts')) };
}

async function waitActive(vm: GuestVm, what: string): Promise<void> {
  await waitFor(
    180_000,
    what,
    async () => ((await vm.run(`systemctl is-active ${UNIT}`)).out.trim() === 'active' ? true : undefined),
    500,
  );
}

async function lastLine(vm: GuestVm): Promise<string> {
  return (await vm.sh('tail -n 1 /tmp/vprog.out')).trim();
}

if (why) {
  console.log(`  skipped: ${why}`);
  Guest.skip('the Debian 12 guest cannot be built here', () => undefined);
} else if (typeof art !== 'string') {
  Guest.before(
    G.setup(async () => {
      C.tmp = mkdtempSync(join(tmpdir(), 'vmsubst-pkg-guest-'));
      // The packages go in on a small ext4 disk: this build (v1) and the same with revision 2 (the upgrade).
      const tree = join(C.tmp, 'pkgs');
      mkdirSync(join(tree, 'v1'), { recursive: true });
      for (const f of readdirSync(join(PKG, 'deb'))) copyFileSync(join(PKG, 'deb', f), join(tree, 'v1', f));
      host(join(ROOT, 'packaging/build-deb.sh'), [join(tree, 'v2')], { ...process.env, VMSUBST_PKG_REVISION: '2' });
      host('mkfs.ext4', ['-q', '-F', '-d', tree, join(C.tmp, 'pkgs.img'), '64M']);
      host('qemu-img', [
        'create',
        '-q',
        '-f',
        'qcow2',
        '-F',
        'raw',
        '-b',
        join(IMAGE, 'root.img'),
        join(C.tmp, 'root.qcow2'),
      ]);
      const disk = join(C.tmp, 'disk.img');
      copyFileSync(join(art.disks, 'base.img'), disk);
      C.bundle = join(C.tmp, 'pkg.bundle');
      await vmsubstJson(['diff', join(art.disks, 'base.img'), join(art.disks, 'patched.img'), '-o', C.bundle]);
      C.vm = await timed('bootMs', () =>
        withTimeout(420_000, 'boot', () =>
          GuestVm.boot({
            disk,
            extraDisk: join(C.tmp, 'pkgs.img'),
            memoryMiB: 1536,
            bootTimeoutMs: 400_000,
            system: {
              rootImage: join(C.tmp, 'root.qcow2'),
              rootFormat: 'qcow2',
              initrd: join(IMAGE, 'initramfs.cpio'),
              append: ['systemd.show_status=0', 'rd.udev.log_level=3', 'udev.log_level=3'],
            },
          }),
        ),
      );
      const vm = C.vm;
      await vm.sh('export SYSTEMD_PAGER=cat SYSTEMD_COLORS=0 TERM=dumb');
      await vm.sh('mkdir -p /mnt/pkgs && mount -o ro /dev/disk/by-id/virtio-vmsubst-extra /mnt/pkgs');
      // The test volume (fstab, nofail): systemd mounts it in the background; starting its unit waits
      // for that mount (or makes it, if udev was slower than the device timeout). A plain `mount` here
      // raced with systemd's and failed with "already mounted".
      await vm.sh('systemctl start mnt-data.mount || mountpoint -q /mnt/data', 360_000);
    }),
  );
  Guest.after(() => {
    C.vm?.kill();
    if (C.tmp) rmSync(C.tmp, { recursive: true, force: true });
    const imageTimes = existsSync(join(IMAGE, 'times.json'))
      ? (JSON.parse(readFileSync(join(IMAGE, 'times.json'), 'utf8')) as Record<string, unknown>)
      : {};
    const all = { ...times, image: imageTimes };
    console.log(`  packaging guest times (TCG, noisy): ${JSON.stringify(all)}`);
    mkdirSync(PKG, { recursive: true });
    writeFileSync(join(PKG, 'guest-times.json'), JSON.stringify(all, null, 2) + '\n');
  });

  G.test("the guest runs Debian 12 with systemd and Debian's own nodejs 18", () =>
    withTimeout(60_000, 'guest', async () => {
      const vm = C.vm!;
      assert.match(await vm.sh('cat /etc/debian_version'), /^12\./);
      assert.match(await vm.sh('ps -p 1 -o comm='), /systemd/);
      const node = (await vm.sh('node --version')).trim();
      times['guestNode'] = node;
      assert.match(node, /^v18\./);
      assert.match(await vm.sh("dpkg-query -W -f='${Version}' nodejs"), /deb12|dfsg/, "Debian's package");
      assert.is((await vm.run('test -e /sys/module/vmsubst')).code, 1, 'no module before the install');
    }),
  );

  G.test('dpkg -i installs both packages: DKMS builds the module in the guest, udev and systemd start the agent', () =>
    withTimeout(900_000, 'install', async () => {
      const vm = C.vm!;
      const out = await timed('installMs', () =>
        vm.sh('dpkg -i /mnt/pkgs/v1/vmsubst-dkms_*.deb /mnt/pkgs/v1/vmsubst-agent_*.deb 2>&1', 850_000),
      );
      const dkms = await vm.sh('dkms status vmsubst');
      assert.match(dkms, /vmsubst\/[0-9.]+, [^,]+cloud-amd64, x86_64: installed/, `${dkms}\n${out}`);
      assert.ok((await vm.sh('modinfo -n vmsubst')).includes('/updates/dkms/vmsubst.ko'), 'the DKMS-built module');
      assert.is((await vm.run('test -c /dev/vmsubst')).code, 0, '/dev/vmsubst after the module loaded');
      await waitActive(vm, 'agent active (READY=1)');
      C.before = await agentState(vm);
      assert.ok(C.before.pid > 0);
      // The packages' file lists, kept in the guest for the purge check (long command lines do not fit a tty).
      C.owned = Number(
        (
          await vm.sh(
            'dpkg -L vmsubst-agent vmsubst-dkms | grep vmsubst > /root/vmsubst-owned.txt; wc -l < /root/vmsubst-owned.txt',
          )
        ).trim(),
      );
    }),
  );

  G.test("the agent runs on node 18 with the addon loaded, as the unit's sandboxed main process", () =>
    withTimeout(60_000, 'running agent', async () => {
      const vm = C.vm!;
      const { pid } = C.before!;
      assert.match(
        await vm.sh(`cat /proc/${pid}/cmdline | tr '\\0' ' '`),
        /^\/usr\/bin\/node \/usr\/lib\/vmsubst\/build\/agent\/src\/main\.js/,
      );
      assert.match(
        await vm.sh(`grep vmsubst_native.node /proc/${pid}/maps | head -n 1`),
        /\/usr\/lib\/vmsubst\/agent\/build\/Release\/vmsubst_native\.node/,
      );
      assert.match(await vm.sh(`grep NoNewPrivs /proc/${pid}/status`), /NoNewPrivs:\s+1/);
      const log = await vm.sh(`journalctl -u ${UNIT} -o cat --no-pager`);
      assert.match(log, /info: ready/, log);
      const st = await vm.sh('vmsubst-agent status --json');
      const status = JSON.parse(st.slice(st.indexOf('{'))) as { module: { loaded: boolean } };
      assert.ok(status.module.loaded, st);
      const sec = await vm.run(`systemd-analyze security ${UNIT} --no-pager | tail -n 1`);
      times['securityExposure'] = sec.out.trim();
    }),
  );

  G.test('a live substitution from the host goes through the packaged agent', () =>
    withTimeout(240_000, 'substitute', async () => {
      const vm = C.vm!;
      await vm.sh(`${PROG} 300 > /tmp/vprog.out 2>&1 & echo $! > /tmp/vprog.pid`);
      C.pid = Number((await vm.sh('cat /tmp/vprog.pid')).trim());
      await waitFor(30_000, 'v1 output', async () => ((await lastLine(vm)).includes('version v1') ? true : undefined));
      const applied = await vmsubstJson<{ written: number }>([
        'apply',
        C.bundle,
        '--qmp',
        vm.qmpSocket,
        '--device',
        'vblk0',
      ]);
      assert.ok(applied.written > 0);
      C.report = await timed('notifyMs', () =>
        vmsubstJson<Report>(
          ['notify', C.bundle, '--to', `serial:${vm.agentSocket}`, '--disk-serial', 'vmsubst-data'],
          180_000,
        ),
      );
      const file = C.report.files.find((f) => f.path === PROG);
      assert.ok(file, JSON.stringify(C.report));
      assert.ok(
        file.mappers.some((m) => m.pid === C.pid),
        `mappers: ${JSON.stringify(file.mappers)}`,
      );
      await waitFor(20_000, 'v2 from the running process', async () =>
        (await lastLine(vm)).includes('version v2') ? true : undefined,
      );
      assert.match(await vm.sh(PROG), /version v2/);
    }),
  );

  G.test('the agent is restarted when it dies', () =>
    withTimeout(240_000, 'restart on failure', async () => {
      const vm = C.vm!;
      await vm.sh(`kill -9 ${C.before!.pid}`);
      await waitFor(
        180_000,
        'a new agent process',
        async () => {
          const s = await agentState(vm);
          return s.pid > 0 && s.pid !== C.before!.pid && s.restarts > C.before!.restarts ? s : undefined;
        },
        500,
      );
      await waitActive(vm, 'agent active again');
      C.before = await agentState(vm);
    }),
  );

  G.test('udev starts the agent when the virtio-serial port is plugged in', () =>
    withTimeout(300_000, 'hot-plug', async () => {
      const vm = C.vm!;
      await vm.sh(`systemctl stop ${UNIT}`);
      const qmp = await QmpClient.connect(vm.qmpSocket);
      try {
        const gone = qmp.waitEvent(
          'DEVICE_DELETED',
          60_000,
          (e) => (e.data as { device?: string } | undefined)?.device === 'vport0',
        );
        await qmp.execute('device_del', { id: 'vport0' });
        await gone;
        await waitFor(
          30_000,
          'port gone in the guest',
          async () => ((await vm.run('test -e /dev/virtio-ports/org.vmsubst.0')).code !== 0 ? true : undefined),
          500,
        );
        assert.is((await vm.run(`systemctl is-active ${UNIT}`)).out.trim(), 'inactive');
        await qmp.execute('device_add', {
          driver: 'virtserialport',
          chardev: 'agent0',
          name: 'org.vmsubst.0',
          id: 'vport0',
          bus: 'vser0.0',
        });
      } finally {
        qmp.close();
      }
      try {
        await waitActive(vm, "agent started by the port's udev rule");
      } catch (e) {
        const why = await vm.run(
          `systemctl status ${UNIT} --no-pager 2>&1 | tail -n 15; udevadm info /dev/virtio-ports/org.vmsubst.0 2>&1 | tail -n 12`,
        );
        throw new Error(`${(e as Error).message}\n${why.out}`);
      }
      C.before = await agentState(vm);
      const r = await vmsubstJson<Report>(
        ['notify', C.bundle, '--to', `serial:${vm.agentSocket}`, '--disk-serial', 'vmsubst-data'],
        180_000,
      );
      assert.is(r.replayed, true, 'answered from the journal');
    }),
  );

  G.test('installing a newer version over the running agent restarts it and keeps its journal', () =>
    withTimeout(600_000, 'upgrade', async () => {
      const vm = C.vm!;
      const old = C.before!;
      const journalBefore = await vm.sh('cat /var/lib/vmsubst/journal.jsonl');
      await timed('upgradeMs', () => vm.sh('dpkg -i /mnt/pkgs/v2/vmsubst-agent_*.deb 2>&1', 550_000));
      assert.match(await vm.sh("dpkg-query -W -f='${Version}' vmsubst-agent"), /-2$/);
      await waitActive(vm, 'upgraded agent active');
      const now = await agentState(vm);
      assert.is.not(now.pid, old.pid, 'a new process');
      assert.is.not(now.invocation, old.invocation, 'a new invocation of the unit');
      const journalAfter = await vm.sh('cat /var/lib/vmsubst/journal.jsonl');
      assert.ok(journalAfter.startsWith(journalBefore.trimEnd()), 'the journal is kept');
      const r = await vmsubstJson<Report>(
        ['notify', C.bundle, '--to', `serial:${vm.agentSocket}`, '--disk-serial', 'vmsubst-data'],
        180_000,
      );
      assert.is(r.replayed, true, 'the upgraded agent answers a repeat from the kept journal');
      assert.is((await vm.run(`kill -0 ${C.pid}`)).code, 0, 'the substituted program still runs');
    }),
  );

  liveUpgradeTests(
    G,
    () => ({
      vm: C.vm!,
      tmp: C.tmp,
      restartAgent: async () => {
        await C.vm!.sh(`systemctl restart ${UNIT}`, 120_000);
        await waitActive(C.vm!, 'agent active with its new configuration');
      },
    }),
    times,
  );

  G.test('purge removes every file of both packages, the journal and the DKMS build, and unloads the module', () =>
    withTimeout(600_000, 'purge', async () => {
      const vm = C.vm!;
      await vm.sh(`kill ${C.pid} 2>/dev/null; true`);
      await timed('purgeMs', () => vm.sh('dpkg --purge vmsubst-agent vmsubst-dkms 2>&1', 550_000));
      assert.is((await vm.run('test -e /sys/module/vmsubst')).code, 1, 'module unloaded');
      assert.is((await vm.run('test -e /dev/vmsubst')).code, 1, '/dev/vmsubst gone');
      assert.ok(C.owned > 100, 'the file list was taken before the purge');
      const leftFiles = await vm.sh(
        'while read -r f; do [ -e "$f" ] && echo "$f"; done < /root/vmsubst-owned.txt; rm /root/vmsubst-owned.txt',
      );
      assert.is(leftFiles.trim(), '', 'no packaged file is left');
      const left = await vm.sh(
        'find / -xdev \\( -path /mnt -o -path /proc -o -path /sys -o -path /tmp \\) -prune -o -name "*vmsubst*" -print',
      );
      assert.is(left.trim(), '', `nothing named vmsubst is left:\n${left}`);
      assert.is((await vm.run('test -e /var/lib/vmsubst')).code, 1, 'the journal is purged');
      assert.match((await vm.run(`systemctl show -p LoadState ${UNIT}`)).out, /LoadState=not-found/);
    }),
  );
}

Guest.run();
