/**
 * Every command's --json document, as the real CLI prints it, validated with
 * ajv against its schema in host-signal/src/cli/output.ts; and docs/cli.md
 * names every field of every schema. The documents that need a running QEMU
 * (apply --qmp, a rollout that writes) or a guest (notify, plan answered)
 * are checked the same way wherever the integration and QEMU suites run the
 * CLI with --json (test/helpers/json-output.ts); here each command runs
 * against what a unit test has: image files, the real agent on a unix
 * socket, and sockets where nothing listens.
 */
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import type { TSchema } from '@sinclair/typebox';
import { Validator } from '@vmsubst/common/protocol/codec';
import type { SubstituteReport } from '@vmsubst/common/protocol/schema';
import { COMMANDS } from '../../../../host-signal/src/cli/commands/index.js';
import { ErrorOutput, OUTPUTS, VersionOutput } from '../../../../host-signal/src/cli/output.js';
import { startAgent, type AgentProcess } from '../../../helpers/agent-process.js';
import { vmsubst } from '../../../helpers/cli.js';
import { ROOT } from '../../../helpers/paths.js';
import { MiB, TempDir, image, patch } from '../fixtures.js';

const Json = suite('cli: --json documents against their schemas');
const tmp = new TempDir();
const C = { agent: undefined as AgentProcess | undefined };
Json.after(() => {
  C.agent?.kill();
  tmp.remove();
});

const base = image(2 * MiB);
const patched = patch(base, [
  [4096, 1],
  [MiB, 10000],
]);
const basePath = tmp.file('base.img', base);
const patchedPath = tmp.file('patched.img', patched);
const bundle = tmp.file('p.vsb');
const nowhere = tmp.file('nothing-listens.sock');

const schemaOf = (command: string): TSchema => OUTPUTS[command]!;
/** Commands whose document was checked by this suite. */
const checked = new Set<string>();

/** Runs `vmsubst ARGS --json`, expects `code`, validates the document against `schema`. */
async function document(
  args: string[],
  schema: TSchema = schemaOf(args[0]!),
  code = 0,
): Promise<Record<string, unknown>> {
  const r = await vmsubst([...args, '--json']);
  assert.is(r.code, code, `${args.join(' ')}: ${r.stderr}`);
  const doc = JSON.parse(r.stdout) as Record<string, unknown>;
  assert.equal(new Validator(schema).problems(doc), [], `${args[0]} --json`);
  if (schema !== ErrorOutput) checked.add(args[0]!);
  return doc;
}

Json('diff, inspect, sign, keygen and export', async () => {
  const d = await document(['diff', basePath, patchedPath, '-o', bundle, '--label', 'golden']);
  assert.is(d['ranges'], 2);
  assert.is(d['hints'], 'unavailable', 'no filesystem in the images: no hints, and a note says why');
  const keys = await document(['keygen', '--out', join(tmp.path, 'key')]);
  assert.match(String(keys['key-id']), /^[0-9a-f]+$/);
  const signed = await document(['sign', bundle, '--key', join(tmp.path, 'key.key'), '-o', tmp.file('signed.vsb')]);
  assert.is(signed['previous-id'], d['id']);
  const unsigned = await document(['inspect', bundle]);
  assert.equal(unsigned['signature'], { status: 'unsigned' });
  const valid = await document(['inspect', tmp.file('signed.vsb'), '--trusted-key', join(tmp.path, 'key.pub')]);
  assert.equal(valid['signature'], { status: 'valid', keyId: keys['key-id'] });
  const e = await document(['export', bundle, '--qcow2', tmp.file('o.qcow2'), '--base', basePath]);
  assert.equal(e['backing'], { name: basePath, format: 'raw' });
  const bare = await document([
    'export',
    bundle,
    '--qcow2',
    tmp.file('bare.qcow2'),
    '--base',
    basePath,
    '--no-backing',
  ]);
  assert.is(bare['backing'], null);
});

Json('apply --image: applied, then already applied', async () => {
  const disk = tmp.file('disk.img', base);
  const first = await document(['apply', bundle, '--image', disk]);
  assert.is(first['status'], 'applied');
  assert.equal((first['agent'] as Record<string, unknown>)['told'], false);
  assert.is((await document(['apply', bundle, '--image', disk]))['status'], 'already-applied');
});

