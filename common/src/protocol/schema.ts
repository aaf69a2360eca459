/**
 * The one definition of the vmsubst wire protocol, spoken between the host
 * (`vmsubst notify`) and the guest agent over vsock, virtio-serial or a unix
 * socket. QMP-style newline-delimited JSON: the agent greets on connect,
 * requests are `{"execute", "arguments", "id"}`, replies are `{"return", "id"}`
 * or `{"error": {"class", "desc"}, "id"}`. Unknown fields are errors.
 *
 * Types are derived from these schemas; ajv validates every message against
 * them (see codec.ts).
 */
import { Type, type Static, type TSchema } from '@sinclair/typebox';
// Named so that the emitted declarations can refer to them (TS4023).
// eslint-disable-next-line @typescript-eslint/no-unused-vars
import type { Hint, Kind, OptionalKind, ReadonlyKind } from '@sinclair/typebox';

import { MAX_RANGES, MAX_RANGE_BYTES, MAX_REPORT_PAGE_BYTES } from './limits.js';

export { MAX_MESSAGE_BYTES, MAX_RANGES, MAX_RANGE_BYTES, MAX_REPORT_PAGE_BYTES, PROTOCOL_VERSION } from './limits.js';

const strict = { additionalProperties: false } as const;

/**
 * A command's or a field's documentation: what it is, and the protocol version it came with.
 * Every command and every field of their arguments and answers has both (test/unit/agent/protocol-docs.test.ts),
 * as qemu-guest-agent's schema requires of every command (its doc-required pragma). `since` is a
 * keyword of its own (codec.ts tells ajv about it); a field added within a protocol version names
 * the capability that announces it in its description.
 */
const doc = (description: string, since = 1): { description: string; since: number } => ({ description, since });

const Id = Type.Union([Type.String({ maxLength: 128 }), Type.Integer()], {
  ...doc('Echoed unchanged in the reply so a client can match it'),
});
const Sha256 = Type.String({ pattern: '^[0-9a-f]{64}$', ...doc('sha256 of the content, 64 lowercase hex digits') });
const Offset = Type.Integer({ minimum: 0, maximum: Number.MAX_SAFE_INTEGER, ...doc('byte offset') });
const Pid = Type.Integer(doc('process id'));
const Comm = Type.String(doc("the process's command name (/proc/PID/comm)"));
const Unit = Type.String(doc('the systemd unit owning the process, from /proc/PID/cgroup'));
const Path = Type.String(doc('path of the file in the guest'));
const Ino = Type.Integer(doc('inode number'));
const Detail = Type.String(doc('why, in words'));

/** Sent by the agent as the first line on every stream connection. Since 1. */
export const Greeting = Type.Object(
  {
    vmsubst: Type.Object(
      {
        version: Type.String(doc("the agent's version")),
        protocol: Type.Integer({ minimum: 1, ...doc('the protocol version the agent speaks (PROTOCOL_VERSION)') }),
        capabilities: Type.Array(
          Type.String(),
          doc('every command by its name, then the features (Features) of this agent'),
        ),
      },
      { ...strict, ...doc('who answers: version, protocol and capabilities') },
    ),
  },
  strict,
);
export type Greeting = Static<typeof Greeting>;
export type GreetingBody = Greeting['vmsubst'];

/** Which guest disk the substituted blocks belong to. */
export const DiskRef = Type.Object(
  {
    serial: Type.Optional(
      Type.String({ minLength: 1, maxLength: 20, ...doc('virtio-blk serial (/sys/block/*/serial)') }),
    ),
    path: Type.Optional(
      Type.String({
        pattern: '^/dev/[A-Za-z0-9._/-]+$',
        maxLength: 255,
        ...doc('device node of the disk in the guest'),
      }),
    ),
  },
  { ...strict, ...doc('which guest disk the substituted blocks belong to: by serial, or by device path') },
);
export type DiskRef = Static<typeof DiskRef>;

/** A byte range in a report (no cap: a file's changed span can be large). */
export const ByteRange = Type.Object(
  { offset: Offset, length: Type.Integer({ minimum: 1, maximum: Number.MAX_SAFE_INTEGER, ...doc('length in bytes') }) },
  strict,
);
export type ByteRange = Static<typeof ByteRange>;

/** Whole 4 KiB blocks only (substitution/verify.ts RANGE_ALIGN): no answer can be about less. */
export const HashedRange = Type.Object(
  {
    offset: Type.Integer({
      minimum: 0,
      maximum: Number.MAX_SAFE_INTEGER,
      multipleOf: 4096,
      ...doc('byte offset on the disk, a multiple of 4096'),
    }),
    length: Type.Integer({
      minimum: 4096,
      maximum: MAX_RANGE_BYTES,
      multipleOf: 4096,
      ...doc('length in bytes, a multiple of 4096'),
    }),
    sha256: { ...Sha256, ...doc('sha256 of the new content of the range') },
  },
  strict,
);
export type HashedRange = Static<typeof HashedRange>;

