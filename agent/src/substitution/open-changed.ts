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
    const what = st.isFIFO()
      ? 'a FIFO'
      : st.isSymbolicLink()
        ? 'a symlink'
        : st.isCharacterDevice() || st.isBlockDevice()
          ? 'a device'
          : st.isSocket()
            ? 'a socket'
            : st.isDirectory()
              ? 'a directory'
              : 'a regular file';
    const okKind = kind === 'dir' ? st.isDirectory() : st.isFile();
    if (
      !okKind ||
      (expect !== undefined && (st.ino !== expect.ino || (expect.dev !== undefined && st.dev !== expect.dev)))
    ) {
      throw new SwappedFileError(
        `${path} is no longer the indexed ${kind === 'dir' ? 'directory' : 'file'}${expect ? ` (inode ${expect.ino})` : ''}: it is now ${what}, inode ${st.ino}; ` +
          'it was replaced while the substitution ran: retry (the index is checked again)',
      );
    }
    return fh;
  } catch (e) {
    await fh.close();
    throw e;
  }
}
