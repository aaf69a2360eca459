/**
 * A real libvirtd for the libvirt suite, started by the suite and stopped
 * after it: its own configuration, sockets and pid files under a scratch
 * directory in /var/tmp (world-traversable, so libvirt's QEMU, which runs as
 * libvirt-qemu, reads the images wherever the checkout sits), and virtlogd for
 * the per-domain logs. Domains are transient (`virsh create`): TCG guests of
 * the test kernel and initramfs, the console on a unix socket the tests drive
 * as GuestVm drives QEMU's stdio.
 */
import { execFile, execFileSync } from 'node:child_process';
import {
  chmodSync,
  copyFileSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { createConnection, type Socket } from 'node:net';
import { join } from 'node:path';
import type { GuestArtifacts } from './paths.js';
import { sleep, waitFor } from './timeout.js';

const which = (cmd: string): boolean => {
  try {
    execFileSync('sh', ['-c', `command -v ${cmd}`], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
};

/** Why libvirt cannot run here, or undefined. */
export function libvirtUnavailable(): string | undefined {
  const missing = ['libvirtd', 'virtlogd', 'virsh'].filter((c) => !which(c));
  if (missing.length > 0) return `${missing.join(', ')} not installed (make setup installs libvirt-daemon-system)`;
  if (process.getuid?.() !== 0) return 'libvirtd (system instance) needs root';
  if (existsSync('/run/libvirtd.pid') && pidAlive(Number(readFileSync('/run/libvirtd.pid', 'utf8'))))
    return "the host's own libvirtd is running; the suite's instance would share its state directories";
  return undefined;
}

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

export class Libvirtd {
  readonly uri: string;
  private constructor(
    readonly dir: string,
    private readonly pids: string[],
  ) {
    this.uri = `qemu:///system?socket=${join(dir, 'sock', 'libvirt-sock')}`;
  }

  /** Starts virtlogd and libvirtd with a private configuration; throws with libvirtd's log when it does not come up. */
  static async start(): Promise<Libvirtd> {
    const dir = mkdtempSync('/var/tmp/vmsubst-libvirt-');
    chmodSync(dir, 0o755);
    mkdirSync(join(dir, 'sock'));
    mkdirSync(join(dir, 'run'), { mode: 0o777 });
    chmodSync(join(dir, 'run'), 0o777);
    writeFileSync(
      join(dir, 'libvirtd.conf'),
      [
        `unix_sock_dir = "${join(dir, 'sock')}"`,
        'auth_unix_rw = "none"',
        'auth_unix_ro = "none"',
        `log_outputs = "3:file:${join(dir, 'libvirtd.log')}"`,
        '',
      ].join('\n'),
    );
    const pids = [join(dir, 'libvirtd.pid'), join(dir, 'virtlogd.pid')];
    const d = new Libvirtd(dir, pids);
    try {
      // virtlogd serves one socket per host: a running one (another instance) is used as it is.
      await run('virtlogd', ['--daemon', '--pid-file', pids[1]!]).catch((e: Error) => {
        if (!existsSync('/run/libvirt/virtlogd-sock')) throw e;
      });
      await run('libvirtd', ['--daemon', '-f', join(dir, 'libvirtd.conf'), '--pid-file', pids[0]!]);
      await waitFor(30_000, 'libvirtd answers', async () =>
        (await d.virsh(['version']).then(
          () => true,
          () => false,
        ))
          ? true
          : undefined,
      );
    } catch (e) {
      const log = existsSync(join(dir, 'libvirtd.log')) ? readFileSync(join(dir, 'libvirtd.log'), 'utf8') : '';
      await d.stop();
      throw new Error(`libvirtd did not start: ${(e as Error).message}\n${log.slice(-2000)}`);
    }
    return d;
  }

  virsh(args: string[], timeoutMs = 120_000): Promise<string> {
    return run('virsh', ['-c', this.uri, ...args], timeoutMs);
  }

  /** Destroys the instance's domains, stops libvirtd and virtlogd (those it started), removes the directory. */
  async stop(): Promise<void> {
    const names = await this.virsh(['list', '--name']).catch(() => '');
    for (const n of names.split('\n').filter(Boolean)) await this.virsh(['destroy', n]).catch(() => undefined);
    for (const pidFile of this.pids) {
      if (!existsSync(pidFile)) continue;
      const pid = Number(readFileSync(pidFile, 'utf8'));
      if (!pidAlive(pid)) continue;
      process.kill(pid, 'SIGTERM');
      for (let i = 0; i < 100 && pidAlive(pid); i++) await sleep(100);
      if (pidAlive(pid)) process.kill(pid, 'SIGKILL');
    }
    rmSync(this.dir, { recursive: true, force: true });
  }
}

function run(cmd: string, args: string[], timeoutMs = 120_000): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(cmd, args, { timeout: timeoutMs, maxBuffer: 16 << 20 }, (err, stdout, stderr) => {
      if (err) reject(new Error(`${cmd} ${args.join(' ')}: ${stderr.trim() || err.message}`));
      else resolve(stdout);
    });
  });
}

export interface DomainDisk {
  path: string;
  target: string;
  serial: string;
  format?: 'raw' | 'qcow2';
  /** <shareable/> (QEMU's share-rw=on): the nbd mode's writable export needs it. */
  shareable?: boolean;
}

export interface DomainOptions {
  name: string;
  disks: DomainDisk[];
  /** The org.vmsubst.0 channel (default true). */
  channel?: boolean;
  noAgent?: boolean;
  memoryMiB?: number;
}