/** Customization a substitution may carry, applied after the blocks. Only kinds the agent allows. */
export const Customization = Type.Object(
  {
    hostname: Type.Optional(
      Type.String({
        ...doc("the new hostname: at most 64 bytes, the kernel's HOST_NAME_MAX"),
        pattern:
          '^(?=.{1,64}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$',
      }),
    ),
    files: Type.Optional(
      Type.Array(
        Type.Object(
          {
            path: Type.String({ pattern: '^/[^\\0]*$', maxLength: 4096, ...doc('absolute path of the file to write') }),
            content: Type.String({ maxLength: 256 * 1024, ...doc("the file's content, UTF-8") }),
            mode: Type.Optional(Type.Integer({ minimum: 0, maximum: 0o7777, ...doc('permission bits') })),
            uid: Type.Optional(Type.Integer({ minimum: 0, maximum: 0xfffffffe, ...doc('owner') })),
            gid: Type.Optional(Type.Integer({ minimum: 0, maximum: 0xfffffffe, ...doc('group') })),
          },
          strict,
        ),
        { maxItems: 64, ...doc('files to write (atomically: written beside, then renamed)') },
      ),
    ),
    sysctl: Type.Optional(
      Type.Record(
        Type.String({ pattern: '^[a-z0-9_]+(\\.[a-z0-9_-]+)+$', maxLength: 128 }),
        Type.Union([
          Type.String({
            maxLength: 256,
            pattern: '^[^\\x00-\\x1f\\x7f]*$',
            description: 'one line: no control characters',
          }),
          Type.Integer(),
        ]),
        { maxProperties: 64, ...doc('sysctl values to set and persist (/etc/sysctl.d/90-vmsubst.conf), by name') },
      ),
    ),
  },
  { ...strict, ...doc('customization applied after the blocks; only signed, and only the kinds the agent allows') },
);
export type Customization = Static<typeof Customization>;

export const CustomizationOutcome = Type.Object(
  {
    kind: Type.Union(
      [Type.Literal('hostname'), Type.Literal('file'), Type.Literal('sysctl')],
      doc('which kind of item'),
    ),
    target: Type.String(doc('the hostname, the path or the sysctl name')),
    status: Type.Union(
      [Type.Literal('applied'), Type.Literal('unchanged'), Type.Literal('refused'), Type.Literal('failed')],
      doc('what became of it'),
    ),
    detail: Type.Optional(Detail),
  },
  strict,
);
export type CustomizationOutcome = Static<typeof CustomizationOutcome>;

/**
 * What happens to processes that map a changed file:
 * remap   — their mapped pages are dropped; they fault the new content in;
 * pin     — before the blocks change (prepare) each gets private copies of its mapped pages and runs a
 *           consistent old image until it exits; new execs get the new file; costs the mapped size;
 * report  — nothing is done to them: cached pages nobody maps are dropped, mapped pages stay (they may
 *           mix old and new content when reclaimed), and they are reported;
 * restart — like remap, then the systemd units owning them are restarted.
 */
export const Policy = Type.Union(
  [Type.Literal('remap'), Type.Literal('pin'), Type.Literal('report'), Type.Literal('restart')],
  doc('remap, pin, report or restart'),
);
export type Policy = Static<typeof Policy>;

/**
 * How a changed file is classed for the default policy: an ELF executable or library whose code the
 * host found unchanged (no byte of an executable segment, nor of the tables the dynamic loader reads
 * at run time, and the program headers equal: `remap` is safe) or changed (or not known: `pin`), or
 * any other file. Since 1 (capability "elf-code"; before it, `elf-same-layout` / `elf-new-layout`).
 */
export const FileClass = Type.Union([
  Type.Literal('data'),
  Type.Literal('elf-code-unchanged'),
  Type.Literal('elf-code-changed'),
]);
export type FileClass = Static<typeof FileClass>;

/**
 * Policy per file class and per path; the notification's override the agent's configuration.
 * The class names of older hosts and configurations are still accepted: `elf-new-layout` applies
 * to `elf-code-changed` and `elf-same-layout` to `elf-code-unchanged`, each only where the new
 * name is not given. (An old `elf-same-layout: remap` thus never reaches a file whose code changed.)
 */
export const Policies = Type.Object(
  {
    data: Type.Optional({ ...Policy, ...doc('policy for files that are not ELF executables or libraries') }),
    'elf-code-unchanged': Type.Optional({
      ...Policy,
      ...doc('policy for ELF files whose code did not change (capability "elf-code")'),
    }),
    'elf-code-changed': Type.Optional({
      ...Policy,
      ...doc('policy for ELF files whose code changed, or is not known (capability "elf-code")'),
    }),
    'elf-same-layout': Type.Optional({ ...Policy, ...doc('older name, applied to elf-code-unchanged') }),
    'elf-new-layout': Type.Optional({ ...Policy, ...doc('older name, applied to elf-code-changed') }),
    files: Type.Optional(
      Type.Record(Type.String({ pattern: '^/[^\\0]*$', maxLength: 4096 }), Policy, {
        maxProperties: 4096,
        ...doc('policy per path, over the class policies'),
      }),
    ),
  },
  { ...strict, ...doc("policies by file class and by path; they override the agent's configuration") },
);
export type Policies = Static<typeof Policies>;

