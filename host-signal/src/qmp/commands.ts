/**
 * Typed wrappers for the QMP commands vmsubst uses. Replies are checked
 * against minimal schemas (QEMU adds fields between versions, so extra fields
 * are allowed here, unlike in vmsubst's own formats).
 */
import { Type, type Static, type TSchema } from '@sinclair/typebox';
import { Validator } from '@vmsubst/common/protocol/codec';
import { QmpError } from '../errors.js';
import { QmpClient, type QmpEvent } from './client.js';

/**
 * What Qemu needs of a monitor: commands and their events. A QmpClient on QEMU's socket, or a monitor reached
 * through a manager (libvirt's QMP passthrough, which has no events).
 */
export interface QmpChannel {
  execute<T = unknown>(command: string, args?: Record<string, unknown>, timeoutMs?: number): Promise<T>;
  on(event: 'event', listener: (e: QmpEvent) => void): unknown;
  off(event: 'event', listener: (e: QmpEvent) => void): unknown;
}

export const StatusInfo = Type.Object({ running: Type.Boolean(), status: Type.String() });
export type StatusInfo = Static<typeof StatusInfo>;

const ImageInfo = Type.Object({ 'virtual-size': Type.Integer({ minimum: 0 }), filename: Type.String() });

/** A node as query-block (`inserted`) and query-named-block-nodes describe it. */
const DirtyBitmapInfo = Type.Object({ name: Type.Optional(Type.String()), count: Type.Integer({ minimum: 0 }) });

export const BlockDeviceInfo = Type.Object({
  'node-name': Type.Optional(Type.String()),
  file: Type.String(),
  ro: Type.Boolean(),
  drv: Type.String(),
  image: ImageInfo,
  'dirty-bitmaps': Type.Optional(Type.Array(DirtyBitmapInfo)),
});
export type BlockDeviceInfo = Static<typeof BlockDeviceInfo>;

export const BlockInfo = Type.Object({
  /** Legacy drive id; empty for -blockdev drives. */
  device: Type.String(),
  /** The attached device's QOM path, e.g. /machine/peripheral/vblk0/virtio-backend. */
  qdev: Type.Optional(Type.String()),
  inserted: Type.Optional(BlockDeviceInfo),
});
export type BlockInfo = Static<typeof BlockInfo>;

export const BlockExportInfo = Type.Object({
  id: Type.String(),
  type: Type.String(),
  'node-name': Type.String(),
  'shutting-down': Type.Boolean(),
});
export type BlockExportInfo = Static<typeof BlockExportInfo>;

const validators = new Map<TSchema, Validator<TSchema>>();
// The reply schemas are module constants: a validator is compiled once per schema object.
const BlockInfoList = Type.Array(BlockInfo);
const BlockDeviceInfoList = Type.Array(BlockDeviceInfo);
const BlockExportInfoList = Type.Array(BlockExportInfo);
const UuidInfo = Type.Object({ UUID: Type.String() });
const BlockJobInfoList = Type.Array(Type.Object({ device: Type.String(), type: Type.String() }));

// Made at load (compiled on first use), so that the build's precompilation sees every one.
for (const s of [StatusInfo, UuidInfo, BlockInfoList, BlockDeviceInfoList, BlockExportInfoList, BlockJobInfoList])
  validators.set(s, new Validator(s));

function check<S extends TSchema>(schema: S, command: string, value: unknown): Static<S> {
  let v = validators.get(schema);
  if (!v) validators.set(schema, (v = new Validator(schema)));
  const problems = v.problems(value);
  if (problems.length > 0)
    throw new QmpError('ProtocolError', `unexpected reply: ${problems.slice(0, 3).join('; ')}`, command);
  return value as Static<S>;
}

/** The VM states in which a disk must not be written (the VM lives, or is about to live, elsewhere). */
export const MIGRATION_STATES: ReadonlySet<string> = new Set([
  'inmigrate',
  'postmigrate',
  'finish-migrate',
  'save-vm',
  'restore-vm',
  'colo',
]);

export class Qemu<C extends QmpChannel = QmpChannel> {
  constructor(readonly qmp: C) {}

  async queryStatus(): Promise<StatusInfo> {
    return check(StatusInfo, 'query-status', await this.qmp.execute('query-status'));
  }

  /** The VM's UUID (-uuid; all zeros when none was given). */
  async queryUuid(): Promise<string> {
    return check(UuidInfo, 'query-uuid', await this.qmp.execute('query-uuid')).UUID;
  }

  async queryBlock(): Promise<BlockInfo[]> {
    return check(BlockInfoList, 'query-block', await this.qmp.execute('query-block'));
  }

