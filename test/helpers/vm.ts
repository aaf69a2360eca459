/**
 * A real test guest: the Debian cloud kernel booted under QEMU (TCG by
 * default; VMSUBST_ACCEL=kvm where KVM works) with the project's initramfs,
 * one raw data disk as virtio-blk (share-rw=on, serial vmsubst-data), a
 * virtio-serial port for the agent, a QMP socket, and optionally a
 * vhost-vsock device. The serial console runs a shell the tests drive.
 * With `system`, a full Debian root image boots instead of the initramfs
 * (systemd, the agent only if the image installs it).
 */
import { randomUUID } from 'node:crypto';
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { guestArtifacts } from './paths.js';
import { waitFor } from './timeout.js';
import { QmpClient } from '../../host-signal/src/qmp/index.js';

export interface VmOptions {
  /** Raw image attached as the data disk (used in place: copy it first if it must stay intact). */
  disk: string;
  /** A second raw image, attached read-only as virtio-blk serial vmsubst-extra; init mounts it at /mnt/extra (ro). */
  extraDisk?: string;
  /** Extra agent arguments (passed on the kernel command line). */
  agentArgs?: string[];
  /** Do not start the agent at boot. */
  noAgent?: boolean;
  /** Attach vhost-vsock-pci with this guest CID (needs /dev/vhost-vsock on the host). */
  vsockCid?: number;
  memoryMiB?: number;
  /** Boot a full system image in place of the test initramfs (see SystemBoot). */
  system?: SystemBoot;
  /** How long the boot, and then the agent's start, may each take; default 120 s and 90 s (raise it when several guests boot at once). */
  bootTimeoutMs?: number;
  /** Let a reset (QMP system_reset, a guest reboot) restart the guest instead of ending QEMU (-no-reboot). */
  reboot?: boolean;
  /** Called with every console line (for narration or debugging). */
  onConsole?: (line: string) => void;
}

/**
 * A root filesystem image with its own init (test/guest/build-debian-image.sh):
 * attached as virtio-blk serial vmsubst-root, booted through `initrd`, whose
 * console shell announces VMSUBST-GUEST-READY like the test initramfs does.
 */
export interface SystemBoot {
  rootImage: string;
  rootFormat: 'raw' | 'qcow2';
  initrd: string;
  /** Extra kernel command line words. */
  append?: string[];
}

export interface RunResult {
  out: string;
  code: number;
}

export class GuestVm {
  readonly dir: string;
  readonly qmpSocket: string;
  readonly agentSocket: string;
  /** The VM's SMBIOS UUID (-uuid): the guest reads it from /sys/class/dmi/id/product_uuid. */
  readonly uuid = randomUUID();
  bootMs = 0;
  /** From QEMU start until the agent logged that it is ready. */
  agentReadyMs = 0;
  #t0 = 0;
  #proc: ChildProcess | undefined;
  #console = '';
  #seq = 0;
  #exited: string | undefined;

  private constructor(private readonly opts: VmOptions) {
    this.dir = mkdtempSync(join(tmpdir(), 'vmsubst-vm-'));
    this.qmpSocket = join(this.dir, 'qmp.sock');
    this.agentSocket = join(this.dir, 'agent.sock');
  }

  static async boot(opts: VmOptions): Promise<GuestVm> {
    const vm = new GuestVm(opts);
    try {
      await vm.#start();
      if (!opts.noAgent && !opts.system) {
        // The console is up before node has started the agent (seconds under TCG).
        await vm.#agentReady();
        vm.agentReadyMs = Date.now() - vm.#t0;
      }
    } catch (e) {
      vm.kill();
      throw e;
    }
    return vm;
  }

  /**
   * Reboots the guest the way an operator does from the host (QMP
   * `system_reset`, with the reboot action set to reset rather than the
   * `-no-reboot` exit) and waits for the console shell and, unless noAgent,
   * the agent. Resolves with the times from the reset to each.
   */
  async reset(): Promise<{ consoleMs: number; agentMs: number }> {
    const readyBefore = this.#console.split('VMSUBST-GUEST-READY').length;
    const t0 = Date.now();
    const qmp = await QmpClient.connect(this.qmpSocket);
    try {
      await qmp.execute('set-action', { reboot: 'reset' });
      await qmp.execute('system_reset');
    } finally {
      qmp.close();
    }
    await waitFor(
      120_000,
      'guest reboot',
      () => {
        if (this.#exited) throw new Error(`${this.#exited}; console:\n${this.#console.slice(-3000)}`);
        return this.#console.split('VMSUBST-GUEST-READY').length > readyBefore ? true : undefined;
      },
      25,
    );
    const consoleMs = Date.now() - t0;
    if (!this.opts.noAgent) await this.#agentReady();
    return { consoleMs, agentMs: Date.now() - t0 };
  }

  #agentReady(): Promise<true> {
    return waitFor(
      this.opts.bootTimeoutMs ?? 90_000,
      'agent ready',
      async () => ((await this.run('grep -q "info: ready" /tmp/agent.log')).code === 0 ? true : undefined),
      100,
    );
  }

