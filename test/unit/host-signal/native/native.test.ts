/**
 * The host's native addon through its facade (host-signal/src/native): the
 * block comparison on real files, vsock connect where this machine allows
 * it, and what a missing addon does to `vmsubst diff` (a warning, a `--json`
 * field, the JavaScript comparison).
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { suite } from 'uvu';
import * as assert from 'uvu/assert';

import {
  isNativeError,
  loadNativeDiff,
  nativeStatus,
  NativeError,
  vsockConnect,
} from '../../../../host-signal/src/native/index.js';
import { vmsubst } from '../../../helpers/cli.js';
import { MiB, TempDir, image, patch, writeFormat1Bundle } from '../fixtures.js';

function native(): NonNullable<ReturnType<typeof loadNativeDiff>> {
  const n = loadNativeDiff();
  if (n === undefined) throw new Error(`the host addon is not built (make addon): ${nativeStatus().error}`);
  return n;
}

async function rejection(promise: Promise<unknown>): Promise<unknown> {
  return promise.then(
    () => assert.unreachable('expected a rejection'),
    (e: unknown) => e,
  );
}

const Compare = suite('host native: compareSpan');
const tmp = new TempDir();
Compare.after(() => tmp.remove());

Compare('the addon loads and says from where', () => {
  const s = nativeStatus();
  assert.is(s.loaded, true, s.error);
  assert.match(s.path ?? '', /host-signal\/build\/Release\/vmsubst_host\.node$/);
  assert.is(native().blockMax, 64 * 1024);
});

Compare('finds the runs of differing blocks, adjacent ones merged, without moving the file offsets', async () => {
  const a = image(MiB);
  const b = patch(
    a,
    [0, 5, 6, 7, 100, 255].map((block) => [block * 4096 + 11, 1] as [number, number]),
  );
  const fdA = fs.openSync(tmp.file('cmp-a', a), 'r');
  const fdB = fs.openSync(tmp.file('cmp-b', b), 'r');
  try {
    const { compareSpan } = native();
    assert.equal(
      [...(await compareSpan(fdA, fdB, 0, MiB, 4096))],
      [0, 4096, 5 * 4096, 3 * 4096, 100 * 4096, 4096, 255 * 4096, 4096],
    );
    // A sub-span: offsets stay absolute; identical files give no runs.
    assert.equal([...(await compareSpan(fdA, fdB, 6 * 4096, 4 * 4096, 4096))], [6 * 4096, 2 * 4096]);
    assert.equal([...(await compareSpan(fdA, fdA, 0, MiB, 512))], []);
    assert.is(fs.readSync(fdA, Buffer.alloc(1), 0, 1, null), 1, 'the offset is still 0');
  } finally {
    fs.closeSync(fdA);
    fs.closeSync(fdB);
  }
});

Compare(
  'a span past the end of a file rejects with a short-read EIO NativeError; bad arguments are RangeErrors',
  async () => {
    const fd = fs.openSync(tmp.file('cmp-short', image(8192)), 'r');
    try {
      const { compareSpan } = native();
      const err = await rejection(compareSpan(fd, fd, 0, 16384, 4096));
      assert.instance(err, NativeError);
      assert.is((err as NativeError).code, 'EIO');
      assert.is((err as NativeError).syscall, 'pread');
      assert.match((err as Error).message, /short read/);
      for (const [offset, length, bs] of [
        [0, 4096, 3000],
        [0, 5000, 4096],
        [-1, 4096, 4096],
        [0, 2 ** 31, 4096],
        [0, 4096, 256],
      ] as const) {
        assert.throws(
          () => void compareSpan(fd, fd, offset, length, bs),
          (e: unknown) => e instanceof RangeError,
          `${offset} ${length} ${bs}`,
        );
      }
    } finally {
      fs.closeSync(fd);
    }
  },
);

Compare('a file ending inside a block is a short read, not zeros compared', async () => {
  const data = image(8192);
  const a = fs.openSync(tmp.file('cmp-tail-a', data.subarray(0, 6000)), 'r');
  const b = fs.openSync(tmp.file('cmp-tail-b', data), 'r');
  try {
    const err = await rejection(native().compareSpan(a, b, 0, 6144, 512));
    assert.is((err as NativeError).code, 'EIO');
    assert.match((err as Error).message, /short read/);
    assert.equal([...(await native().compareSpan(a, b, 0, 5632, 512))], [], 'the part before the end compares');
  } finally {
    fs.closeSync(a);
    fs.closeSync(b);
  }
});

Compare('a file cut short while it is compared rejects with a short read; the process goes on', async () => {
  const size = 64 * MiB;
  const file = tmp.file('cmp-cut', Buffer.alloc(0));
  fs.writeFileSync(file, Buffer.alloc(size, 7));
  const reader = fs.openSync(file, 'r');
  const writer = fs.openSync(file, 'r+');
  try {
    const { compareSpan } = native();
    // Truncated while the comparison runs on the thread pool (or just before it starts): the whole span rejects.
    const comparing = compareSpan(reader, reader, 0, size, 4096);
    fs.ftruncateSync(writer, 4096);
    const err = await rejection(comparing);
    assert.is((err as NativeError).code, 'EIO');
    assert.match((err as Error).message, /short read/);
    // The comparison works afterwards.
    fs.ftruncateSync(writer, 8192);
    assert.equal([...(await compareSpan(reader, reader, 0, 8192, 4096))], []);
  } finally {
    fs.closeSync(reader);
    fs.closeSync(writer);
  }
});

Compare('dataSegments finds the data of a sparse file', () => {
  const file = path.join(tmp.path, 'sparse');
  const fd = fs.openSync(file, 'w+');
  try {
    fs.writeSync(fd, Buffer.alloc(4096, 1), 0, 4096, 8 * MiB);
    fs.ftruncateSync(fd, 16 * MiB);
    const segs = native().dataSegments(fd, 16 * MiB);
    assert.ok(segs.length >= 1 && segs.every(([o, l]) => o + l <= 16 * MiB), JSON.stringify(segs));
    assert.ok(
      segs.some(([o, l]) => o <= 8 * MiB && o + l >= 8 * MiB + 4096),
      'the written block is data',
    );
  } finally {
    fs.closeSync(fd);
  }
});

Compare('prefault returns the buffer it was given, its bytes unchanged, for any length and offset', () => {
  const { prefault } = native();
  const backing = Buffer.alloc(3 * 4096 + 100, 0xa5);
  for (const b of [backing, backing.subarray(17, 17 + 2 * 4096), backing.subarray(5, 9), Buffer.alloc(0)]) {
    const before = Buffer.from(b);
    assert.is(prefault(b), b);
    assert.ok(b.equals(before));
  }
});

Compare.run();

const Missing = suite('host native: a missing addon');
const none = path.join(os.tmpdir(), 'no-such-vmsubst-host.node');
const tmp2 = new TempDir();
Missing.after(() => tmp2.remove());

Missing('diff warns on stderr, says why in --json, and compares in JavaScript with the same result', async () => {
  const base = image(2 * MiB);
  const a = tmp2.file('m-base.img', base);
  const b = tmp2.file(
    'm-patched.img',
    patch(base, [
      [4096, 1],
      [MiB, 10000],
    ]),
  );
  const run = (out: string, env?: Record<string, string>) =>
    vmsubst(['diff', a, b, '-o', tmp2.file(out, Buffer.alloc(0)), '--no-hints', '--json'], 60_000, env);
  const fast = await run('fast.bundle');
  const slow = await run('slow.bundle', { VMSUBST_HOST_NATIVE_PATH: none });
  assert.is(fast.code, 0, fast.stderr);
  assert.is(slow.code, 0, slow.stderr);
  const f = JSON.parse(fast.stdout) as {
    ranges: number;
    'changed-bytes': number;
    native?: { loaded: boolean; error?: string };
  };
  const s = JSON.parse(slow.stdout) as typeof f;
  assert.equal(f.native?.loaded, true);
  assert.is(s.native?.loaded, false);
  assert.match(s.native?.error ?? '', /cannot load the host's native addon \(tried [^)]*no-such-vmsubst-host\.node\)/);
  assert.match(slow.stderr, /^vmsubst: warning: cannot load the host's native addon .*; continuing in JavaScript/m);
  assert.is(slow.stderr.match(/warning:/g)?.length, 1, 'one warning line');
  assert.not.match(fast.stderr, /warning:/);
  assert.is(s.ranges, 2);
  assert.is(f.ranges, 2);
  assert.is(s['changed-bytes'], f['changed-bytes']);
});

Missing('notify over vsock fails with a transport error that names the addon', async () => {
  const base = image(MiB);
  const bundle = tmp2.file('n.bundle');
  await writeFormat1Bundle(bundle, base, patch(base, [[4096, 1]]));
  const r = await vmsubst(['notify', bundle, '--to', 'vsock:3:5252', '--json'], 30_000, {
    VMSUBST_HOST_NATIVE_PATH: none,
  });
  assert.is.not(r.code, 0);
  const { error } = JSON.parse(r.stdout) as { error: { code: string; message: string; hint: string } };
  assert.is(error.code, 'E_VMSUBST_TRANSPORT');
  assert.match(error.message, /^vsock is unavailable: cannot load the host's native addon/);
  assert.match(error.hint, /native addon/);
});

Missing.run();

const Vsock = suite('host native: vsockConnect');

Vsock('rejects an out-of-range port with RangeError', async () => {
  assert.instance(await rejection(vsockConnect(2, 2 ** 32)), RangeError);
});

Vsock('rejects with a NativeError when the peer cannot be reached, or AF_VSOCK is missing', async () => {
  // CID 3 with no guest: the host transport (vhost) refuses or no transport exists; nothing leaves this machine.
  const err = await rejection(vsockConnect(3, 9, { timeoutMs: 5_000 }));
  assert.ok(isNativeError(err), String(err));
  assert.instance(err, NativeError);
  assert.ok(
    ['socket', 'connect', 'bind', 'setsockopt'].includes((err as NativeError).syscall),
    (err as NativeError).syscall,
  );
  assert.ok((err as NativeError).errno < 0);
});

Vsock.run();
