/** `vmsubst stale`. */
import { withAgent } from '../../notify/index.js';
import { UsageError } from '../../errors.js';
import { formatStale } from '@vmsubst/common/protocol/format';
import { makeSigner } from '../../notify/index.js';
import { Output, helpRequested, loadPrivateKey, parse, positionals, type Command } from '../common.js';
import type { StaleOutput } from '../output.js';

const HELP = `Usage: vmsubst stale --to ADDR [--sign KEY --disk-serial S] [--json]

Asks the guest's agent which processes still run old content, with their pid,
command, systemd unit, file and why:
  pinned     given private copies of the old image by a substitution (the
             'pin' policy); it runs them until it exits
  old-inode  maps an inode that is deleted or no longer at its path (a
             metadata substitution, or a package manager, replaced it)
  mixed      maps a file substituted under the 'report' policy: its mapped
             pages may mix old and new content
needrestart and checkrestart see only deleted inodes; a block substitution
keeps the inode, so the agent adds what its journal knows (pins, policies).
Changes nothing.

  --to ADDR          serial:PATH, vsock:CID:PORT, hvsock:PATH:PORT or unix:PATH
  --sign KEY         sign the request (needed unless vmsubst reaches the agent
                     from the hypervisor's side: virtio-serial, vsock as root)
  --disk-serial S    with --sign: the VM, by its data disk's serial
  --timeout SEC      how long to wait for the answer (default 60)
  --json             print the agent's answer as JSON

Exit status: 0 answered, 1 failure, 2 usage error.
`;

async function run(args: string[]): Promise<void> {
  const { values, positionals: pos } = parse('stale', args, {
    to: { type: 'string' },
    sign: { type: 'string' },
    'disk-serial': { type: 'string' },
    timeout: { type: 'string' },
  });
  if (helpRequested(HELP, values)) return;
  positionals('stale', pos, []);
  if (values.to === undefined) throw new UsageError('stale: --to ADDR is required', "see 'vmsubst stale --help'");
  const timeoutSec = values.timeout === undefined ? 60 : Number(values.timeout);
  if (!(timeoutSec > 0))
    throw new UsageError(`stale: --timeout ${values.timeout}: expected a positive number of seconds`);
  const signer =
    values.sign === undefined
      ? undefined
      : makeSigner(
          await loadPrivateKey(values.sign),
          values['disk-serial'] !== undefined ? { serial: values['disk-serial'] } : {},
        );
  const o = new Output(values.json === true);
  const { value } = await withAgent(values.to, { timeoutMs: timeoutSec * 1000, ...(signer ? { signer } : {}) }, (c) =>
    c.stale(),
  );
  o.result<typeof StaleOutput>(value, () => formatStale(value).trimEnd());
}

export const staleCommand: Command = { help: HELP, run };
