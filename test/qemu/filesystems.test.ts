/**
 * Filesystems other than ext4, in a real guest (test/fixtures/build-fs-disks.sh):
 *  - XFS mounted ro,norecovery, a data file and a program rewritten in place: a process holding the
 *    file open reads the new content, new reads and new execs see it, through the mount and through
 *    an overlayfs whose read-only lower it is; the report lists the files;
 *  - XFS with a file added (metadata): refused in prepare with RestartRequired, nothing written;
 *  - btrfs (nodatacow files rewritten in place; mountinfo shows an anonymous device): refused in
 *    prepare with Unsupported, nothing written.
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { withGuest, type GuestContext } from '../helpers/guest-suite.js';
import { vmsubst, type CliRun } from '../helpers/cli.js';
import { waitFor, withTimeout } from '../helpers/timeout.js';
import type { GuestVm } from '../helpers/vm.js';

const DATA = '/mnt/data/share/data.txt';
const OV = '/mnt/ov';

/** Mounts the data disk (serial vmsubst-data) at /mnt/data with `opts` (init mounted it only if ext4). */
async function mountData(vm: GuestVm, type: string, opts: string): Promise<void> {
  await vm.sh('umount /mnt/data 2>/dev/null; true');
  await vm.sh(
    `for b in /sys/block/vd*; do [ "$(cat $b/serial 2>/dev/null)" = vmsubst-data ] && D=/dev/\${b##*/}; done; ` +
      `mount -t ${type} -o ${opts} $D /mnt/data`,
  );
  assert.match(await vm.sh('grep " /mnt/data " /proc/self/mountinfo'), new RegExp(` ${type} `));
}

const sha = (path: string): string => createHash('sha256').update(readFileSync(path)).digest('hex');

/** apply with the two-phase notification; the parsed --json answer (or the raw output when it is not JSON). */
async function applyNotify(s: GuestContext): Promise<{ run: CliRun; out: Record<string, any> | undefined }> {
  const run = await vmsubst(
    [
      'apply',
      s.bundle,
      '--qmp',
      s.vm.qmpSocket,
      '--device',
      'vblk0',
      '--notify',
      `serial:${s.vm.agentSocket}`,
      '--disk-serial',
      'vmsubst-data',
      '--json',
    ],
    300_000,
  );
  let out: Record<string, any> | undefined;
  try {
    out = JSON.parse(run.stdout) as Record<string, any>;
  } catch {
    out = undefined;
  }
  return { run, out };
}

/** A suite whose guest has FS-base.img mounted at /mnt/data with `opts` (then `more`), and the bundle to `patched`. */
function fsSuite<X extends object = object>(
  title: string,
  name: string,
  fs: 'xfs' | 'btrfs',
  patched: string,
  opts: string,
  more?: (c: GuestContext) => Promise<X | void>,
) {
  return withGuest<X>(suite(title), {
    name,
    base: `${fs}-base.img`,
    patched,
    async setup(c) {
      await mountData(c.vm, fs, opts);
      return more?.(c);
    },
  });
}

/** The two-phase apply of the XFS data suite, made once: the tests read its outcome. */
const xfsApplied = (c: GuestContext): ReturnType<typeof applyNotify> => c.once('applied', () => applyNotify(c));

