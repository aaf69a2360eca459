/**
 * What every command of the CLI shares: option parsing, the --json/human
 * output switch with its progress bar, and loading keys (customization.ts
 * loads a --customize file).
 */
import { parseArgs, type ParseArgsConfig } from 'node:util';
import type { Static, TSchema } from '@sinclair/typebox';
import { createPrivateKey, createPublicKey, type KeyObject } from 'node:crypto';
import { keyId } from '@vmsubst/common/protocol/signature';
import { readFile } from 'node:fs/promises';
import { UsageError } from '../errors.js';
import { ProgressBar } from './progress.js';

/**
 * One subcommand's module: its full help and its body (its name and one-line
 * summary are in commands/index.ts, its --json schema in output.ts).
 */
export interface Command {
  readonly help: string;
  /** Resolves with the exit status when it is not 0 although the command ran (e.g. a rollout with failed VMs). */
  run(args: string[]): Promise<void | number>;
}

export const COMMON = {
  json: { type: 'boolean' },
  help: { type: 'boolean', short: 'h' },
} as const satisfies ParseArgsConfig['options'];

export class Output {
  readonly progress: ProgressBar;
  constructor(readonly json: boolean) {
    this.progress = new ProgressBar(process.stderr, !json && process.stderr.isTTY === true);
  }
  /**
   * Prints the result: with --json `value`, a document of the schema `S`
   * (output.ts; the compiler checks it against the schema), else the human text.
   * `S` must be given (`result<typeof DiffOutput>(…)`): without it nothing fits.
   */
  result<S extends TSchema = never>(value: Static<S>, human: () => string): void {
    this.progress.clear();
    if (this.json) process.stdout.write(JSON.stringify(value, null, 2) + '\n');
    else process.stdout.write(human() + '\n');
  }
}

export function parse<O extends ParseArgsConfig['options']>(command: string, args: string[], options: O) {
  try {
    return parseArgs({ args, options: { ...COMMON, ...options }, allowPositionals: true, strict: true });
  } catch (e) {
    throw new UsageError(
      `${command}: ${(e as Error).message.replace(/\. To specify a positional argument.*$/s, '')}`,
      `see 'vmsubst ${command} --help'`,
    );
  }
}

export function positionals(command: string, got: string[], names: string[]): string[] {
  if (got.length !== names.length) {
    const which =
      got.length < names.length
        ? `missing ${names.slice(got.length).join(' ')}`
        : `unexpected argument '${got[names.length]!}'`;
    throw new UsageError(`${command}: ${which}`, `see 'vmsubst ${command} --help'`);
  }
  return got;
}

/** A positive integer option value, or a usage error naming the option. */
export function positiveInt(command: string, option: string, value: string): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 1)
    throw new UsageError(
      `${command}: ${option} ${value}: expected a positive whole number`,
      `see 'vmsubst ${command} --help'`,
    );
  return n;
}

/** Prints `help` and returns true when --help was given. */
export function helpRequested(help: string, values: { help?: boolean | undefined }): boolean {
  if (!values.help) return false;
  process.stdout.write(help);
  return true;
}

export async function loadPrivateKey(path: string, option = '--sign'): Promise<KeyObject> {
  let key: KeyObject;
  try {
    key = createPrivateKey(await readFile(path));
  } catch (e) {
    throw new UsageError(
      `${option} ${path}: not a readable private key (${(e as Error).message})`,
      "make one with 'vmsubst keygen --out PREFIX'",
    );
  }
  if (key.asymmetricKeyType !== 'ed25519')
    throw new UsageError(`${option} ${path}: an ${key.asymmetricKeyType} key; Ed25519 is required`);
  return key;
}

/** Public keys (PEM, from vmsubst keygen) by key id, for --trusted-key. */
export async function loadPublicKeys(
  paths: readonly string[],
  option = '--trusted-key',
): Promise<Map<string, KeyObject>> {
  const keys = new Map<string, KeyObject>();
  for (const path of paths) {
    let key: KeyObject;
    try {
      const pem = await readFile(path);
      if (pem.includes('PRIVATE KEY')) throw new Error('this is a private key; give the public half (PREFIX.pub)');
      key = createPublicKey(pem);
    } catch (e) {
      throw new UsageError(
        `${option} ${path}: not a readable public key (${(e as Error).message})`,
        "give the PREFIX.pub written by 'vmsubst keygen'",
      );
    }
    if (key.asymmetricKeyType !== 'ed25519')
      throw new UsageError(`${option} ${path}: an ${key.asymmetricKeyType} key; Ed25519 is required`);
    keys.set(keyId(key), key);
  }
  return keys;
}
