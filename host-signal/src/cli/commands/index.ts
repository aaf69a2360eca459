/**
 * Every subcommand of `vmsubst`, in the order `vmsubst --help` lists them.
 * A command's module (its options, full help and body) is imported when the
 * command runs or its help is asked for, so that each command loads only
 * what it uses: `vmsubst diff` loads neither the protocol schemas nor ajv.
 */
import type { Command } from '../common.js';

/** A subcommand as the command list shows it, and how to load the rest of it. */
export interface CommandEntry {
  readonly name: string;
  /** e.g. "diff BASE PATCHED -o BUNDLE", shown in the command list. */
  readonly synopsis: string;
  readonly summary: string;
  load(): Promise<Command>;
}

export const COMMANDS: readonly CommandEntry[] = [
  {
    name: 'diff',
    synopsis: 'diff BASE PATCHED -o BUNDLE',
    summary: 'compute the changed blocks (and file hints) into a bundle',
    load: async () => (await import('./diff.js')).diffCommand,
  },
  {
    name: 'apply',
    synopsis: 'apply BUNDLE --qmp SOCK',
    summary:
      "put a bundle's blocks into a running VM's disk:\n--mode nbd|overlay (QEMU), --image PATH --mode " +
      'raw-file\n(other hypervisors); --notify tells the guest (two-phase)',
    load: async () => (await import('./apply.js')).applyCommand,
  },
  {
    name: 'recover',
    synopsis: 'recover --qmp SOCK',
    summary:
      'clean up after an apply that was killed: complete an\ninterrupted write, remove what it left in the VM, ' +
      'resume\nthe VM if it had paused it',
    load: async () => (await import('./recover.js')).recoverCommand,
  },
  {
    name: 'export',
    synopsis: 'export BUNDLE --qcow2 OUT --base BASE',
    summary: 'write a bundle as a qcow2 overlay holding the changed clusters',
    load: async () => (await import('./export.js')).exportCommand,
  },
  {
    name: 'notify',
    synopsis: 'notify BUNDLE --to ADDR',
    summary: 'tell the guest agent to verify and drop stale caches',
    load: async () => (await import('./notify.js')).notifyCommand,
  },
  {
    name: 'report',
    synopsis: 'report ID --to ADDR',
    summary: 'fetch the full report of a substitution whose answer\nwas truncated, page by page',
    load: async () => (await import('./report.js')).reportCommand,
  },
  {
    name: 'inspect',
    synopsis: 'inspect BUNDLE',
    summary: 'verify a bundle and show what it changes',
    load: async () => (await import('./inspect.js')).inspectCommand,
  },
  {
    name: 'keygen',
    synopsis: 'keygen --out PREFIX',
    summary: 'make an Ed25519 key pair for signing notifications',
    load: async () => (await import('./keygen.js')).keygenCommand,
  },
  {
    name: 'sign',
    synopsis: 'sign BUNDLE --key KEY',
    summary: 'sign a bundle with an Ed25519 key',
    load: async () => (await import('./sign.js')).signCommand,
  },
  {
    name: 'plan',
    synopsis: 'plan FLEET|--to ADDR BUNDLE',
    summary: "show what a bundle would do in each guest (the agents' dry-run plans)",
    load: async () => (await import('./plan.js')).planCommand,
  },
  {
    name: 'stale',
    synopsis: 'stale --to ADDR',
    summary: 'list the guest processes still running old content (pinned, old inode, mixed)',
    load: async () => (await import('./stale.js')).staleCommand,
  },
  {
    name: 'rollout',
    synopsis: 'rollout FLEET BUNDLE',
    summary:
      'apply a bundle to a fleet of running VMs and tell their agents\n(canary, concurrency, stop on failure, resumable)',
    load: async () => (await import('./rollout.js')).rolloutCommand,
  },
];
