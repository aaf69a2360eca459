/**
 * The nbd mode on a libvirt domain (`--mode nbd --allow-taint`): apply/qemu.ts's
 * nbd mode, its QMP commands sent through libvirt's passthrough
 * (monitor.ts). For a disk that cannot take an overlay; libvirt marks the
 * domain tainted `custom-monitor`, which the result says. The disk must be
 * `<shareable/>` (QEMU's share-rw=on), which a writable export needs.
 */
import { readFile } from 'node:fs/promises';
import { TargetError } from '../errors.js';
import { applyToMonitor, type QemuApplyOptions, type QemuApplyResult } from '../apply/qemu.js';
import type { BundleData } from '../apply/core.js';
import { resolveLibvirt, type LibvirtApplyOptions } from './apply.js';
import { monitorOf } from './monitor.js';

export const TAINT_NOTE =
  "libvirt marked the domain tainted 'custom-monitor' (QMP passthrough, --allow-taint): management tools may treat " +
  'it as unsupported until it is restarted';

export async function applyToLibvirtNbd(
  bundle: BundleData,
  domain: string,
  options: Pick<
    LibvirtApplyOptions,
    'connect' | 'target' | 'serial' | 'virsh' | 'beforeWrite' | 'onProgress' | 'signal'
  > &
    Pick<QemuApplyOptions, 'stateDir'> = {},
): Promise<QemuApplyResult> {
  const t = await resolveLibvirt(bundle.manifest, domain, options);
  if (t.disk.alias === undefined)
    throw new TargetError(`disk ${t.disk.target} of domain ${domain} has no device alias in the live XML`);
  if (!t.disk.shareable)
    throw new TargetError(
      `disk ${t.disk.target} of domain ${domain} is not <shareable/>: QEMU does not let another user write it, so it ` +
        'cannot be exported writable; nothing was written',
      "add <shareable/> to the disk's XML (it takes effect at the domain's next start), or use the overlay mode (the " +
        'default with --libvirt, no taint)',
    );
  const owner = await qemuOwner(t.info.name);
  const result = await applyToMonitor(bundle, monitorOf(t.virsh, domain), `/libvirt/${t.info.uuid ?? domain}`, {
    mode: 'nbd',
    device: t.disk.alias,
    ...(owner ? { socketOwner: owner } : {}),
    ...(options.stateDir !== undefined ? { stateDir: options.stateDir } : {}),
    ...(options.beforeWrite ? { beforeWrite: options.beforeWrite } : {}),
    ...(options.onProgress ? { onProgress: options.onProgress } : {}),
    ...(options.signal ? { signal: options.signal } : {}),
  });
  result.warnings.push(TAINT_NOTE);
  return result;
}

/** QEMU's user and group (it creates the NBD socket), from the pid file libvirt keeps for the domain. */
async function qemuOwner(name: string): Promise<{ uid: number; gid: number } | undefined> {
  try {
    const pid = (await readFile(`/run/libvirt/qemu/${name}.pid`, 'utf8')).trim();
    const status = await readFile(`/proc/${pid}/status`, 'utf8');
    const uid = /^Uid:\s+(\d+)/m.exec(status);
    const gid = /^Gid:\s+(\d+)/m.exec(status);
    return uid && gid ? { uid: Number(uid[1]), gid: Number(gid[1]) } : undefined;
  } catch {
    return undefined;
  }
}
