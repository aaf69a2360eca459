/** `vmsubst keygen`. */
import { generateKeyPairSync } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import { keyId } from '@vmsubst/common/protocol/signature';
import { UsageError } from '../../errors.js';
import { Output, helpRequested, parse, positionals, type Command } from '../common.js';
import type { KeygenOutput } from '../output.js';

const HELP = `Usage: vmsubst keygen --out PREFIX [--json]

Writes an Ed25519 key pair: PREFIX.key (private, PKCS#8 PEM, mode 0600) for
'vmsubst notify --sign', and PREFIX.pub (public, SPKI PEM) to install in the
guests ('vmsubst-agent --trusted-key'). Refuses to overwrite existing files.
`;

async function run(args: string[]): Promise<void> {
  const { values, positionals: pos } = parse('keygen', args, { out: { type: 'string' } });
  if (helpRequested(HELP, values)) return;
  positionals('keygen', pos, []);
  if (values.out === undefined) throw new UsageError('keygen: --out PREFIX is required');
  const { privateKey, publicKey } = generateKeyPairSync('ed25519');
  const priv = `${values.out}.key`;
  const pub = `${values.out}.pub`;
  await writeFile(priv, privateKey.export({ format: 'pem', type: 'pkcs8' }), { mode: 0o600, flag: 'wx' });
  await writeFile(pub, publicKey.export({ format: 'pem', type: 'spki' }), { mode: 0o644, flag: 'wx' });
  const id = keyId(publicKey);
  new Output(values.json === true).result<typeof KeygenOutput>(
    { 'private-key': priv, 'public-key': pub, 'key-id': id },
    () => `wrote ${priv} (keep it secret) and ${pub} (install in guests); key id ${id}`,
  );
}

export const keygenCommand: Command = { help: HELP, run };
