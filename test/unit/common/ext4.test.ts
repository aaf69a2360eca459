/** ext4 layout parsing against real images made by mkfs.ext4 -d and read back with debugfs. */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { classify, inodesIn, parseDirBlock, readExt4Layout } from '@vmsubst/common/pedigree/ext4';
import { readAt } from '../../helpers/ext4-images.js';

const Ext4 = suite('ext4 layout');
const C = { dir: '', img: '' };

const debugfs = (cmd: string): string =>
  execFileSync('debugfs', ['-R', cmd, C.img], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });

Ext4.before(() => {
  C.dir = mkdtempSync(join(tmpdir(), 'vmsubst-ext4-'));
  const tree = join(C.dir, 'tree');
  mkdirSync(join(tree, 'etc'), { recursive: true });
  for (let i = 0; i < 40; i++) writeFileSync(join(tree, 'etc', `file-${i}.conf`), `value ${i}\n`);
  C.img = join(C.dir, 'fs.img');
  execFileSync('mkfs.ext4', ['-q', '-F', '-b', '4096', '-N', '2048', '-d', tree, C.img, '64M'], { stdio: 'ignore' });
});
Ext4.after(() => rmSync(C.dir, { recursive: true, force: true }));

Ext4('reads the geometry debugfs reports', async () => {
  const layout = await readExt4Layout(async (o, l) => readAt(C.img, o, l), 0);
  assert.ok(layout);
  const stats = debugfs('stats');
  assert.is(layout.blockSize, Number(/Block size:\s+(\d+)/.exec(stats)![1]));
  assert.is(layout.inodesPerGroup, Number(/Inodes per group:\s+(\d+)/.exec(stats)![1]));
  assert.is(layout.inodeSize, Number(/Inode size:\s+(\d+)/.exec(stats)![1]));
  const table = Number(/inode table at (\d+)/.exec(stats)![1]);
  assert.is(layout.groups[0]!.inodeTable, table);
});

Ext4('finds the inode numbers of an inode-table block, as debugfs imap does', async () => {
  const layout = (await readExt4Layout(async (o, l) => readAt(C.img, o, l), 0))!;
  const ino = Number(debugfs('stat /etc/file-7.conf').match(/Inode: (\d+)/)![1]);
  const imap = debugfs(`imap <${ino}>`);
  const block = Number(/located at block (\d+)/.exec(imap)![1]);
  const inos = inodesIn(layout, { offset: block * layout.blockSize, length: layout.blockSize });
  assert.ok(inos.includes(ino), `${ino} in ${inos}`);
  assert.equal(classify(layout, { offset: block * layout.blockSize, length: 4096 }), ['inode-table']);
  assert.equal(classify(layout, { offset: 0, length: 4096 }), ['superblock-or-descriptors']);
});

Ext4('parses a directory block into the names and inodes debugfs lists', async () => {
  const block = Number(debugfs('blocks /etc').trim().split(/\s+/)[0]);
  const entries = parseDirBlock(readAt(C.img, block * 4096, 4096));
  assert.is(entries.size, 40);
  const ino = Number(debugfs('stat /etc/file-3.conf').match(/Inode: (\d+)/)![1]);
  assert.is(entries.get('file-3.conf'), ino);
});

Ext4('refuses what is not ext4', async () => {
  assert.is(await readExt4Layout(async (_o, l) => Buffer.alloc(l), 0), undefined);
});

Ext4.run();
