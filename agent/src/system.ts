/**
 * The real system behind the agent's deps: the native addon, /proc, /sys, /dev.
 * Tests inject their own deps; main.ts uses this.
 */
import type { AgentDeps } from './agent.js';
import { CommandError } from './errors.js';
import type { MetadataOps } from './commands/metadata.js';

type Native = typeof import('./native/index.js');

export async function systemDeps(): Promise<AgentDeps> {
  const native = await import('./native/index.js');
  return {
    readDirect: native.readDirect,
    fiemap: native.fiemap,
    invalidateRange: native.invalidateRange,
    forceFlag: native.INVALIDATE_F_FORCE,
    metadata: metadataOps(native),
    vsockListen: (port) => native.vsockListen(port),
    adoptStream: native.adoptStream,
    procRoot: '/proc',
    sysRoot: '/sys',
    devRoot: '/dev',
    now: () => performance.now(),
  };
}

/** The module's metadata ioctls, through the addon. */
export function metadataOps(_native: Native): MetadataOps {
  const missing = (): never => {
    throw new CommandError('KmodUnavailable', 'this build of the agent has no metadata operations (block-device, inode and dentry revalidation)');
  };
  return { invalidateBdev: missing, revalidateDentries: missing, revalidateInodes: missing };
}
