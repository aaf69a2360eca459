/**
 * ansible-core for the fleet suites: the collection's tarball as `make collection` builds it,
 * installed the way users install it (`ansible-galaxy collection install TARBALL -p DIR`) into a
 * scratch directory that also holds Ansible's HOME, temporary directories and ansible.cfg (the
 * summary callback enabled), so nothing depends on where the checkout sits.
 */
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { ROOT } from './paths.js';

/** Where `make collection` (part of `make packages`) puts the collection's tarball. */
export const COLLECTION_PACKAGES = join(ROOT, 'build/packaging/ansible');

export interface AnsibleRun {
  code: number;
  /** stdout and stderr together, as a person reads them. */
  out: string;
  /** The play recap's counters per host. */
  recap: Record<string, Record<string, number>>;
}

export function collectionTarball(): string | undefined {
  if (!existsSync(COLLECTION_PACKAGES)) return undefined;
  const t = readdirSync(COLLECTION_PACKAGES).find((f) => /^vmsubst-fleet-.*\.tar\.gz$/.test(f));
  return t === undefined ? undefined : join(COLLECTION_PACKAGES, t);
}

/** Why the fleet suites cannot run here (no ansible-core, no tarball), or undefined. */
export function whyNoAnsible(): string | undefined {
  for (const tool of ['ansible-playbook', 'ansible-galaxy', 'ansible-doc']) {
    const r = spawnSync(tool, ['--version'], { encoding: 'utf8' });
    if (r.error || r.status !== 0) return `${tool} is not installed (Debian package ansible-core; make setup)`;
  }
  if (!collectionTarball()) return `no collection tarball in ${COLLECTION_PACKAGES} (make collection)`;
  return undefined;
}

/** The recap's counters per host ("hv1 : ok=5 changed=2 unreachable=0 failed=0 ..."). */
export function recapOf(out: string): Record<string, Record<string, number>> {
  const recap: Record<string, Record<string, number>> = {};
  const at = out.lastIndexOf('PLAY RECAP');
  if (at < 0) return recap;
  for (const line of out.slice(at).split('\n').slice(1)) {
    const m = /^(\S+)\s+:\s+(.*)$/.exec(line.trim());
    if (!m) continue;
    recap[m[1]!] = Object.fromEntries([...m[2]!.matchAll(/(\w+)=(\d+)/g)].map((x) => [x[1]!, Number(x[2])]));
  }
  return recap;
}

export class Ansible {
  readonly env: Record<string, string>;
  readonly collections: string;

  /** Sets up `dir` (a scratch directory the caller removes) for ansible-core. */
  constructor(readonly dir: string) {
    const home = join(dir, 'home');
    mkdirSync(home, { recursive: true });
    this.collections = join(dir, 'collections');
    this.env = {
      HOME: home,
      ANSIBLE_CONFIG: join(dir, 'ansible.cfg'),
      ANSIBLE_LOCAL_TEMP: join(dir, 'ansible-local'),
      ANSIBLE_REMOTE_TEMP: join(dir, 'ansible-remote'),
      ANSIBLE_COLLECTIONS_PATH: this.collections,
      ANSIBLE_NOCOLOR: '1',
      ANSIBLE_FORCE_COLOR: '0',
      ANSIBLE_RETRY_FILES_ENABLED: '0',
    };
    writeFileSync(
      this.env['ANSIBLE_CONFIG']!,
      [
        '[defaults]',
        'callbacks_enabled = vmsubst.fleet.summary',
        'forks = 5',
        'interpreter_python = auto_silent',
        '',
      ].join('\n'),
    );
  }

  /** Installs the collection's tarball into the scratch directory, as a user does. */
  async install(): Promise<void> {
    const r = await this.run(['ansible-galaxy', 'collection', 'install', collectionTarball()!, '-p', this.collections]);
    if (r.code !== 0) throw new Error(`ansible-galaxy collection install failed:\n${r.out}`);
  }

  /** Runs an ansible command (argv) in the scratch directory with its environment. */
  run(args: string[], timeoutMs = 600_000): Promise<AnsibleRun> {
    return new Promise((resolve, reject) => {
      const p = spawn(args[0]!, args.slice(1), { cwd: this.dir, env: { ...process.env, ...this.env } });
      let out = '';
      p.stdout.on('data', (d: Buffer) => (out += d.toString()));
      p.stderr.on('data', (d: Buffer) => (out += d.toString()));
      const timer = setTimeout(() => p.kill('SIGKILL'), timeoutMs);
      p.on('error', reject);
      p.on('close', (code) => {
        clearTimeout(timer);
        resolve({ code: code ?? -1, out, recap: recapOf(out) });
      });
    });
  }
}