/**
 * What the host knows of a changed file from the patched image (debugfs, the ELF files' bytes).
 * `elf`: code-unchanged or code-changed (elf.ts of the host). The verdicts of older hosts,
 * same-layout and new-layout, are accepted and both taken as code-changed: same-layout compared
 * headers and symbols, not the executable bytes, and a function whose instructions moved inside it
 * keeps every header and symbol (docs/design.md, "Two phases and policies").
 */
export const FileHint = Type.Object(
  {
    path: Type.String({ pattern: '^/[^\\0]*$', maxLength: 4096, ...doc('path inside its filesystem') }),
    elf: Type.Optional(
      Type.Union(
        [
          Type.Literal('code-unchanged'),
          Type.Literal('code-changed'),
          Type.Literal('same-layout'),
          Type.Literal('new-layout'),
        ],
        {
          ...doc('absent: not an ELF file; same-layout and new-layout (older hosts) are taken as code-changed'),
        },
      ),
    ),
  },
  strict,
);
export type FileHint = Static<typeof FileHint>;

/**
 * A signed envelope (protocol/signature.ts): an Ed25519 signature over the command's name, its
 * arguments (without `signature`), a nonce, the validity window and the target VM's identity. The
 * agent accepts it once (nonces are kept until they expire), only inside its window and only for
 * this VM. Since 1 (capability "envelope-v2").
 */
export const Envelope = Type.Object(
  {
    'key-id': Type.String({
      pattern: '^[0-9a-f]{16}$',
      ...doc('first 16 hex digits of the sha256 of the public key (SPKI DER)'),
    }),
    ed25519: Type.String({ pattern: '^[A-Za-z0-9+/]{86}==$', ...doc('base64 Ed25519 signature') }),
    nonce: Type.String({ pattern: '^[0-9a-f]{32}$', ...doc('128 random bits; an envelope is accepted once') }),
    'issued-at': Type.Integer({ minimum: 0, maximum: 2 ** 40, ...doc('seconds since the epoch') }),
    'expires-at': Type.Integer({
      minimum: 0,
      maximum: 2 ** 40,
      ...doc('seconds since the epoch; at most a day after issued-at'),
    }),
    target: Type.Object(
      {
        'vm-uuid': Type.Optional(
          Type.String({
            pattern: '^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$',
            ...doc('SMBIOS system UUID (QMP query-uuid; /sys/class/dmi/id/product_uuid in the guest)'),
          }),
        ),
        'disk-serial': Type.Optional(
          Type.String({ minLength: 1, maxLength: 20, ...doc('serial of the disk the substitution is for') }),
        ),
      },
      { ...strict, minProperties: 1, ...doc('which VM the envelope is for; every field given must match') },
    ),
  },
  {
    ...strict,
    ...doc(
      'a signed envelope (capability "envelope-v2"): required on channels that are not the hypervisor\'s side, and for customization',
    ),
  },
);
export type Envelope = Static<typeof Envelope>;

/** `substitute`: the host has written new blocks; verify them and invalidate. Since 1. */
export const SubstituteArgs = Type.Object(
  {
    id: Type.String({ pattern: '^[0-9a-f]{16,64}$', ...doc('substitution id (hash of the bundle manifest)') }),
    disk: DiskRef,
    ranges: Type.Array(HashedRange, {
      minItems: 1,
      maxItems: MAX_RANGES,
      ...doc('disk-relative byte ranges and the sha256 of their new content'),
    }),
    'dry-run': Type.Optional(
      Type.Boolean({
        ...doc('return the plan (files, block classes, processes, policies); verify nothing, change nothing'),
      }),
    ),
    policies: Type.Optional(Policies),
    hints: Type.Optional(
      Type.Array(FileHint, {
        maxItems: 16384,
        ...doc('what the host knows of the changed files from the patched image (their paths, ELF verdicts)'),
      }),
    ),
    force: Type.Optional(
      Type.Boolean({ ...doc('accept metadata changes under a read-write mount, and scripts being executed') }),
    ),
    customization: Type.Optional(Customization),
    signature: Type.Optional(Envelope),
  },
  strict,
);
export type SubstituteArgs = Static<typeof SubstituteArgs>;

export const Mapper = Type.Object({ pid: Pid, comm: Comm }, strict);
export type Mapper = Static<typeof Mapper>;

export const FileReport = Type.Object(
  {
    path: Path,
    ino: Ino,
    ranges: Type.Array(ByteRange, doc('byte ranges of the file (file offsets) whose blocks changed')),
    'pages-cached': Type.Integer(doc('pages of the changed ranges that were in the page cache')),
    'pages-mapped': Type.Integer(doc('of those, pages mapped by a process')),
    'pages-dropped': Type.Integer(doc('pages dropped from the cache: read anew from the disk')),
    'pages-kept': Type.Integer(doc('pages the kernel kept (dirty, locked, or kept by policy)')),
    mappers: Type.Array(Mapper, doc('the processes that map the file')),
  },
  strict,
);
export type FileReport = Static<typeof FileReport>;

