/**
 * What the substitution handlers share: the journaled run of a substitution
 * (answered from the journal when it is a retry), the answer cut to fit one
 * message, and the typed reading of the records they journal.
 */
import { CommandError, messageOf } from '../errors.js';
import type { JournalEntry, JournalRecord } from '../journal/journal.js';
import { boundReport } from '../journal/reports.js';
import type { ArgsOf, ReturnOf } from '@vmsubst/common/protocol/schema';
import { customize } from '../substitution/customize.js';
import { substitute } from '../substitution/substitute.js';
import type { HandlerContext } from './handler.js';

/** prepare's answer as journaled: all of it (every pin) but the token. */
export type PreparedReport = Omit<ReturnOf<'prepare'>, 'token'>;

/*
 * The journal stores what these handlers gave it (journal.prepared, begin, done) as JSON; the
 * readers below give those records back their types. Nothing else writes the journal.
 */
export const preparedArgs = (rec: Extract<JournalRecord, { phase: 'prepared' }>): ArgsOf<'prepare'> =>
  rec.args as ArgsOf<'prepare'>;
export const preparedReport = (rec: Extract<JournalRecord, { phase: 'prepared' }>): PreparedReport =>
  rec.report as PreparedReport;
export const begunArgs = (rec: Extract<JournalRecord, { phase: 'begin' }>): ArgsOf<'prepare'> | undefined =>
  rec.args as ArgsOf<'prepare'> | undefined;
export const doneReport = (rec: Extract<JournalRecord, { phase: 'done' }>): ReturnOf<'substitute'> =>
  rec.report as ReturnOf<'substitute'>;

/** The entry is the newest in the journal and done: a repeat of its id is a retry, answered from the journal. */
export function isLatestDone(
  ctx: HandlerContext,
  entry: JournalEntry | undefined,
): entry is JournalEntry & { last: { phase: 'done' } } {
  return entry?.last.phase === 'done' && ctx.journal.latest() === entry;
}

/** The answer cut to fit one message (journal/reports.ts); the full report is kept for `report`. */
export function bounded<T extends object>(ctx: HandlerContext, id: string, report: T): T {
  const b = boundReport(report);
  if (b.truncated) {
    ctx.reports.save(id, b.full);
    ctx.log.info('report truncated to fit one message; the full report is kept', {
      id,
      bytes: b.full.length,
      dir: ctx.reports.dir,
    });
  }
  return b.answer;
}

/**
 * Answers a known id from the journal; otherwise runs the substitution between begin and
 * done/failed records. `pinned`: prepare's pins (a commit), undefined for the one-shot substitute.
 */
export async function journaled(
  ctx: HandlerContext,
  args: ArgsOf<'substitute'>,
  pinned: ReturnOf<'prepare'>['pinned'] | undefined,
): Promise<ReturnOf<'substitute'>> {
  const { journal, log } = ctx;
  const entry = journal.get(args.id);
  // Only a retry of the latest substitution is answered from the journal. The same bundle
  // applied again after others (A→B, B→A, A→B) changed the disk again and must run again.
  if (entry?.state === 'done' && isLatestDone(ctx, entry)) {
    log.info('substitute answered from the journal', { id: args.id });
    return { ...doneReport(entry.last), replayed: true };
  }
  // A commit after its `prepared` record: begin is made durable with the record after it (journal.begin).
  journal.begin(args.id, ctx.peer.description, pinned !== undefined ? args : undefined, {
    durable: entry?.last.phase !== 'prepared',
  });
  if (process.env['VMSUBST_FAULT'] === 'crash-after-begin') process.kill(process.pid, 'SIGKILL'); // fault injection for the recovery test
  try {
    log.info('substitute', { id: args.id, ranges: args.ranges.length, twoPhase: pinned !== undefined });
    const substituted = await substitute(args, ctx.substituteDeps(), pinned);
    // Customization comes after the blocks, so a file it writes is not overwritten by them.
    const report = args.customization
      ? {
          ...substituted,
          customization: await customize(args.customization, {
            ...ctx.config.customization,
            root: '/',
            procSys: '/proc/sys',
          }),
        }
      : substituted;
    const final = bounded(ctx, args.id, entry?.state === 'interrupted' ? { ...report, recovered: true } : report);
    journal.done(args.id, final);
    return final;
  } catch (e) {
    journal.failed(
      args.id,
      e instanceof CommandError
        ? { class: e.errorClass, desc: e.message }
        : { class: 'GenericError', desc: messageOf(e) },
    );
    throw e;
  }
}
