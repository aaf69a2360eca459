/**
 * The fleet file: which VMs a rollout covers and how each is reached. JSON,
 * validated by a schema (unknown fields refused); relative paths are taken
 * from the fleet file's directory.
 *
 *   {
 *     "vms": [
 *       { "name": "web-1",
 *         "qmp": "/run/vms/web-1/qmp.sock",          QMP unix socket of the running QEMU
 *         "device": "vblk0",                          or "node": "disk0"; neither: the VM's only disk
 *         "agent": "serial:/run/vms/web-1/agent.sock", optional: serial:, vsock:, hvsock:, unix:
 *         "disk": { "serial": "vmsubst-data" },       optional: how the agent finds the disk
 *         "uuid": "4c4c4544-…",                      optional: the VM's SMBIOS UUID, named in signed requests
 *                                                     (else asked of QEMU: query-uuid)
 *         "policies": { "elf-code-changed": "pin" },    optional, per VM
 *         "customization": { "hostname": "web-1" } }  optional, per VM
 *       { "name": "db-1", "libvirt": "db-1",            or a libvirt domain, by name (docs/libvirt.md);
 *         "connect": "qemu:///system" }               optional: its connection URI; the agent's address is read
 *                                                     from the live XML unless "agent" gives it; "device" is the
 *                                                     disk's target (vdb), "disk.serial" its serial
 *     ],
 *     "defaults": { "device": "vblk0", "disk": { "serial": "vmsubst-data" } }   optional
 *   }
 */
import { readFile } from 'node:fs/promises';
import { dirname, isAbsolute, resolve } from 'node:path';
import { Type, type Static } from '@sinclair/typebox';
import { Validator } from '@vmsubst/common/protocol/codec';
import { Customization, DiskRef, Envelope, Policies } from '@vmsubst/common/protocol/schema';
import { UsageError } from '../errors.js';
import { parseAgentTarget, type AgentTarget } from '../notify/transport.js';
import { agentAddress, parseDomainXml, Virsh } from '../libvirt/index.js';

const strict = { additionalProperties: false } as const;

const VmSettings = {
  device: Type.Optional(Type.String({ minLength: 1, description: 'qdev id of the disk device (-device …,id=ID)' })),
  node: Type.Optional(Type.String({ minLength: 1, description: 'block node name (-blockdev …,node-name=NAME)' })),
  disk: Type.Optional(DiskRef),
  policies: Type.Optional(Policies),
  customization: Type.Optional(Customization),
};

export const FleetVm = Type.Object(
  {
    name: Type.String({
      pattern: '^[A-Za-z0-9][A-Za-z0-9._@-]{0,62}$',
      description: 'unique in the fleet; names the VM in results and the state file',
    }),
    qmp: Type.Optional(Type.String({ minLength: 1, description: 'QMP unix socket of the running QEMU' })),
    libvirt: Type.Optional(Type.String({ minLength: 1, description: 'a libvirt domain, by name' })),
    connect: Type.Optional(Type.String({ minLength: 1, description: 'its libvirt connection URI' })),
    agent: Type.Optional(
      Type.String({ minLength: 1, description: 'serial:PATH, vsock:CID:PORT, hvsock:PATH:PORT or unix:PATH' }),
    ),
    uuid: Type.Optional(Envelope.properties.target.properties['vm-uuid']),
    ...VmSettings,
  },
  strict,
);

export const FleetFile = Type.Object(
  {
    vms: Type.Array(FleetVm, { minItems: 1, maxItems: 100_000 }),
    defaults: Type.Optional(Type.Object(VmSettings, strict)),
  },
  strict,
);
export type FleetFile = Static<typeof FleetFile>;

/** One VM of the fleet, defaults applied and addresses parsed. */
export interface FleetMember {
  name: string;
  /** The QMP socket; absent for a libvirt domain. */
  qmp?: string;
  /** A libvirt domain (then `device` is its disk's target). */
  libvirt?: { domain: string; connect?: string };
  device?: string;
  node?: string;
  agent?: AgentTarget;
  /** The VM's SMBIOS UUID, when the fleet file gives it (signed requests name it). */
  uuid?: string;
  disk: DiskRef;
  policies?: Policies;
  customization?: Customization;
}