export const MetadataKind = Type.Union(
  [
    Type.Literal('superblock-or-descriptors'),
    Type.Literal('block-bitmap'),
    Type.Literal('inode-bitmap'),
    Type.Literal('inode-table'),
    Type.Literal('directory'),
    Type.Literal('other'),
  ],
  doc('what a metadata block holds'),
);

export const ClassifiedRange = Type.Object(
  { offset: Offset, length: ByteRange.properties.length, kinds: Type.Array(MetadataKind, doc('what the range holds')) },
  strict,
);
export type ClassifiedRange = Static<typeof ClassifiedRange>;

/** What the metadata steps did: block-device buffers, dentries, inodes. */
export const MetadataReport = Type.Object(
  {
    ranges: Type.Array(ClassifiedRange, doc('changed disk ranges outside file data, with what they hold')),
    'bdev-pages-dropped': Type.Integer(doc("pages of the block device's cache dropped")),
    pinned: Type.Array(
      ClassifiedRange,
      doc('ranges whose buffers the kernel keeps pinned (ext4 superblock, group descriptors): not refreshed'),
    ),
    dentries: Type.Array(
      Type.Object(
        {
          dir: Type.String(doc('the directory')),
          names: Type.Array(Type.String(), doc('names looked at in it')),
          dropped: Type.Integer(doc('dentries dropped')),
          busy: Type.Integer(doc('dentries in use, kept')),
          mountpoints: Type.Integer(doc('dentries that are mount points, kept')),
        },
        strict,
      ),
      doc('directory entries revalidated, per directory'),
    ),
    inodes: Type.Object(
      {
        evicted: Type.Integer(doc('inodes evicted from the cache: read anew')),
        'not-cached': Type.Integer(doc('inodes that were not cached')),
        'in-use': Type.Array(
          Type.Object(
            {
              ino: Ino,
              path: Type.Optional(Path),
              reasons: Type.Array(Type.String(), doc('why it could not be evicted')),
              mappers: Type.Array(Mapper, doc('the processes that map it')),
              'number-reused-by': Type.Optional(
                Type.String(
                  doc(
                    "the new tree gives this in-use inode's number to this other file: it cannot be seen until the users exit",
                  ),
                ),
              ),
            },
            strict,
          ),
          doc('inodes in use that could not be evicted'),
        ),
      },
      { ...strict, ...doc('inodes of the changed inode tables') },
    ),
  },
  { ...strict, ...doc('what the metadata steps did (present when the substitution changed filesystem metadata)') },
);
export type MetadataReport = Static<typeof MetadataReport>;

export const BlockClassName = Type.Union(
  [
    Type.Literal('file-data'),
    Type.Literal('superblock'),
    Type.Literal('group-descriptors'),
    Type.Literal('block-bitmap'),
    Type.Literal('inode-bitmap'),
    Type.Literal('inode-table'),
    Type.Literal('journal'),
    Type.Literal('extent-tree'),
    Type.Literal('directory'),
    Type.Literal('free'),
    Type.Literal('unknown'),
    Type.Literal('outside-filesystems'),
    /** On a filesystem or stacked device vmsubst refuses (btrfs, device-mapper, ...): see Plan.filesystems. */
    Type.Literal('unsupported'),
  ],
  doc('what the blocks of a changed range hold'),
);

/** A filesystem of the disk (or a device stacked on it) and how a substitution goes under it. */
export const PlannedFilesystem = Type.Object(
  {
    device: Type.String(doc('the partition or disk it lives on (sysfs name)')),
    mount: Type.Optional(Type.String(doc('where it is mounted'))),
    type: Type.String(doc('filesystem type from mountinfo, or `device-mapper`, or what the superblock says')),
    handling: Type.Union(
      [Type.Literal('data-and-metadata'), Type.Literal('data-only'), Type.Literal('refused')],
      doc('what a substitution may change under it'),
    ),
    reason: Type.Optional(Detail),
  },
  strict,
);
export type PlannedFilesystem = Static<typeof PlannedFilesystem>;

export const PlannedMapper = Type.Object(
  {
    pid: Pid,
    comm: Comm,
    unit: Type.Optional(Unit),
    'not-restartable': Type.Optional(
      Type.String(
        doc(
          "why the `restart` policy will not restart this process's unit (a user unit, a scope, the agent's own unit)",
        ),
      ),
    ),
    'mapped-bytes': Type.Integer({ minimum: 0, ...doc('bytes of the file it maps; what a pin copies') }),
  },
  strict,
);
export type PlannedMapper = Static<typeof PlannedMapper>;

/** A process holding a changed file open (not mapped). Since 1 (capability "readers"). */
export const OpenReader = Type.Object(
  {
    pid: Pid,
    comm: Comm,
    unit: Type.Optional(Unit),
    fd: Type.Integer({ minimum: 0, ...doc('the file descriptor') }),
    pos: Type.Integer({ minimum: 0, ...doc("the fd's file position (fdinfo pos): where its next read starts") }),
    script: Type.Boolean(
      doc(
        'the file is the script the process executes (its command line names it, or a shell holds it read-only past its start)',
      ),
    ),
    /**
     * What happens: `none` (not a script: it reads on in the new content), `restart` (its unit is restarted
     * after the invalidation), `refuse` (prepare refuses the substitution unless forced), `forced` (forced:
     * the script reads on at its offset in the new content), `reads-on` (the one-shot substitute or a
     * commit, after the host wrote: nothing can be refused any more; it reads on in the new content).
     */
    handling: Type.Union(
      [
        Type.Literal('none'),
        Type.Literal('restart'),
        Type.Literal('refuse'),
        Type.Literal('forced'),
        Type.Literal('reads-on'),
      ],
      doc('what happens to it (see above)'),
    ),
    detail: Type.Optional(Detail),
  },
  strict,
);
export type OpenReader = Static<typeof OpenReader>;

