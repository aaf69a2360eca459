/** `vmsubst sign`. */
import { resolve } from 'node:path';
import { signBundle } from '../../bundle/index.js';
import { UsageError } from '../../errors.js';
import { Output, helpRequested, loadPrivateKey, parse, positionals, type Command } from '../common.js';
import type { SignOutput } from '../output.js';

const HELP = `Usage: vmsubst sign BUNDLE --key KEY [-o OUT] [--json]

Signs the bundle's manifest with an Ed25519 private key (from 'vmsubst
keygen') and embeds the signature. The manifest holds every range's new
sha256, so the signature covers the data as well. The bundle is checked
completely first and replaced atomically (or written to OUT). The id of a
format 2 bundle stays the same; a format 1 bundle becomes format 2.

Check it with 'vmsubst inspect BUNDLE --trusted-key KEY.pub'; 'vmsubst
apply --trusted-key KEY.pub' refuses bundles not signed by a trusted key.

  --key KEY       PREFIX.key written by 'vmsubst keygen'
  -o, --output    write the signed bundle here instead of replacing BUNDLE
  --json          print the result as JSON
`;

async function run(args: string[]): Promise<void> {
  const { values, positionals: pos } = parse('sign', args, {
    key: { type: 'string' },
    output: { type: 'string', short: 'o' },
  });
  if (helpRequested(HELP, values)) return;
  const [bundlePath] = positionals('sign', pos, ['BUNDLE']) as [string];
  if (values.key === undefined)
    throw new UsageError('sign: --key KEY is required', "make a key pair with 'vmsubst keygen --out PREFIX'");
  if (values.output !== undefined && resolve(values.output) === resolve(values.key))
    throw new UsageError('sign: the output must not overwrite the key');
  const key = await loadPrivateKey(values.key, '--key');
  const o = new Output(values.json === true);
  const out = values.output ?? bundlePath;
  const { manifest, previousId } = await signBundle(bundlePath, key, out);
  const keyId = manifest.signature!['key-id'];
  o.result<typeof SignOutput>({ bundle: out, id: manifest.id, 'previous-id': previousId, 'key-id': keyId }, () =>
    manifest.id === previousId
      ? `${out}: signed with key ${keyId}; id ${manifest.id.slice(0, 16)} unchanged`
      : `${out}: signed with key ${keyId}; the id changed from ${previousId.slice(0, 16)} to ` +
        `${manifest.id.slice(0, 16)} (format 1 bundle upgraded, or its data moved to make room)`,
  );
}

export const signCommand: Command = { help: HELP, run };
