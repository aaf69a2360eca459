/**
 * Inode numbers the new image gives to another file. A package manager
 * replaces X by writing X.dpkg-new and renaming it over X: the old inode is
 * freed, and the next file it writes may get the same number. In the guest,
 * the old in-core inode stays while a process maps or holds it; a lookup of
 * the new name would find that in-core inode by its number (the inode hash)
 * and show the old file's content under the new name. The module takes such
 * an inode out of the hash (REVALIDATE_INODES with unhashBusy): its users
 * keep it, the new name reads the inode table again. Without that feature
 * the guest would see wrong content, so the substitution is reported Stale,
 * never as success.
 */
import { CommandError } from '../errors.js';
import type { MetadataOps, TouchedFs } from './metadata.js';

/**
 * Detaches the in-use inodes of `fs` whose number a new name now holds (`newOwners`: number →
 * the path that names it now; `mine`: the stale inodes with the path that named them before).
 */
export async function detachReused(
  fs: TouchedFs,
  rootFd: number,
  inUse: readonly { ino: number; reasons: string[] }[],
  mine: readonly { ino: number; path?: string }[],
  newOwners: ReadonlyMap<string, string>,
  ops: Pick<MetadataOps, 'revalidateInodes' | 'revalidatesReplaced'>,
  force: boolean,
): Promise<void> {
  const reused = inUse.filter((u) => {
    const by = newOwners.get(`${fs.part.devNum}:${u.ino}`);
    return by !== undefined && by !== mine.find((s) => s.ino === u.ino)?.path && !u.reasons.includes('children');
  });
  if (reused.length === 0) return;
  if (!((await ops.revalidatesReplaced?.()) ?? false)) {
    const names = reused.map((u) => `inode ${u.ino} (now ${newOwners.get(`${fs.part.devNum}:${u.ino}`)})`);
    throw new CommandError(
      'Stale',
      `in ${fs.mountPoint} the new image gives the numbers of inodes still in use to other files: ${names.join(', ')}; ` +
        'the guest would show the old file under the new name. the loaded vmsubst.ko cannot detach them (update it, vmsubst-agent status), ' +
        'or restart the processes that hold them and notify again (same id)',
      { files: reused.map((u) => ({ path: newOwners.get(`${fs.part.devNum}:${u.ino}`)! })) },
    );
  }
  await ops.revalidateInodes(
    rootFd,
    reused.map((u) => u.ino),
    force && !fs.readOnly,
    true,
  );
}