/** Why a process still runs old content (the `stale` command, and the plan's prediction). Since 1 (capability "stale"). */
export const StaleProcess = Type.Object(
  {
    pid: Pid,
    comm: Comm,
    unit: Type.Optional(Unit),
    file: Type.String(doc('the file it runs old content of')),
    /**
     * pinned: it was given private copies of the old image (the `pin` policy) and runs them until it exits;
     * old-inode: it maps an inode that is deleted or no longer at its path (replaced by a new tree);
     * mixed: it maps a file substituted under the `report` policy: its mapped pages may mix old and new content.
     */
    why: Type.Union(
      [Type.Literal('pinned'), Type.Literal('old-inode'), Type.Literal('mixed')],
      doc('pinned, old-inode or mixed (see above)'),
    ),
    substitution: Type.Optional(Type.String(doc('the substitution that left it so, when known'))),
  },
  strict,
);
export type StaleProcess = Static<typeof StaleProcess>;

export const PlannedFile = Type.Object(
  {
    path: Path,
    ino: Ino,
    mount: Type.String(doc('mount point of its filesystem')),
    class: Type.Union(
      [FileClass, Type.Literal('elf-same-layout'), Type.Literal('elf-new-layout')],
      doc('one of FileClass; an older agent (no capability "elf-code") answers elf-same-layout or elf-new-layout'),
    ),
    policy: { ...Policy, ...doc('the policy applied to it') },
    'policy-from': Type.Union(
      [Type.Literal('default'), Type.Literal('config'), Type.Literal('notification')],
      doc('where the policy came from'),
    ),
    action: Type.String(doc('what the policy does here, in words')),
    ranges: Type.Array(ByteRange, doc('byte ranges of the file whose blocks change')),
    mappers: Type.Array(PlannedMapper, doc('the processes that map it')),
    /**
     * Processes that have the file open without mapping it (/proc/PID/fd, fdinfo pos): after the
     * invalidation they read on at their offset in the new content. A script being executed is
     * restarted with its unit, or refuses the substitution (ScriptInUse) unless forced.
     */
    readers: Type.Optional(
      Type.Array(OpenReader, doc('processes holding it open without mapping it (capability "readers")')),
    ),
  },
  strict,
);
export type PlannedFile = Static<typeof PlannedFile>;

/** What a substitution will do; returned by a dry run and by `prepare`, and kept in every report. */
export const Plan = Type.Object(
  {
    files: Type.Array(PlannedFile, doc('every changed file, with its class, policy and processes')),
    blocks: Type.Array(
      Type.Object(
        {
          offset: Offset,
          length: ByteRange.properties.length,
          class: BlockClassName,
          mount: Type.Optional(Type.String(doc('mount point of the filesystem the blocks belong to'))),
        },
        strict,
      ),
      doc('every changed range, split by what its blocks hold'),
    ),
    'restart-required': Type.Boolean(doc('the substitution cannot be made visible without a restart')),
    reasons: Type.Array(Type.String(), doc('why a restart is required (read-write metadata change, ...)')),
    units: Type.Array(Type.String(), doc('systemd units the `restart` policy would restart')),
    'pin-bytes': Type.Integer({
      minimum: 0,
      ...doc('memory the `pin` policy copies, in bytes, over all pinned processes'),
    }),
    filesystems: Type.Optional(Type.Array(PlannedFilesystem, doc('every filesystem of the disk, decided per mount'))),
    unsupported: Type.Optional(
      Type.Array(
        Type.String(),
        doc('why prepare/commit refuse this substitution as `Unsupported` (empty: they do not)'),
      ),
    ),
    /**
     * The processes that will still run old content afterwards: for a metadata substitution, those
     * mapping an inode the new tree replaces at its path (from the host's file hints).
     */
    stale: Type.Optional(
      Type.Array(StaleProcess, doc('the processes that will still run old content afterwards (capability "stale")')),
    ),
  },
  { ...strict, ...doc('what the substitution will do, per file and per block') },
);
export type Plan = Static<typeof Plan>;

export const PinOutcome = Type.Object(
  {
    pid: Pid,
    comm: Comm,
    path: Path,
    'bytes-copied': Type.Integer(doc('bytes of pages copied for it')),
    status: Type.Union(
      [Type.Literal('pinned'), Type.Literal('exited'), Type.Literal('failed')],
      doc('pinned, exited before it could be, or failed'),
    ),
    detail: Type.Optional(Detail),
  },
  strict,
);
export type PinOutcome = Static<typeof PinOutcome>;

