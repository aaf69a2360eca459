/**
 * Every protocol command and every field of its arguments and answers is
 * documented in the schema (agent/src/protocol/schema.ts): a `description` and
 * the protocol version it came with (`since`), as qemu-guest-agent's
 * qapi-schema.json requires of its commands with the doc-required pragma.
 * A field added without them fails here, by its path.
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import type { TSchema } from '@sinclair/typebox';
import {
  Commands,
  ErrorReply,
  Features,
  Greeting,
  PROTOCOL_VERSION,
  Request,
  ReturnReply,
} from '@vmsubst/common/protocol/schema';

const D = suite('protocol: every command and field documented');

interface Doc {
  description?: unknown;
  since?: unknown;
}

function problemsOf(where: string, doc: Doc): string[] {
  const out: string[] = [];
  if (typeof doc.description !== 'string' || doc.description.trim() === '') out.push(`${where}: no description`);
  if (typeof doc.since !== 'number' || !Number.isInteger(doc.since) || doc.since < 1 || doc.since > PROTOCOL_VERSION) {
    out.push(`${where}: no since (a protocol version from 1 to ${PROTOCOL_VERSION})`);
  }
  return out;
}

/** Walks a schema: every property of every object it holds (through arrays, unions and records) must be documented. */
function undocumentedFields(path: string, schema: TSchema, seen = new Set<TSchema>()): string[] {
  if (seen.has(schema)) return [];
  seen.add(schema);
  const out: string[] = [];
  const s = schema as TSchema & {
    properties?: Record<string, TSchema>;
    items?: TSchema;
    anyOf?: TSchema[];
    patternProperties?: Record<string, TSchema>;
  };
  for (const [name, prop] of Object.entries(s.properties ?? {})) {
    out.push(...problemsOf(`${path}.${name}`, prop as Doc), ...undocumentedFields(`${path}.${name}`, prop, seen));
  }
  if (s.items !== undefined) out.push(...undocumentedFields(`${path}[]`, s.items, seen));
  for (const member of s.anyOf ?? []) out.push(...undocumentedFields(path, member, seen));
  for (const value of Object.values(s.patternProperties ?? {}))
    out.push(...undocumentedFields(`${path}{}`, value, seen));
  return out;
}

D('every command has a description and a since', () => {
  const problems = Object.entries(Commands).flatMap(([name, c]) => problemsOf(name, c));
  assert.equal(problems, []);
});

D("every field of every command's arguments and answer has a description and a since", () => {
  const problems = Object.entries(Commands).flatMap(([name, c]) => [
    ...undocumentedFields(`${name}.args`, c.args),
    ...undocumentedFields(`${name}.returns`, c.returns),
  ]);
  assert.equal(problems, [], `${problems.length} undocumented:\n  ${problems.join('\n  ')}`);
});

D('the greeting, the request and reply envelopes, and every feature announced are documented', () => {
  const problems = [
    ...undocumentedFields('greeting', Greeting),
    ...undocumentedFields('request', Request),
    ...undocumentedFields('return', ReturnReply),
    ...undocumentedFields('error', ErrorReply),
    ...Object.entries(Features).flatMap(([name, f]) => problemsOf(`feature ${name}`, f)),
  ];
  assert.equal(problems, []);
});

D('the check finds an undocumented field, nested in an array of objects', () => {
  const schema = {
    type: 'object',
    properties: {
      list: {
        type: 'array',
        description: 'd',
        since: 1,
        items: { type: 'object', properties: { x: { type: 'integer' } } },
      },
    },
  } as unknown as TSchema;
  assert.equal(undocumentedFields('t', schema), [
    't.list[].x: no description',
    `t.list[].x: no since (a protocol version from 1 to ${PROTOCOL_VERSION})`,
  ]);
});

D.run();
