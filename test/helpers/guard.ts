/**
 * uvu 0.5 does not fail a suite whose `before` hook throws: its tests are
 * silently not run and the run exits 0. Suites that boot a guest in `before`
 * record the failure here and every test rethrows it, so a boot failure is a
 * failed test.
 */
import type { Test } from 'uvu';

export interface Guarded {
  /** Use as the `before` hook body. */
  setup(fn: () => Promise<void>): () => Promise<void>;
  /** Registers a test that first rethrows a setup failure. */
  test(name: string, fn: () => unknown): void;
}

export function guard(s: Test): Guarded {
  let failure: unknown;
  return {
    setup: (fn) => async () => {
      try {
        await fn();
      } catch (e) {
        failure = e;
      }
    },
    test: (name, fn) =>
      s(name, async () => {
        if (failure) throw failure;
        await fn();
      }),
  };
}