export const RestartOutcome = Type.Object(
  {
    unit: Type.String(doc('the systemd unit')),
    status: Type.Union(
      [Type.Literal('restarted'), Type.Literal('failed'), Type.Literal('no-systemd')],
      doc('what became of it'),
    ),
    detail: Type.Optional(Detail),
  },
  strict,
);
export type RestartOutcome = Static<typeof RestartOutcome>;

/** Present when an answer's lists were cut to fit one message; the full report is kept in the guest. Since 1 (capability "report"). */
export const Truncated = Type.Object(
  {
    counts: Type.Record(
      Type.String(),
      Type.Integer({ minimum: 0 }),
      doc(
        'the true length of each list that was cut, by path (files, plan.files, files[].mappers: summed over the entries kept)',
      ),
    ),
    'report-bytes': Type.Integer({
      minimum: 0,
      ...doc("size of the full report's JSON, in bytes: what `report` pages through"),
    }),
    detail: Detail,
  },
  { ...strict, ...doc('present when the answer\'s lists were cut to fit one message (capability "report")') },
);
export type Truncated = Static<typeof Truncated>;

/** A file's changed ranges as read back (offsets in the file; never content). */
export const FileRanges = Type.Object(
  { path: Path, ino: Ino, ranges: Type.Array(ByteRange, doc('byte ranges of the file')) },
  strict,
);
export type FileRanges = Static<typeof FileRanges>;

export const Readback = Type.Object(
  {
    files: Type.Integer({ minimum: 0, ...doc('files read back') }),
    bytes: Type.Integer({ minimum: 0, ...doc('bytes read back') }),
    mixed: Type.Optional(
      Type.Array(
        FileRanges,
        doc(
          'files under the `report` policy whose mapped pages were kept and still read old: by choice, listed by `stale` as mixed',
        ),
      ),
    ),
    skipped: Type.Optional(
      Type.Array(
        Type.Object({ path: Path, reason: Detail }, strict),
        doc('ranges not read back, and why (the path names another inode now, or the file got shorter)'),
      ),
    ),
  },
  {
    ...strict,
    ...doc(
      'the end-to-end check: every changed range of a file read back through the filesystem (capability "readback")',
    ),
  },
);
export type Readback = Static<typeof Readback>;

export const SubstituteReport = Type.Object(
  {
    truncated: Type.Optional(Truncated),
    id: Type.String(doc('the substitution id')),
    device: Type.String(doc('the guest device the blocks were verified on')),
    'dry-run': Type.Boolean(doc('this is a plan only: nothing was verified or changed')),
    replayed: Type.Optional(
      Type.Boolean(doc('answered from the journal: this id was already substituted; nothing was done again')),
    ),
    recovered: Type.Optional(
      Type.Boolean(doc('this id had been interrupted (agent crash or stop) and was run again to completion')),
    ),
    'verified-bytes': Type.Integer(doc('bytes read from the disk (O_DIRECT) and found to hold the new content')),
    files: Type.Array(FileReport, doc('every changed file and what became of its pages')),
    unmapped: Type.Array(ByteRange, doc("changed disk ranges that belong to no file's data (metadata, free space)")),
    metadata: Type.Optional(MetadataReport),
    customization: Type.Optional(
      Type.Array(CustomizationOutcome, doc('one outcome per customization item, when the notification carried any')),
    ),
    plan: Type.Optional({
      ...Plan,
      ...doc('what was decided per file; with dry-run, all that is returned of substance'),
    }),
    pinned: Type.Optional(
      Type.Array(PinOutcome, doc('processes pinned (by prepare, or by substitute before invalidating)')),
    ),
    restarted: Type.Optional(Type.Array(RestartOutcome, doc('units restarted by the `restart` policy'))),
    /**
     * The end-to-end check: every changed range of a file read back through the filesystem (buffered,
     * as a process reads it) and compared with what was verified on the disk. Present when it ran.
     */
    readback: Type.Optional(Readback),
    'timings-ms': Type.Object(
      {
        verify: Type.Number(doc('O_DIRECT reads and sha256')),
        map: Type.Number(doc('block → file index lookup')),
        classify: Type.Optional(Type.Number(doc('plan, block classes, mappers'))),
        module: Type.Optional(Type.Number(doc('the kernel module ioctls'))),
        readback: Type.Optional(Type.Number(doc('the read-back check'))),
        invalidate: Type.Number({ ...doc('classify + module, kept for older hosts') }),
        report: Type.Optional(Type.Number(doc('building the answer'))),
        total: Type.Number(doc('the whole command')),
      },
      { ...strict, ...doc('milliseconds per stage') },
    ),
  },
  strict,
);
export type SubstituteReport = Static<typeof SubstituteReport>;

/** `prepare`: the first phase. Plan, and pin the processes whose policy is `pin`, while the disk still holds the old blocks. Since 1. */
export const PrepareArgs = Type.Object({ ...Type.Omit(SubstituteArgs, ['dry-run']).properties }, strict);
export type PrepareArgs = Static<typeof PrepareArgs>;

