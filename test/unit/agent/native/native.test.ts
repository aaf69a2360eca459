/**
 * Unit tests of the native addon through its facade (agent/src/native).
 *
 * They run against the real kernel: FIEMAP and O_DIRECT on a file in the
 * temp directory, the kmod ioctls against devices that lack them, stream
 * adoption over a real socketpair (in a child process) and FIFOs. Whatever
 * this machine cannot do (no FIEMAP on the temp filesystem, no AF_VSOCK)
 * prints why and is skipped; the vsock data path itself is exercised in a
 * guest by the QEMU suites (vsock_loopback, CID 1).
 */
import { spawn, execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import { Socket } from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import type { Duplex } from 'node:stream';
import { suite } from 'uvu';
import * as assert from 'uvu/assert';

import {
  adoptStream,
  constants,
  fiemap,
  isNativeError,
  KmodDevice,
  kmodFeatures,
  localCid,
  NativeError,
  PIN_CURSOR_START,
  readDirect,
  vsockListen,
} from '../../../../agent/src/native/index.js';

const FACADE_URL = new URL('../../../../agent/src/native/index.js', import.meta.url).href;

// ---- helpers -----------------------------------------------------------------------

function skip(test: string, reason: string): void {
  console.log(`  skipped: ${test}: ${reason}`);
}

function assertNativeError(err: unknown, code: string | string[], syscall?: string | string[]): NativeError {
  assert.ok(isNativeError(err), `expected a NativeError, got ${String(err)}`);
  const e = err as NativeError;
  const codes = Array.isArray(code) ? code : [code];
  assert.ok(codes.includes(e.code), `code ${e.code} not in ${codes.join(',')}`);
  assert.is(e.errno, -(os.constants.errno as Record<string, number>)[e.code]!);
  assert.ok(e.errno < 0);
  if (syscall !== undefined) {
    const syscalls = Array.isArray(syscall) ? syscall : [syscall];
    assert.ok(syscalls.includes(e.syscall), `syscall ${e.syscall} not in ${syscalls.join(',')}`);
  }
  assert.ok(e.message.startsWith(`${e.code}: `), `message: ${e.message}`);
  return e;
}

async function rejection(promise: Promise<unknown>): Promise<unknown> {
  try {
    await promise;
  } catch (err) {
    return err;
  }
  throw new Error('expected the promise to reject');
}

function thrown(fn: () => unknown): unknown {
  try {
    fn();
  } catch (err) {
    return err;
  }
  throw new Error('expected the call to throw');
}

function withTimeout<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

function once(emitter: NodeJS.EventEmitter, event: string): Promise<unknown[]> {
  return new Promise((resolve, reject) => {
    const onError = (err: Error): void => reject(err);
    emitter.once(event, (...args: unknown[]) => {
      emitter.off('error', onError);
      resolve(args);
    });
    if (event !== 'error') emitter.once('error', onError);
  });
}

/**
 * Everything a readable stream yields until 'end'. Not `for await`: the
 * async iterator destroys a Duplex when the readable side ends, which would
 * close the writable side these tests still use.
 */
function readAll(stream: NodeJS.ReadableStream): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    stream.on('data', (chunk: Buffer | string) => chunks.push(Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk)));
    stream.once('end', () => resolve(Buffer.concat(chunks)));
    stream.once('error', reject);
  });
}

function pattern(size: number, seed = 1): Buffer {
  const buf = Buffer.alloc(size);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < size; i++) {
    x = (x * 1103515245 + 12345) >>> 0;
    buf[i] = x >>> 24;
  }
  return buf;
}

function writeFileSynced(file: string, parts: Array<{ offset: number; data: Buffer }>, size?: number): void {
  const fd = fs.openSync(file, 'w');
  try {
    for (const { offset, data } of parts) fs.writeSync(fd, data, 0, data.length, offset);
    if (size !== undefined) fs.ftruncateSync(fd, size);
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}

function withFd<T>(file: string, fn: (fd: number) => T): T {
  const fd = fs.openSync(file, 'r');
  try {
    return fn(fd);
  } finally {
    fs.closeSync(fd);
  }
}

let tmp = '';
function makeTmp(): void {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'vmsubst-native-'));
}
function removeTmp(): void {
  if (tmp !== '') fs.rmSync(tmp, { recursive: true, force: true });
  tmp = '';
}

/** Can FIEMAP and O_DIRECT be used in the temp directory? null if yes, else why not. */
function fileSupport(): { fiemap: string | null; direct: string | null } {
  const probe = path.join(tmp, 'probe');
  writeFileSynced(probe, [{ offset: 0, data: Buffer.alloc(4096, 1) }]);
  let fiemapReason: string | null = null;
  try {
    withFd(probe, (fd) => fiemap(fd));
  } catch (err) {
    fiemapReason = `FIEMAP unsupported on ${os.tmpdir()} (${isNativeError(err) ? err.code : String(err)})`;
  }
  let directReason: string | null = null;
  try {
    fs.closeSync(fs.openSync(probe, fs.constants.O_RDONLY | fs.constants.O_DIRECT));
  } catch (err) {
    directReason = `O_DIRECT unsupported on ${os.tmpdir()} (${(err as NodeJS.ErrnoException).code})`;
  }
  return { fiemap: fiemapReason, direct: directReason };
}

