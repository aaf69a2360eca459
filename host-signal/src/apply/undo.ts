/**
 * The one clean-up helper of the apply code: each thing made in a VM (or on
 * the host for it) registers how it is undone the moment it exists, and on
 * any exit the undo actions run, last made first, as Go's `defer` or the
 * TC39 AsyncDisposableStack do. A failing action does not stop the others:
 * it is listed with its reason, so the caller can keep its state file and
 * say what is left.
 */

/** An undo action; `failed` lists the failures of the actions that ran before it. */
export type UndoAction = (failed: readonly string[]) => Promise<unknown>;

export interface Removal {
  /** What was removed, e.g. "NBD export vmsubst-…". */
  removed: string[];
  /** What could not be removed, with QEMU's or the system's reason. */
  failed: string[];
}

export class UndoStack {
  private readonly actions: { what: string; undo: UndoAction }[] = [];

  /**
   * Registers how to undo `what`. Returns a function that forgets the action
   * again: for a thing handed over for good (an overlay that became the
   * drive's top layer).
   */
  defer(what: string, undo: UndoAction): () => void {
    const entry = { what, undo };
    this.actions.push(entry);
    return () => {
      const i = this.actions.indexOf(entry);
      if (i >= 0) this.actions.splice(i, 1);
    };
  }

  /** Runs every registered action once, last registered first. Never throws. */
  async unwind(): Promise<Removal> {
    const out: Removal = { removed: [], failed: [] };
    for (let entry = this.actions.pop(); entry; entry = this.actions.pop()) {
      try {
        await entry.undo(out.failed);
        out.removed.push(entry.what);
      } catch (e) {
        out.failed.push(`${entry.what}: ${(e as Error).message}`);
      }
    }
    return out;
  }
}