export const PrepareReport = Type.Object(
  {
    truncated: Type.Optional(Truncated),
    id: Type.String(doc('the substitution id')),
    device: Type.String(doc('the guest device of the disk')),
    replayed: Type.Optional(
      Type.Boolean(doc('this id was prepared already (a retry): the same answer, nothing done again')),
    ),
    plan: Plan,
    pinned: Type.Array(PinOutcome, doc('processes pinned to the old image')),
    'timings-ms': Type.Object(
      {
        map: Type.Number(doc('block → file index lookup')),
        classify: Type.Number(doc('plan, block classes, mappers')),
        pin: Type.Number(doc('pinning')),
        total: Type.Number(doc('the whole command')),
      },
      { ...strict, ...doc('milliseconds per stage') },
    ),
    token: Type.String({
      pattern: '^[0-9a-f]{32}$',
      ...doc('the secret that binds commit and abort to this prepare: send it back with them (or sign them)'),
    }),
  },
  strict,
);
export type PrepareReport = Static<typeof PrepareReport>;

/**
 * `commit` and `abort` name a prepared substitution and prove they come from whoever prepared it:
 * the `token` of prepare's answer, or a signed envelope.
 */
export const PhaseArgs = Type.Object(
  {
    id: SubstituteArgs.properties.id,
    token: Type.Optional(Type.String({ pattern: '^[0-9a-f]{32}$', ...doc("prepare's token") })),
    signature: Type.Optional(Envelope),
  },
  strict,
);
export type PhaseArgs = Static<typeof PhaseArgs>;

export const AbortReport = Type.Object(
  {
    id: Type.String(doc('the substitution id')),
    status: Type.Union(
      [Type.Literal('aborted'), Type.Literal('not-prepared'), Type.Literal('committed')],
      doc("aborted: prepare's state is dropped; not-prepared: nothing was prepared under this id; committed: too late"),
    ),
    'pins-kept': Type.Array(
      PinOutcome,
      doc('pinned processes keep their private copies (harmless, freed when they exit)'),
    ),
    detail: Detail,
  },
  strict,
);
export type AbortReport = Static<typeof AbortReport>;

/** `report`: a page of the full report of a substitution whose answer was truncated. Since 1 (capability "report"). */
export const ReportArgs = Type.Object(
  {
    id: Type.String({ pattern: '^[0-9a-f]{16,64}$', ...doc('the substitution id') }),
    offset: Type.Integer({
      minimum: 0,
      maximum: Number.MAX_SAFE_INTEGER,
      ...doc("byte offset into the full report's JSON"),
    }),
    limit: Type.Integer({
      minimum: 1,
      maximum: MAX_REPORT_PAGE_BYTES,
      ...doc('bytes wanted; fewer come back at the end'),
    }),
    signature: Type.Optional(Envelope),
  },
  strict,
);
export type ReportArgs = Static<typeof ReportArgs>;

export const ReportPage = Type.Object(
  {
    id: Type.String(doc('the substitution id')),
    offset: Type.Integer({ minimum: 0, ...doc('where this page starts') }),
    bytes: Type.Integer({ minimum: 0, ...doc("the full report's size; the pages concatenated are its JSON") }),
    data: Type.String(doc('base64 of the bytes [offset, offset + limit)')),
    done: Type.Boolean(doc('this page reaches the end')),
  },
  strict,
);
export type ReportPage = Static<typeof ReportPage>;

const NoArgs = Type.Object({}, strict);

/** `stale`: who still runs old content. Read-only, admitted like `report`. Since 1 (capability "stale"). */
export const StaleArgs = Type.Object({ signature: Type.Optional(Envelope) }, strict);
export type StaleArgs = Static<typeof StaleArgs>;

export const StaleReport = Type.Object(
  {
    processes: Type.Array(StaleProcess, doc('every process that still runs old content')),
    sources: Type.Object(
      {
        substitutions: Type.Integer({ minimum: 0, ...doc('journal entries looked at (pins, `report`-policy files)') }),
        processes: Type.Integer({ minimum: 0, ...doc('processes whose mappings were read') }),
      },
      { ...strict, ...doc('what was looked at') },
    ),
  },
  strict,
);
export type StaleReport = Static<typeof StaleReport>;

/**
 * Every command: its arguments, what it returns, what it does and since when. Handlers are typed
 * from this table (agent/src/handlers/), so adding a command here is what makes it exist.
 */