// ---- constants -------------------------------------------------------------------------

const Constants = suite('native: constants');

Constants('INVALIDATE_F_FORCE is a single flag bit taken from the uapi header', () => {
  const force = constants.VMSUBST_INVALIDATE_F_FORCE;
  assert.type(force, 'number');
  assert.ok(force > 0 && (force & (force - 1)) === 0);
  assert.is(constants.VMSUBST_INVALIDATE_F_ALL & force, force);
  assert.ok(Object.keys(constants).includes('VMSUBST_INVALIDATE_F_FORCE'), 'the constants enumerate');
  assert.throws(() => {
    (constants as { VMSUBST_INVALIDATE_F_FORCE: number }).VMSUBST_INVALIDATE_F_FORCE = 0;
  }, TypeError);
});

Constants('vsock constants come from <linux/vm_sockets.h>', () => {
  assert.is(constants.VMADDR_CID_ANY, 0xffff_ffff);
  assert.is(constants.VMADDR_PORT_ANY, 0xffff_ffff);
  assert.is(constants.VMADDR_CID_LOCAL, 1);
  assert.is(constants.VMADDR_CID_HOST, 2);
});

Constants('importing the facade loads nothing: without the addon the first call throws why', () => {
  const script =
    `const n = await import(${JSON.stringify(FACADE_URL)}); console.log('imported'); ` +
    `try { n.fiemap(0); } catch (e) { console.log('first call:', e.message); } ` +
    `try { new n.KmodDevice().version(); } catch (e) { console.log('again:', e.message); }`;
  const out = execFileSync(process.execPath, ['--input-type=module', '-e', script], {
    env: { ...process.env, VMSUBST_NATIVE_PATH: path.join(os.tmpdir(), 'no-such-addon.node') },
    encoding: 'utf8',
  });
  assert.match(out, /^imported\n/);
  assert.match(out, /first call: vmsubst: cannot load the native addon \(tried [^)]*no-such-addon\.node\)/);
  assert.match(out, /again: vmsubst: cannot load the native addon/);
});

Constants.run();

// ---- fiemap ----------------------------------------------------------------------------

const Fiemap = suite('native: fiemap');
let fiemapSkip: string | null = null;

Fiemap.before(() => {
  makeTmp();
  fiemapSkip = fileSupport().fiemap;
});
Fiemap.after(removeTmp);

Fiemap('maps a written file from offset 0 to its size', () => {
  if (fiemapSkip !== null) return skip('fiemap written file', fiemapSkip);
  const file = path.join(tmp, 'dense');
  const size = 1 << 20;
  writeFileSynced(file, [{ offset: 0, data: pattern(size) }]);
  const extents = withFd(file, (fd) => fiemap(fd));
  assert.ok(extents.length >= 1);
  assert.is(extents[0]!.logical, 0n);
  let covered = 0n;
  for (const e of extents) {
    assert.is(typeof e.logical, 'bigint');
    assert.is(typeof e.physical, 'bigint');
    assert.is(typeof e.length, 'bigint');
    assert.type(e.flags, 'number');
    covered += e.length;
  }
  assert.is(covered, BigInt(size));
  assert.ok((extents.at(-1)!.flags & constants.FIEMAP_EXTENT_LAST) !== 0, 'last extent carries FIEMAP_EXTENT_LAST');
});

Fiemap('reports the hole of a sparse file as a gap between extents', () => {
  if (fiemapSkip !== null) return skip('fiemap sparse file', fiemapSkip);
  const file = path.join(tmp, 'sparse');
  const far = 64 << 20;
  writeFileSynced(file, [
    { offset: 0, data: pattern(4096, 2) },
    { offset: far, data: pattern(4096, 3) },
  ]);
  const extents = withFd(file, (fd) => fiemap(fd));
  assert.is(extents.length, 2);
  assert.is(extents[0]!.logical, 0n);
  assert.is(extents[1]!.logical, BigInt(far));
  assert.ok(extents[0]!.logical + extents[0]!.length < extents[1]!.logical);
});

Fiemap('returns no extents for an empty file', () => {
  if (fiemapSkip !== null) return skip('fiemap empty file', fiemapSkip);
  const file = path.join(tmp, 'empty');
  writeFileSynced(file, []);
  assert.equal(
    withFd(file, (fd) => fiemap(fd)),
    [],
  );
});

