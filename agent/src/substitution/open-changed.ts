/**
 * Opening a changed file by its path. The path comes from the index and may
 * have been swapped since (a symlink, a FIFO, another file): O_NOFOLLOW so a
 * symlink is not followed, O_NONBLOCK so opening a FIFO (or a device) cannot
 * block a thread of the pool — and with it the agent's one-at-a-time queue —
 * until a writer appears, O_NOCTTY for a terminal. After the open, fstat must
 * show the indexed file: a regular file (or directory) with the indexed inode.
 */
import { constants } from 'node:fs';
import { open, type FileHandle } from 'node:fs/promises';
import { AgentError } from '../errors.js';

export const CHANGED_FILE_FLAGS = constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK | constants.O_NOCTTY;

/** The path names another file than the index says (replaced while the substitution ran). */
export class SwappedFileError extends AgentError {
  constructor(message: string) {
    super('E_VMSUBST_SWAPPED_FILE', message, 'retry: the index is checked again');
  }
}

/** What a st_mode is, in words. */
function kindOfMode(mode: number): string {
  switch (mode & constants.S_IFMT) {
    case constants.S_IFIFO:
      return 'a FIFO';
    case constants.S_IFLNK:
      return 'a symlink';
    case constants.S_IFCHR:
    case constants.S_IFBLK:
      return 'a device';
    case constants.S_IFSOCK:
      return 'a socket';
    case constants.S_IFDIR:
      return 'a directory';
    default:
      return 'a regular file';
  }
}

/** The path names another file than the indexed one (`mode`, `ino`: what it names now). */
export function swappedError(
  path: string,
  kind: 'file' | 'dir',
  expectIno: number | undefined,
  mode: number,
  ino: number,
): SwappedFileError {
  return new SwappedFileError(
    `${path} is no longer the indexed ${kind === 'dir' ? 'directory' : 'file'}${expectIno !== undefined ? ` (inode ${expectIno})` : ''}: it is now ${kindOfMode(mode)}, inode ${ino}; ` +
      'it was replaced while the substitution ran: retry (the index is checked again)',
  );
}

/**
 * Opens `path` expecting the indexed `kind` (and inode, when given). Throws
 * the open's error, or SwappedFileError when the path now names something else.
 */
export async function openChanged(
  path: string,
  kind: 'file' | 'dir',
  expect?: { dev?: number; ino: number },
): Promise<FileHandle> {
  const fh = await open(path, CHANGED_FILE_FLAGS | (kind === 'dir' ? constants.O_DIRECTORY : 0));
  try {
    const st = await fh.stat();
    const okKind = kind === 'dir' ? st.isDirectory() : st.isFile();
    if (
      !okKind ||
      (expect !== undefined && (st.ino !== expect.ino || (expect.dev !== undefined && st.dev !== expect.dev)))
    )
      throw swappedError(path, kind, expect?.ino, st.mode, st.ino);
    return fh;
  } catch (e) {
    await fh.close();
    throw e;
  }
}
