/**
 * libvirt-managed VMs through libvirt's own API (virsh): the live domain XML,
 * a disk-only external snapshot onto the overlay, an active block commit.
 * See docs/libvirt.md.
 */
export { Virsh, type VirshOptions, type VirshRunner } from './virsh.js';
export {
  AGENT_CHANNEL,
  AGENT_VSOCK_PORT,
  agentAddress,
  describeDisk,
  noAgentReason,
  parseDomainXml,
  type ChainImage,
  type DomainDisk,
  type DomainInfo,
} from './domain.js';
export {
  applyToLibvirt,
  commitLibvirt,
  matchesBase,
  noOverlay,
  openChain,
  overlayPathFor,
  resolveLibvirt,
  selectDisk,
  type DiskSelector,
  type LibvirtApplyOptions,
  type LibvirtApplyResult,
  type LibvirtOverlay,
  type LibvirtTarget,
} from './apply.js';
export { applyToLibvirtNbd, TAINT_NOTE } from './nbd.js';
export { VirshMonitor, monitorOf } from './monitor.js';
