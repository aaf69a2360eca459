import { createServer, type Server, type Socket } from 'node:net';
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { NbdError } from '../../../../host-signal/src/errors.js';
import { NbdClient } from '../../../../host-signal/src/nbd/index.js';
import { TempDir, image } from '../fixtures.js';

interface FakeOptions {
  exportName?: string;
  /** Answer NBD_OPT_GO with NBD_REP_ERR_UNSUP (an old server). */
  noGo?: boolean;
  maxPayload?: number;
  readOnly?: boolean;
  /** errno to answer for writes at this offset. */
  failWriteAt?: [number, number];
}

/**
 * An in-memory NBD server speaking the fixed-newstyle handshake and simple
 * replies, written from the protocol document independently of the client.
 */
async function fakeNbd(dir: TempDir, disk: Buffer, opts: FakeOptions = {}) {
  const path = dir.file(`nbd-${Math.random().toString(16).slice(2)}.sock`);
  const log: { cmd: number; offset: number; length: number; flags: number }[] = [];
  const exportName = opts.exportName ?? 'disk0';
  const server = createServer((sock: Socket) => {
    let buf = Buffer.alloc(0);
    let phase: 'flags' | 'options' | 'transmission' = 'flags';
    const u64 = (n: number | bigint) => {
      const b = Buffer.alloc(8);
      b.writeBigUInt64BE(BigInt(n));
      return b;
    };
    const optReply = (opt: number, type: number, data = Buffer.alloc(0)) => {
      const h = Buffer.alloc(20);
      h.writeBigUInt64BE(0x3e889045565a9n, 0);
      h.writeUInt32BE(opt, 8);
      h.writeUInt32BE(type >>> 0, 12);
      h.writeUInt32BE(data.length, 16);
      sock.write(Buffer.concat([h, data]));
    };
    const tflags = 1 | (opts.readOnly ? 2 : 0) | 4 | 8;
    sock.write(Buffer.concat([Buffer.from('NBDMAGIC'), Buffer.from('IHAVEOPT'), Buffer.from([0, 3])]));
    sock.on('data', (d: Buffer) => {
      buf = Buffer.concat([buf, d]);
      for (;;) {
        if (phase === 'flags') {
          if (buf.length < 4) return;
          buf = buf.subarray(4);
          phase = 'options';
        } else if (phase === 'options') {
          if (buf.length < 16) return;
          const opt = buf.readUInt32BE(8);
          const len = buf.readUInt32BE(12);
          if (buf.length < 16 + len) return;
          const data = buf.subarray(16, 16 + len);
          buf = buf.subarray(16 + len);
          if (opt === 7) {
            if (opts.noGo) {
              optReply(7, 0x80000001);
              continue;
            }
            const name = data.subarray(4, 4 + data.readUInt32BE(0)).toString();
            if (name !== exportName) {
              optReply(7, 0x80000006, Buffer.from(`no export '${name}'`));
              continue;
            }
            const exp = Buffer.alloc(12);
            exp.writeUInt16BE(0, 0);
            u64(disk.length).copy(exp, 2);
            exp.writeUInt16BE(tflags, 10);
            optReply(7, 3, exp);
            const bs = Buffer.alloc(14);
            bs.writeUInt16BE(3, 0);
            bs.writeUInt32BE(512, 2);
            bs.writeUInt32BE(4096, 6);
            bs.writeUInt32BE(opts.maxPayload ?? 32 << 20, 10);
            optReply(7, 3, bs);
            optReply(7, 1);
            phase = 'transmission';
          } else if (opt === 1) {
            const tail = Buffer.alloc(10);
            u64(disk.length).copy(tail, 0);
            tail.writeUInt16BE(tflags, 8);
            sock.write(tail); // the client asked for no zeroes
            phase = 'transmission';
          } else {
            optReply(opt, 0x80000001);
          }
        } else {
          if (buf.length < 28) return;
          const flags = buf.readUInt16BE(4);
          const cmd = buf.readUInt16BE(6);
          const handle = buf.subarray(8, 16);
          const offset = Number(buf.readBigUInt64BE(16));
          const length = buf.readUInt32BE(24);
          if (cmd === 1 && buf.length < 28 + length) return;
          const payload = cmd === 1 ? buf.subarray(28, 28 + length) : undefined;
          buf = buf.subarray(28 + (payload?.length ?? 0));
          log.push({ cmd, offset, length, flags });
          const simple = (error: number, data?: Buffer) => {
            const h = Buffer.alloc(16);
            h.writeUInt32BE(0x67446698, 0);
            h.writeUInt32BE(error, 4);
            handle.copy(h, 8);
            sock.write(data ? Buffer.concat([h, data]) : h);
          };
          if (cmd === 0) simple(0, disk.subarray(offset, offset + length));
          else if (cmd === 1) {
            if (opts.failWriteAt && opts.failWriteAt[0] === offset) simple(opts.failWriteAt[1]);
            else {
              payload!.copy(disk, offset);
              simple(0);
            }
          } else if (cmd === 3) simple(0);
          else if (cmd === 2) {
            sock.end();
            return;
          }
        }
      }
    });
  });
  await new Promise<void>((r) => server.listen(path, r));
  return { path, server, log };
}

