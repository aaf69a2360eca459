/**
 * libvirt through its own command line, `virsh` (present wherever libvirt is,
 * stable across versions): every call is one `virsh -c URI …` process, its
 * failure a TargetError that says what libvirt said and what to do. Nothing
 * here talks to QEMU behind libvirt's back; `qemuMonitorCommand` is the one
 * call that does through libvirt, and libvirt marks the domain tainted for it.
 */
import { execFile } from 'node:child_process';
import { TargetError } from '../errors.js';

/** How a virsh process is run: injectable, so the parsing can be tested without libvirt. */
export type VirshRunner = (args: readonly string[], timeoutMs: number) => Promise<{ stdout: string }>;

const runVirsh: VirshRunner = (args, timeoutMs) =>
  new Promise((resolve, reject) => {
    execFile('virsh', [...args], { timeout: timeoutMs, maxBuffer: 16 << 20 }, (err, stdout, stderr) => {
      if (err) {
        const missing = (err as NodeJS.ErrnoException).code === 'ENOENT';
        const said = stderr
          .trim()
          .replace(/^error: /gm, '')
          .split('\n')
          .filter(Boolean)
          .join('; ');
        reject(Object.assign(new Error(missing ? 'virsh is not installed' : said || err.message), { missing }));
      } else resolve({ stdout });
    });
  });

export interface VirshOptions {
  /** The libvirt connection URI (virsh -c); default libvirt's own default (LIBVIRT_DEFAULT_URI, qemu:///system as root). */
  connect?: string;
  timeoutMs?: number;
  run?: VirshRunner;
}

export class Virsh {
  readonly connect: string | undefined;
  private readonly timeoutMs: number;
  private readonly runner: VirshRunner;

  constructor(options: VirshOptions = {}) {
    this.connect = options.connect;
    this.timeoutMs = options.timeoutMs ?? 120_000;
    this.runner = options.run ?? runVirsh;
  }

  /** `virsh [-c URI] ARGS…`: its standard output; a failure is a TargetError naming the command. */
  async run(args: readonly string[], timeoutMs = this.timeoutMs): Promise<string> {
    const full = [...(this.connect !== undefined ? ['-c', this.connect] : []), ...args];
    try {
      return (await this.runner(full, timeoutMs)).stdout;
    } catch (e) {
      throw virshError(args, e as Error & { missing?: boolean }, this.connect);
    }
  }

  /** The domain's state word (running, paused, shut off, …). */
  async domainState(domain: string): Promise<string> {
    return (await this.run(['domstate', domain])).trim();
  }

  /** The live domain XML (what the running QEMU was given, with the paths libvirt picked). */
  dumpXml(domain: string): Promise<string> {
    return this.run(['dumpxml', domain]);
  }

  /** Names of the running domains. */
  async runningDomains(): Promise<string[]> {
    return (await this.run(['list', '--name', '--state-running']))
      .split('\n')
      .map((l) => l.trim())
      .filter(Boolean);
  }

  /** Restarts the guest at once (virsh reset: a hardware reset, the --on-no-agent=reset fallback). */
  reset(domain: string): Promise<string> {
    return this.run(['reset', domain]);
  }

  suspend(domain: string): Promise<string> {
    return this.run(['suspend', domain]);
  }

  resume(domain: string): Promise<string> {
    return this.run(['resume', domain]);
  }

  /**
   * Switches `target` onto the pre-made overlay `file` (qcow2, its backing the disk's current top image): a disk-only
   * external snapshot that reuses the file and keeps no snapshot metadata; every other disk is left alone.
   */
  snapshotOnto(domain: string, target: string, file: string, otherTargets: readonly string[]): Promise<string> {
    return this.run([
      'snapshot-create-as',
      domain,
      '--disk-only',
      '--no-metadata',
      '--reuse-external',
      '--diskspec',
      `${target},snapshot=external,file=${file},driver=qcow2`,
      ...otherTargets.flatMap((t) => ['--diskspec', `${t},snapshot=no`]),
    ]);
  }

  /** Active block commit of the top image into the one below it, then the pivot onto that one. */
  blockCommit(domain: string, target: string, timeoutMs: number): Promise<string> {
    return this.run(
      [
        'blockcommit',
        domain,
        target,
        '--active',
        '--shallow',
        '--pivot',
        '--wait',
        '--timeout',
        String(timeoutMs / 1000),
      ],
      timeoutMs + 30_000,
    );
  }

  /** A QMP command through libvirt (`virsh qemu-monitor-command`): libvirt taints the domain `custom-monitor`. */
  async qemuMonitorCommand(
    domain: string,
    command: string,
    args?: Record<string, unknown>,
    timeoutMs = this.timeoutMs,
  ): Promise<unknown> {
    const out = await this.run(
      ['qemu-monitor-command', domain, JSON.stringify({ execute: command, ...(args ? { arguments: args } : {}) })],
      timeoutMs,
    );
    return JSON.parse(out) as unknown;
  }
}

/** What failed and what to do, from virsh's own message. */
function virshError(args: readonly string[], e: Error & { missing?: boolean }, connect?: string): TargetError {
  const what = `virsh ${args.slice(0, 2).join(' ')}`;
  const uri = connect ?? 'the default connection';
  if (e.missing)
    return new TargetError(`${what}: virsh is not installed`, 'install libvirt-clients (the virsh command)', {
      cause: e,
    });
  if (/failed to connect to the hypervisor|Failed to connect socket|no connection driver/i.test(e.message))
    return new TargetError(
      `${what}: cannot reach libvirtd at ${uri}: ${e.message}`,
      'is libvirtd running? Start it (systemctl start libvirtd, or libvirtd --daemon), or give --connect URI',
      { cause: e },
    );
  if (/failed to get domain|Domain not found/i.test(e.message))
    return new TargetError(
      `${what}: ${e.message}`,
      `'virsh${connect ? ` -c ${connect}` : ''} list --all' lists the domains`,
      {
        cause: e,
      },
    );
  return new TargetError(`${what}: ${e.message}`, undefined, { cause: e });
}