const validateFleet = new Validator(FleetFile);

/** Checks a parsed fleet document; `base` is the directory relative paths are taken from. */
export function fleetFromJson(value: unknown, base: string, what = 'fleet'): FleetMember[] {
  const problems = validateFleet.problems(value);
  if (problems.length > 0)
    throw new UsageError(
      `${what}: ${problems.slice(0, 8).join('; ')}`,
      'see docs/rollout.md for the fleet file format',
    );
  const file = value as FleetFile;
  const seen = new Set<string>();
  const abs = (p: string): string => (isAbsolute(p) ? p : resolve(base, p));
  return file.vms.map((vm, i) => {
    if (seen.has(vm.name))
      throw new UsageError(`${what}: /vms/${i}/name: '${vm.name}' appears twice; names must be unique`);
    seen.add(vm.name);
    const d = file.defaults ?? {};
    const device = vm.device ?? (vm.node === undefined ? d.device : undefined);
    const node = vm.node ?? (vm.device === undefined ? d.node : undefined);
    if (device !== undefined && node !== undefined)
      throw new UsageError(`${what}: /vms/${i}: give device or node, not both`);
    if ((vm.qmp === undefined) === (vm.libvirt === undefined))
      throw new UsageError(`${what}: /vms/${i}: give qmp (a QEMU's QMP socket) or libvirt (a domain), one of them`);
    if (vm.connect !== undefined && vm.libvirt === undefined)
      throw new UsageError(`${what}: /vms/${i}/connect: goes with libvirt`);
    const member: FleetMember = { name: vm.name, disk: { ...(vm.disk ?? d.disk ?? {}) } };
    if (vm.qmp !== undefined) member.qmp = abs(vm.qmp);
    if (vm.libvirt !== undefined)
      member.libvirt = { domain: vm.libvirt, ...(vm.connect !== undefined ? { connect: vm.connect } : {}) };
    if (device !== undefined) member.device = device;
    if (vm.uuid !== undefined) member.uuid = vm.uuid.toLowerCase();
    if (node !== undefined) member.node = node;
    if (vm.agent !== undefined) {
      let t: AgentTarget;
      try {
        t = parseAgentTarget(vm.agent);
      } catch (e) {
        throw new UsageError(`${what}: /vms/${i}/agent: ${(e as Error).message}`, (e as UsageError).hint);
      }
      if (t.kind !== 'vsock') t = { ...t, path: abs(t.path) };
      member.agent = t;
    }
    const policies = vm.policies ?? d.policies;
    if (policies) member.policies = policies;
    const customization = vm.customization ?? d.customization;
    if (customization) member.customization = customization;
    return member;
  });
}

export async function loadFleet(path: string): Promise<FleetMember[]> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (e) {
    throw new UsageError(
      `fleet file ${path}: ${(e as NodeJS.ErrnoException).code === 'ENOENT' ? 'no such file' : (e as Error).message}`,
    );
  }
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (e) {
    throw new UsageError(
      `fleet file ${path}: not JSON: ${(e as Error).message}`,
      'see docs/rollout.md for the fleet file format',
    );
  }
  return fleetFromJson(value, dirname(resolve(path)), `fleet file ${path}`);
}

/**
 * Completes the libvirt members from their live XML: the agent's address (the org.vmsubst.0 channel, else the vsock
 * CID) unless the fleet file gives one, and the disk's serial for the agent. A domain that cannot be read is left as
 * it is (its apply says why).
 */
export async function resolveLibvirtMembers<M extends Pick<FleetMember, 'libvirt' | 'agent' | 'disk' | 'uuid'>>(
  fleet: readonly M[],
): Promise<void> {
  for (const vm of fleet) {
    if (!vm.libvirt) continue;
    const virsh = new Virsh(vm.libvirt.connect !== undefined ? { connect: vm.libvirt.connect } : {});
    const info = await virsh
      .dumpXml(vm.libvirt.domain)
      .then(parseDomainXml)
      .catch(() => undefined);
    if (!info) continue;
    vm.agent ??= agentAddress(info);
    if (vm.uuid === undefined && info.uuid !== undefined) vm.uuid = info.uuid;
  }
}