Fiemap('walks a file with more extents than one batch', () => {
  if (fiemapSkip !== null) return skip('fiemap many extents', fiemapSkip);
  const file = path.join(tmp, 'fragmented');
  const count = 600; // > 2 batches of 256: every other 4 KiB block written
  const parts = Array.from({ length: count }, (_, i) => ({ offset: i * 8192, data: pattern(4096, i + 10) }));
  writeFileSynced(file, parts);
  const extents = withFd(file, (fd) => fiemap(fd));
  assert.is(extents.length, count);
  extents.forEach((e, i) => {
    assert.is(e.logical, BigInt(i * 8192));
    assert.is(e.length, 4096n);
  });
  assert.ok((extents.at(-1)!.flags & constants.FIEMAP_EXTENT_LAST) !== 0);
});

Fiemap('physical offsets locate the file data on its block device', async () => {
  if (fiemapSkip !== null) return skip('fiemap physical offsets', fiemapSkip);
  const file = path.join(tmp, 'located');
  const data = pattern(64 * 1024, 99);
  writeFileSynced(file, [{ offset: 0, data }]);
  const dev = fs.statSync(file).dev;
  const major = Math.floor(dev / 256) & 0xfff;
  const minor = (dev & 0xff) | ((Math.floor(dev / 4096) & 0xfff00) >>> 0);
  let devName = '';
  try {
    const uevent = fs.readFileSync(`/sys/dev/block/${major}:${minor}/uevent`, 'utf8');
    devName = /^DEVNAME=(.+)$/m.exec(uevent)?.[1] ?? '';
  } catch {
    // not backed by a block device (overlayfs, tmpfs, ...)
  }
  const device = `/dev/${devName}`;
  if (devName === '' || !fs.existsSync(device)) {
    return skip('fiemap physical offsets', `${os.tmpdir()} is not on a block device node here`);
  }
  const extents = withFd(file, (fd) => fiemap(fd));
  assert.ok(extents.length > 0);
  for (const e of extents) {
    const end = Number(e.logical + e.length) > data.length ? data.length : Number(e.logical + e.length);
    const want = data.subarray(Number(e.logical), end);
    let got: Buffer;
    try {
      got = await readDirect(device, Number(e.physical), want.length);
    } catch (err) {
      if (isNativeError(err) && err.syscall === 'open' && ['EACCES', 'EPERM'].includes(err.code)) {
        return skip('fiemap physical offsets', `${device} cannot be opened here (${err.code})`);
      }
      throw err;
    }
    assert.ok(got.equals(want), `extent at logical ${e.logical} matches ${device} at ${e.physical}`);
  }
});

Fiemap('throws an EBADF NativeError for a closed fd', () => {
  const fd = fs.openSync(os.tmpdir(), 'r');
  fs.closeSync(fd);
  assertNativeError(
    thrown(() => fiemap(fd)),
    'EBADF',
    'ioctl',
  );
});

Fiemap('rejects a negative fd with RangeError', () => {
  assert.throws(() => fiemap(-1), RangeError);
});

Fiemap.run();

// ---- readDirect --------------------------------------------------------------------------

const ReadDirect = suite('native: readDirect');
let directSkip: string | null = null;
let content: Buffer = Buffer.alloc(0);
let contentFile = '';

ReadDirect.before(() => {
  makeTmp();
  directSkip = fileSupport().direct;
  content = pattern(3 * 4096 + 100, 7);
  contentFile = path.join(tmp, 'content');
  writeFileSynced(contentFile, [{ offset: 0, data: content }]);
});
ReadDirect.after(removeTmp);

ReadDirect('returns the bytes of an aligned range', async () => {
  if (directSkip !== null) return skip('readDirect aligned', directSkip);
  const got = await readDirect(contentFile, 4096, 8192);
  assert.ok(got.equals(content.subarray(4096, 4096 + 8192)));
});

ReadDirect('returns the bytes of an unaligned offset and length', async () => {
  if (directSkip !== null) return skip('readDirect unaligned', directSkip);
  const got = await readDirect(contentFile, 1000, 5000);
  assert.is(got.length, 5000);
  assert.ok(got.equals(content.subarray(1000, 6000)));
});

ReadDirect('reads up to the exact end of a file whose size is not aligned', async () => {
  if (directSkip !== null) return skip('readDirect to end of file', directSkip);
  const got = await readDirect(contentFile, 4000, content.length - 4000);
  assert.ok(got.equals(content.subarray(4000)));
});

ReadDirect('rejects a range past the end with a short-read EIO', async () => {
  if (directSkip !== null) return skip('readDirect short read', directSkip);
  const err = assertNativeError(await rejection(readDirect(contentFile, content.length - 10, 20)), 'EIO', 'read');
  assert.match(err.message, /short read, got 10 of 20 bytes/);
  assert.is(err.path, contentFile);
});

ReadDirect('resolves an empty Buffer for length 0', async () => {
  if (directSkip !== null) return skip('readDirect length 0', directSkip);
  const got = await readDirect(contentFile, 123, 0);
  assert.is(got.length, 0);
});