const Nbd = suite('nbd client');
const tmp = new TempDir();
const servers: Server[] = [];
Nbd.after(() => {
  servers.forEach((s) => s.close());
  tmp.remove();
});

async function open(disk: Buffer, opts: FakeOptions = {}, exportName = 'disk0') {
  const f = await fakeNbd(tmp, disk, opts);
  servers.push(f.server);
  const client = await NbdClient.connect(f.path, { exportName });
  return { client, log: f.log };
}

Nbd('NBD_OPT_GO gives the export size, flags and block sizes', async () => {
  const { client } = await open(Buffer.alloc(1 << 20));
  assert.is(client.size, 1 << 20);
  assert.ok(client.canFlush);
  assert.ok(client.canFua);
  assert.not.ok(client.readOnly);
  assert.equal([client.info.minBlock, client.info.preferredBlock], [512, 4096]);
  await client.disconnect();
});

Nbd('writes land and read back', async () => {
  const disk = Buffer.alloc(1 << 20);
  const { client } = await open(disk);
  const data = image(8192);
  await client.write(4096, data);
  assert.ok(disk.subarray(4096, 4096 + 8192).equals(data));
  assert.ok((await client.read(4096, 8192)).equals(data));
  await client.flush();
  await client.disconnect();
});

Nbd('requests larger than the advertised maximum payload are split', async () => {
  const disk = Buffer.alloc(1 << 20);
  const { client, log } = await open(disk, { maxPayload: 64 << 10 });
  const data = image(200 << 10);
  await client.write(0, data);
  assert.equal(
    log.filter((l) => l.cmd === 1).map((l) => l.length),
    [65536, 65536, 65536, 8192],
  );
  assert.ok((await client.read(0, 200 << 10)).equals(data));
  await client.disconnect();
});

Nbd('soft disconnect sends NBD_CMD_DISC', async () => {
  const { client, log } = await open(Buffer.alloc(4096));
  await client.disconnect();
  assert.equal(
    log.map((l) => l.cmd),
    [2],
  );
});

Nbd('an error reply maps to NbdError with the errno name', async () => {
  const { client } = await open(Buffer.alloc(1 << 20), { failWriteAt: [8192, 5] });
  const err = await client.write(8192, Buffer.alloc(4096)).catch((e: unknown) => e);
  assert.instance(err, NbdError);
  assert.is((err as NbdError).errno, 'EIO');
  assert.match((err as Error).message, /NBD WRITE failed: EIO/);
  // The connection is still usable after an error reply.
  assert.is((await client.read(0, 512)).length, 512);
  await client.disconnect();
});

Nbd("an unknown export is refused with the server's reason", async () => {
  const f = await fakeNbd(tmp, Buffer.alloc(4096));
  servers.push(f.server);
  const err = await NbdClient.connect(f.path, { exportName: 'other' }).catch((e: unknown) => e);
  assert.instance(err, NbdError);
  assert.is((err as NbdError).errno, 'NBD_REP_ERR_UNKNOWN');
  assert.match((err as Error).message, /no export 'other'/);
});

Nbd('a server without NBD_OPT_GO is used through NBD_OPT_EXPORT_NAME', async () => {
  const disk = image(1 << 16);
  const { client } = await open(disk, { noGo: true });
  assert.is(client.size, 1 << 16);
  assert.ok((await client.read(512, 1024)).equals(disk.subarray(512, 1536)));
  await client.disconnect();
});

Nbd('requests outside the export are refused without being sent', async () => {
  const { client, log } = await open(Buffer.alloc(4096));
  const err = await client.read(4096, 512).catch((e: unknown) => e);
  assert.instance(err, NbdError);
  assert.match((err as Error).message, /outside the export/);
  assert.equal(log, []);
  await client.disconnect();
});

Nbd('requests not aligned to the minimum block size are refused', async () => {
  const { client } = await open(Buffer.alloc(8192));
  const err = await client.write(100, Buffer.alloc(512)).catch((e: unknown) => e);
  assert.instance(err, NbdError);
  assert.match((err as Error).message, /minimum block size/);
  await client.disconnect();
});

Nbd('writes to a read-only export are refused', async () => {
  const { client } = await open(Buffer.alloc(8192), { readOnly: true });
  const err = await client.write(0, Buffer.alloc(512)).catch((e: unknown) => e);
  assert.instance(err, NbdError);
  assert.is((err as NbdError).errno, 'EPERM');
  await client.disconnect();
});

Nbd.run();
