/**
 * Framing and validation of protocol messages. Pure: no I/O.
 *
 * Framing is one JSON document per line. A line longer than MAX_MESSAGE_BYTES
 * is discarded up to its newline and reported once, so a misbehaving peer can
 * neither exhaust memory nor desynchronise the stream.
 */
import { createHash } from 'node:crypto';
import { createRequire } from 'node:module';
import type { Ajv, ErrorObject, Options, ValidateFunction } from 'ajv';
import type { Static, TSchema } from '@sinclair/typebox';
import { precompiledFor } from './precompiled.js';
import { Commands, Greeting, MAX_MESSAGE_BYTES, Reply, Request, type CommandName } from './schema.js';

/** ajv's options, shared with the build step that precompiles the validators (scripts/precompile-validators.mjs). */
export const AJV_OPTIONS: Options = { allErrors: true, strict: true, strictTypes: false, keywords: ['since'] };

// `since`: the protocol version a command or field came with (schema.ts), documentation only.
// Made on first use: a process whose validators are all precompiled never needs it.
// Loaded then too (require, not import): a command whose validators are all precompiled does not
// evaluate ajv's hundred modules at start.
let ajvInstance: Ajv | undefined;
const ajv = (): Ajv =>
  (ajvInstance ??= new (createRequire(import.meta.url)('ajv') as typeof import('ajv')).Ajv(AJV_OPTIONS));

/** Every schema a Validator was made for, in order: what the build precompiles. */
const schemas = new Set<TSchema>();
/** A schema's identity for precompiled code: the hash of its JSON. */
export function schemaKey(schema: TSchema): string {
  return createHash('sha256').update(JSON.stringify(schema)).digest('hex').slice(0, 32);
}

/** Whether a validation function generated at build time is at hand for this schema. */
export function isPrecompiled(schema: TSchema): boolean {
  return precompiledFor(schemaKey(schema)) !== undefined;
}

/** The schemas of every Validator made so far (the build imports every module, then asks). */
export function registeredSchemas(): TSchema[] {
  return [...schemas];
}

/**
 * An ajv validator for one schema: precompiled at build time when the process said where those
 * are (usePrecompiled), else compiled on first use: compiling every protocol schema up
 * front cost each short-lived process (every vmsubst command) a second or more of start-up on a
 * loaded machine. Its errors are "path: message" lines instead of ajv's objects.
 */
export class Validator<S extends TSchema> {
  #fn: ValidateFunction | undefined;
  constructor(private readonly schema: S) {
    schemas.add(schema);
  }
  get #compiled(): ValidateFunction {
    return (this.#fn ??= precompiledFor(schemaKey(this.schema)) ?? ajv().compile(this.schema));
  }
  /**
   * Finds (precompiled) or compiles the function now rather than at first use: a caller that is
   * about to wait for I/O takes the cost off the path of the answer.
   */
  load(): void {
    void this.#compiled;
  }
  /** Problems as "path: message" strings; empty when the value is valid. */
  problems(value: unknown): string[] {
    const fn = this.#compiled;
    if (fn(value)) return [];
    return formatErrors(fn.errors ?? []);
  }
  is(value: unknown): value is Static<S> {
    return this.#compiled(value) === true;
  }
}

export function formatErrors(errors: ErrorObject[]): string[] {
  return errors.map((e) => {
    const path = e.instancePath === '' ? '/' : e.instancePath;
    if (e.keyword === 'additionalProperties') {
      return `${path}: unknown field '${String(e.params['additionalProperty'])}'`;
    }
    return `${path}: ${e.message ?? e.keyword}`;
  });
}

export const validateRequest = new Validator(Request);
export const validateReply = new Validator(Reply);
export const validateGreeting = new Validator(Greeting);

const argValidators = new Map<CommandName, Validator<TSchema>>();
const returnValidators = new Map<CommandName, Validator<TSchema>>();
for (const [name, spec] of Object.entries(Commands) as [CommandName, { args: TSchema; returns: TSchema }][]) {
  argValidators.set(name, new Validator(spec.args));
  returnValidators.set(name, new Validator(spec.returns));
}

export function isCommandName(name: string): name is CommandName {
  return Object.hasOwn(Commands, name);
}
/** The validator of a command's arguments, one per command for the process (typed by its schema). */
export function argsValidator<C extends CommandName>(name: C): Validator<(typeof Commands)[C]['args']> {
  return argValidators.get(name)! as Validator<(typeof Commands)[C]['args']>;
}
export function returnValidator(name: CommandName): Validator<TSchema> {
  return returnValidators.get(name)!;
}

/** One JSON value per line, newline-terminated. */
export function encode(message: unknown): Buffer {
  const line = Buffer.from(JSON.stringify(message) + '\n', 'utf8');
  if (line.length > MAX_MESSAGE_BYTES) {
    throw new RangeError(`message of ${line.length} bytes exceeds the ${MAX_MESSAGE_BYTES}-byte cap`);
  }
  return line;
}

/** `bytes`: the line's length, for bounding what a session holds queued. */
export type Frame =
  { kind: 'message'; value: unknown; bytes: number } | { kind: 'invalid'; reason: string; bytes: number };

/**
 * Splits a byte stream into lines and parses each as JSON. Feed it chunks;
 * it returns the frames completed by each chunk.
 */
export class LineDecoder {
  #parts: Buffer[] = [];
  #size = 0;
  #discarding = false;
  constructor(private readonly maxBytes = MAX_MESSAGE_BYTES) {}

  push(chunk: Buffer): Frame[] {
    const frames: Frame[] = [];
    let start = 0;
    for (;;) {
      const nl = chunk.indexOf(0x0a, start);
      const end = nl === -1 ? chunk.length : nl;
      const piece = chunk.subarray(start, end);
      if (!this.#discarding) {
        if (this.#size + piece.length + 1 > this.maxBytes) {
          this.#discarding = true;
          this.#parts = [];
          this.#size = 0;
          frames.push({ kind: 'invalid', reason: `message exceeds the ${this.maxBytes}-byte cap`, bytes: 0 });
        } else if (piece.length > 0) {
          this.#parts.push(piece);
          this.#size += piece.length;
        }
      }
      if (nl === -1) break;
      if (!this.#discarding) {
        const frame = this.#finish();
        if (frame) frames.push(frame);
      }
      this.#discarding = false;
      this.#parts = [];
      this.#size = 0;
      start = nl + 1;
    }
    return frames;
  }

  #finish(): Frame | undefined {
    const bytes = this.#size;
    const text = Buffer.concat(this.#parts, this.#size)
      .toString('utf8')
      .replace(/^[\s\uFFFD]+|\s+$/g, '');
    if (text === '') return undefined;
    try {
      return { kind: 'message', value: JSON.parse(text) as unknown, bytes };
    } catch (e) {
      return { kind: 'invalid', reason: `not JSON: ${(e as Error).message}`, bytes };
    }
  }
}