  get console(): string {
    return this.#console;
  }

  #start(): Promise<void> {
    const art = guestArtifacts();
    if (typeof art === 'string') throw new Error(art);
    const kvm = process.env['VMSUBST_ACCEL'] === 'kvm';
    const sys = this.opts.system;
    // no_timer_check: on a loaded host a TCG guest can miss the kernel's IO-APIC timer check and
    // panic ("IO-APIC + timer doesn't work!"); virtual machines commonly skip that check.
    const append = ['console=ttyS0', 'quiet', 'loglevel=3', 'panic=-1', 'no_timer_check', ...(sys?.append ?? [])];
    if (this.opts.noAgent) append.push('vmsubst.noagent');
    if (this.opts.agentArgs?.length) append.push(`vmsubst.agent=${this.opts.agentArgs.join(',')}`);
    const args = [
      ...(kvm ? ['-accel', 'kvm', '-cpu', 'host'] : ['-accel', 'tcg', '-cpu', 'max']),
      '-m',
      String(this.opts.memoryMiB ?? 1024),
      '-smp',
      '2',
      '-uuid',
      this.uuid,
      '-nodefaults',
      '-display',
      'none',
      ...(this.opts.reboot ? [] : ['-no-reboot']),
      '-kernel',
      art.kernel,
      '-initrd',
      sys?.initrd ?? art.initramfs,
      '-append',
      append.join(' '),
      '-chardev',
      'stdio,id=con,signal=off',
      '-serial',
      'chardev:con',
      '-qmp',
      `unix:${this.qmpSocket},server=on,wait=off`,
      '-blockdev',
      `driver=file,filename=${this.opts.disk},node-name=file0,cache.direct=off`,
      '-blockdev',
      'driver=raw,file=file0,node-name=disk0',
      '-device',
      'virtio-blk-pci,drive=disk0,id=vblk0,serial=vmsubst-data,share-rw=on',
      '-device',
      'virtio-serial-pci,id=vser0',
      '-chardev',
      `socket,id=agent0,path=${this.agentSocket},server=on,wait=off`,
      '-device',
      'virtserialport,chardev=agent0,name=org.vmsubst.0,id=vport0',
    ];
    if (sys) {
      args.push(
        '-blockdev',
        `driver=file,filename=${sys.rootImage},node-name=rootfile`,
        '-blockdev',
        `driver=${sys.rootFormat},file=rootfile,node-name=root0`,
        '-device',
        'virtio-blk-pci,drive=root0,id=vblkroot,serial=vmsubst-root',
      );
    }
    if (this.opts.extraDisk) {
      args.push(
        '-blockdev',
        `driver=file,filename=${this.opts.extraDisk},node-name=file1,read-only=on`,
        '-blockdev',
        'driver=raw,file=file1,node-name=disk1,read-only=on',
        '-device',
        'virtio-blk-pci,drive=disk1,id=vblk1,serial=vmsubst-extra',
      );
    }
    if (this.opts.vsockCid !== undefined) args.push('-device', `vhost-vsock-pci,guest-cid=${this.opts.vsockCid}`);
    const t0 = Date.now();
    this.#t0 = t0;
    const proc = spawn('qemu-system-x86_64', args, { stdio: ['pipe', 'pipe', 'pipe'] });
    this.#proc = proc;
    let partial = '';
    const onText = (chunk: Buffer): void => {
      const text = chunk.toString('utf8').replace(/\r/g, '');
      this.#console += text;
      if (this.opts.onConsole) {
        const lines = (partial + text).split('\n');
        partial = lines.pop() ?? '';
        for (const l of lines) this.opts.onConsole(l);
      }
    };
    proc.stdout!.on('data', onText);
    proc.stderr!.on('data', onText);
    proc.on('exit', (code, sig) => {
      this.#exited = `qemu exited (code ${code}, signal ${sig})`;
    });
    return waitFor(
      this.opts.bootTimeoutMs ?? 120_000,
      'guest boot',
      () => {
        if (this.#exited) throw new Error(`${this.#exited}; console:\n${this.#console.slice(-3000)}`);
        return this.#console.includes('VMSUBST-GUEST-READY') ? true : undefined;
      },
      50,
    ).then(() => {
      this.bootMs = Date.now() - t0;
    });
  }

