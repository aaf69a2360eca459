/**
 * The agent's configuration: one schema, defaults, and the command line that
 * fills it. `--print-config` shows the effective result.
 */
import { parseArgs } from 'node:util';
import { Type, type Static } from '@sinclair/typebox';
import { Validator } from './protocol/codec.js';

export const DEFAULT_VSOCK_PORT = 5252;
export const DEFAULT_SERIAL_PATH = '/dev/virtio-ports/org.vmsubst.0';
export const HOST_CID = 2;
export const DEFAULT_STATE_DIR = '/var/lib/vmsubst';

export const Config = Type.Object(
  {
    vsock: Type.Union([
      Type.Object(
        {
          port: Type.Integer({ minimum: 1, maximum: 0xffffffff - 1 }),
          allowCids: Type.Array(Type.Integer({ minimum: 0, maximum: 0xffffffff }), { minItems: 1 }),
        },
        { additionalProperties: false },
      ),
      Type.Null(),
    ]),
    serial: Type.Union([Type.String({ minLength: 1 }), Type.Null()]),
    unix: Type.Union([Type.String({ minLength: 1 }), Type.Null()]),
    kmodDevice: Type.String({ minLength: 1 }),
    /** Where the journal lives; keep it off the filesystems that are substituted. */
    stateDir: Type.String({ minLength: 1 }),
    /** PEM files of Ed25519 public keys; when any is given, only notifications signed by one are accepted. */
    trustedKeys: Type.Array(Type.String({ minLength: 1 })),
    logLevel: Type.Union([Type.Literal('debug'), Type.Literal('info'), Type.Literal('warn'), Type.Literal('error')]),
  },
  { additionalProperties: false },
);
export type Config = Static<typeof Config>;

const validateConfig = new Validator(Config);

export class ConfigError extends Error {
  readonly code = 'E_VMSUBST_CONFIG';
  constructor(readonly problems: string[]) {
    super(`invalid configuration:\n  ${problems.join('\n  ')}`);
  }
}

export const USAGE = `Usage: vmsubst-agent [options]
       vmsubst-agent status [--json]     versions and the last substitutions (see status --help)
       vmsubst-agent pin [--json] FILE   keep the processes mapping FILE on its old image (see pin --help)

The vmsubst guest agent: told by the host that disk blocks were replaced under
this VM, it verifies them, maps them to files and makes the kernel drop what it
cached, so running and new processes use the new content.

Options:
  --vsock-port N       listen on AF_VSOCK port N (default ${DEFAULT_VSOCK_PORT})
  --no-vsock           do not listen on vsock
  --allow-cid CID      accept vsock peers with this CID (repeatable; default ${HOST_CID}, the host)
  --serial PATH        virtio-serial port to serve (default ${DEFAULT_SERIAL_PATH})
  --no-serial          do not serve a virtio-serial port
  --unix PATH          also listen on a unix socket (mode 0600)
  --kmod-device PATH   the kernel module's device (default /dev/vmsubst)
  --state-dir DIR      journal directory (default ${DEFAULT_STATE_DIR})
  --trusted-key PEM    accept only substitutions signed by this Ed25519 public key
                       (repeatable; from 'vmsubst keygen')
  --log-level LEVEL    debug, info, warn or error (default info)
  --print-config       print the effective configuration as JSON and exit
  -h, --help           show this help
`;

export interface CliResult {
  config: Config;
  printConfig: boolean;
  help: boolean;
}

export function parseCli(argv: string[]): CliResult {
  const { values } = parseArgs({
    args: argv,
    strict: true,
    options: {
      'vsock-port': { type: 'string' },
      'no-vsock': { type: 'boolean' },
      'allow-cid': { type: 'string', multiple: true },
      serial: { type: 'string' },
      'no-serial': { type: 'boolean' },
      unix: { type: 'string' },
      'kmod-device': { type: 'string' },
      'state-dir': { type: 'string' },
      'trusted-key': { type: 'string', multiple: true },
      'log-level': { type: 'string' },
      'print-config': { type: 'boolean' },
      help: { type: 'boolean', short: 'h' },
    },
  });
  const int = (v: string | undefined, fallback: number): number => (v === undefined ? fallback : /^\d+$/.test(v) ? Number(v) : NaN);
  const candidate = {
    vsock: values['no-vsock']
      ? null
      : {
          port: int(values['vsock-port'], DEFAULT_VSOCK_PORT),
          allowCids: (values['allow-cid'] ?? [String(HOST_CID)]).map((c) => int(c, NaN)),
        },
    serial: values['no-serial'] ? null : (values.serial ?? DEFAULT_SERIAL_PATH),
    unix: values.unix ?? null,
    kmodDevice: values['kmod-device'] ?? '/dev/vmsubst',
    stateDir: values['state-dir'] ?? DEFAULT_STATE_DIR,
    trustedKeys: values['trusted-key'] ?? [],
    logLevel: values['log-level'] ?? 'info',
  };
  const problems = validateConfig.problems(candidate);
  if (problems.length > 0) throw new ConfigError(problems);
  return { config: candidate as Config, printConfig: values['print-config'] ?? false, help: values.help ?? false };
}