export const Commands = {
  hello: {
    args: NoArgs,
    returns: Greeting.properties.vmsubst,
    ...doc('Returns the greeting body; for channels with no connect event (virtio-serial).'),
  },
  ping: { args: NoArgs, returns: NoArgs, ...doc('Liveness: an empty answer.') },
  substitute: {
    args: SubstituteArgs,
    returns: SubstituteReport,
    ...doc(
      'The host has written new blocks: verify them on the disk, map them to files, invalidate, read back, report. With dry-run, the plan only.',
    ),
  },
  prepare: {
    args: PrepareArgs,
    returns: PrepareReport,
    ...doc(
      'Two-phase substitution, first phase: plan, and pin the processes whose policy is `pin` while the disk still holds the old blocks; then the host writes, and sends commit or abort.',
    ),
  },
  commit: {
    args: PhaseArgs,
    returns: SubstituteReport,
    ...doc("Two-phase substitution, second phase: the host has written; substitute with prepare's arguments and pins."),
  },
  abort: {
    args: PhaseArgs,
    returns: AbortReport,
    ...doc(
      'Drops a prepared substitution; pinned processes keep their private copies of the old pages until they exit.',
    ),
  },
  report: {
    args: ReportArgs,
    returns: ReportPage,
    ...doc(
      'A page of the full report kept for a substitution whose answer carried `truncated`: `limit` bytes of its JSON from `offset` (base64); read until `done` and parse the concatenation.',
    ),
  },
  stale: {
    args: StaleArgs,
    returns: StaleReport,
    ...doc(
      "Every process that still runs old content: pinned to an old image, mapping a deleted or replaced inode, or mapping a file substituted under the `report` policy. Read-only; admitted like `report` (the hypervisor's side, or signed).",
    ),
  },
} as const satisfies Record<string, { args: TSchema; returns: TSchema; description: string; since: number }>;

/**
 * Capabilities that are not commands: what an agent does within its commands. The greeting
 * announces every command of `Commands` by its name, then these; a host checks for a command
 * by its name (`prepare`, `report`, `stale`) and for a feature by one of these.
 */
export const Features = {
  'two-phase': {
    description:
      'prepare, commit and abort; announced as well for hosts that look for this name rather than the commands',
    since: 1,
  },
  plan: {
    description: 'substitute takes dry-run and answers with the plan (files, block classes, processes, policies)',
    since: 1,
  },
  'envelope-v2': {
    description: 'signed envelopes bound to a nonce, a validity window and the VM (the `signature` argument)',
    since: 1,
  },
  'elf-code': {
    description: 'the file classes elf-code-unchanged and elf-code-changed (before: elf-same-layout, elf-new-layout)',
    since: 1,
  },
  readback: {
    description:
      "a substitution reads its changed file ranges back through the filesystem (the answer's `readback`; error Stale)",
    since: 1,
  },
  readers: {
    description: 'the plan lists processes holding a changed file open (`readers`; error ScriptInUse)',
    since: 1,
  },
} as const satisfies Record<string, { description: string; since: number }>;
export type FeatureName = keyof typeof Features;

export type CommandName = keyof typeof Commands;
export type ArgsOf<C extends CommandName> = Static<(typeof Commands)[C]['args']>;
export type ReturnOf<C extends CommandName> = Static<(typeof Commands)[C]['returns']>;

export const Request = Type.Object(
  {
    execute: Type.String({ minLength: 1, maxLength: 64, ...doc('the command (Commands)') }),
    arguments: Type.Optional(Type.Record(Type.String(), Type.Unknown(), doc("the command's arguments; absent: none"))),
    id: Type.Optional(Id),
  },
  strict,
);
export type Request = Static<typeof Request>;

/** Error classes, QMP-style; `desc` is for humans, `class` for programs. */
export const ErrorClass = Type.Union(
  [
    Type.Literal('GenericError'),
    Type.Literal('CommandNotFound'),
    Type.Literal('InvalidMessage'),
    Type.Literal('InvalidArguments'),
    Type.Literal('DeviceNotFound'),
    Type.Literal('VerifyMismatch'),
    Type.Literal('KmodUnavailable'),
    Type.Literal('InvalidateFailed'),
    Type.Literal('RestartRequired'),
    Type.Literal('Unauthorized'),
    Type.Literal('NotPrepared'),
    Type.Literal('Busy'),
    /** The guest has written pages of a changed range that are not on the disk yet: nothing was done. */
    Type.Literal('GuestDirty'),
    /** A changed range lies on a filesystem or stacked device vmsubst cannot substitute under (btrfs, zfs, f2fs, device-mapper, reflinked blocks): nothing was done. */
    Type.Literal('Unsupported'),
    /**
     * After the invalidation a changed range of a file still reads, through the filesystem, other
     * content than the disk holds: the guest sees old content. Names the files and ranges, never content.
     */
    Type.Literal('Stale'),
    /** A changed file is a script a process is executing and no systemd unit owns it: refused before anything was written (force to proceed). */
    Type.Literal('ScriptInUse'),
  ],
  doc('what went wrong, for programs'),
);
export type ErrorClass = Static<typeof ErrorClass>;

export const ErrorReply = Type.Object(
  {
    error: Type.Object(
      {
        class: ErrorClass,
        desc: Type.String(doc('what went wrong, for people')),
        data: Type.Optional(Type.Unknown(doc('details for programs (the files a GuestDirty or Stale names)'))),
      },
      { ...strict, ...doc('the command failed') },
    ),
    id: Type.Optional(Id),
  },
  strict,
);
export type ErrorReply = Static<typeof ErrorReply>;

export const ReturnReply = Type.Object(
  { return: Type.Unknown(doc("the command's answer (Commands[…].returns)")), id: Type.Optional(Id) },
  strict,
);
export type ReturnReply = Static<typeof ReturnReply>;

export const Reply = Type.Union([ReturnReply, ErrorReply]);
export type Reply = Static<typeof Reply>;
