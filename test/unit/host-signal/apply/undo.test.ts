import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { UndoStack } from '../../../../host-signal/src/apply/undo.js';

const Undo = suite('apply: the undo stack');

Undo('actions run once, last registered first', async () => {
  const undo = new UndoStack();
  const ran: string[] = [];
  for (const what of ['socket directory', 'NBD server', 'NBD export']) undo.defer(what, async () => ran.push(what));
  const out = await undo.unwind();
  assert.equal(ran, ['NBD export', 'NBD server', 'socket directory']);
  assert.equal(out, { removed: ['NBD export', 'NBD server', 'socket directory'], failed: [] });
  assert.equal(await undo.unwind(), { removed: [], failed: [] }, 'a second unwind has nothing left to do');
});

Undo('a failing action is listed with its reason and the others still run', async () => {
  const undo = new UndoStack();
  const ran: string[] = [];
  undo.defer('first', async () => ran.push('first'));
  undo.defer('second', async () => {
    throw new Error('QEMU said no');
  });
  undo.defer('third', async () => ran.push('third'));
  const out = await undo.unwind();
  assert.equal(ran, ['third', 'first']);
  assert.equal(out, { removed: ['third', 'first'], failed: ['second: QEMU said no'] });
});

Undo('each action sees the failures of the actions before it (a state file kept when something stayed)', async () => {
  const undo = new UndoStack();
  let seen: readonly string[] = ['not called'];
  undo.defer('state file', async (failed) => {
    seen = [...failed];
  });
  undo.defer('export', async () => {
    throw new Error('busy');
  });
  await undo.unwind();
  assert.equal(seen, ['export: busy']);
});

Undo('a forgotten action does not run (a thing handed over for good)', async () => {
  const undo = new UndoStack();
  const ran: string[] = [];
  undo.defer('bitmap', async () => ran.push('bitmap'));
  const forget = undo.defer('overlay node', async () => ran.push('overlay node'));
  forget();
  forget();
  assert.equal((await undo.unwind()).removed, ['bitmap']);
  assert.equal(ran, ['bitmap']);
});

Undo.run();
