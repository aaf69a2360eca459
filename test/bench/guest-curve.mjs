// Guest-side harness of the cost curves (copied onto the benchmark volume as
// /bench/curve.mjs and run by the guest's node). It makes the calls the
// agent makes per file in its module stage (open, VMSUBST_IOC_INVALIDATE_RANGE
// through the addon, close) and times them; one JSON line per sample.
//   node curve.mjs pages BIG SMALL RUNS MIB...
//   node curve.mjs mappers FILE RUNS N...
//   node curve.mjs files DIR RUNS K...
//   node curve.mjs idle FILE RUNS N...   (who maps and holds FILE open, with N idle processes)
import { closeSync, openSync, readSync, readdirSync, statSync } from 'node:fs';
import { spawn } from 'node:child_process';
import { join } from 'node:path';

const { KmodDevice, DEFAULT_KMOD_DEVICE } = await import('/opt/vmsubst/build/agent/src/native/index.js');
const device = new KmodDevice(DEFAULT_KMOD_DEVICE);
const invalidateRange = (fd, offset, length, flags, options = {}) =>
  device.invalidateRange(fd, offset, length, { flags, ...options });
const [mode, target, second, ...rest] = process.argv.slice(2);
const buf = Buffer.alloc(1 << 20);

function warm(path, bytes) {
  const fd = openSync(path, 'r');
  try {
    for (let off = 0; off < bytes; ) {
      const n = readSync(fd, buf, 0, Math.min(buf.length, bytes - off), off);
      if (n <= 0) break;
      off += n;
    }
  } finally {
    closeSync(fd);
  }
}

async function invalidate(path) {
  const size = statSync(path).size;
  const fd = openSync(path, 'r');
  try {
    const t = performance.now();
    const r = await invalidateRange(fd, 0n, BigInt(size), 0);
    return { ms: performance.now() - t, cached: Number(r.pagesCached), dropped: Number(r.pagesDropped), mapped: Number(r.pagesMapped), kept: Number(r.pagesKept) };
  } finally {
    closeSync(fd);
  }
}

const out = (o) => console.log(`CURVE ${JSON.stringify(o)}`);