  async queryNamedBlockNodes(): Promise<BlockDeviceInfo[]> {
    return check(
      BlockDeviceInfoList,
      'query-named-block-nodes',
      await this.qmp.execute('query-named-block-nodes', { flat: true }),
    );
  }

  async queryBlockExports(): Promise<BlockExportInfo[]> {
    return check(BlockExportInfoList, 'query-block-exports', await this.qmp.execute('query-block-exports'));
  }

  /** Pauses guest execution; in-flight guest I/O is drained before it returns. */
  async stop(): Promise<void> {
    await this.qmp.execute('stop');
  }

  async cont(): Promise<void> {
    await this.qmp.execute('cont');
  }

  /** Starts QEMU's (single) built-in NBD server on a unix socket. */
  async nbdServerStartUnix(path: string): Promise<void> {
    await this.qmp.execute('nbd-server-start', { addr: { type: 'unix', data: { path } } });
  }

  async nbdServerStop(): Promise<void> {
    await this.qmp.execute('nbd-server-stop');
  }

  async blockExportAdd(args: {
    id: string;
    nodeName: string;
    name: string;
    writable: boolean;
    writethrough?: boolean;
  }): Promise<void> {
    const a: Record<string, unknown> = {
      type: 'nbd',
      id: args.id,
      'node-name': args.nodeName,
      name: args.name,
      writable: args.writable,
    };
    if (args.writethrough !== undefined) a['writethrough'] = args.writethrough;
    await this.qmp.execute('block-export-add', a);
  }

  /** 'hard' disconnects remaining clients instead of failing while they are connected. */
  async blockExportDel(id: string, mode: 'safe' | 'hard' = 'safe'): Promise<void> {
    await this.qmp.execute('block-export-del', { id, mode });
  }

  /** A non-persistent dirty bitmap: records every write to the node from now on. */
  async dirtyBitmapAdd(node: string, name: string): Promise<void> {
    await this.qmp.execute('block-dirty-bitmap-add', { node, name, persistent: false });
  }

  async dirtyBitmapRemove(node: string, name: string): Promise<void> {
    await this.qmp.execute('block-dirty-bitmap-remove', { node, name });
  }

  /** Bytes marked dirty in a bitmap of a node. */
  async dirtyBytes(node: string, name: string): Promise<number> {
    const info = (await this.queryNamedBlockNodes()).find((n) => n['node-name'] === node);
    const bitmap = info?.['dirty-bitmaps']?.find((b) => b.name === name);
    if (!bitmap)
      throw new QmpError('ProtocolError', `node '${node}' has no dirty bitmap '${name}'`, 'query-named-block-nodes');
    return bitmap.count;
  }

  /** Opens a qcow2 image as a new node with no backing yet (blockdev-snapshot supplies it). */
  async blockdevAddQcow2(nodeName: string, filename: string): Promise<void> {
    await this.qmp.execute('blockdev-add', {
      driver: 'qcow2',
      'node-name': nodeName,
      file: { driver: 'file', filename },
      backing: null,
    });
  }

  async blockdevDel(nodeName: string): Promise<void> {
    await this.qmp.execute('blockdev-del', { 'node-name': nodeName });
  }

  /** Makes `overlay` the top of `node`'s chain, `node` its backing: one atomic graph change. */
  async blockdevSnapshot(node: string, overlay: string): Promise<void> {
    await this.qmp.execute('blockdev-snapshot', { node, overlay });
  }

  async queryBlockJobs(): Promise<{ device: string; type: string }[]> {
    return check(BlockJobInfoList, 'query-block-jobs', await this.qmp.execute('query-block-jobs'));
  }

  async quit(): Promise<void> {
    await this.qmp.execute('quit');
  }
}

/** Resets the VM at `qmpPath` (system_reset: a cold restart of the guest, QEMU keeps running). */
export async function systemReset(qmpPath: string): Promise<void> {
  const qmp = await QmpClient.connect(qmpPath);
  try {
    await qmp.execute('system_reset');
  } finally {
    qmp.close();
  }
}

/** The VM's SMBIOS UUID (query-uuid); undefined when QEMU runs without -uuid (all zeros). */
export async function vmUuid(qmpPath: string): Promise<string | undefined> {
  const qmp = await QmpClient.connect(qmpPath);
  try {
    const r = (await qmp.execute('query-uuid')) as { UUID?: string };
    const u = r.UUID?.toLowerCase();
    return u !== undefined && /^[0-9a-f-]{36}$/.test(u) && !/^[0-]+$/.test(u) ? u : undefined;
  } finally {
    qmp.close();
  }
}
