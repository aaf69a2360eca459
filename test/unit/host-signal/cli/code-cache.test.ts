/**
 * The CLI's launcher (cli/launch.ts, code-cache.ts): which code cache a run uses, that a cache
 * is only used with the bundle it was made from, that one V8 rejects still runs the bundle, and
 * that the build's caches (make ts) are accepted by this node for the bundle beside them.
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import {
  KEPT_CA_CERTS,
  buildId,
  cacheFileFor,
  cacheKey,
  restoreExtraCaCerts,
  runBundle,
} from '../../../../host-signal/src/cli/code-cache.js';
import { ROOT } from '../../../helpers/paths.js';
import { TempDir } from '../fixtures.js';

const CLI_DIR = join(ROOT, 'build/host-signal/src/cli');
const C = suite('cli: code cache');
const tmp = new TempDir();
C.after(() => tmp.remove());

/** A bundle that records its arguments and the wrapper's parameters in a global. */
const bundle = (id: string, marker: string): string =>
  `#!/usr/bin/env node\n// vmsubst build ${id}\n"use strict";\n` +
  `globalThis.__codeCacheTest = { marker: ${JSON.stringify(marker)}, file: __filename, ` +
  `strict: (function () { return this === undefined; })(), req: typeof require('node:path').join };\n` +
  `function unused() { return [1, 2, 3].map((x) => x * 2); }\n`;

C('the cache of a run is its command, or main for options and the bare command', () => {
  assert.is(cacheKey(['apply', 'b.vsb', '--qmp', 'q']), 'apply');
  assert.is(cacheKey(['diff']), 'diff');
  for (const argv of [[], ['--version'], ['-h'], ['APPLY'], ['../../etc/passwd'], ['a'.repeat(17)]])
    assert.is(cacheKey(argv), 'main', JSON.stringify(argv));
});

C("the build id is read from the bundle's first line, after a #! line if there is one", () => {
  assert.is(buildId(bundle('0123456789abcdef', 'x')), '0123456789abcdef');
  assert.is(buildId('// vmsubst build fedcba9876543210\n"use strict";'), 'fedcba9876543210');
  assert.is(buildId('"use strict";\n// vmsubst build fedcba9876543210\n'), undefined);
  assert.is(buildId('// vmsubst build 0123\n'), undefined);
  // No build id: no cache is looked for.
  assert.is(cacheFileFor('/d', '"use strict";', ['apply']), undefined);
  assert.is(
    cacheFileFor('/d', bundle('0123456789abcdef', 'x'), ['apply']),
    '/d/code-cache/apply.0123456789abcdef.v8cache',
  );
});

C('the bundle runs as strict CommonJS, with its cache or without; a cache of another source is rejected', () => {
  const file = tmp.file('vmsubst-cli.cjs');
  const seen = (): unknown => (globalThis as { __codeCacheTest?: unknown }).__codeCacheTest;
  // Every source here is new to this process: V8 would take one it compiled before from memory
  // and not look at the cache at all.
  const src = bundle('0123456789abcdef', 'first');
  writeFileSync(file, src);
  const made = runBundle(file, src, tmp.file('none.v8cache'));
  assert.equal(seen(), { marker: 'first', file, strict: true, req: 'function' });
  const cache = tmp.file('c.v8cache', made.createCachedData());
  const again = bundle('0123456789abcdef', 'first, once more');
  const withOther = runBundle(file, again, cache);
  assert.is(withOther.cachedDataRejected, true, "V8 rejects another source's cache");
  assert.equal(seen(), { marker: 'first, once more', file, strict: true, req: 'function' }, 'and runs the source');
});

C('a training run writes the cache under the bundle id; a rebuilt bundle looks for another', () => {
  const dir = tmp.path;
  copyFileSync(join(CLI_DIR, 'vmsubst.mjs'), join(dir, 'vmsubst.mjs'));
  const run = (env: Record<string, string>) =>
    spawnSync(process.execPath, [join(dir, 'vmsubst.mjs'), 'diff', '--help'], {
      env: { ...process.env, ...env },
      encoding: 'utf8',
    });
  writeFileSync(join(dir, 'vmsubst-cli.cjs'), bundle('00000000000000aa', 'one') + 'process.stdout.write("ran");\n');
  const plain = run({});
  assert.is(plain.status, 0, plain.stderr);
  assert.is(plain.stdout, 'ran');
  assert.not.ok(existsSync(join(dir, 'code-cache')), 'only a training run writes');
  assert.is(run({ VMSUBST_WRITE_CODE_CACHE: 'apply' }).status, 0);
  assert.not.ok(existsSync(join(dir, 'code-cache')), "another command's training run writes nothing here");
  assert.is(run({ VMSUBST_WRITE_CODE_CACHE: 'diff' }).status, 0);
  assert.equal(readdirSync(join(dir, 'code-cache')), ['diff.00000000000000aa.v8cache']);
  const rebuilt = bundle('00000000000000bb', 'two');
  assert.is(cacheFileFor(dir, rebuilt, ['diff']), join(dir, 'code-cache/diff.00000000000000bb.v8cache'));
});

