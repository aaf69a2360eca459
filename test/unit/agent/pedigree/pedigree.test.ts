import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { PedigreeIndex, mergeRanges, type IndexedFile } from '../../../../agent/src/pedigree/index.js';
import { parseMountinfo, type Mount } from '../../../../agent/src/pedigree/mounts.js';
import { devToMapsField } from '../../../../agent/src/proc/mappers.js';

const mount: Mount = { mountPoint: '/mnt', devNum: '254:0', root: '/', fsType: 'ext4', readOnly: true };
const file = (path: string): IndexedFile => ({ path, dev: 1, ino: 2, mount, kind: 'file', extents: [] });

const Lookup = suite('PedigreeIndex.lookup');
const a = file('/mnt/a');
const b = file('/mnt/b');
// a: file bytes 0..8192 at disk 40960; b: file bytes 4096..8192 at disk 8192
const index = new PedigreeIndex([
  { diskStart: 40960, diskEnd: 49152, fileOffset: 0, file: a },
  { diskStart: 8192, diskEnd: 12288, fileOffset: 4096, file: b },
]);

Lookup('maps a changed block to the file range it holds', () => {
  const r = index.lookup([{ offset: 45056, length: 4096 }]);
  assert.equal(
    r.files.map((f) => [f.file.path, f.ranges]),
    [['/mnt/a', [{ offset: 4096, length: 4096 }]]],
  );
  assert.equal(r.unmapped, []);
});

Lookup('splits a range spanning two files and a gap', () => {
  const r = index.lookup([{ offset: 8192, length: 40960 - 8192 + 4096 }]);
  assert.equal(
    r.files.map((f) => [f.file.path, f.ranges]),
    [
      ['/mnt/a', [{ offset: 0, length: 4096 }]],
      ['/mnt/b', [{ offset: 4096, length: 4096 }]],
    ],
  );
  assert.equal(r.unmapped, [{ offset: 12288, length: 40960 - 12288 }]);
});

Lookup('reports blocks owned by no file as unmapped', () => {
  assert.equal(index.lookup([{ offset: 0, length: 4096 }]).unmapped, [{ offset: 0, length: 4096 }]);
});
Lookup.run();

const Merge = suite('mergeRanges');
Merge('coalesces touching and overlapping ranges', () => {
  assert.equal(
    mergeRanges([
      { offset: 8, length: 4 },
      { offset: 0, length: 8 },
      { offset: 20, length: 1 },
      { offset: 10, length: 5 },
    ]),
    [
      { offset: 0, length: 15 },
      { offset: 20, length: 1 },
    ],
  );
});
Merge.run();

const Mounts = suite('parseMountinfo');
Mounts('reads device, mount point, read-only flag and unescapes names', () => {
  const m = parseMountinfo(
    '22 1 254:0 / /mnt/my\\040data ro,relatime shared:1 - ext4 /dev/vda ro\n' +
      '23 1 0:21 / /tmp rw,nosuid - tmpfs tmp rw\n',
  );
  assert.equal(m, [
    {
      devNum: '254:0',
      root: '/',
      mountPoint: '/mnt/my data',
      fsType: 'ext4',
      readOnly: true,
      source: '/dev/vda',
      superOptions: ['ro'],
    },
    {
      devNum: '0:21',
      root: '/',
      mountPoint: '/tmp',
      fsType: 'tmpfs',
      readOnly: false,
      source: 'tmp',
      superOptions: ['rw'],
    },
  ]);
});
Mounts.run();

const Maps = suite('devToMapsField');
Maps('encodes dev_t like /proc/PID/maps', () => {
  assert.is(devToMapsField((254 << 8) | 0), 'fe:00');
  assert.is(devToMapsField((8 << 8) | 17), '08:11');
  // minor above 255: the high minor bits sit above the major in dev_t
  assert.is(devToMapsField((259 << 8) | (0x1 << 20) | 0x02), '103:102');
});
Maps.run();