ReadDirect('rejects a missing path with an ENOENT NativeError', async () => {
  const missing = path.join(tmp, 'does-not-exist');
  const err = assertNativeError(await rejection(readDirect(missing, 0, 10)), 'ENOENT', 'open');
  assert.is(err.message, `ENOENT: no such file or directory, open '${missing}'`);
  assert.is(err.path, missing);
});

ReadDirect('rejects a negative offset with RangeError', async () => {
  const err = await rejection(readDirect(contentFile, -1, 10));
  assert.instance(err, RangeError);
});

ReadDirect.run();

// ---- /dev/vmsubst ----------------------------------------------------------------------------

const Kmod = suite('native: kmod ioctls');

Kmod.before(makeTmp);
Kmod.after(removeTmp);

Kmod('version() throws an ENOENT NativeError when the device is missing', () => {
  const dev = path.join(tmp, 'no-vmsubst');
  const err = assertNativeError(
    thrown(() => new KmodDevice(dev).version()),
    'ENOENT',
    'open',
  );
  assert.is(err.path, dev);
  assert.instance(err, NativeError, "the glue makes the facade's class");
});

Kmod('version() throws ENOTTY from the ioctl on a device without it', () => {
  const device = new KmodDevice('/dev/null');
  try {
    const err = assertNativeError(
      thrown(() => device.version()),
      'ENOTTY',
      'ioctl',
    );
    assert.match(err.message, /VMSUBST_IOC_VERSION/);
    assert.is(err.path, '/dev/null');
  } finally {
    device.close();
  }
});

Kmod('a KmodDevice opens the device once for all its calls and closes it on close()', async () => {
  const device = new KmodDevice('/dev/null');
  const fds = (): string[] =>
    fs.readdirSync('/proc/self/fd').filter((fd) => {
      try {
        return fs.readlinkSync(`/proc/self/fd/${fd}`) === '/dev/null';
      } catch {
        return false;
      }
    });
  const before = fds().length;
  assert.is(device.isOpen, false, 'opened at the first call, not before');
  thrown(() => device.version());
  await rejection(device.queryPages(0, 0n, 4096n));
  thrown(() => device.version());
  assert.is(device.isOpen, true);
  assert.is(fds().length, before + 1, 'one fd for three calls');
  device.close();
  device.close();
  assert.is(device.isOpen, false);
  assert.is(fds().length, before, 'closed');
  thrown(() => device.version());
  assert.is(device.isOpen, true, 'a later call opens it again');
  device.close();
});

Kmod('invalidateRange rejects a negative or 2^64 offset with RangeError', async () => {
  const device = new KmodDevice();
  assert.instance(await rejection(device.invalidateRange(0, -1n, 1n)), RangeError);
  assert.instance(await rejection(device.invalidateRange(0, 1n << 64n, 1n)), RangeError);
  assert.is(device.isOpen, false, 'checked before the device is opened');
});

Kmod('invalidateRange rejects report capacities above the kernel maximum with RangeError', async () => {
  const device = new KmodDevice('/dev/null');
  const over = constants.VMSUBST_RANGES_MAX + 1;
  assert.instance(await rejection(device.invalidateRange(0, 0n, 1n, { outcomesCapacity: over })), RangeError);
  assert.instance(
    await rejection(device.invalidateRange(0, 0n, 1n, { mappersCapacity: constants.VMSUBST_MAPPERS_MAX + 1 })),
    RangeError,
  );
  assert.instance(await rejection(device.invalidateRange(0, 0n, 1n, { flags: -1 })), RangeError);
});

Kmod('constants carry every flag, limit and feature of the uapi header', () => {
  const bits = [
    constants.VMSUBST_INVALIDATE_F_FORCE,
    constants.VMSUBST_INVALIDATE_F_ZAP,
    constants.VMSUBST_INVALIDATE_F_DROP,
    constants.VMSUBST_INVALIDATE_F_REFAULT_ASYNC,
    constants.VMSUBST_INVALIDATE_F_REFAULT_SYNC,
    constants.VMSUBST_INVALIDATE_F_REPORT_MAPPERS,
    constants.VMSUBST_INVALIDATE_F_UNLESS_DIRTY,
  ];
  assert.is(
    bits.reduce((a, b) => a | b, 0),
    constants.VMSUBST_INVALIDATE_F_ALL,
  );
  assert.is(new Set(bits).size, bits.length);
  for (const name of [
    'VMSUBST_RANGES_MAX',
    'VMSUBST_MAPPERS_MAX',
    'VMSUBST_INODES_MAX',
    'VMSUBST_NAMES_MAX',
    'VMSUBST_NAMES_SIZE_MAX',
    'VMSUBST_PIN_PAGES_MAX',
    'VMSUBST_PIN_RESULTS_MAX',
    'VMSUBST_PIN_VMAS_MAX',
  ] as const) {
    assert.ok(Number.isInteger(constants[name]) && constants[name] > 0, name);
  }
  assert.is(constants.VMSUBST_DENTRIES_F_UNHASH_BUSY & constants.VMSUBST_DENTRIES_F_FORCE, 0);
  assert.ok(constants.VMSUBST_PIN_F_RESUME > 0);
  assert.is(constants.VMSUBST_PIN_S_BUDGET & constants.VMSUBST_PIN_S_TRUNCATED, 0);
});

