/**
 * Run as a child process (possibly as another user) by test/unit/agent/walk.test.ts:
 * walks DIR with the addon's walk and with the JavaScript walk and prints
 * whether they agree, the indexed paths and the root directory's entry names.
 *   node build/test/helpers/walk-compare.js DIR
 */
import { isDeepStrictEqual } from 'node:util';
import { fiemap } from '../../agent/src/native/index.js';
import { walkMount, type Fiemap, type IndexedFile } from '../../agent/src/pedigree/walk.js';

const dir = process.argv[2];
if (!dir) throw new Error('usage: walk-compare.js DIR');
const mount = { mountPoint: dir, devNum: '0:0', root: '/', fsType: 'ext4', readOnly: false };

async function walk(fm: Fiemap): Promise<Map<string, unknown>> {
  const files: IndexedFile[] = [];
  await walkMount(mount, 0, fm, (f) => files.push(f));
  return new Map(
    files.map((f) => [f.path, { ...f, mount: undefined, entries: f.entries ? [...f.entries].sort() : undefined }]),
  );
}

const native = await walk(fiemap);
const js = await walk((fd) => fiemap(fd));
const root = native.get(dir) as { entries?: [string, number][] } | undefined;
console.log(
  JSON.stringify({
    same: isDeepStrictEqual(native, js),
    paths: [...native.keys()].sort(),
    entries: (root?.entries ?? []).map(([name]) => name),
  }),
);
