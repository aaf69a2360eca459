/**
 * Bounded answers: a report of thousands of files is cut to fit one message
 * with the true counts, the full report is kept (0600) and its pages rebuild
 * it exactly; and a request carrying MAX_RANGES ranges fits in one message.
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { boundReport, ReportStore, REPORT_BUDGET_BYTES } from '../../../../agent/src/journal/reports.js';
import { argsValidator, encode, returnValidator, validateRequest } from '@vmsubst/common/protocol/codec';
import { MAX_MESSAGE_BYTES, MAX_RANGE_BYTES, MAX_RANGES, type SubstituteReport } from '@vmsubst/common/protocol/schema';

const B = suite('adversarial: bounded reports and consistent limits');

function bigReport(n: number): SubstituteReport {
  const files = Array.from({ length: n }, (_, i) => ({
    path: `/mnt/data/d000/e${String(Math.floor(i / 100)).padStart(2, '0')}/f${String(i).padStart(6, '0')}`,
    ino: 100 + i,
    ranges: [{ offset: 0, length: 4096 }],
    'pages-cached': 1,
    'pages-mapped': 0,
    'pages-dropped': 1,
    'pages-kept': 0,
    mappers: Array.from({ length: i === 0 ? 50 : 1 }, (_, k) => ({ pid: 1000 + k, comm: 'reader' })),
  }));
  return {
    id: 'ef'.repeat(32),
    device: '/dev/vda',
    'dry-run': false,
    'verified-bytes': n * 4096,
    files,
    unmapped: [],
    plan: {
      files: files.map((f) => ({
        path: f.path,
        ino: f.ino,
        mount: '/mnt/data',
        class: 'data' as const,
        policy: 'remap' as const,
        'policy-from': 'default' as const,
        action: 'cached pages dropped; no process maps it',
        ranges: f.ranges,
        mappers: [],
      })),
      blocks: files.map((f, i) => ({
        offset: i * 4096,
        length: 4096,
        class: 'file-data' as const,
        mount: '/mnt/data',
      })),
      'restart-required': false,
      reasons: [],
      units: [],
      'pin-bytes': 0,
    },
    'timings-ms': { verify: 1, map: 1, invalidate: 1, total: 3 },
  };
}

B('a 3,000-file report is cut under the budget, valid, with the true counts', () => {
  const report = bigReport(3000);
  assert.ok(JSON.stringify(report).length > MAX_MESSAGE_BYTES, 'the fixture is over the cap');
  const b = boundReport(report);
  assert.ok(b.truncated);
  const line = encode({ return: b.answer, id: 1 });
  assert.ok(line.length <= REPORT_BUDGET_BYTES + 100, `${line.length} bytes`);
  assert.equal(returnValidator('substitute').problems(b.answer), []);
  assert.is(b.answer.truncated?.counts['files'], 3000);
  assert.is(b.answer.truncated?.counts['plan.files'], 3000);
  assert.is(b.answer.truncated?.counts['plan.blocks'], 3000);
  assert.ok(b.answer.files.length > 0 && b.answer.files.length < 3000);
  assert.is(b.answer.files[0]!.path, report.files[0]!.path, 'the first entries are kept');
  assert.is(JSON.parse(b.full).files.length, 3000, 'the full report is whole');
});

B('a small report is answered as it is', () => {
  const report = bigReport(3);
  const b = boundReport(report);
  assert.not.ok(b.truncated);
  assert.is(b.answer, report);
  assert.is(b.answer.truncated, undefined);
});

B('the kept report is 0600 and its pages rebuild it exactly', () => {
  const dir = mkdtempSync(join(tmpdir(), 'vmsubst-adv-report-'));
  try {
    const report = bigReport(3000);
    const b = boundReport(report);
    const store = new ReportStore(dir);
    store.save(report.id, b.full);
    assert.is(statSync(join(store.dir, `${report.id}.json`)).mode & 0o777, 0o600);
    assert.is(statSync(store.dir).mode & 0o777, 0o700);
    const parts: Buffer[] = [];
    let pages = 0;
    for (let offset = 0; ; pages++) {
      const p = store.page(report.id, offset, 300_000);
      assert.ok(encode({ return: p, id: 1 }).length < MAX_MESSAGE_BYTES);
      assert.equal(returnValidator('report').problems(p), []);
      const data = Buffer.from(p.data, 'base64');
      parts.push(data);
      offset += data.length;
      if (p.done) break;
    }
    assert.ok(pages >= 2, `${pages + 1} pages`);
    const back = JSON.parse(Buffer.concat(parts).toString('utf8')) as SubstituteReport;
    assert.is(back.files.length, 3000);
    assert.equal(back, report);
    assert.throws(() => store.page('00'.repeat(32), 0, 10), /no full report is kept/);
    assert.throws(() => store.page('../../etc/passwd', 0, 10), /not a substitution id/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

B('a request with MAX_RANGES ranges of the widest kind fits in one message', () => {
  // Offsets as long as whole 4 KiB blocks allow.
  const ranges = Array.from({ length: MAX_RANGES }, (_, i) => ({
    offset: Math.floor((Number.MAX_SAFE_INTEGER - (MAX_RANGES - i) * MAX_RANGE_BYTES * 2) / 4096) * 4096,
    length: MAX_RANGE_BYTES,
    sha256: 'f'.repeat(64),
  }));
  const args = {
    id: 'a'.repeat(64),
    disk: { serial: 's'.repeat(20) },
    ranges,
    force: true,
    signature: {
      'key-id': '0123456789abcdef',
      ed25519: 'A'.repeat(86) + '==',
      nonce: 'f'.repeat(32),
      'issued-at': 2 ** 40,
      'expires-at': 2 ** 40,
      target: { 'vm-uuid': '01234567-89ab-cdef-0123-456789abcdef', 'disk-serial': 's'.repeat(20) },
    },
  };
  assert.equal(argsValidator('substitute').problems(args), []);
  const req = { execute: 'substitute', arguments: args, id: 'x'.repeat(128) };
  assert.equal(validateRequest.problems(req), []);
  const line = encode(req); // throws past the cap
  assert.ok(line.length < MAX_MESSAGE_BYTES, `${line.length} bytes`);
  console.log(`  a request with ${MAX_RANGES} widest ranges: ${line.length} of ${MAX_MESSAGE_BYTES} bytes`);
  const over = { ...args, ranges: [...ranges, { offset: 0, length: 4096, sha256: '0'.repeat(64) }] };
  assert.ok(argsValidator('substitute').problems(over).length > 0, 'one more range is refused by the schema');
});

B.run();