Kmod('kmodFeatures names the feature bits', () => {
  assert.equal(kmodFeatures(0n), []);
  assert.equal(kmodFeatures(constants.VMSUBST_FEATURE_INVALIDATE_RANGE | constants.VMSUBST_FEATURE_PIN_MAPPERS), [
    'invalidateRange',
    'pinMappers',
  ]);
  const all = [
    constants.VMSUBST_FEATURE_INVALIDATE_RANGE,
    constants.VMSUBST_FEATURE_INVALIDATE_RANGE_V1,
    constants.VMSUBST_FEATURE_INVALIDATE_BDEV,
    constants.VMSUBST_FEATURE_REVALIDATE_INODES,
    constants.VMSUBST_FEATURE_REVALIDATE_DENTRIES,
    constants.VMSUBST_FEATURE_QUERY_MAPPERS,
    constants.VMSUBST_FEATURE_PIN_MAPPERS,
    constants.VMSUBST_FEATURE_QUERY_PAGES,
    constants.VMSUBST_FEATURE_INVALIDATE_UNLESS_DIRTY,
    constants.VMSUBST_FEATURE_PIN_CURSOR,
  ].reduce((a, b) => a | b, 0n);
  assert.is(kmodFeatures(all).length, 10);
  assert.equal(kmodFeatures(constants.VMSUBST_FEATURE_QUERY_PAGES | constants.VMSUBST_FEATURE_PIN_CURSOR), [
    'queryPages',
    'pinCursor',
  ]);
  assert.equal(kmodFeatures(constants.VMSUBST_FEATURE_INVALIDATE_UNLESS_DIRTY), ['invalidateUnlessDirty']);
});

/** A file of the temp directory, opened read-only for the duration of `fn`. */
async function withFile<T>(fn: (fd: number) => Promise<T>, dir = false): Promise<T> {
  const file = dir ? tmp : path.join(tmp, 'target');
  if (!dir) fs.writeFileSync(file, 'x');
  const fd = fs.openSync(file, 'r');
  try {
    return await fn(fd);
  } finally {
    fs.closeSync(fd);
  }
}

/** [ioctl, call, name of the case when one ioctl has several]. */
const KMOD_CALLS: Array<[string, (device: KmodDevice, fd: number) => Promise<unknown>, string?]> = [
  [
    'VMSUBST_IOC_INVALIDATE_RANGE',
    (d, fd) => d.invalidateRange(fd, 0n, 4096n, { flags: constants.VMSUBST_INVALIDATE_F_FORCE }),
  ],
  [
    'VMSUBST_IOC_INVALIDATE_RANGE',
    (d, fd) => d.invalidateRange(fd, 0n, 4096n, { flags: constants.VMSUBST_INVALIDATE_F_UNLESS_DIRTY }),
    'VMSUBST_IOC_INVALIDATE_RANGE with F_UNLESS_DIRTY',
  ],
  ['VMSUBST_IOC_INVALIDATE_BDEV', (d, fd) => d.invalidateBdev(fd, 0n, 4096n)],
  ['VMSUBST_IOC_REVALIDATE_INODES', (d, fd) => d.revalidateInodes(fd, [2n])],
  ['VMSUBST_IOC_REVALIDATE_DENTRIES', (d, fd) => d.revalidateDentries(fd, ['a', 'b'])],
  ['VMSUBST_IOC_QUERY_MAPPERS', (d, fd) => d.queryMappers(fd, 0n, 4096n)],
  ['VMSUBST_IOC_PIN_MAPPERS', (d, fd) => d.pinMappers(fd, 0n, 4096n, { maxPages: 16 })],
  [
    'VMSUBST_IOC_PIN_MAPPERS',
    (d, fd) => d.pinMappers(fd, 0n, 4096n, { maxPages: 16, cursor: { mm: 1n << 63n, addr: 4096n } }),
    'VMSUBST_IOC_PIN_MAPPERS with a cursor',
  ],
  ['VMSUBST_IOC_QUERY_PAGES', (d, fd) => d.queryPages(fd, 0n, 4096n)],
];

for (const [ioctl, call, name = ioctl] of KMOD_CALLS) {
  Kmod(`${name}: rejects with ENOTTY from the ioctl on a device without it`, async () => {
    const device = new KmodDevice('/dev/null');
    try {
      await withFile(async (fd) => {
        const err = assertNativeError(await rejection(call(device, fd)), 'ENOTTY', 'ioctl');
        assert.match(err.message, new RegExp(`${ioctl} '/dev/null' \\(fd ${fd}\\)$`));
        assert.is(err.path, '/dev/null');
        assert.instance(err, NativeError);
      });
    } finally {
      device.close();
    }
  });

  Kmod(`${name}: rejects an ENOENT NativeError when the device is missing`, async () => {
    const dev = path.join(tmp, 'none');
    const err = assertNativeError(await rejection(call(new KmodDevice(dev), 0)), 'ENOENT', 'open');
    assert.is(err.path, dev);
  });

  Kmod(`${name}: rejects a negative fd with RangeError`, async () => {
    assert.instance(await rejection(call(new KmodDevice('/dev/null'), -1)), RangeError);
  });
}

