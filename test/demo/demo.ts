/**
 * `make demo`: one live substitution, narrated. Boots the test guest with a
 * running v1 program, diffs the golden and patched images, applies the bundle
 * to the running VM through QMP/NBD, notifies the agent over virtio-serial and
 * shows the running program switching to v2 without a restart.
 */
import { copyFileSync, mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { GuestVm } from '../helpers/vm.js';
import { guestArtifacts } from '../helpers/paths.js';
import { vmsubstJson, applyArgs } from '../helpers/cli.js';
import { waitFor } from '../helpers/timeout.js';

const bold = (s: string): string => (process.stdout.isTTY ? `\x1b[1m${s}\x1b[0m` : s);
const dim = (s: string): string => (process.stdout.isTTY ? `\x1b[2m${s}\x1b[0m` : s);
const t0 = Date.now();
const clock = (): string => `[${((Date.now() - t0) / 1000).toFixed(1).padStart(5)} s]`;
const say = (s: string): void => console.log(`${clock()} ${s}`);
const PROG = '/mnt/data/bin/vprog';

async function main(): Promise<void> {
  const art = guestArtifacts();
  if (typeof art === 'string') throw new Error(art);
  const tmp = mkdtempSync(join(tmpdir(), 'vmsubst-demo-'));
  let vm: GuestVm | undefined;
  try {
    console.log(bold("vmsubst demo: replace a running program's blocks under a live VM"));
    const disk = join(tmp, 'vm-disk.img');
    copyFileSync(join(art.disks, 'base.img'), disk);
    say(`golden image ${dim(join(art.disks, 'base.img'))}: ext4 with /bin/vprog v1`);
    say(`patched image ${dim(join(art.disks, 'patched.img'))}: /bin/vprog rewritten to v2`);

    say(
      'booting the guest (Debian cloud kernel, QEMU ' +
        (process.env['VMSUBST_ACCEL'] === 'kvm' ? 'KVM' : 'TCG') +
        ') ...',
    );
    vm = await GuestVm.boot({ disk });
    say(
      `guest up in ${(vm.bootMs / 1000).toFixed(1)} s (vmsubst.ko loaded, disk mounted read-only at /mnt/data), agent ready at ${(vm.agentReadyMs / 1000).toFixed(1)} s`,
    );

    await vm.sh(`${PROG} 500 > /tmp/vprog.out 2>&1 & echo $! > /tmp/vprog.pid`);
    const pid = Number((await vm.sh('cat /tmp/vprog.pid')).trim());
    const last = async (): Promise<string> => (await vm!.sh('tail -n 1 /tmp/vprog.out')).trim();
    await waitFor(30_000, 'v1 output', async () => ((await last()).includes('v1') ? true : undefined));
    say(`started ${PROG} in the guest, printing every 0.5 s: ${bold(await last())}`);

    const bundle = join(tmp, 'vprog.bundle');
    let t = Date.now();
    const diff = await vmsubstJson<{ ranges: number; 'changed-bytes': number }>([
      'diff',
      join(art.disks, 'base.img'),
      join(art.disks, 'patched.img'),
      '-o',
      bundle,
    ]);
    say(
      `vmsubst diff: ${diff.ranges} changed range(s), ${diff['changed-bytes']} bytes of ${statSync(disk).size} → bundle of ${statSync(bundle).size} bytes (${Date.now() - t} ms)`,
    );

    t = Date.now();
    const apply = await vmsubstJson<{ written: number; 'pause-ms': number }>(applyArgs(bundle, vm, false));
    say(
      `vmsubst apply: old blocks verified, ${apply.written} bytes written over NBD; VM paused for ${apply['pause-ms'].toFixed(1)} ms (${Date.now() - t} ms in all)`,
    );

    const stale = (await vm.sh(PROG)).trim();
    say(`without the agent, a new exec still sees the cached old blocks: ${bold(stale)}`);

    t = Date.now();
    const report = await vmsubstJson<{
      files: { path: string; 'pages-dropped': number; mappers: { pid: number; comm: string }[] }[];
      plan?: { files: { path: string; class: string; policy: string; 'policy-from': string }[] };
      'timings-ms': Record<string, number>;
    }>(['notify', bundle, '--to', `serial:${vm.agentSocket}`, '--disk-serial', 'vmsubst-data']);
    say(
      `vmsubst notify (virtio-serial): agent verified, mapped and invalidated in ${report['timings-ms']['total']?.toFixed(0)} ms (${Date.now() - t} ms round trip)`,
    );
    for (const f of report.files) {
      const planned = report.plan?.files.find((p) => p.path === f.path);
      const why = planned
        ? ` — policy ${planned.policy} (${planned.class === 'elf-code-unchanged' ? 'the bundle says no executable byte of the ELF file changed' : planned.class}, ${planned['policy-from']})`
        : '';
      say(
        `  ${f.path}: ${f['pages-dropped']} page(s) dropped; mapped by ${f.mappers.map((m) => `${m.comm}[${m.pid}]`).join(', ') || 'nobody'}${why}`,
      );
    }
    const stages = Object.entries(report['timings-ms'])
      .filter(([k]) => !['total', 'invalidate'].includes(k))
      .map(([k, v]) => `${k} ${v.toFixed(0)}`);
    say(`  agent stages (ms): ${stages.join(', ')}`);

    t = Date.now();
    const line = await waitFor(20_000, 'v2', async () => {
      const l = await last();
      return l.includes('v2') ? l : undefined;
    });
    say(
      `the running program (pid ${pid}, never restarted) now prints: ${bold(line)} (${Date.now() - t} ms after notify)`,
    );
    say(`a new exec prints: ${bold((await vm.sh(PROG)).trim())}`);
    console.log(bold(`done in ${((Date.now() - t0) / 1000).toFixed(1)} s`));
  } finally {
    vm?.kill();
    rmSync(tmp, { recursive: true, force: true });
  }
}

main().catch((e: unknown) => {
  console.error(`demo failed: ${(e as Error).message}`);
  process.exit(1);
});