if (mode === 'pages') {
  const [runs, ...mibs] = rest.map(Number);
  const big = target;
  const small = second;
  await invalidate(small); // warm-up: the first call pays for loading and compiling the code paths
  for (const mib of mibs) {
    for (let i = 0; i < runs; i++) {
      warm(big, mib << 20);
      warm(small, statSync(small).size);
      const s = await invalidate(small); // 1 MiB file, with `mib` MiB of another file cached
      const b = await invalidate(big); // the whole file, `mib` MiB of it cached
      out({ mib, small: s, big: b });
    }
  }
} else if (mode === 'mappers') {
  const file = target;
  const [runs, ...ns] = [Number(second), ...rest.map(Number)];
  await invalidate(file); // warm-up
  for (const n of ns) {
    for (let i = 0; i < runs; i++) {
      warm(file, statSync(file).size);
      // n processes running the file; each has printed a line, so it has faulted its pages in.
      const procs = [];
      for (let j = 0; j < n; j++) procs.push(spawn(file, ['3600000'], { stdio: ['ignore', 'pipe', 'ignore'] }));
      await Promise.all(procs.map((p) => new Promise((res, rej) => { p.stdout.once('data', res); p.once('error', rej); })));
      const r = await invalidate(file);
      await Promise.all(procs.map((p) => new Promise((res) => { p.once('exit', res); p.kill('SIGKILL'); })));
      out({ n, ...r });
    }
  }
} else if (mode === 'files') {
  const dir = target;
  const [runs, ...ks] = [Number(second), ...rest.map(Number)];
  const all = [];
  for (const d of readdirSync(dir).sort()) for (const f of readdirSync(join(dir, d)).sort()) all.push(join(dir, d, f));
  await invalidate(all[0]); // warm-up
  // With the report capacities at their maximum (the addon's default) and as the agent calls it
  // (no outcome or mapper lists: it uses the counts only): the difference is the cost of the
  // report buffers.
  for (const caps of ['default', 0]) {
    const options = caps === 'default' ? {} : { outcomesCapacity: caps, mappersCapacity: caps };
    for (const k of ks) {
      const files = all.slice(0, k);
      if (files.length < k) throw new Error(`only ${all.length} files in ${dir}`);
      for (let i = 0; i < runs; i++) {
        for (const f of files) warm(f, 4096);
        let dropped = 0;
        const t = performance.now();
        for (const f of files) {
          const fd = openSync(f, 'r');
          try {
            dropped += Number((await invalidateRange(fd, 0n, 4096n, 0, options)).pagesDropped);
          } finally {
            closeSync(fd);
          }
        }
        out({ k, caps, ms: performance.now() - t, dropped });
      }
    }
  }
  // As the agent does it now: all files in one batch call of the addon (open, check, ioctl, close
  // for each, on one thread-pool job).
  for (const k of ks) {
    const files = all.slice(0, k);
    for (let i = 0; i < runs; i++) {
      for (const f of files) warm(f, 4096);
      const t = performance.now();
      const items = files.map((path) => {
        const st = statSync(path);
        return { path, dev: Number(st.dev), ino: Number(st.ino), ranges: [[0n, 4096n]], flags: 0 };
      });
      const tStat = performance.now() - t;
      let dropped = 0;
      for (let at = 0; at < items.length; at += 4096)
        for (const r of await device.invalidateFiles(items.slice(at, at + 4096))) dropped += Number(r.pagesDropped);
      out({ k, caps: 'batch', ms: performance.now() - t - tStat, dropped });
    }
  }

} else if (mode === 'idle') {
  // The agent's discovery of a changed file's users (the processes mapping it, the descriptors
  // holding it open), through the module and through /proc, with N processes that do not use it.
  const { systemDeps } = await import('/opt/vmsubst/build/agent/src/system.js');
  const { procUsers } = await import('/opt/vmsubst/build/agent/src/proc/users.js');
  const file = target;
  const [runs, ...ns] = [Number(second), ...rest.map(Number)];
  const st = statSync(file);
  const key = [{ dev: Number(st.dev), ino: Number(st.ino), path: file, size: st.size }];
  const users = (await systemDeps()).users;
  const proc = procUsers('/proc');
  // One process runs the file, one holds it open: both must be found each time.
  const runner = spawn(file, ['3600000'], { stdio: ['ignore', 'pipe', 'ignore'] });
  await new Promise((res, rej) => { runner.stdout.once('data', res); runner.once('error', rej); });
  const reader = spawn('sh', ['-c', `exec 7<${file}; exec sleep 3600`], { stdio: 'ignore' });
  await new Promise((res) => setTimeout(res, 500));
  const idle = [];
  const ask = async (u) => {
    const t = performance.now();
    const m = await u.mappers(key);
    const o = await u.openFds(key);
    const ms = performance.now() - t;
    const found = (m.values().next().value ?? []).some((x) => x.pid === runner.pid) &&
      (o.values().next().value ?? []).some((x) => x.pid === reader.pid);
    return { ms, found };
  };
  await ask(users); // warm-up
  for (const n of ns) {
    while (idle.length < n) idle.push(spawn('sleep', ['3600'], { stdio: 'ignore' }));
    await new Promise((res) => setTimeout(res, 200 + n));
    const procs = readdirSync('/proc').filter((x) => /^\d+$/.test(x)).length;
    for (let i = 0; i < runs; i++) {
      const mod = await ask(users);
      const pr = await ask(proc);
      out({ n, procs, module: mod.ms, proc: pr.ms, found: mod.found && pr.found, source: users.source });
    }
  }
  for (const p of [runner, reader, ...idle]) p.kill('SIGKILL');
} else {
  console.error(`usage: curve.mjs pages|mappers|files|idle ...`);
  process.exit(2);
}
