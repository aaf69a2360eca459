/**
 * Customization carried by a substitution (hostname, files, sysctl values),
 * applied after the blocks and persisted where the OS keeps such settings:
 * /etc/hostname, the file itself, /etc/sysctl.d/90-vmsubst.conf. Only kinds
 * the agent's config allows, and files only under the allowed directories.
 * Every item gets an outcome; one failing item does not stop the others.
 */
import { randomBytes } from 'node:crypto';
import { constants } from 'node:fs';
import { lstat, mkdir, open, readFile, rename, unlink, writeFile } from 'node:fs/promises';
import { dirname, join, normalize, isAbsolute, sep } from 'node:path';
import type { Customization, CustomizationOutcome } from '@vmsubst/common/protocol/schema';
import { fsyncDir } from '../journal/journal.js';
import { AgentError, messageOf } from '../errors.js';

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
    out.push({
      kind,
      target,
      status: 'refused',
      detail: `customization of kind '${kind}' is not allowed on this guest`,
    });
    return true;
  };
  const attempt = async (
    kind: CustomizationKind,
    target: string,
    fn: () => Promise<'applied' | 'unchanged'>,
  ): Promise<void> => {
    if (refuse(kind, target)) return;
    try {
      out.push({ kind, target, status: await fn() });
    } catch (e) {
      out.push({ kind, target, status: e instanceof RefusedError ? 'refused' : 'failed', detail: messageOf(e) });
    }
  };

  if (c.hostname !== undefined) {
    const name = c.hostname;
    await attempt('hostname', name, async () => {
      // The schema says so too; this holds for callers that bypass it. The kernel's limit is 64 bytes.
      if (Buffer.byteLength(name) > HOST_NAME_MAX || !/^[A-Za-z0-9.-]+$/.test(name)) {
        throw new RefusedError(
          `hostname '${name.slice(0, 80)}': at most ${HOST_NAME_MAX} bytes of letters, digits, '-' and '.' (the kernel's limit)`,
        );
      }
      const dir = await safeDir(o.root, '/etc', 1);
      const changed = await writeIfChanged(dir, join(dir, 'hostname'), `${name}\n`);
      const live = (await readFile(join(o.procSys, 'kernel/hostname'), 'utf8').catch(() => '')).trim();
      if (live !== name) await writeFile(join(o.procSys, 'kernel/hostname'), name);
      return changed || live !== name ? 'applied' : 'unchanged';
    });
  }

  for (const f of c.files ?? []) {
    await attempt('file', f.path, async () => {
      const { dir, target } = await allowedPath(f.path, o);
      const changed = await writeIfChanged(dir, target, f.content, { mode: f.mode, uid: f.uid, gid: f.gid });
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
        // The schema refuses them too: a newline would add a second line (a second key) to the sysctl.d file.
        // eslint-disable-next-line no-control-regex -- control characters are what it looks for
        if (/[\x00-\x1f\x7f]/.test(want))
          throw new RefusedError(
            `${key}: the value contains control characters; send it on one line, fields separated by spaces`,
          );
        const before = (await readFile(path, 'utf8')).trim();
        if (before !== want) await writeFile(path, want);
        persisted.set(key, want);
        return before === want ? 'unchanged' : 'applied';
      });
    }
    if (persisted.size > 0) {
      // Set live already; not persisting is its own outcome, not an exception that loses the others.
      await persistSysctl(o.root, persisted).catch((e: unknown) => {
        out.push({
          kind: 'sysctl',
          target: SYSCTL_FILE,
          status: e instanceof RefusedError ? 'refused' : 'failed',
          detail: `the values are set but not persisted: ${messageOf(e)}`,
        });
      });
    }
  }
  return out;
}

/** A customization item the rules refuse (a path outside what is allowed, a symlink on the way). */
class RefusedError extends AgentError {
  constructor(message: string) {
    super('E_VMSUBST_CUSTOMIZATION_REFUSED', message);
  }
}

/** The kernel's HOST_NAME_MAX (__NEW_UTS_LEN): sethostname(2) refuses longer names. */
export const HOST_NAME_MAX = 64;

/**
 * The directory `dir` (absolute, normalized) under `root`, every component checked with lstat:
 * a symlinked component is refused (it could lead outside the root), a component that is not a
 * directory too. Missing components from index `createFrom` on (0 = the first under root) are
 * created one at a time, each checked after its mkdir; earlier ones must exist. Nothing is created
 * before every component above it was checked, so no directory appears outside the root.
 *
 * The checks and the later open are separate system calls, so a process that can write the
 * directories between them could still race them; openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)
 * would close that window, but Node has no openat2 (nor openat), and the writable directories here
 * are root's own (/etc and below).
 */
