/** Where the built artefacts live, for tests, the demo and benchmarks. */
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

/** The repository root (tests run from build/test/…, compiled). */
export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../../..');
export const CACHE = join(ROOT, '.cache');
/** The vmsubst command as users run it: the bundled CLI (Makefile, target ts). */
export const CLI = join(ROOT, 'build/host-signal/src/cli/vmsubst.mjs');

export function kernelVersion(): string {
  return readFileSync(join(CACHE, 'kver'), 'utf8').trim();
}

export interface GuestArtifacts {
  kernel: string;
  initramfs: string;
  disks: string;
}

/** The guest kernel, initramfs and test disks built by `make guest`; undefined with the reason if absent. */
export function guestArtifacts(): GuestArtifacts | string {
  if (!existsSync(join(CACHE, 'kver'))) return 'guest kernel not set up (run make setup)';
  const a = {
    kernel: join(CACHE, 'kernel', kernelVersion(), 'vmlinuz'),
    initramfs: join(ROOT, 'build/guest/initramfs.cpio'),
    disks: join(ROOT, 'build/disks'),
  };
  for (const p of [a.kernel, a.initramfs, join(a.disks, 'base.img')]) {
    if (!existsSync(p)) return `${p} is missing (run make guest)`;
  }
  return a;
}
