/**
 * The CLI's validators precompiled at build time (scripts/precompile-validators.mjs, one file per
 * schema in build/host-signal/src/cli/validators, loaded by cli/precompiled.ts): every schema the
 * host's modules validate with has one, and each accepts and rejects exactly what ajv compiling
 * the schema at run time does, with the same errors. Each comes with V8's code cache, which this
 * node accepts; a cache V8 rejects (another node, a damaged file) only means compiling anew.
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { Ajv } from 'ajv';
import type { TSchema } from '@sinclair/typebox';
import { Value } from '@sinclair/typebox/value';
import { AJV_OPTIONS, Validator, formatErrors, registeredSchemas } from '@vmsubst/common/protocol/codec';
import { codeCacheFile, compileValidator, usePrecompiled } from '@vmsubst/common/protocol/precompiled';
import { precompiledValidators } from '../../../../host-signal/src/cli/precompiled.js';
import { ROOT } from '../../../helpers/paths.js';

/** The host modules that make validators (the protocol's own come with the codec). */
const HOST_MODULES = [
  'bundle/reader.js',
  'rollout/fleet.js',
  'rollout/state.js',
  'apply/state-file.js',
  'cli/customization.js',
  'qmp/commands.js',
];
const HERE = join(ROOT, 'build/host-signal/src');
for (const m of HOST_MODULES) await import(pathToFileURL(join(HERE, m)).href);

const GENERATED = join(ROOT, 'build/host-signal/src/cli/validators');
const CLI_URL = pathToFileURL(join(HERE, 'cli.js')).href;
const P = suite('precompiled validators');

P.before(() => {
  assert.ok(existsSync(GENERATED), `${GENERATED} is built by make ts`);
  const load = precompiledValidators(CLI_URL);
  assert.ok(load, 'the loader finds them from the compiled CLI');
  usePrecompiled(load);
});

P('every schema the host validates with is precompiled', () => {
  // A process of its own: this one's registry also holds the schemas of other suites' validators.
  const modules = HOST_MODULES.map((m) => `await import(${JSON.stringify(pathToFileURL(join(HERE, m)).href)});`);
  const script = `
    const codec = await import('@vmsubst/common/protocol/codec');
    ${modules.join('\n')}
    const { precompiledValidators } = await import(${JSON.stringify(pathToFileURL(join(HERE, 'cli/precompiled.js')).href)});
    const { usePrecompiled } = await import('@vmsubst/common/protocol/precompiled');
    usePrecompiled(precompiledValidators(${JSON.stringify(CLI_URL)}));
    const all = codec.registeredSchemas();
    const missing = all.filter((s) => !codec.isPrecompiled(s)).map((s) => JSON.stringify(s).slice(0, 80));
    process.stdout.write(JSON.stringify({ all: all.length, missing }));`;
  const r = spawnSync(process.execPath, ['--input-type=module', '-e', script], { cwd: ROOT, encoding: 'utf8' });
  assert.is(r.status, 0, r.stderr);
  const { all, missing } = JSON.parse(r.stdout) as { all: number; missing: string[] };
  assert.ok(all >= 20, `${all} schemas registered`);
  assert.equal(missing, []);
});

/** Values near the schema's edge: a conforming one (TypeBox's Value.Create), and broken variants. */
function samples(schema: TSchema): unknown[] {
  const out: unknown[] = [null, 0, 'x', [], {}, { unknown: 1 }];
  let good: unknown;
  try {
    good = Value.Create(schema);
  } catch {
    return out; // a schema TypeBox cannot make a value for: the plain samples only
  }
  out.push(good);
  if (good && typeof good === 'object' && !Array.isArray(good)) {
    const o = good as Record<string, unknown>;
    out.push({ ...o, unexpected: true });
    for (const k of Object.keys(o)) {
      const { [k]: _dropped, ...rest } = o;
      out.push(rest, { ...o, [k]: null }, { ...o, [k]: 'x'.repeat(300) });
    }
  }
  if (Array.isArray(good)) out.push([...good, null], [{}]);
  return out;
}

P('each accepts and rejects what a run-time compilation does, with the same errors', () => {
  const ajv = new Ajv(AJV_OPTIONS);
  let checked = 0;
  for (const schema of registeredSchemas()) {
    const compiled = ajv.compile(schema);
    const pre = new Validator(schema);
    for (const v of samples(schema)) {
      const ok = compiled(v) === true;
      const expected = ok ? [] : formatErrors(compiled.errors ?? []);
      assert.equal(
        pre.problems(v),
        expected,
        `${JSON.stringify(v).slice(0, 120)} against ${JSON.stringify(schema).slice(0, 80)}`,
      );
      assert.is(pre.is(v), ok);
      checked++;
    }
  }
  assert.ok(checked > 200, `${checked} values checked`);
});

P('each has a code cache this node accepts; a damaged one is rejected and the validator still works', () => {
  const files = readdirSync(GENERATED).filter((f) => f.endsWith('.cjs'));
  assert.ok(files.length >= 10, `${files.length} validators`);
  for (const f of files) {
    const file = join(GENERATED, f);
    const cache = codeCacheFile(file);
    assert.ok(existsSync(cache), `${cache} is written by make ts`);
    const { validate, rejected } = compileValidator(file, readFileSync(cache));
    assert.is(rejected, false, `V8 rejected ${cache}`);
    assert.is(typeof validate, 'function');
  }
  // A cache that does not belong to the code: V8 says so, and the source is compiled instead.
  const dir = mkdtempSync(join(tmpdir(), 'vmsubst-v8cache-'));
  const file = join(dir, 'v.cjs');
  writeFileSync(file, 'module.exports = function validate(x) { return typeof x === "number"; };\n');
  const damaged = compileValidator(file, Buffer.from('not a code cache'));
  assert.is(damaged.rejected, true);
  assert.is(damaged.validate(1), true);
  assert.is(damaged.validate('1'), false);
});

P.run();