Json('recover with nothing recorded', async () => {
  const r = await document(['recover', '--qmp', nowhere, '--state-dir', join(tmp.path, 'state')]);
  assert.is(r['status'], 'nothing-to-do');
});

Json('rollout and plan when nothing answers: a result document, exit status 1', async () => {
  const r = await document(['rollout', '--qmp', nowhere, bundle], schemaOf('rollout'), 1);
  assert.is(r['ok'], false);
  const vm = (r['vms'] as Record<string, unknown>[])[0]!;
  assert.is(vm['status'], 'failed');
  const p = await document(['plan', '--to', `unix:${nowhere}`, bundle], schemaOf('plan'), 1);
  assert.is((p['vms'] as Record<string, unknown>[])[0]!['status'], 'no-agent');
});

const REPORT_ID = 'ab'.repeat(32);
const keptReport: SubstituteReport = {
  id: REPORT_ID,
  device: '/dev/vdb',
  'dry-run': false,
  'verified-bytes': 4096,
  files: [],
  unmapped: [{ offset: 4096, length: 4096 }],
  'timings-ms': { verify: 1, map: 1, invalidate: 1, total: 3 },
};

Json('stale and report, from the real agent on a unix socket', async () => {
  const dir = join(tmp.path, 'agent');
  mkdirSync(join(dir, 'state', 'reports'), { recursive: true, mode: 0o700 });
  writeFileSync(join(dir, 'state', 'reports', `${REPORT_ID}.json`), JSON.stringify(keptReport), { mode: 0o600 });
  C.agent = await startAgent(dir, ['--trusted-key-dir', '']);
  const to = `unix:${C.agent.sock}`;
  const s = await document(['stale', '--to', to]);
  assert.ok(Array.isArray(s['processes']));
  assert.equal(await document(['report', REPORT_ID, '--to', to]), keptReport);
  const saved = await document(['report', REPORT_ID, '--to', to, '-o', join(tmp.path, 'kept.json')]);
  assert.is(saved['pages'], 1);
});

Json('notify and apply --qmp where nothing listens: the error document', async () => {
  for (const args of [
    ['notify', bundle, '--to', `unix:${nowhere}`],
    ['apply', bundle, '--qmp', nowhere],
  ]) {
    const doc = await document(args, ErrorOutput, 1);
    assert.match((doc['error'] as { code: string }).code, /^E_VMSUBST_/);
  }
  await document(['apply', bundle], ErrorOutput, 2);
});

Json('--version --json', async () => {
  const r = await vmsubst(['--version', '--json']);
  assert.equal(new Validator(VersionOutput).problems(JSON.parse(r.stdout)), []);
});

Json('every command has a schema and its document was checked above, or where a guest answers', () => {
  const needGuest = ['notify'];
  for (const c of COMMANDS) {
    assert.ok(OUTPUTS[c.name], `${c.name} has an output schema`);
    if (!needGuest.includes(c.name)) assert.ok(checked.has(c.name), `${c.name}'s --json document was checked`);
  }
});

/** The top-level property names of a document schema (each branch of a union). */
function fieldsOf(schema: TSchema): Set<string> {
  const out = new Set<string>();
  for (const s of [schema, ...((schema['anyOf'] as TSchema[] | undefined) ?? [])]) {
    const props = (s['properties'] ?? {}) as Record<string, TSchema>;
    for (const k of Object.keys(props)) out.add(k);
  }
  return out;
}

Json('docs/cli.md documents every top-level field of every command document', () => {
  const doc = readFileSync(join(ROOT, 'docs/cli.md'), 'utf8');
  for (const c of COMMANDS) {
    const section = doc.split(/^### /m).find((s) => s.startsWith(`\`vmsubst ${c.name}`));
    assert.ok(section, `docs/cli.md has a section "### \`vmsubst ${c.name} …\`"`);
    for (const f of fieldsOf(OUTPUTS[c.name]!))
      assert.ok(section.includes(`\`${f}\``), `docs/cli.md, ${c.name}: field \`${f}\``);
  }
});

Json.run();
