/**
 * Overlay mounts whose lower layer is a substituted filesystem: the immutable
 * root (a read-only root or /usr with a tmpfs upper for writes, as Debian's
 * overlayroot, live systems and microVM root filesystems do).
 *
 * An overlay keeps its own dentry for every lower name it looked up; that
 * dentry holds the lower dentry and, through the overlay inode, the lower
 * inode, and an ext4 lower never asks for revalidation. So after a file was
 * replaced (a package manager writes X.dpkg-new and renames it over X) the
 * overlay would go on showing the old inode, and would keep the lower
 * dentry busy so that the lower filesystem's own revalidation could not
 * drop it either. With the module's `revalidateReplaced` feature the agent
 * unhashes the overlay's dentries of every changed name first, in every
 * overlay view of the changed directory, then the lower filesystem's; the
 * next lookup through the overlay goes down to the new lower entry. An upper
 * (copied-up or created) entry of the same name still wins: it is the
 * guest's own.
 */
import type { MetadataOps, TouchedFs } from './metadata.js';
import { openChanged } from './open-changed.js';

/** One lower directory of an overlay mount that lies in a substituted filesystem. */
export interface OverlayLower {
  /** The overlay's mount point. */
  overlay: string;
  /** The lowerdir, a path in the substituted filesystem's mount. */
  lower: string;
}

interface MountLike {
  mountPoint: string;
  fsType?: string;
  superOptions?: string[];
}

const inside = (path: string, dir: string): boolean => path === dir || path.startsWith(dir === '/' ? '/' : dir + '/');

/** The overlay mounts with a lowerdir in the filesystem `under` accepts, one entry per such lowerdir. */
export function overlayLowers(mounts: readonly MountLike[], under: (path: string) => boolean): OverlayLower[] {
  const out: OverlayLower[] = [];
  for (const m of mounts) {
    if (m.fsType !== 'overlay') continue;
    for (const opt of m.superOptions ?? []) {
      if (!opt.startsWith('lowerdir=')) continue;
      // Layers are separated by ':' (an escaped '\:' belongs to a name).
      for (const lower of opt.slice('lowerdir='.length).split(/(?<!\\):/)) {
        if (lower !== '' && under(lower)) out.push({ overlay: m.mountPoint, lower: lower.replace(/\\:/g, ':') });
      }
    }
  }
  return out;
}

/** The paths under which the overlays show `dir`, a directory of the lower filesystem. */
export function overlayViews(lowers: readonly OverlayLower[], dir: string): string[] {
  const views = lowers
    .filter((l) => inside(dir, l.lower))
    .map((l) => {
      const rest = dir.slice(l.lower.length).replace(/^\/+/, '');
      return rest === '' ? l.overlay : `${l.overlay === '/' ? '' : l.overlay}/${rest}`;
    });
  return [...new Set(views)];
}

/**
 * Whether the agent can follow the overlays over this plan's filesystems (the module's feature);
 * sets `overlaysFollow` on each filesystem that has overlays, so `restartReasons` leaves them out.
 */
export async function followOverlays(
  filesystems: readonly TouchedFs[],
  ops: Pick<MetadataOps, 'revalidatesReplaced'>,
): Promise<void> {
  if (!filesystems.some((fs) => fs.overlays.length > 0)) return;
  const ok = (await ops.revalidatesReplaced?.()) ?? false;
  for (const fs of filesystems) if (fs.overlays.length > 0) fs.overlaysFollow = ok;
}

export interface OverlayDentries {
  dir: string;
  names: string[];
  dropped: number;
  busy: number;
  mountpoints: number;
}

/**
 * Unhashes the overlays' dentries of `names` (none: every unused child) in each overlay view of
 * `dir`; before the lower filesystem's, whose dentries they hold. A view that cannot be opened
 * (the overlay shows another directory there, or none) has nothing cached of `dir`.
 */
export async function revalidateOverlayViews(
  fs: TouchedFs,
  dir: string,
  names: string[],
  ops: Pick<MetadataOps, 'revalidateDentries'>,
): Promise<OverlayDentries[]> {
  if (!fs.overlaysFollow) return [];
  const out: OverlayDentries[] = [];
  for (const view of overlayViews(fs.overlayLowers ?? [], dir)) {
    const fh = await openChanged(view, 'dir').catch(() => undefined);
    if (!fh) continue;
    try {
      // Never forced: the module takes an overlay as it is; its upper layer is the guest's.
      const r = await ops.revalidateDentries(fh.fd, names, false);
      out.push({ dir: view, names, dropped: r.dropped, busy: r.busy, mountpoints: r.mountpoints });
    } finally {
      await fh.close();
    }
  }
  return out;
}
