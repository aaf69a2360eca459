/**
 * The agent's configuration: one schema, defaults, and the command line that
 * fills it. `--print-config` shows the effective result.
 */
import { parseArgs } from 'node:util';
import { readFileSync } from 'node:fs';
import { AgentError, errnoCode, messageOf } from './errors.js';
import { Type, type Static } from '@sinclair/typebox';
import { Validator } from '@vmsubst/common/protocol/codec';
import { Policies } from '@vmsubst/common/protocol/schema';

export const DEFAULT_VSOCK_PORT = 5252;
export const DEFAULT_SERIAL_PATH = '/dev/virtio-ports/org.vmsubst.0';
export const HOST_CID = 2;
export const DEFAULT_STATE_DIR = '/var/lib/vmsubst';
export const DEFAULT_TRUSTED_KEY_DIR = '/etc/vmsubst/trusted.d';

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
    /** PEM files of Ed25519 public keys whose signed requests are accepted from any channel. */
    trustedKeys: Type.Array(Type.String({ minLength: 1 })),
    /** A directory whose *.pub files are trusted keys too (the packages create it); missing: none. */
    trustedKeyDir: Type.Union([Type.String({ pattern: '^/' }), Type.Null()]),
    /**
     * Who may change the guest (docs/design.md, "Trust"): unsigned state-changing requests are
     * accepted only over these channels, which only the hypervisor's side can open; with
     * requireSignature, on none.
     */
    trust: Type.Object(
      {
        hypervisorChannels: Type.Array(
          Type.Union([Type.Literal('serial'), Type.Literal('vsock-privileged-port'), Type.Literal('unix')]),
          { uniqueItems: true },
        ),
        requireSignature: Type.Boolean(),
      },
      { additionalProperties: false },
    ),
    /**
     * Stream connections served at once (vsock and unix), for the hypervisor's side and for other
     * peers each, so that a flood of the latter cannot lock the former out; more are closed at once.
     */
    maxConnections: Type.Integer({ minimum: 1, maximum: 1024 }),
    logLevel: Type.Union([Type.Literal('debug'), Type.Literal('info'), Type.Literal('warn'), Type.Literal('error')]),
    /** A stream connection silent this long is closed (0: never). virtio-serial is exempt. */
    idleTimeoutSec: Type.Integer({ minimum: 0, maximum: 86400 }),
    /** Which customization a signed substitution may carry (none by default), and where files may be written. */
    customization: Type.Object(
      {
        allow: Type.Array(Type.Union([Type.Literal('hostname'), Type.Literal('file'), Type.Literal('sysctl')]), {
          uniqueItems: true,
        }),
        fileRoots: Type.Array(Type.String({ pattern: '^/' })),
      },
      { additionalProperties: false },
    ),
    /**
     * What happens to processes mapping a changed file, per file class and per path (see the
     * protocol's Policies); a notification's policies come first. Unset classes: remap for data and
     * for ELF files in which the host found no executable byte changed (elf-code-unchanged), pin for
     * the others (elf-code-changed); the older keys elf-same-layout / elf-new-layout are still read.
     */
    policies: Policies,
    /**
     * Mount points whose pedigree index is built when the agent starts, in the background, so that
     * the first substitution finds it ready (else it is built on first use, inside that substitution).
     */
    indexAtStart: Type.Array(Type.String({ pattern: '^/' })),
  },
  { additionalProperties: false },
);
export type Config = Static<typeof Config>;

/** The config file holds any subset of the settings, by the same names. */
export const ConfigFile = Type.Partial(Config, { additionalProperties: false });
export const DEFAULT_CONFIG_FILE = '/etc/vmsubst/agent.json';

export const DEFAULTS: Config = {
  vsock: { port: DEFAULT_VSOCK_PORT, allowCids: [HOST_CID] },
  serial: DEFAULT_SERIAL_PATH,
  unix: null,
  kmodDevice: '/dev/vmsubst',
  stateDir: DEFAULT_STATE_DIR,
  trustedKeys: [],
  trustedKeyDir: DEFAULT_TRUSTED_KEY_DIR,
  trust: { hypervisorChannels: ['serial', 'vsock-privileged-port', 'unix'], requireSignature: false },
  maxConnections: 16,
  logLevel: 'info',
  idleTimeoutSec: 300,
  customization: { allow: [], fileRoots: ['/etc'] },
  policies: {},
  indexAtStart: [],
};

const validateConfig = new Validator(Config);
const validateConfigFile = new Validator(ConfigFile);

export class ConfigError extends AgentError {
  constructor(readonly problems: string[]) {
    super('E_VMSUBST_CONFIG', `invalid configuration:\n  ${problems.join('\n  ')}`);
  }
}

export const USAGE = `Usage: vmsubst-agent [options]
       vmsubst-agent status [--json]     versions and the last substitutions (see status --help)
       vmsubst-agent pin [--json] FILE   keep the processes mapping FILE on its old image (see pin --help)
       vmsubst-agent stale [--json]      processes still running old content: pinned, old inode, mixed (see stale --help)

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
  --trusted-key PEM    trust this Ed25519 public key (repeatable; from 'vmsubst keygen'):
                       requests it signed are accepted from any channel; *.pub in
                       ${DEFAULT_TRUSTED_KEY_DIR} are trusted too (--trusted-key-dir)
  --trusted-key-dir D  directory of trusted *.pub keys ('' for none)
  --require-signature  refuse unsigned state-changing requests on every channel
                       (default: accepted from the hypervisor's side only: the
                       virtio-serial port, vsock from a source port below 1024,
                       the unix socket)
  --log-level LEVEL    debug, info, warn or error (default info)
  --idle-timeout SEC   close stream connections silent this long (default 300; 0 never)
  --index MOUNTPOINT   build the pedigree index of this filesystem at start, in the
                       background, so the first substitution finds it ready
                       (repeatable; default: each index is built on first use)
  --config PATH        settings file (JSON, the names --print-config shows; default
                       ${DEFAULT_CONFIG_FILE} when it exists); options override it
  --print-config       print the effective configuration as JSON and exit
  -h, --help           show this help
`;