const device = new KmodDevice('/dev/null');
Kmod.after(() => device.close());

Kmod('invalidateBdev rejects a kept capacity above the maximum, and bad flags', async () => {
  const keptCapacity = constants.VMSUBST_RANGES_MAX + 1;
  assert.instance(await rejection(device.invalidateBdev(0, 0n, 1n, { keptCapacity })), RangeError);
  assert.instance(await rejection(device.invalidateBdev(0, 0n, 1n, { flags: -1 })), RangeError);
  assert.instance(await rejection(device.invalidateBdev(0, 0n, -1n)), RangeError);
});

Kmod('revalidateInodes wants 1..VMSUBST_INODES_MAX bigint inode numbers', async () => {
  assert.instance(await rejection(device.revalidateInodes(0, [])), RangeError);
  const many = Array.from({ length: constants.VMSUBST_INODES_MAX + 1 }, () => 12n);
  assert.instance(await rejection(device.revalidateInodes(0, many)), RangeError);
  assert.instance(await rejection(device.revalidateInodes(0, [1n << 64n])), RangeError);
  assert.instance(await rejection(device.revalidateInodes(0, [12 as unknown as bigint])), TypeError);
});

Kmod('revalidateDentries takes single directory entry names only', async () => {
  for (const bad of ['', '.', '..', 'a/b', 'nul\0byte', 'x'.repeat(256), 'é'.repeat(128)]) {
    assert.instance(await rejection(device.revalidateDentries(0, [bad])), RangeError, JSON.stringify(bad));
  }
  assert.instance(await rejection(device.revalidateDentries(0, [42 as unknown as string])), TypeError);
  const many = Array.from({ length: constants.VMSUBST_NAMES_MAX + 1 }, (_, i) => `n${i}`);
  assert.instance(await rejection(device.revalidateDentries(0, many)), RangeError);
});

Kmod('revalidateDentries reaches the ioctl with no names and with a 255-byte name', async () => {
  await withFile(async (fd) => {
    assertNativeError(await rejection(device.revalidateDentries(fd, [])), 'ENOTTY', 'ioctl');
    assertNativeError(
      await rejection(device.revalidateDentries(fd, ['x'.repeat(255), 'é'.repeat(127)])),
      'ENOTTY',
      'ioctl',
    );
  }, true);
});

Kmod('queryMappers rejects a capacity above the maximum with RangeError', async () => {
  assert.instance(
    await rejection(device.queryMappers(0, 0n, 1n, { capacity: constants.VMSUBST_MAPPERS_MAX + 1 })),
    RangeError,
  );
});

Kmod('pinMappers wants 1..VMSUBST_PIN_PAGES_MAX pages and capacities within the maximum', async () => {
  assert.instance(await rejection(device.pinMappers(0, 0n, 1n, { maxPages: 0 })), RangeError);
  assert.instance(
    await rejection(device.pinMappers(0, 0n, 1n, { maxPages: constants.VMSUBST_PIN_PAGES_MAX + 1 })),
    RangeError,
  );
  assert.instance(await rejection(device.pinMappers(0, 0n, 1n, { maxPages: 1.5 })), TypeError);
  const pinnedCapacity = constants.VMSUBST_PIN_RESULTS_MAX + 1;
  assert.instance(await rejection(device.pinMappers(0, 0n, 1n, { maxPages: 1, pinnedCapacity })), RangeError);
});

Kmod('pinMappers takes a cursor of two u64 bigints; PIN_CURSOR_START is (0, 0)', async () => {
  assert.equal({ ...PIN_CURSOR_START }, { mm: 0n, addr: 0n });
  assert.ok(Object.isFrozen(PIN_CURSOR_START));
  assert.instance(
    await rejection(device.pinMappers(0, 0n, 1n, { maxPages: 1, cursor: { mm: -1n, addr: 0n } })),
    RangeError,
  );
  assert.instance(
    await rejection(device.pinMappers(0, 0n, 1n, { maxPages: 1, cursor: { mm: 0n, addr: 1n << 64n } })),
    RangeError,
  );
  assert.instance(
    await rejection(device.pinMappers(0, 0n, 1n, { maxPages: 1, cursor: { mm: 0n, addr: 1 as unknown as bigint } })),
    TypeError,
  );
});