C("the build's caches: one per command and for main, each accepted by this node for the bundle", () => {
  const file = join(CLI_DIR, 'vmsubst-cli.cjs');
  assert.ok(existsSync(file), `${file} is built by make ts`);
  const bytes = readFileSync(file);
  // The launcher reads it as latin1: the same string as utf8 only while every byte is ASCII.
  const high = bytes.findIndex((b) => b > 0x7f);
  assert.is(high, -1, `a non-ASCII byte at ${high} of the bundle`);
  const src = bytes.toString('latin1');
  const id = buildId(src);
  assert.ok(id, 'the bundle carries a build id');
  const caches = readdirSync(join(CLI_DIR, 'code-cache'));
  for (const key of ['main', 'help', 'diff', 'apply', 'rollout'])
    assert.ok(caches.includes(`${key}.${id}.v8cache`), key);
  assert.ok(
    caches.every((c) => c.endsWith(`.${id}.v8cache`)),
    'no cache of another build',
  );
  // Each cache as V8 checks it when the launcher compiles the bundle (compiled, not run), each in
  // a process of its own: V8 would take a source it compiled before from memory, cache unseen.
  const commonjs = pathToFileURL(join(ROOT, 'common/dist/commonjs.js')).href;
  for (const c of caches) {
    const check = `
      import { readFileSync } from 'node:fs';
      import { commonJsScript } from ${JSON.stringify(commonjs)};
      const s = commonJsScript(${JSON.stringify(file)}, readFileSync(${JSON.stringify(file)}, 'latin1'),
        readFileSync(${JSON.stringify(join(CLI_DIR, 'code-cache', c))}));
      process.stdout.write(String(s.cachedDataRejected));`;
    const r = spawnSync(process.execPath, ['--input-type=module', '-e', check], { encoding: 'utf8' });
    assert.is(r.stdout, 'false', `V8 rejected ${c}: ${r.stderr}`);
  }
});

C('the executable starts node without NODE_EXTRA_CA_CERTS and gives it back to what it starts', () => {
  // node reads the file at start and warns when it cannot: through the #! line it is not read at all.
  const cli = join(CLI_DIR, 'vmsubst.mjs');
  const env = { ...process.env, NODE_EXTRA_CA_CERTS: '/nonexistent/ca.pem' };
  const direct = spawnSync(cli, ['--version'], { encoding: 'utf8', env });
  assert.is(direct.status, 0, direct.stderr);
  assert.match(direct.stdout, /^vmsubst /);
  assert.not.match(direct.stderr, /extra certs/);
  const viaNode = spawnSync(process.execPath, [cli, '--version'], { encoding: 'utf8', env });
  assert.match(viaNode.stderr, /Ignoring extra certs from `\/nonexistent\/ca.pem`/, 'node itself reads it at start');
  // The launcher puts the value back for the processes vmsubst starts.
  const kept: NodeJS.ProcessEnv = { [KEPT_CA_CERTS]: '/etc/ssl/a b.pem', PATH: '/bin' };
  restoreExtraCaCerts(kept);
  assert.equal(kept, { NODE_EXTRA_CA_CERTS: '/etc/ssl/a b.pem', PATH: '/bin' });
  const unset: NodeJS.ProcessEnv = { [KEPT_CA_CERTS]: '', PATH: '/bin' };
  restoreExtraCaCerts(unset);
  assert.equal(unset, { PATH: '/bin' });
  const untouched: NodeJS.ProcessEnv = { NODE_EXTRA_CA_CERTS: '/x.pem' };
  restoreExtraCaCerts(untouched);
  assert.equal(untouched, { NODE_EXTRA_CA_CERTS: '/x.pem' });
});

C.run();
