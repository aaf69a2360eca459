/**
 * A QEMU VM with no guest OS: it sits in the firmware, which is all the apply
 * suites need (a running VM with a virtio-blk disk). TCG unless VMSUBST_ACCEL
 * says otherwise. Two QMP sockets: one for vmsubst, one the test keeps (QEMU
 * serves one client per socket).
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { waitFor } from './timeout.js';
import { Qemu, QmpClient, type StatusInfo } from '../../host-signal/src/qmp/index.js';

export const QEMU_BIN = 'qemu-system-x86_64';

/** Why QEMU cannot be used here, or undefined if it can. */
export function whyNoQemu(): string | undefined {
  const r = spawnSync(QEMU_BIN, ['--version'], { encoding: 'utf8' });
  if (r.error) return `${QEMU_BIN} is not installed (${(r.error as NodeJS.ErrnoException).code ?? r.error.message})`;
  if (r.status !== 0) return `${QEMU_BIN} --version failed: ${r.stderr.trim()}`;
  return undefined;
}

export interface FirmwareVmOptions {
  image: string;
  /** Directory for the sockets (removed by the caller). */
  dir: string;
  /** share-rw=on on the virtio-blk device (default true). */
  shareRw?: boolean;
  /** Start paused (-S), as in a VM that is not yet running. */
  paused?: boolean;
}

export class FirmwareVm {
  readonly qmpSocket: string;
  readonly monitorSocket: string;
  monitor!: Qemu<QmpClient>;
  #proc: ChildProcess;
  #stderr = '';

  private constructor(
    readonly opts: FirmwareVmOptions,
    name: string,
  ) {
    this.qmpSocket = join(opts.dir, `${name}.qmp`);
    this.monitorSocket = join(opts.dir, `${name}.mon`);
    const accel = process.env['VMSUBST_ACCEL'] ?? 'tcg';
    const args = [
      '-accel',
      accel,
      '-nodefaults',
      '-display',
      'none',
      '-m',
      '64',
      '-blockdev',
      `driver=file,filename=${opts.image},node-name=file0`,
      '-blockdev',
      'driver=raw,file=file0,node-name=disk0',
      '-device',
      `virtio-blk-pci,drive=disk0,id=vblk0${opts.shareRw === false ? '' : ',share-rw=on'}`,
      '-qmp',
      `unix:${this.qmpSocket},server=on,wait=off`,
      '-qmp',
      `unix:${this.monitorSocket},server=on,wait=off`,
      ...(opts.paused ? ['-S'] : []),
    ];
    this.#proc = spawn(QEMU_BIN, args, { stdio: ['ignore', 'ignore', 'pipe'] });
    this.#proc.stderr!.on('data', (d: Buffer) => (this.#stderr += d.toString()));
  }

  static async start(opts: FirmwareVmOptions, name = 'vm'): Promise<FirmwareVm> {
    const vm = new FirmwareVm(opts, name);
    try {
      await waitFor(
        15_000,
        'QEMU QMP sockets',
        () => {
          if (vm.#proc.exitCode !== null) throw new Error(`QEMU exited ${vm.#proc.exitCode}: ${vm.#stderr}`);
          return existsSync(vm.qmpSocket) && existsSync(vm.monitorSocket) ? true : undefined;
        },
        50,
      );
      // The socket file appears just before QEMU listens on it: a refused connect is retried.
      const qmp = await waitFor(
        15_000,
        'QEMU monitor',
        async () => {
          try {
            return await QmpClient.connect(vm.monitorSocket);
          } catch (e) {
            if (vm.#proc.exitCode === null && /nothing listens/.test((e as Error).message)) return undefined;
            throw e;
          }
        },
        50,
      );
      vm.monitor = new Qemu(qmp);
    } catch (e) {
      vm.kill();
      throw e;
    }
    return vm;
  }

  status(): Promise<StatusInfo> {
    return this.monitor.queryStatus();
  }

  /** Makes QEMU flush its block layer: `stop` drains and flushes every drive. Resumes a VM that was running. */
  async flush(): Promise<void> {
    const { running } = await this.status();
    await this.monitor.stop();
    if (running) await this.monitor.cont();
  }

  kill(): void {
    this.monitor?.qmp.close();
    if (this.#proc.exitCode === null) this.#proc.kill('SIGKILL');
  }
}

/**
 * A random disk image for firmware VMs (no boot signature: the firmware must not run random bytes)
 * and its patched version: 8 KiB at 64 KiB and 4 KiB at 1 MiB changed. `size` is at least 2 MiB.
 */
export function firmwareImages(size: number): { base: Buffer<ArrayBuffer>; patched: Buffer<ArrayBuffer> } {
  const base = randomBytes(size);
  base[510] = 0;
  base[511] = 0;
  const patched = Buffer.from(base);
  patched.fill(7, 64 * 1024, 72 * 1024);
  patched.fill(9, 1 << 20, (1 << 20) + 4096);
  return { base, patched };
}