export interface CliResult {
  config: Config;
  printConfig: boolean;
  help: boolean;
}

export function parseCli(argv: string[], readText: (path: string) => string | undefined = readIfExists): CliResult {
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
      'trusted-key-dir': { type: 'string' },
      'require-signature': { type: 'boolean' },
      'log-level': { type: 'string' },
      'idle-timeout': { type: 'string' },
      index: { type: 'string', multiple: true },
      config: { type: 'string' },
      'print-config': { type: 'boolean' },
      help: { type: 'boolean', short: 'h' },
    },
  });
  const int = (v: string, what: string): number => {
    if (!/^\d+$/.test(v)) throw new ConfigError([`${what}: '${v}' is not a non-negative integer`]);
    return Number(v);
  };

  // defaults < config file < command line
  const file = loadConfigFile(values.config, readText);
  const c: Config = { ...DEFAULTS, ...file };
  if (values['no-vsock']) c.vsock = null;
  else if (values['vsock-port'] !== undefined || values['allow-cid'] !== undefined) {
    const base = c.vsock ?? DEFAULTS.vsock!;
    c.vsock = {
      port: values['vsock-port'] !== undefined ? int(values['vsock-port'], '--vsock-port') : base.port,
      allowCids:
        values['allow-cid'] !== undefined ? values['allow-cid'].map((v) => int(v, '--allow-cid')) : base.allowCids,
    };
  }
  if (values['no-serial']) c.serial = null;
  else if (values.serial !== undefined) c.serial = values.serial;
  if (values.unix !== undefined) c.unix = values.unix;
  if (values['kmod-device'] !== undefined) c.kmodDevice = values['kmod-device'];
  if (values['state-dir'] !== undefined) c.stateDir = values['state-dir'];
  if (values['trusted-key'] !== undefined) c.trustedKeys = values['trusted-key'];
  if (values['trusted-key-dir'] !== undefined)
    c.trustedKeyDir = values['trusted-key-dir'] === '' ? null : values['trusted-key-dir'];
  if (values['require-signature']) c.trust = { ...c.trust, requireSignature: true };
  if (values['log-level'] !== undefined) c.logLevel = values['log-level'] as Config['logLevel'];
  if (values['idle-timeout'] !== undefined) c.idleTimeoutSec = int(values['idle-timeout'], '--idle-timeout');
  if (values.index !== undefined) c.indexAtStart = values.index;
  const problems = validateConfig.problems(c);
  if (problems.length > 0) throw new ConfigError(problems);
  return { config: c, printConfig: values['print-config'] ?? false, help: values.help ?? false };
}

function readIfExists(path: string): string | undefined {
  try {
    return readFileSync(path, 'utf8');
  } catch (e) {
    if (errnoCode(e) === 'ENOENT') return undefined;
    throw new ConfigError([`${path}: ${messageOf(e)}`]);
  }
}

function loadConfigFile(explicit: string | undefined, readText: (path: string) => string | undefined): Partial<Config> {
  const path = explicit ?? DEFAULT_CONFIG_FILE;
  const text = readText(path);
  if (text === undefined) {
    if (explicit !== undefined) throw new ConfigError([`${path}: no such file`]);
    return {};
  }
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (e) {
    throw new ConfigError([`${path}: not JSON: ${messageOf(e)}`]);
  }
  const problems = validateConfigFile.problems(value);
  if (problems.length > 0) throw new ConfigError(problems.map((p) => `${path}${p.startsWith('/') ? '' : ' '}${p}`));
  return value as Partial<Config>;
}

/** What the configuration trusts, in words: `--print-config` prints it beside the settings. */
export function describeTrust(c: Config, keyIds: readonly string[]): string[] {
  const ch = c.trust.hypervisorChannels;
  const lines = [
    c.trust.requireSignature
      ? 'unsigned state-changing requests: refused on every channel (requireSignature)'
      : `unsigned state-changing requests (substitute, dry run, prepare, commit, abort): accepted from ${ch.length ? ch.map((x) => ({ serial: "the virtio-serial port (the VMM's chardev)", 'vsock-privileged-port': 'vsock peers bound to a source port below 1024 (root on the host)', unix: 'the unix socket (root in the guest)' })[x]).join(', ') : 'no channel'}`,
    keyIds.length
      ? `signed requests: accepted from any channel when signed by ${keyIds.join(', ')} (once each, unexpired, for this VM)`
      : 'signed requests: no key is trusted, so none is accepted',
    c.vsock
      ? `vsock: connections only from CIDs ${c.vsock.allowCids.join(', ')}; an unprivileged port may only hello and ping`
      : 'vsock: off',
    c.customization.allow.length
      ? `customization: ${c.customization.allow.join(', ')}, only in signed requests, files under ${c.customization.fileRoots.join(', ')}`
      : 'customization: off',
    `at most ${c.maxConnections} stream connections at once from the hypervisor's side, and as many from other peers`,
  ];
  return lines;
}