  /** How many times the guest has come up (boots, then one per reset). */
  get boots(): number {
    return this.#console.split('VMSUBST-GUEST-READY').length - 1;
  }

  /** Waits until the guest has come up `n` times in all (after a reset), and its agent too unless it has none. */
  async waitForBoot(n: number, timeoutMs = 180_000): Promise<void> {
    await waitFor(
      timeoutMs,
      `guest boot #${n}`,
      () => {
        if (this.#exited) throw new Error(`${this.#exited}; console:\n${this.#console.slice(-3000)}`);
        return this.boots >= n ? true : undefined;
      },
      100,
    );
  }

  /** Runs a shell command on the guest console; resolves with its output and exit status. */
  async run(cmd: string, timeoutMs = 60_000): Promise<RunResult> {
    if (!this.#proc || this.#exited) throw new Error(this.#exited ?? 'guest not running');
    const n = ++this.#seq;
    const start = `__VMS_BEGIN_${n}__`;
    const endRe = new RegExp(`__VMS_END_${n}_(\\d+)__`);
    const from = this.#console.length;
    this.#proc.stdin!.write(`echo ${start}; ${cmd}\necho __VMS_END_${n}_$?__\n`);
    const m = await waitFor(
      timeoutMs,
      `guest command '${cmd.slice(0, 80)}'`,
      () => {
        if (this.#exited) throw new Error(this.#exited);
        return endRe.exec(this.#console.slice(from)) ?? undefined;
      },
      25,
    );
    const text = this.#console.slice(from);
    const begin = text.indexOf(start + '\n');
    const out = text.slice(begin === -1 ? 0 : begin + start.length + 1, text.indexOf(m[0]));
    return { out, code: Number(m[1]) };
  }

  /**
   * Writes a command to the console shell without waiting for it to end: for a command that
   * does not come back (systemctl reboot, systemctl kexec).
   */
  send(cmd: string): void {
    if (!this.#proc || this.#exited) throw new Error(this.#exited ?? 'guest not running');
    this.#proc.stdin!.write(`${cmd}\n`);
  }

  /** Like run(), but throws unless the command exits 0. */
  async sh(cmd: string, timeoutMs = 60_000): Promise<string> {
    const r = await this.run(cmd, timeoutMs);
    if (r.code !== 0) throw new Error(`guest command failed (${r.code}): ${cmd}\n${r.out}`);
    return r.out;
  }

  /**
   * Stops the agent the guest's init started and starts it again with these arguments (default:
   * the boot's; the settings files a test wrote into the guest are read anew); resolves once ready.
   */
  async restartAgent(args: string[] = this.opts.agentArgs ?? []): Promise<void> {
    await this.sh(
      'kill $(cat /run/vmsubst-agent.pid) 2>/dev/null; while kill -0 $(cat /run/vmsubst-agent.pid) 2>/dev/null; do sleep 0.1; done; true',
    );
    await this.sh(
      `: > /tmp/agent.log; node /opt/vmsubst/build/agent/src/main.js ${args.join(' ')} >/tmp/agent.log 2>&1 & echo $! > /run/vmsubst-agent.pid`,
    );
    await this.#agentReady();
  }

  /** Copies a host file into the guest through the console (base64, short lines). */
  async putFile(hostPath: string, guestPath: string): Promise<void> {
    const b64 = readFileSync(hostPath).toString('base64');
    await this.sh(`rm -f ${guestPath}.b64`);
    const CHUNK = 768;
    for (let i = 0; i < b64.length; i += CHUNK * 32) {
      const lines: string[] = [];
      for (let j = i; j < Math.min(b64.length, i + CHUNK * 32); j += CHUNK) lines.push(b64.slice(j, j + CHUNK));
      await this.sh(`cat >> ${guestPath}.b64 <<'__B64__'\n${lines.join('\n')}\n__B64__`);
    }
    await this.sh(`base64 -d ${guestPath}.b64 > ${guestPath} && rm ${guestPath}.b64`);
  }

  kill(): void {
    if (this.#proc && !this.#exited) this.#proc.kill('SIGKILL');
    rmSync(this.dir, { recursive: true, force: true });
  }
}

/** Why a vhost-vsock guest cannot run here, or undefined when it can. */
export function vhostVsockUnavailable(): string | undefined {
  return existsSync('/dev/vhost-vsock')
    ? undefined
    : 'no /dev/vhost-vsock on this host (the vhost_vsock module is not available), so QEMU cannot give the guest a host-reachable vsock';
}
