/**
 * SubstituteDeps for unit tests of the substitution pipeline: a given block → file lookup and disk
 * reader, a scratch /proc and /sys, and inert module calls; override what a test observes.
 */
import { join } from 'node:path';
import type { SubstituteDeps } from '../../agent/src/substitution/substitute.js';
import type { PedigreeService } from '../../agent/src/pedigree/live.js';

export function fakeSubstituteDeps(
  root: { dir: string; sys: string },
  lookup: (...args: unknown[]) => Promise<{ files: unknown[]; unmapped: unknown[] }>,
  over: Partial<SubstituteDeps> = {},
): SubstituteDeps {
  const pedigree = { lookup, forget: async () => undefined } as unknown as PedigreeService;
  return {
    readDirect: async (_p, _o, l) => Buffer.alloc(l),
    metadata: {} as SubstituteDeps['metadata'],
    fiemap: (() => []) as unknown as SubstituteDeps['fiemap'],
    pedigree,
    invalidateRange: async () => ({ pagesCached: 0n, pagesMapped: 0n, pagesDropped: 0n, pagesKept: 0n }),
    forceFlag: 1,
    unlessDirtyFlag: 64,
    queryDirty: async () => ({ dirty: 0, writeback: 0 }),
    dropOnlyFlag: 2,
    refaultFlag: 4,
    pin: async () =>
      ({ processes: [], 'shared-unpinned': [] }) as unknown as Awaited<ReturnType<SubstituteDeps['pin']>>,
    restartUnit: async (unit) => ({ unit, status: 'no-systemd' }),
    procRoot: join(root.dir, 'proc'),
    sysRoot: root.sys,
    devRoot: join(root.dir, 'dev'),
    now: () => Date.now(),
    ...over,
  };
}