async function safeDir(root: string, dir: string, createFrom: number): Promise<string> {
  const parts = dir.split('/').filter(Boolean);
  let at = root;
  for (const [i, name] of parts.entries()) {
    at = join(at, name);
    let st = await lstat(at).catch((e: NodeJS.ErrnoException) => {
      if (e.code === 'ENOENT') return undefined;
      throw e;
    });
    if (st === undefined) {
      if (i < createFrom) throw new RefusedError(`${'/' + parts.slice(0, i + 1).join('/')} does not exist`);
      await mkdir(at, { mode: 0o755 }).catch((e: NodeJS.ErrnoException) => {
        if (e.code !== 'EEXIST') throw e;
      });
      st = await lstat(at);
    }
    if (st.isSymbolicLink())
      throw new RefusedError(
        `${'/' + parts.slice(0, i + 1).join('/')} is a symlink: customization does not follow symlinks`,
      );
    if (!st.isDirectory()) throw new RefusedError(`${'/' + parts.slice(0, i + 1).join('/')} is not a directory`);
  }
  return at;
}

/** Checks `path` against the allowed roots and returns its (checked) directory and target under o.root. */
async function allowedPath(path: string, o: CustomizeOptions): Promise<{ dir: string; target: string }> {
  const clean = normalize(path);
  if (clean !== path || !isAbsolute(clean) || clean.endsWith(sep))
    throw new RefusedError(`${path}: not a normalized absolute path`);
  const root = o.fileRoots.find((r) => clean === r || clean.startsWith(r.endsWith('/') ? r : r + '/'));
  if (!root || clean === root)
    throw new RefusedError(`${path}: outside the directories customization may write (${o.fileRoots.join(', ')})`);
  // The allowed root must exist; directories below it may be created, each checked first.
  const rootDepth = root.split('/').filter(Boolean).length;
  const dir = await safeDir(o.root, dirname(clean), rootDepth);
  const target = join(dir, clean.slice(clean.lastIndexOf('/') + 1));
  const st = await lstat(target).catch(() => undefined);
  if (st && !st.isFile())
    throw new RefusedError(`${path}: exists and is not a regular file${st.isSymbolicLink() ? ' (a symlink)' : ''}`);
  return { dir, target };
}

const NOFOLLOW_READ = constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK | constants.O_NOCTTY;

/**
 * Atomic replace in the checked directory `dir`: a temp file with a random name created with
 * O_CREAT|O_EXCL|O_NOFOLLOW (a planted file or symlink makes it fail, never followed), mode and
 * owner set on the descriptor (fchmod, fchown: nothing follows a path), fsync, rename over the
 * target, fsync of the directory. Returns whether content, mode or owner changed.
 */
async function writeIfChanged(
  dir: string,
  target: string,
  content: string,
  want: { mode?: number | undefined; uid?: number | undefined; gid?: number | undefined } = {},
): Promise<boolean> {
  const cur = await open(target, NOFOLLOW_READ).catch(() => undefined);
  let old: { content: string; mode: number; uid: number; gid: number } | undefined;
  if (cur) {
    try {
      const st = await cur.stat();
      if (!st.isFile()) throw new RefusedError(`${target}: exists and is not a regular file`);
      old = { content: await cur.readFile('utf8'), mode: st.mode & 0o7777, uid: st.uid, gid: st.gid };
    } finally {
      await cur.close();
    }
  }
  const mode = want.mode ?? old?.mode ?? 0o644;
  const uid = want.uid ?? old?.uid;
  const gid = want.gid ?? old?.gid;
  if (
    old &&
    old.content === content &&
    old.mode === mode &&
    (uid === undefined || uid === old.uid) &&
    (gid === undefined || gid === old.gid)
  )
    return false;
  const tmp = join(dir, `.${target.slice(dir.length + 1)}.vmsubst-${randomBytes(6).toString('hex')}`);
  const fh = await open(tmp, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o600);
  let renamed = false;
  try {
    await fh.writeFile(content);
    if (uid !== undefined || gid !== undefined) await fh.chown(uid ?? -1, gid ?? -1);
    await fh.chmod(mode); // after chown, which clears set-id bits
    await fh.sync();
    await fh.close();
    await rename(tmp, target);
    renamed = true;
    fsyncDir(dir);
  } finally {
    await fh.close().catch(() => undefined);
    if (!renamed) await unlink(tmp).catch(() => undefined);
  }
  return true;
}

/** Merges keys into the sysctl.d file, keeping the ones set earlier. */
async function persistSysctl(root: string, values: Map<string, string>): Promise<void> {
  const dir = await safeDir(root, dirname(SYSCTL_FILE), 1);
  const path = join(dir, SYSCTL_FILE.slice(SYSCTL_FILE.lastIndexOf('/') + 1));
  const lines = new Map<string, string>();
  const fh = await open(path, NOFOLLOW_READ).catch(() => undefined);
  const old = fh ? await fh.readFile('utf8').finally(() => fh.close()) : '';
  for (const line of old.split('\n')) {
    const m = /^\s*([a-z0-9_.-]+)\s*=\s*(.*)$/.exec(line);
    if (m) lines.set(m[1]!, m[2]!);
  }
  for (const [k, v] of values) lines.set(k, v);
  const text =
    '# written by vmsubst-agent: sysctl values from substitutions\n' +
    [...lines].map(([k, v]) => `${k} = ${v}`).join('\n') +
    '\n';
  await writeIfChanged(dir, path, text);
}