Kmod('queryPages rejects a capacity above the maximum and bad ranges', async () => {
  assert.instance(
    await rejection(device.queryPages(0, 0n, 1n, { capacity: constants.VMSUBST_RANGES_MAX + 1 })),
    RangeError,
  );
  assert.instance(await rejection(device.queryPages(0, -1n, 1n)), RangeError);
  assert.instance(await rejection(device.queryPages(-1, 0n, 1n)), RangeError);
});

Kmod.run();

// ---- adoptStream ---------------------------------------------------------------------------------

/**
 * A child node process adopts fd 3 (its end of a socketpair that node's
 * spawn() creates) with adoptStream; the parent talks to it through node's
 * own socket on the other end. The child prints one JSON line on exit.
 */
const CHILD = `
import * as fs from 'node:fs';
const { adoptStream } = await import(process.env.FACADE_URL);
const mode = process.env.CHILD_MODE;
const report = {};
const s = adoptStream(3, { allowHalfOpen: true });
s.on('error', (e) => { report.error = e.code ?? String(e); });
s.on('close', () => {
  try { fs.fstatSync(3); report.fdOpen = true; } catch (e) { report.fdOpen = e.code; }
  process.stdout.write(JSON.stringify(report) + '\\n');
});
if (mode === 'echo') {
  s.on('data', (d) => s.write(d));
  s.on('end', () => { report.sawEof = true; s.end('EOF-SEEN\\n'); });
} else if (mode === 'end-first') {
  s.end('hello from child\\n');
  s.resume();
} else if (mode === 'destroy') {
  s.once('data', () => s.destroy());
}
`;

interface ChildReport {
  sawEof?: boolean;
  fdOpen?: true | string;
  error?: string;
}

function startChild(mode: string): { peer: Socket; report: Promise<ChildReport> } {
  const child = spawn(process.execPath, ['--input-type=module', '-e', CHILD], {
    stdio: ['ignore', 'pipe', 'inherit', 'pipe'],
    env: { ...process.env, FACADE_URL, CHILD_MODE: mode },
  });
  const peer = child.stdio[3];
  const stdout = child.stdout;
  if (!(peer instanceof Socket) || stdout === null) throw new Error('child stdio is not piped');
  const report = (async (): Promise<ChildReport> => {
    const out = await readAll(stdout);
    const [code] = await (child.exitCode === null ? once(child, 'exit') : Promise.resolve([child.exitCode]));
    assert.is(code, 0, 'child exit code');
    return JSON.parse(out.toString('utf8').trim()) as ChildReport;
  })();
  return { peer, report };
}

const Adopt = suite('native: adoptStream');

Adopt.before(makeTmp);
Adopt.after(removeTmp);

Adopt('carries data both ways over a socketpair', async () => {
  const { peer, report } = startChild('echo');
  const received = readAll(peer);
  peer.write('ping 1\n');
  peer.write(Buffer.from('ping 2\n'));
  peer.end();
  const text = (await withTimeout(received, 10_000, 'echo')).toString();
  assert.is(text, 'ping 1\nping 2\nEOF-SEEN\n');
  const r = await withTimeout(report, 10_000, 'child report');
  assert.is(r.error, undefined);
});

Adopt('delivers EOF to the peer on end() and keeps reading (half-close)', async () => {
  const { peer, report } = startChild('end-first');
  let ended = false;
  const received = readAll(peer).then((b) => {
    ended = true;
    return b;
  });
  const text = (await withTimeout(received, 10_000, 'child end()')).toString();
  assert.is(text, 'hello from child\n');
  assert.ok(ended);
  // The child's readable side is still open after its end(): it exits only
  // once our EOF reaches it.
  peer.end();
  const r = await withTimeout(report, 10_000, 'child report');
  assert.is(r.error, undefined);
  assert.is(r.fdOpen, 'EBADF');
});

Adopt('sees the peer EOF and can still write after it', async () => {
  const { peer, report } = startChild('echo');
  const received = readAll(peer);
  peer.end();
  assert.is((await withTimeout(received, 10_000, 'after EOF')).toString(), 'EOF-SEEN\n');
  const r = await withTimeout(report, 10_000, 'child report');
  assert.is(r.sawEof, true);
});

Adopt('destroy() closes the adopted fd', async () => {
  const { peer, report } = startChild('destroy');
  const peerEof = readAll(peer);
  peer.write('go');
  const r = await withTimeout(report, 10_000, 'child report');
  assert.is(r.fdOpen, 'EBADF');
  assert.is((await withTimeout(peerEof, 10_000, 'peer EOF after destroy')).length, 0);
});

Adopt('reads a FIFO until its writer closes', async () => {
  const fifo = path.join(tmp, 'fifo-read');
  execFileSync('mkfifo', [fifo]);
  const fd = fs.openSync(fifo, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK);
  const stream = adoptStream(fd);
  const received = readAll(stream);
  const payload = pattern(200_000, 5);
  await fs.promises.writeFile(fifo, payload);
  const got = await withTimeout(received, 10_000, 'fifo read');
  assert.ok(got.equals(payload));
  await withTimeout(stream.destroyed ? Promise.resolve([]) : once(stream, 'close'), 10_000, 'close after EOF');
});

