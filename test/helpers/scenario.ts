/**
 * The common start of a guest suite: a scratch directory, a copy of the
 * golden test image as the VM's disk, the bundle from the golden image to a
 * patched one, and the booted guest.
 */
import { copyFileSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { GuestVm, type VmOptions } from './vm.js';
import type { GuestArtifacts } from './paths.js';
import { vmsubstJson } from './cli.js';
import { withTimeout } from './timeout.js';

export interface Scenario {
  tmp: string;
  disk: string;
  bundle: string;
  vm: GuestVm;
  /** Kills the guest and removes the scratch directory. */
  close(): void;
}

export async function guestScenario(
  art: GuestArtifacts,
  name: string,
  opts: { base?: string; patched?: string; boot?: Omit<VmOptions, 'disk'> } = {},
): Promise<Scenario> {
  const tmp = mkdtempSync(join(tmpdir(), `vmsubst-${name}-`));
  let vm: GuestVm | undefined;
  try {
    const disk = join(tmp, 'disk.img');
    const base = join(art.disks, opts.base ?? 'base.img');
    copyFileSync(base, disk);
    const bundle = join(tmp, `${name}.bundle`);
    await vmsubstJson(['diff', base, join(art.disks, opts.patched ?? 'patched.img'), '-o', bundle]);
    vm = await withTimeout(180_000, 'boot', () => GuestVm.boot({ ...opts.boot, disk }));
    const booted = vm;
    return { tmp, disk, bundle, vm: booted, close: () => { booted.kill(); rmSync(tmp, { recursive: true, force: true }); } };
  } catch (e) {
    vm?.kill();
    rmSync(tmp, { recursive: true, force: true });
    throw e;
  }
}
