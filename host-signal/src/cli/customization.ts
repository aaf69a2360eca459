/**
 * Loading a --customize file (diff): its own module, so that a diff without
 * one loads neither the protocol schemas nor ajv.
 */
import { readFile } from 'node:fs/promises';
import { Customization } from '@vmsubst/common/protocol/schema';
import { Validator } from '@vmsubst/common/protocol/codec';
import { UsageError } from '../errors.js';

const validateCustomization = new Validator(Customization);

export async function loadCustomization(path: string): Promise<Customization> {
  let value: unknown;
  try {
    value = JSON.parse(await readFile(path, 'utf8'));
  } catch (e) {
    throw new UsageError(`--customize ${path}: ${(e as Error).message}`);
  }
  const problems = validateCustomization.problems(value);
  if (problems.length > 0)
    throw new UsageError(`--customize ${path}: ${problems.join('; ')}`, "see 'vmsubst notify --help'");
  return value as Customization;
}
