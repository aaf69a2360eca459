/**
 * One VM of a rollout: applyAndTell (apply/guest.ts, the sequence `vmsubst
 * apply` runs too) with QEMU as the writer, QMP system_reset as the restart,
 * and the VM's settings from the fleet file. Never throws: the outcome says
 * what happened.
 */
import type { KeyObject } from 'node:crypto';
import {
  applyAndTell,
  applyToQemu,
  type BundleData,
  type GuestOutcome,
  type GuestPhase,
  type NoAgentAction,
  type QemuApplyResult,
} from '../apply/index.js';
import { makeSigner, notificationArgs, type ConnectOptions, type Signer } from '../notify/index.js';
import { systemReset, vmUuid } from '../qmp/commands.js';
import { applyToLibvirt, Virsh, type LibvirtApplyResult } from '../libvirt/index.js';
import type { FleetMember } from './fleet.js';

export type VmStatus = GuestOutcome<QemuApplyResult>['status'];

/** What one VM's apply returns: through QMP, or through libvirt. */
export type VmApplyResult = QemuApplyResult | LibvirtApplyResult;

export interface VmOutcome extends GuestOutcome<VmApplyResult> {
  name: string;
}

export interface VmRolloutOptions {
  onNoAgent: NoAgentAction;
  signWith?: KeyObject;
  signal?: AbortSignal;
  /** The state file says this VM was done: confirm it (agent journal, or the disk) instead of redoing it. */
  resumed?: boolean;
  /** Agent connect/hello/command timeouts; the connect is short by default (5 s), a silent channel means no agent. */
  agent?: ConnectOptions;
  /** Phase changes, for progress display. */
  onPhase?: (phase: GuestPhase) => void;
  /** Where apply makes its private NBD socket directory. */
  workDir?: string;
}

/** Rolls the bundle out to one VM. Never throws: the outcome says what happened. */
export async function rolloutVm(bundle: BundleData, vm: FleetMember, options: VmRolloutOptions): Promise<VmOutcome> {
  let args;
  let signer: Signer | undefined;
  try {
    args = notificationArgs(bundle.manifest, vm.disk, {
      ...(vm.policies ? { policies: vm.policies } : {}),
      ...(vm.customization ? { customization: vm.customization } : {}),
    });
    if (options.signWith)
      signer = makeSigner(
        options.signWith,
        vm.disk,
        vm.uuid ?? (vm.qmp !== undefined ? await vmUuid(vm.qmp).catch(() => undefined) : undefined),
      );
  } catch (e) {
    return {
      name: vm.name,
      status: 'failed',
      id: bundle.manifest.id,
      agent: { told: false, resends: 0, retries: 0 },
      reset: false,
      notes: ['nothing was written'],
      error: { code: 'E_VMSUBST_INTERNAL', message: (e as Error).message },
      elapsedMs: 0,
    };
  }
  const lv = vm.libvirt;
  const virsh = lv ? new Virsh(lv.connect !== undefined ? { connect: lv.connect } : {}) : undefined;
  const signal = options.signal ? { signal: options.signal } : {};
  const outcome = await applyAndTell<VmApplyResult>(
    (beforeWrite) =>
      lv
        ? applyToLibvirt(bundle, lv.domain, {
            ...(lv.connect !== undefined ? { connect: lv.connect } : {}),
            ...(vm.device !== undefined ? { target: vm.device } : {}),
            ...(vm.disk.serial !== undefined ? { serial: vm.disk.serial } : {}),
            ...signal,
            beforeWrite,
          })
        : applyToQemu(bundle, vm.qmp!, {
            ...(vm.device !== undefined ? { device: vm.device } : {}),
            ...(vm.node !== undefined ? { node: vm.node } : {}),
            ...signal,
            ...(options.workDir ? { workDir: options.workDir } : {}),
            beforeWrite,
          }),
    {
      args,
      ...(vm.agent !== undefined
        ? { agent: vm.agent }
        : {
            noAgentReason: lv
              ? `domain ${lv.domain} declares no agent channel or vsock`
              : 'the fleet file gives no agent address',
          }),
      onNoAgent: options.onNoAgent,
      reset: () => (lv ? virsh!.reset(lv.domain).then(() => undefined) : systemReset(vm.qmp!)),
      ...(options.agent || signer ? { connect: { ...options.agent, ...(signer ? { signer } : {}) } } : {}),
      ...(options.resumed ? { resumed: true } : {}),
      ...(options.signal ? { signal: options.signal } : {}),
      ...(options.onPhase ? { onPhase: options.onPhase } : {}),
    },
  );
  if (outcome.apply) outcome.notes.unshift(...outcome.apply.warnings);
  const rec = outcome.apply && 'recovered' in outcome.apply ? outcome.apply.recovered : undefined;
  if (rec) {
    const did = [
      rec.removed.length > 0 ? `removed ${rec.removed.join(', ')}` : 'nothing of it was left',
      ...(rec.resumed ? ['resumed the VM'] : []),
    ];
    outcome.notes.unshift(
      `recovered first: an interrupted apply (pid ${rec.interrupted?.pid ?? '?'}) had been killed: ${did.join('; ')}`,
    );
  }
  return { name: vm.name, ...outcome };
}
