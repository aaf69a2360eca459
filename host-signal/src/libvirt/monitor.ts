/**
 * QMP through libvirt's passthrough (`virsh qemu-monitor-command`), for the
 * one thing libvirt's API cannot do: write into a running disk in place (the
 * nbd mode, `--allow-taint`). libvirt marks the domain tainted
 * `custom-monitor` at the first command. No events: the nbd mode needs none.
 */
import { EventEmitter } from 'node:events';
import { Qemu, type QmpChannel } from '../qmp/commands.js';
import type { QmpEvent } from '../qmp/client.js';
import { QmpError } from '../errors.js';
import type { Virsh } from './virsh.js';

export class VirshMonitor extends EventEmitter<{ event: [QmpEvent] }> implements QmpChannel {
  constructor(
    private readonly virsh: Virsh,
    private readonly domain: string,
  ) {
    super();
  }

  async execute<T = unknown>(command: string, args?: Record<string, unknown>, timeoutMs = 120_000): Promise<T> {
    let reply: unknown;
    try {
      reply = await this.virsh.qemuMonitorCommand(this.domain, command, args, timeoutMs);
    } catch (e) {
      // virsh: "internal error: unable to execute QEMU command 'NAME': DESC"
      const m = /unable to execute QEMU command '[^']*': (.*)$/s.exec((e as Error).message);
      if (m) throw new QmpError('GenericError', m[1]!.trim(), command);
      throw e;
    }
    const r = reply as { return?: unknown; error?: { class?: string; desc?: string } };
    if (r.error) throw new QmpError(r.error.class ?? 'GenericError', r.error.desc ?? 'unknown error', command);
    return r.return as T;
  }
}

/** A Qemu whose commands go through libvirt's QMP passthrough. */
export function monitorOf(virsh: Virsh, domain: string): Qemu<VirshMonitor> {
  return new Qemu(new VirshMonitor(virsh, domain));
}
