/**
 * Overlays over a substituted filesystem (agent/src/substitution/overlay.ts): which overlay mounts
 * stack on it, where they show a changed directory, whether the module follows them, and the
 * overlay's dentries revalidated in each view; and the `restart` policy for
 * files a substitution replaces by rename (commands/replaced.ts), on a fake /proc; in-use inodes
 * whose number the new image reuses (commands/inodes-reused.ts).
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  followOverlays,
  overlayLowers,
  overlayViews,
  revalidateOverlayViews,
} from '../../../../agent/src/substitution/overlay.js';
import type { TouchedFs } from '../../../../agent/src/substitution/metadata.js';
import { restartsForReplaced } from '../../../../agent/src/substitution/replaced.js';
import { detachReused } from '../../../../agent/src/substitution/inodes-reused.js';

const MiB = 1 << 20;
/** Only what these functions read of a touched filesystem. */
const touched = (over: Partial<TouchedFs>): TouchedFs =>
  ({ part: { name: 'vdb', devNum: '254:16', startBytes: 0, sizeBytes: 256 * MiB }, ...over }) as TouchedFs;

const Ov = suite('overlay: the overlays over a substituted filesystem');

Ov('overlayLowers: each lowerdir inside the filesystem, per overlay; escaped colons belong to the name', () => {
  const under = (p: string): boolean => p === '/sysroot.ro' || p.startsWith('/sysroot.ro/');
  const mounts = [
    { mountPoint: '/sysroot.ro', fsType: 'ext4', superOptions: ['ro'] },
    {
      mountPoint: '/sysroot',
      fsType: 'overlay',
      superOptions: ['rw', 'lowerdir=/sysroot.ro', 'upperdir=/run/rw/upper', 'workdir=/run/rw/work'],
    },
    { mountPoint: '/srv/app', fsType: 'overlay', superOptions: ['rw', 'lowerdir=/elsewhere:/sysroot.ro/opt/a\\:b'] },
    { mountPoint: '/other', fsType: 'overlay', superOptions: ['rw', 'lowerdir=/elsewhere'] },
  ];
  assert.equal(overlayLowers(mounts, under), [
    { overlay: '/sysroot', lower: '/sysroot.ro' },
    { overlay: '/srv/app', lower: '/sysroot.ro/opt/a:b' },
  ]);
});

Ov(
  'overlayViews: the overlay path of a lower directory, the overlay root for the lowerdir itself, none outside',
  () => {
    const lowers = [
      { overlay: '/sysroot', lower: '/sysroot.ro' },
      { overlay: '/', lower: '/lower/usr' },
    ];
    assert.equal(overlayViews(lowers, '/sysroot.ro/usr/lib/pkgt'), ['/sysroot/usr/lib/pkgt']);
    assert.equal(overlayViews(lowers, '/sysroot.ro'), ['/sysroot']);
    assert.equal(overlayViews(lowers, '/lower/usr/bin'), ['/bin']);
    assert.equal(overlayViews(lowers, '/lower/usr'), ['/']);
    assert.equal(overlayViews(lowers, '/sysroot.rox/usr'), [], 'a sibling with the same prefix is not inside');
  },
);

Ov('followOverlays: asks the module only where an overlay stacks, and records the answer', async () => {
  const fs = touched({ overlays: ['/sysroot'] });
  await followOverlays([fs], { revalidatesReplaced: () => false });
  assert.is(fs.overlaysFollow, false);
  await followOverlays([fs], { revalidatesReplaced: async () => true });
  assert.is(fs.overlaysFollow, true);
  const none = touched({ overlays: [] });
  await followOverlays([none], { revalidatesReplaced: () => assert.unreachable('not asked') as never });
  assert.is(none.overlaysFollow, undefined, 'no overlay, nothing asked');
});