/** The boot files copied where libvirt-qemu can read them (once per libvirtd). */
export function bootFiles(d: Libvirtd, art: GuestArtifacts): { kernel: string; initrd: string } {
  const kernel = join(d.dir, 'vmlinuz');
  const initrd = join(d.dir, 'initramfs.cpio');
  if (!existsSync(kernel)) copyFileSync(art.kernel, kernel);
  if (!existsSync(initrd)) copyFileSync(art.initramfs, initrd);
  return { kernel, initrd };
}

/** The domain XML of a test guest (the kernel command line of test/helpers/vm.ts). */
export function domainXml(d: Libvirtd, art: GuestArtifacts, o: DomainOptions): string {
  const { kernel, initrd } = bootFiles(d, art);
  const append = ['console=ttyS0', 'quiet', 'loglevel=3', 'panic=-1', 'no_timer_check'];
  if (o.noAgent) append.push('vmsubst.noagent');
  const disks = o.disks.map(
    (k) =>
      `<disk type='file' device='disk'><driver name='qemu' type='${k.format ?? 'raw'}'/>` +
      `<source file='${k.path}'/><target dev='${k.target}' bus='virtio'/><serial>${k.serial}</serial>` +
      `${k.shareable ? '<shareable/>' : ''}</disk>`,
  );
  return `<domain type='qemu'>
  <name>${o.name}</name>
  <memory unit='MiB'>${o.memoryMiB ?? 768}</memory>
  <vcpu>2</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type>
    <kernel>${kernel}</kernel><initrd>${initrd}</initrd><cmdline>${append.join(' ')}</cmdline></os>
  <on_reboot>destroy</on_reboot><on_crash>destroy</on_crash>
  <devices>
    ${disks.join('\n    ')}
    <controller type='virtio-serial'/>
    ${o.channel === false ? '' : "<channel type='unix'><source mode='bind'/><target type='virtio' name='org.vmsubst.0'/></channel>"}
    <serial type='unix'><source mode='bind' path='${consolePath(d, o.name)}'/><target port='0'/></serial>
    <memballoon model='none'/>
  </devices>
</domain>
`;
}

const consolePath = (d: Libvirtd, name: string): string => join(d.dir, 'run', `${name}.console`);

/** A running transient domain and a shell on its serial console. */
export class LibvirtGuest {
  #console = '';
  #seq = 0;
  private constructor(
    readonly d: Libvirtd,
    readonly name: string,
    private readonly sock: Socket,
  ) {
    sock.on('data', (b: Buffer) => (this.#console += b.toString('utf8').replace(/\r/g, '')));
  }

  /** Creates the domain and waits for the console shell and, unless noAgent, the agent. */
  static async boot(d: Libvirtd, art: GuestArtifacts, o: DomainOptions, limitMs = 180_000): Promise<LibvirtGuest> {
    const xml = join(d.dir, `${o.name}.xml`);
    writeFileSync(xml, domainXml(d, art, o));
    await d.virsh(['create', xml]);
    const sock = await waitFor(
      30_000,
      `${o.name} console`,
      () =>
        new Promise<Socket | undefined>((resolve) => {
          const s = createConnection(consolePath(d, o.name));
          s.once('connect', () => resolve(s));
          s.once('error', () => resolve(undefined));
        }),
    );
    const g = new LibvirtGuest(d, o.name, sock);
    // What the console printed before the connection is lost: the shell is up once it answers.
    await waitFor(limitMs, `${o.name} shell`, async () =>
      (await g.run('true', 3000).catch(() => undefined)) ? true : undefined,
    );
    if (!o.noAgent)
      await waitFor(limitMs, `${o.name} agent ready`, async () =>
        (await g.run('grep -q "info: ready" /tmp/agent.log')).code === 0 ? true : undefined,
      );
    return g;
  }

  /** Runs a shell command on the console: its output and exit status. */
  async run(cmd: string, timeoutMs = 60_000): Promise<{ out: string; code: number }> {
    const n = ++this.#seq;
    const start = `__LV_BEGIN_${n}__`;
    const endRe = new RegExp(`__LV_END_${n}_(\\d+)__`);
    const from = this.#console.length;
    this.sock.write(`echo ${start}; ${cmd}\necho __LV_END_${n}_$?__\n`);
    const m = await waitFor(
      timeoutMs,
      `'${cmd.slice(0, 60)}' on ${this.name}`,
      () => endRe.exec(this.#console.slice(from)) ?? undefined,
      25,
    );
    const text = this.#console.slice(from);
    const begin = text.indexOf(start + '\n');
    return { out: text.slice(begin === -1 ? 0 : begin + start.length + 1, text.indexOf(m[0])), code: Number(m[1]) };
  }

  async sh(cmd: string, timeoutMs = 60_000): Promise<string> {
    const r = await this.run(cmd, timeoutMs);
    if (r.code !== 0) throw new Error(`${this.name}: '${cmd}' failed (${r.code}): ${r.out}`);
    return r.out;
  }

  /** The disk's chain as libvirt shows it: top first. */
  async chain(target: string): Promise<string[]> {
    const xml = await this.d.virsh(['dumpxml', this.name]);
    const disk = xml.split('<disk ').find((x) => x.includes(`<target dev='${target}'`)) ?? '';
    return [...disk.matchAll(/<source file='([^']+)'/g)].map((m) => m[1]!);
  }

  async destroy(): Promise<void> {
    this.sock.destroy();
    await this.d.virsh(['destroy', this.name]).catch(() => undefined);
  }
}
