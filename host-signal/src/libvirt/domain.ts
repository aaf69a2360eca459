/**
 * What vmsubst needs of a libvirt domain, read from its live XML (`virsh
 * dumpxml`): the disks with their backing chains, the agent's virtio-serial
 * channel (`org.vmsubst.0`: the socket path libvirt picked) and the vsock CID.
 * Parsed with fast-xml-parser: libvirt's XML is the interface, and a
 * maintained parser reads it as libvirt writes it (attributes, nesting,
 * entities) where regular expressions would not.
 */
import { XMLParser } from 'fast-xml-parser';
import { TargetError } from '../errors.js';
import type { AgentTarget } from '../notify/transport.js';

/** The agent's virtio-serial port name (the guest sees /dev/virtio-ports/org.vmsubst.0). */
export const AGENT_CHANNEL = 'org.vmsubst.0';
/** The agent's vsock port (vmsubst-agent's default). */
export const AGENT_VSOCK_PORT = 5252;

/** One image of a disk's chain: the top first, then each backing image. */
export interface ChainImage {
  /** file, block, network, …: libvirt's disk/backingStore type. */
  type: string;
  /** The local path (file or block device); undefined for a network source. */
  path?: string;
  /** raw, qcow2, … (the driver type of the top, the <format> of a backing image). */
  format: string;
}

export interface DomainDisk {
  /** The guest-side target (vda, vdb, sda…): how libvirt names the disk in every command. */
  target: string;
  device: string;
  serial?: string;
  /** libvirt's device alias (virtio-disk1): QEMU's device id for it. */
  alias?: string;
  readOnly: boolean;
  /** <shareable/>: QEMU lets other users write the image (share-rw=on), which a writable NBD export needs. */
  shareable: boolean;
  /** The chain, top first; one element for a disk without backing images. */
  chain: ChainImage[];
}

export interface DomainInfo {
  name: string;
  uuid?: string;
  /** The domain id while it runs. */
  id?: number;
  disks: DomainDisk[];
  /** The host end of the agent's channel (unix socket), when the domain declares one. */
  channelPath?: string;
  /** The guest's vsock CID, when the domain has a vsock device with an address. */
  vsockCid?: number;
}

type Node = Record<string, unknown>;

const parser = new XMLParser({
  ignoreAttributes: false,
  attributeNamePrefix: '@',
  parseAttributeValue: false,
  parseTagValue: false,
  isArray: (name) => ['disk', 'channel', 'vsock'].includes(name),
});

const obj = (v: unknown): Node | undefined => (v !== null && typeof v === 'object' ? (v as Node) : undefined);
const str = (v: unknown): string | undefined => (typeof v === 'string' && v !== '' ? v : undefined);
const list = (v: unknown): Node[] => (Array.isArray(v) ? v.map(obj).filter((x): x is Node => x !== undefined) : []);

/** Parses `virsh dumpxml` output. */
export function parseDomainXml(xml: string): DomainInfo {
  let doc: Node;
  try {
    doc = parser.parse(xml) as Node;
  } catch (e) {
    throw new TargetError(`the domain XML cannot be parsed: ${(e as Error).message}`);
  }
  const domain = obj(doc['domain']);
  if (!domain) throw new TargetError('the domain XML has no <domain> element');
  const devices = obj(domain['devices']) ?? {};
  const info: DomainInfo = {
    name: str(domain['name']) ?? '?',
    disks: list(devices['disk']).map(parseDisk),
  };
  const uuid = str(domain['uuid']);
  if (uuid !== undefined) info.uuid = uuid.toLowerCase();
  const id = Number(str(domain['@id']));
  if (Number.isInteger(id) && id > 0) info.id = id;
  for (const ch of list(devices['channel'])) {
    const target = obj(ch['target']);
    if (str(target?.['@name']) !== AGENT_CHANNEL || str(ch['@type']) !== 'unix') continue;
    const path = str(obj(ch['source'])?.['@path']);
    if (path !== undefined) info.channelPath = path;
  }
  for (const v of list(devices['vsock'])) {
    const cid = Number(str(obj(v['cid'])?.['@address']));
    if (Number.isInteger(cid) && cid > 2) info.vsockCid = cid;
  }
  return info;
}

function parseDisk(d: Node): DomainDisk {
  const target = str(obj(d['target'])?.['@dev']) ?? '?';
  const disk: DomainDisk = {
    target,
    device: str(d['@device']) ?? 'disk',
    readOnly: d['readonly'] !== undefined,
    shareable: d['shareable'] !== undefined,
    chain: [],
  };
  const serial = str(d['serial']);
  if (serial !== undefined) disk.serial = serial;
  const alias = str(obj(d['alias'])?.['@name']);
  if (alias !== undefined) disk.alias = alias;
  const top = image(d, str(obj(d['driver'])?.['@type']));
  if (top) disk.chain.push(top);
  // <backingStore> nests: each holds its <format>, <source> and the next <backingStore> (empty at the end).
  for (let b = obj(d['backingStore']); b && b['source'] !== undefined; b = obj(b['backingStore'])) {
    const img = image(b, str(obj(b['format'])?.['@type']));
    if (img) disk.chain.push(img);
  }
  return disk;
}

function image(n: Node, format: string | undefined): ChainImage | undefined {
  const source = obj(n['source']);
  if (!source) return undefined;
  const type = str(n['@type']) ?? 'file';
  const path = str(source['@file']) ?? str(source['@dev']);
  return { type, format: format ?? 'raw', ...(path !== undefined ? { path } : {}) };
}

/** The agent's address as the domain declares it: its org.vmsubst.0 channel, else its vsock CID. */
export function agentAddress(info: DomainInfo): AgentTarget | undefined {
  if (info.channelPath !== undefined) return { kind: 'serial', path: info.channelPath };
  if (info.vsockCid !== undefined) return { kind: 'vsock', cid: info.vsockCid, port: AGENT_VSOCK_PORT };
  return undefined;
}

/** Why a domain has no agent address, for the outcome that says the guest was not told. */
export function noAgentReason(info: DomainInfo): string {
  return (
    `domain ${info.name} declares neither a <channel> named ${AGENT_CHANNEL} nor a <vsock> with a CID ` +
    '(docs/libvirt.md shows both)'
  );
}

/** "vdb (serial vmsubst-data, /path/disk.img)" for messages. */
export function describeDisk(d: DomainDisk): string {
  const bits = [d.serial !== undefined ? `serial ${d.serial}` : undefined, d.chain[0]?.path ?? d.chain[0]?.type];
  return `${d.target} (${bits.filter(Boolean).join(', ')})`;
}
