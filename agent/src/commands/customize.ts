/**
 * Customization carried by a substitution (hostname, files, sysctl values),
 * applied after the blocks and persisted where the OS keeps such settings:
 * /etc/hostname, the file itself, /etc/sysctl.d/90-vmsubst.conf. Only kinds
 * the agent's config allows, and files only under the allowed directories.
 * Every item gets an outcome; one failing item does not stop the others.
 */
import { chmod, chown, lstat, mkdir, open, readFile, realpath, rename, writeFile } from 'node:fs/promises';
import { dirname, join, normalize, relative, isAbsolute } from 'node:path';
import type { Customization, CustomizationOutcome } from '../protocol/schema.js';

export type CustomizationKind = CustomizationOutcome['kind'];

export interface CustomizeOptions {
  /** Kinds this guest accepts. */
  allow: readonly CustomizationKind[];
  /** Directories files may be written under (resolved, symlinks refused). */
  fileRoots: readonly string[];
  /** Filesystem root to apply under (tests use a scratch directory). */
  root: string;
  /** Where /proc/sys lives (tests use a scratch directory). */
  procSys: string;
}

export const SYSCTL_FILE = '/etc/sysctl.d/90-vmsubst.conf';

export async function customize(c: Customization, o: CustomizeOptions): Promise<CustomizationOutcome[]> {
  const out: CustomizationOutcome[] = [];
  const refuse = (kind: CustomizationKind, target: string): boolean => {
    if (o.allow.includes(kind)) return false;
    out.push({ kind, target, status: 'refused', detail: `customization of kind '${kind}' is not allowed on this guest` });
    return true;
  };
  const attempt = async (kind: CustomizationKind, target: string, fn: () => Promise<'applied' | 'unchanged'>): Promise<void> => {
    if (refuse(kind, target)) return;
    try {
      out.push({ kind, target, status: await fn() });
    } catch (e) {
      const err = e as NodeJS.ErrnoException;
      out.push({ kind, target, status: err instanceof RefusedError ? 'refused' : 'failed', detail: err.message });
    }
  };

  if (c.hostname !== undefined) {
    const name = c.hostname;
    await attempt('hostname', name, async () => {
      const changed = await writeIfChanged(join(o.root, 'etc/hostname'), `${name}\n`);
      const live = (await readFile(join(o.procSys, 'kernel/hostname'), 'utf8').catch(() => '')).trim();
      if (live !== name) await writeFile(join(o.procSys, 'kernel/hostname'), name);
      return changed || live !== name ? 'applied' : 'unchanged';
    });
  }

  for (const f of c.files ?? []) {
    await attempt('file', f.path, async () => {
      const target = await allowedPath(f.path, o);
      const changed = await writeIfChanged(target, f.content, f.mode);
      if (f.mode !== undefined) await chmod(target, f.mode);
      if (f.uid !== undefined || f.gid !== undefined) {
        const st = await lstat(target);
        await chown(target, f.uid ?? st.uid, f.gid ?? st.gid);
      }
      return changed ? 'applied' : 'unchanged';
    });
  }

  const sysctl = Object.entries(c.sysctl ?? {});
  if (sysctl.length > 0 && !refuse('sysctl', sysctl.map(([k]) => k).join(','))) {
    const persisted = new Map<string, string>();
    for (const [key, value] of sysctl) {
      await attempt('sysctl', key, async () => {
        const path = join(o.procSys, ...key.split('.'));
        const want = String(value);
        const before = (await readFile(path, 'utf8')).trim();
        if (before !== want) await writeFile(path, want);
        persisted.set(key, want);
        return before === want ? 'unchanged' : 'applied';
      });
    }
    if (persisted.size > 0) await persistSysctl(join(o.root, SYSCTL_FILE), persisted);
  }
  return out;
}

class RefusedError extends Error {}

/** Resolves `path` to a place under one of the allowed roots, refusing symlinks and `..` escapes. */
async function allowedPath(path: string, o: CustomizeOptions): Promise<string> {
  const clean = normalize(path);
  if (clean !== path || !isAbsolute(clean)) throw new RefusedError(`${path}: not a normalized absolute path`);
  const root = o.fileRoots.find((r) => clean === r || clean.startsWith(r.endsWith('/') ? r : r + '/'));
  if (!root || clean === root) throw new RefusedError(`${path}: outside the directories customization may write (${o.fileRoots.join(', ')})`);
  const target = join(o.root, clean);
  const realRoot = await realpath(join(o.root, root));
  await mkdir(dirname(target), { recursive: true });
  const realDir = await realpath(dirname(target));
  const rel = relative(realRoot, realDir);
  if (rel.startsWith('..') || isAbsolute(rel)) throw new RefusedError(`${path}: its directory leads outside ${root}`);
  const st = await lstat(target).catch(() => undefined);
  if (st && !st.isFile()) throw new RefusedError(`${path}: exists and is not a regular file`);
  return target;
}

/** Atomic replace (temp file, fsync, rename); returns whether the content changed. */
async function writeIfChanged(path: string, content: string, mode = 0o644): Promise<boolean> {
  const old = await readFile(path, 'utf8').catch(() => undefined);
  if (old === content) return false;
  const tmp = `${path}.vmsubst-tmp`;
  const fh = await open(tmp, 'w', mode);
  try {
    await fh.writeFile(content);
    await fh.sync();
  } finally {
    await fh.close();
  }
  await rename(tmp, path);
  return true;
}

/** Merges keys into the sysctl.d file, keeping the ones set earlier. */
async function persistSysctl(path: string, values: Map<string, string>): Promise<void> {
  const lines = new Map<string, string>();
  const old = await readFile(path, 'utf8').catch(() => '');
  for (const line of old.split('\n')) {
    const m = /^\s*([a-z0-9_.-]+)\s*=\s*(.*)$/.exec(line);
    if (m) lines.set(m[1]!, m[2]!);
  }
  for (const [k, v] of values) lines.set(k, v);
  await mkdir(dirname(path), { recursive: true });
  const text = '# written by vmsubst-agent: sysctl values from substitutions\n' + [...lines].map(([k, v]) => `${k} = ${v}`).join('\n') + '\n';
  await writeIfChanged(path, text);
}