Ov(
  'revalidateOverlayViews: the names in every view that opens, never forced; nothing without the feature',
  async () => {
    const dir = mkdtempSync(join(tmpdir(), 'vmsubst-ovl-'));
    try {
      mkdirSync(join(dir, 'ov/usr/lib'), { recursive: true });
      const calls: { names: string[]; force: boolean }[] = [];
      const ops = {
        revalidateDentries: async (_fd: number, names: string[], force: boolean) => {
          calls.push({ names, force });
          return { dropped: names.length, busy: 0, mountpoints: 0 };
        },
      };
      const lowers = [
        { overlay: join(dir, 'ov'), lower: '/lower' },
        { overlay: join(dir, 'missing'), lower: '/lower' },
      ];
      const fs = touched({ overlays: [join(dir, 'ov')], overlayLowers: lowers });
      assert.equal(
        await revalidateOverlayViews(fs, '/lower/usr/lib', ['libx.so.1'], ops),
        [],
        'not followed: nothing done',
      );
      fs.overlaysFollow = true;
      const r = await revalidateOverlayViews(fs, '/lower/usr/lib', ['libx.so.1', 'libx.so.1.dpkg-new'], ops);
      assert.equal(r, [
        {
          dir: join(dir, 'ov/usr/lib'),
          names: ['libx.so.1', 'libx.so.1.dpkg-new'],
          dropped: 2,
          busy: 0,
          mountpoints: 0,
        },
      ]);
      assert.equal(calls, [{ names: ['libx.so.1', 'libx.so.1.dpkg-new'], force: false }]);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  },
);

Ov.run();

const Rep = suite('replaced: the restart policy for files replaced by rename');

Rep(
  'the units of processes on a replaced file whose policy is restart; pin, other slices and the agent itself are left',
  async () => {
    const proc = mkdtempSync(join(tmpdir(), 'vmsubst-proc-'));
    try {
      const cg = (pid: number | string, path: string): void => {
        mkdirSync(join(proc, String(pid)), { recursive: true });
        writeFileSync(join(proc, String(pid), 'cgroup'), `0::${path}\n`);
      };
      cg('self', '/system.slice/vmsubst-agent.service');
      cg(10, '/system.slice/pkgt-restart.service');
      cg(11, '/system.slice/pkgt-keep.service');
      cg(12, '/user.slice/user-0.slice/session-1.scope');
      cg(13, '/system.slice/vmsubst-agent.service');
      const hints = [
        { path: '/usr/sbin/pkgt-restartd', elf: 'code-unchanged' as const },
        { path: '/usr/sbin/pkgt-keepd', elf: 'code-unchanged' as const },
        { path: '/usr/lib/pkgt/libpkgt.so.1', elf: 'code-changed' as const },
      ];
      const stale = [
        { pid: 10, comm: 'pkgt-restartd', file: '/sysroot.ro/usr/sbin/pkgt-restartd', why: 'old-inode' as const },
        { pid: 10, comm: 'pkgt-restartd', file: '/sysroot.ro/usr/lib/pkgt/libpkgt.so.1', why: 'old-inode' as const },
        { pid: 11, comm: 'pkgt-keepd', file: '/sysroot.ro/usr/sbin/pkgt-keepd', why: 'old-inode' as const },
        { pid: 12, comm: 'pkgt-restartd', file: '/sysroot.ro/usr/sbin/pkgt-restartd', why: 'old-inode' as const },
        { pid: 13, comm: 'node', file: '/sysroot.ro/usr/sbin/pkgt-restartd', why: 'old-inode' as const },
      ];
      const policies = {
        config: { files: { '/usr/sbin/pkgt-restartd': 'restart' as const, '/usr/sbin/pkgt-keepd': 'pin' as const } },
      };
      assert.equal(await restartsForReplaced(stale, hints, ['/', '/sysroot.ro'], policies, proc), [
        'pkgt-restart.service',
      ]);
      assert.equal(
        await restartsForReplaced(stale, hints, ['/sysroot.ro'], {}, proc),
        [],
        'default policies: nobody restarted',
      );
      assert.equal(
        await restartsForReplaced(
          stale,
          hints,
          ['/sysroot.ro'],
          { notification: { 'elf-code-changed': 'restart' } },
          proc,
        ),
        ['pkgt-restart.service'],
        "the library's class policy from the notification: only system services that map it",
      );
      assert.equal(
        await restartsForReplaced([{ ...stale[0]!, why: 'pinned' as const }], hints, ['/sysroot.ro'], policies, proc),
        [],
        'only old-inode entries',
      );
    } finally {
      rmSync(proc, { recursive: true, force: true });
    }
  },
);

Rep.run();

const Reused = suite('inodes-reused: in-use inodes whose number the new image gives to another file');

Reused(
  'detached with unhashBusy where the module can; Stale where it cannot; directories and same paths left',
  async () => {
    const fs = touched({});
    const devNum = fs.part.devNum;
    const inUse = [
      { ino: 24296, reasons: ['mapped'] }, // the old daemon, its number now /var/lib/dpkg/status
      { ino: 24300, reasons: ['children'] }, // a directory with cached children
      { ino: 24301, reasons: ['open'] }, // same path, same number: not reused
      { ino: 24302, reasons: ['open'] }, // no new owner
    ];
    const mine = [
      { ino: 24296, path: '/sysroot.ro/usr/sbin/pkgt-keepd' },
      { ino: 24300, path: '/sysroot.ro/usr/lib/pkgt' },
      { ino: 24301, path: '/sysroot.ro/etc/x' },
      { ino: 24302, path: '/sysroot.ro/etc/y' },
    ];
    const newOwners = new Map([
      [`${devNum}:24296`, '/sysroot.ro/var/lib/dpkg/status'],
      [`${devNum}:24300`, '/sysroot.ro/usr/lib/pkgt/new'],
      [`${devNum}:24301`, '/sysroot.ro/etc/x'],
    ]);
    const calls: { inos: number[]; force: boolean; unhash: boolean | undefined }[] = [];
    const ops = (feature: boolean) => ({
      revalidatesReplaced: () => feature,
      revalidateInodes: async (_fd: number, inos: number[], force: boolean, unhash?: boolean) => {
        calls.push({ inos, force, unhash });
        return { evicted: 0, notCached: 0, inUse: [] };
      },
    });
    await detachReused(fs, 3, inUse, mine, newOwners, ops(true), false);
    assert.equal(calls, [{ inos: [24296], force: false, unhash: true }]);
    calls.length = 0;
    try {
      await detachReused(fs, 3, inUse, mine, newOwners, ops(false), false);
      assert.unreachable('an older module must not pass as success');
    } catch (e) {
      assert.is((e as { errorClass?: string }).errorClass, 'Stale');
      assert.match((e as Error).message, /inode 24296 \(now \/sysroot\.ro\/var\/lib\/dpkg\/status\)/);
    }
    assert.equal(calls, []);
    await detachReused(fs, 3, inUse.slice(1), mine, newOwners, ops(false), false);
    assert.equal(calls, [], 'nothing reused in use: nothing asked');
  },
);

Reused.run();