Adopt('end() on a non-socket fd flushes the data and finishes', async () => {
  const fifo = path.join(tmp, 'fifo-write');
  execFileSync('mkfifo', [fifo]);
  const reader = fs.openSync(fifo, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK);
  try {
    const writer = fs.openSync(fifo, fs.constants.O_WRONLY | fs.constants.O_NONBLOCK);
    const stream: Duplex = adoptStream(writer);
    stream.end('line one\nline two\n');
    await withTimeout(once(stream, 'finish'), 10_000, 'finish');
    stream.destroy();
    await withTimeout(once(stream, 'close'), 10_000, 'close');
    const buf = Buffer.alloc(100);
    const n = fs.readSync(reader, buf, 0, buf.length, null);
    assert.is(buf.subarray(0, n).toString(), 'line one\nline two\n');
    // The writer's fd is closed: the reader now sees end of file.
    assert.is(fs.readSync(reader, buf, 0, buf.length, null), 0);
  } finally {
    fs.closeSync(reader);
  }
});

Adopt('stops reading while the consumer is paused (backpressure)', async () => {
  const fifo = path.join(tmp, 'fifo-pressure');
  execFileSync('mkfifo', [fifo]);
  const fd = fs.openSync(fifo, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK);
  const stream = adoptStream(fd);
  const total = 8 << 20;
  const writing = fs.promises.writeFile(fifo, Buffer.alloc(total, 0x5a));

  let received = 0;
  const firstChunk = new Promise<void>((resolve) => {
    stream.once('data', (chunk: Buffer) => {
      received += chunk.length;
      stream.pause();
      resolve();
    });
  });
  await withTimeout(firstChunk, 10_000, 'first chunk');
  await new Promise((r) => setTimeout(r, 300));
  // Without readStop libuv would keep pulling the writer's megabytes into
  // the stream's buffer; with it, one read buffer past the high-water mark.
  assert.ok(
    stream.readableLength <= stream.readableHighWaterMark + 64 * 1024,
    `buffered ${stream.readableLength} bytes while paused`,
  );
  stream.on('data', (chunk: Buffer) => {
    received += chunk.length;
  });
  stream.resume();
  await withTimeout(once(stream, 'end'), 20_000, 'end');
  await writing;
  assert.is(received, total);
});

Adopt('throws an EBADF NativeError for an fd that is not open', () => {
  assertNativeError(
    thrown(() => adoptStream(999_999)),
    'EBADF',
  );
});

Adopt.run();

// ---- vsock ---------------------------------------------------------------------------------------

const Vsock = suite('native: vsock');

/** null when AF_VSOCK sockets can be created here, else the NativeError. */
function vsockUnavailable(): NativeError | null {
  try {
    vsockListen(constants.VMADDR_PORT_ANY).close();
    return null;
  } catch (err) {
    if (isNativeError(err) && err.syscall === 'socket') return err;
    throw err;
  }
}

Vsock('vsockListen listens on a free port, or throws a NativeError without AF_VSOCK', async () => {
  let server;
  try {
    server = vsockListen(constants.VMADDR_PORT_ANY);
  } catch (err) {
    assertNativeError(
      err,
      ['EAFNOSUPPORT', 'ENODEV', 'EPROTONOSUPPORT', 'ESOCKTNOSUPPORT', 'EPERM', 'EACCES'],
      'socket',
    );
    return;
  }
  assert.type(server.port, 'number');
  assert.is.not(server.port, constants.VMADDR_PORT_ANY);
  assert.is(server.cid, constants.VMADDR_CID_ANY);
  const closed = once(server, 'close');
  server.close();
  await withTimeout(closed, 5_000, 'server close');
});

Vsock('vsockListen throws EADDRINUSE from bind for a port in use', () => {
  const unavailable = vsockUnavailable();
  if (unavailable !== null) return skip('vsockListen EADDRINUSE', `no AF_VSOCK here (${unavailable.code})`);
  const server = vsockListen(constants.VMADDR_PORT_ANY);
  try {
    const err = assertNativeError(
      thrown(() => vsockListen(server.port)),
      'EADDRINUSE',
      'bind',
    );
    assert.match(err.message, new RegExp(`bind vsock \\d+:${server.port}$`));
  } finally {
    server.close();
  }
});

Vsock('localCid returns a CID or throws a NativeError', () => {
  try {
    const cid = localCid();
    assert.ok(Number.isInteger(cid) && cid >= 0 && cid <= 0xffff_ffff);
  } catch (err) {
    assertNativeError(err, ['ENOENT', 'ENODEV', 'ENXIO', 'EACCES', 'ENOTTY'], ['open', 'ioctl']);
  }
});

Vsock('localCid throws an ENOENT NativeError for a missing device', () => {
  assertNativeError(
    thrown(() => localCid('/nonexistent/vsock')),
    'ENOENT',
    'open',
  );
});

Vsock.run();