function xfsData(): void {
  const S = fsSuite(
    'filesystems: XFS ro,norecovery, data changed in place: readers see the new content',
    'fs-xfs-data',
    'xfs',
    'xfs-patched.img',
    'ro,norecovery',
    async ({ vm }) => {
      // An overlay whose read-only lower is the XFS mount (Debian overlayroot's shape), upper on tmpfs.
      await vm.sh(
        `mkdir -p /tmp/ovu /tmp/ovw ${OV} && mount -t overlay ov -o lowerdir=/mnt/data,upperdir=/tmp/ovu,workdir=/tmp/ovw ${OV}`,
      );
      // A reader that holds the file open (through the mount and through the overlay) and re-reads it.
      await vm.sh(
        `node -e "const fs=require('fs');const a=fs.openSync(process.argv[1],'r'),b=fs.openSync(process.argv[2],'r');const x=Buffer.alloc(20),y=Buffer.alloc(20);` +
          `setInterval(()=>{fs.readSync(a,x,0,20,8192);fs.readSync(b,y,0,20,8192);fs.writeFileSync('/tmp/reader.out',x+'|'+y)},200)" ${DATA} ${OV}/share/data.txt > /tmp/reader.log 2>&1 & echo $! > /tmp/reader.pid`,
      );
      const reader = Number((await vm.sh('cat /tmp/reader.pid')).trim());
      await waitFor(60_000, 'reader', async () =>
        /v1 line.*\|.*v1 line/.test((await vm.run('cat /tmp/reader.out')).out) ? true : undefined,
      );
      // Cached before the write: the old pages must be dropped, not merely never read.
      assert.match(await vm.sh(`cat ${DATA} ${OV}/share/data.txt | head -n 1`), /DATA v1/);
      assert.match(await vm.sh('/mnt/data/bin/vprog'), /version v1/);
      return { reader };
    },
  );

  S('apply + two-phase notify exits 0 and lists the changed files, on an XFS mount', (c) =>
    withTimeout(330_000, 'apply', async () => {
      const { run, out } = await xfsApplied(c);
      assert.is(run.code, 0, run.stdout + run.stderr);
      const report = out?.agent?.report as
        | { files: { path: string }[]; plan: { filesystems?: { mount: string; type: string; handling: string }[] } }
        | undefined;
      assert.ok(report, run.stdout);
      const paths = report.files.map((f) => f.path);
      assert.ok(paths.includes(DATA), `files: ${JSON.stringify(paths)}`);
      assert.ok(paths.includes('/mnt/data/bin/vprog'), `files: ${JSON.stringify(paths)}`);
      const fs = report.plan.filesystems?.find((f) => f.mount === '/mnt/data');
      assert.ok(fs && fs.type === 'xfs' && fs.handling === 'data-only', JSON.stringify(report.plan.filesystems));
    }),
  );

  S('the running reader sees the new content, through the mount and through the overlay', (c) =>
    withTimeout(390_000, 'reader', async () => {
      const { vm } = c;
      await xfsApplied(c);
      await waitFor(30_000, 'reader switches', async () => {
        const r = (await vm.run('cat /tmp/reader.out')).out;
        return /v2 line.*\|.*v2 line/.test(r) ? true : undefined;
      });
      assert.is((await vm.run(`kill -0 ${c.reader}`)).code, 0, 'the reader is still running');
    }),
  );

  S('new reads and new execs see the new content', (c) =>
    withTimeout(390_000, 'new reads', async () => {
      const { vm } = c;
      await xfsApplied(c);
      assert.match(await vm.sh(`head -n 1 ${DATA}`), /DATA v2 line 00001/);
      assert.match(await vm.sh(`head -n 1 ${OV}/share/data.txt`), /DATA v2 line 00001/);
      assert.match(await vm.sh('/mnt/data/bin/vprog'), /version v2/);
      assert.match(await vm.sh(`${OV}/bin/vprog`), /version v2/);
      assert.is(
        await vm.sh(`sha256sum ${DATA} | cut -d' ' -f1`).then((x) => x.trim()),
        sha(`${c.art.disks}/data-v2.txt`),
      );
    }),
  );
  S.run();
}

function xfsAdded(): void {
  const S = fsSuite(
    'filesystems: XFS, a file added (metadata): RestartRequired in prepare, nothing written',
    'fs-xfs-added',
    'xfs',
    'xfs-added.img',
    'ro,norecovery',
  );

  S('prepare refuses with RestartRequired naming XFS metadata; the disk is unchanged', (c) =>
    withTimeout(330_000, 'added', async () => {
      const before = sha(c.disk);
      const { run } = await applyNotify(c);
      assert.is(run.code, 1, run.stdout + run.stderr);
      assert.match(run.stdout + run.stderr, /RestartRequired/, run.stdout + run.stderr);
      assert.match(run.stdout + run.stderr, /XFS/, run.stdout + run.stderr);
      assert.match(run.stdout + run.stderr, /nothing was (written|done)/, run.stdout + run.stderr);
      assert.is(sha(c.disk), before, 'the disk image is byte for byte what it was');
      assert.is.not((await c.vm.run('cat /mnt/data/etc/added.conf')).code, 0);
    }),
  );
  S.run();
}

function btrfs(): void {
  const S = fsSuite(
    'filesystems: btrfs (nodatacow file changed in place): Unsupported in prepare, nothing written',
    'fs-btrfs',
    'btrfs',
    'btrfs-patched.img',
    'ro',
    async ({ vm }) => {
      assert.match(
        await vm.sh('grep " /mnt/data " /proc/self/mountinfo'),
        / 0:\d+ /,
        'btrfs shows an anonymous device',
      );
    },
  );

  S('prepare refuses with Unsupported and the reason; the disk is unchanged; the dry run shows why', (s) =>
    withTimeout(330_000, 'btrfs', async () => {
      const plan = await vmsubst(
        [
          'notify',
          s.bundle,
          '--to',
          `serial:${s.vm.agentSocket}`,
          '--disk-serial',
          'vmsubst-data',
          '--dry-run',
          '--json',
        ],
        120_000,
      );
      assert.match(plan.stdout + plan.stderr, /btrfs/);
      assert.not.match(plan.stdout, /outside-filesystems/);
      const before = sha(s.disk);
      const { run } = await applyNotify(s);
      assert.is(run.code, 1, run.stdout + run.stderr);
      assert.match(run.stdout + run.stderr, /Unsupported/, run.stdout + run.stderr);
      assert.match(run.stdout + run.stderr, /btrfs/, run.stdout + run.stderr);
      assert.match(run.stdout + run.stderr, /nothing was (written|done)/, run.stdout + run.stderr);
      assert.is(sha(s.disk), before, 'the disk image is byte for byte what it was');
      assert.match(await s.vm.sh(`head -n 1 ${DATA}`), /DATA v1/);
    }),
  );
  S.run();
}

const only = process.env.VMSUBST_FS_ONLY; // xfs-data | xfs-added | btrfs: one scenario while debugging
if (!only || only === 'xfs-data') xfsData();
if (!only || only === 'xfs-added') xfsAdded();
if (!only || only === 'btrfs') btrfs();
