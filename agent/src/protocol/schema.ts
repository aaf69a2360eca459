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

export const PROTOCOL_VERSION = 1;
/** No line (message) may exceed this many bytes, newline included. */
export const MAX_MESSAGE_BYTES = 1 << 20;
/**
 * Upper bound on ranges in one substitution; keeps a message's work bounded. Sized so that a
 * request carrying MAX_RANGES ranges fits in one message: a range is at most 122 bytes of JSON
 * (16-digit offset, 8-digit length, 64-digit hash), 8192 of them 999,424 bytes, leaving 49 KiB of
 * the 1 MiB line for the id, disk, signature, hints, policies and customization (the host checks
 * the encoded size of the whole request before sending it).
 */
export const MAX_RANGES = 8192;
/** Largest page of a kept full report (`report`); base64 makes it 4/3 larger on the wire. */
export const MAX_REPORT_PAGE_BYTES = 512 * 1024;
/** Largest single range; a bundle splits bigger runs of changed blocks. */
export const MAX_RANGE_BYTES = 64 << 20;

const strict = { additionalProperties: false } as const;

const Id = Type.Union([Type.String({ maxLength: 128 }), Type.Integer()], {
  description: 'Echoed unchanged in the reply so a client can match it',
});
const Sha256 = Type.String({ pattern: '^[0-9a-f]{64}$' });
const Offset = Type.Integer({ minimum: 0, maximum: Number.MAX_SAFE_INTEGER });
const Length = Type.Integer({ minimum: 1, maximum: MAX_RANGE_BYTES });

/** Sent by the agent as the first line on every stream connection. Since 1. */
export const Greeting = Type.Object(
  {
    vmsubst: Type.Object(
      {
        version: Type.String(),
        protocol: Type.Integer({ minimum: 1 }),
        capabilities: Type.Array(Type.String()),
      },
      strict,
    ),
  },
  strict,
);
export type Greeting = Static<typeof Greeting>;
export type GreetingBody = Greeting['vmsubst'];

/** Which guest disk the substituted blocks belong to. */
export const DiskRef = Type.Object(
  {
    serial: Type.Optional(Type.String({ minLength: 1, maxLength: 20, description: 'virtio-blk serial (/sys/block/*/serial)' })),
    path: Type.Optional(Type.String({ pattern: '^/dev/[A-Za-z0-9._/-]+$', maxLength: 255 })),
  },
  strict,
);
export type DiskRef = Static<typeof DiskRef>;

/** A byte range in a report (no cap: a file's changed span can be large). */
export const ByteRange = Type.Object({ offset: Offset, length: Type.Integer({ minimum: 1, maximum: Number.MAX_SAFE_INTEGER }) }, strict);
export type ByteRange = Static<typeof ByteRange>;

/** Whole 4 KiB blocks only (substitution/verify.ts RANGE_ALIGN): no answer can be about less. */
export const HashedRange = Type.Object(
  {
    offset: Type.Integer({ minimum: 0, maximum: Number.MAX_SAFE_INTEGER, multipleOf: 4096 }),
    length: Type.Integer({ minimum: 4096, maximum: MAX_RANGE_BYTES, multipleOf: 4096 }),
    sha256: Sha256,
  },
  strict,
);
export type HashedRange = Static<typeof HashedRange>;

/** Customization a substitution may carry, applied after the blocks. Only kinds the agent allows. */
export const Customization = Type.Object(
  {
    hostname: Type.Optional(Type.String({ description: 'at most 64 bytes, the kernel\'s HOST_NAME_MAX', pattern: '^(?=.{1,64}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$' })),
    files: Type.Optional(
      Type.Array(
        Type.Object(
          {
            path: Type.String({ pattern: '^/[^\\0]*$', maxLength: 4096 }),
            content: Type.String({ maxLength: 256 * 1024, description: "the file's content, UTF-8" }),
            mode: Type.Optional(Type.Integer({ minimum: 0, maximum: 0o7777 })),
            uid: Type.Optional(Type.Integer({ minimum: 0, maximum: 0xfffffffe })),
            gid: Type.Optional(Type.Integer({ minimum: 0, maximum: 0xfffffffe })),
          },
          strict,
        ),
        { maxItems: 64 },
      ),
    ),
    sysctl: Type.Optional(
      Type.Record(Type.String({ pattern: '^[a-z0-9_]+(\\.[a-z0-9_-]+)+$', maxLength: 128 }), Type.Union([Type.String({ maxLength: 256, pattern: '^[^\\x00-\\x1f\\x7f]*$', description: 'one line: no control characters' }), Type.Integer()]), { maxProperties: 64 }),
    ),
  },
  strict,
);
export type Customization = Static<typeof Customization>;

export const CustomizationOutcome = Type.Object(
  {
    kind: Type.Union([Type.Literal('hostname'), Type.Literal('file'), Type.Literal('sysctl')]),
    target: Type.String(),
    status: Type.Union([Type.Literal('applied'), Type.Literal('unchanged'), Type.Literal('refused'), Type.Literal('failed')]),
    detail: Type.Optional(Type.String()),
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
export const Policy = Type.Union([Type.Literal('remap'), Type.Literal('pin'), Type.Literal('report'), Type.Literal('restart')]);
export type Policy = Static<typeof Policy>;

/**
 * How a changed file is classed for the default policy: an ELF executable or library whose code the
 * host found unchanged (no byte of an executable segment, nor of the tables the dynamic loader reads
 * at run time, and the program headers equal: `remap` is safe) or changed (or not known: `pin`), or
 * any other file. Since 1 (capability "elf-code"; before it, `elf-same-layout` / `elf-new-layout`).
 */
export const FileClass = Type.Union([Type.Literal('data'), Type.Literal('elf-code-unchanged'), Type.Literal('elf-code-changed')]);
export type FileClass = Static<typeof FileClass>;

/**
 * Policy per file class and per path; the notification's override the agent's configuration.
 * The class names of older hosts and configurations are still accepted: `elf-new-layout` applies
 * to `elf-code-changed` and `elf-same-layout` to `elf-code-unchanged`, each only where the new
 * name is not given. (An old `elf-same-layout: remap` thus never reaches a file whose code changed.)
 */
export const Policies = Type.Object(
  {
    data: Type.Optional(Policy),
    'elf-code-unchanged': Type.Optional(Policy),
    'elf-code-changed': Type.Optional(Policy),
    'elf-same-layout': Type.Optional({ ...Policy, description: 'older name, applied to elf-code-unchanged' }),
    'elf-new-layout': Type.Optional({ ...Policy, description: 'older name, applied to elf-code-changed' }),
    files: Type.Optional(Type.Record(Type.String({ pattern: '^/[^\\0]*$', maxLength: 4096 }), Policy, { maxProperties: 4096 })),
  },
  strict,
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
    path: Type.String({ pattern: '^/[^\\0]*$', maxLength: 4096, description: 'path inside its filesystem' }),
    elf: Type.Optional(
      Type.Union([Type.Literal('code-unchanged'), Type.Literal('code-changed'), Type.Literal('same-layout'), Type.Literal('new-layout')], {
        description: 'absent: not an ELF file; same-layout and new-layout (older hosts) are taken as code-changed',
      }),
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
    'key-id': Type.String({ pattern: '^[0-9a-f]{16}$', description: 'first 16 hex digits of the sha256 of the public key (SPKI DER)' }),
    ed25519: Type.String({ pattern: '^[A-Za-z0-9+/]{86}==$', description: 'base64 Ed25519 signature' }),
    nonce: Type.String({ pattern: '^[0-9a-f]{32}$', description: '128 random bits; an envelope is accepted once' }),
    'issued-at': Type.Integer({ minimum: 0, maximum: 2 ** 40, description: 'seconds since the epoch' }),
    'expires-at': Type.Integer({ minimum: 0, maximum: 2 ** 40, description: 'seconds since the epoch; at most a day after issued-at' }),
    target: Type.Object(
      {
        'vm-uuid': Type.Optional(Type.String({ pattern: '^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$', description: 'SMBIOS system UUID (QMP query-uuid; /sys/class/dmi/id/product_uuid in the guest)' })),
        'disk-serial': Type.Optional(Type.String({ minLength: 1, maxLength: 20, description: 'serial of the disk the substitution is for' })),
      },
      { ...strict, minProperties: 1, description: 'which VM the envelope is for; every field given must match' },
    ),
  },
  strict,
);
export type Envelope = Static<typeof Envelope>;

/** `substitute`: the host has written new blocks; verify them and invalidate. Since 1. */
export const SubstituteArgs = Type.Object(
  {
    id: Type.String({ pattern: '^[0-9a-f]{16,64}$', description: 'substitution id (hash of the bundle manifest)' }),
    disk: DiskRef,
    ranges: Type.Array(HashedRange, { minItems: 1, maxItems: MAX_RANGES, description: 'disk-relative byte ranges and the sha256 of their new content' }),
    'dry-run': Type.Optional(Type.Boolean({ description: 'return the plan (files, block classes, processes, policies); verify nothing, change nothing' })),
    policies: Type.Optional(Policies),
    hints: Type.Optional(Type.Array(FileHint, { maxItems: 16384 })),
    force: Type.Optional(Type.Boolean({ description: 'accept metadata changes under a read-write mount' })),
    customization: Type.Optional(Customization),
    signature: Type.Optional(Envelope),
  },
  strict,
);
export type SubstituteArgs = Static<typeof SubstituteArgs>;

export const Mapper = Type.Object({ pid: Type.Integer(), comm: Type.String() }, strict);
export type Mapper = Static<typeof Mapper>;

export const FileReport = Type.Object(
  {
    path: Type.String(),
    ino: Type.Integer(),
    /** Byte ranges of the file (file offsets) whose blocks changed. */
    ranges: Type.Array(ByteRange),
    'pages-cached': Type.Integer(),
    'pages-mapped': Type.Integer(),
    'pages-dropped': Type.Integer(),
    'pages-kept': Type.Integer(),
    mappers: Type.Array(Mapper),
  },
  strict,
);
export type FileReport = Static<typeof FileReport>;

export const MetadataKind = Type.Union([
  Type.Literal('superblock-or-descriptors'),
  Type.Literal('block-bitmap'),
  Type.Literal('inode-bitmap'),
  Type.Literal('inode-table'),
  Type.Literal('directory'),
  Type.Literal('other'),
]);

export const ClassifiedRange = Type.Object(
  { offset: Offset, length: ByteRange.properties.length, kinds: Type.Array(MetadataKind) },
  strict,
);
export type ClassifiedRange = Static<typeof ClassifiedRange>;

/** What the metadata steps did: block-device buffers, dentries, inodes. */
export const MetadataReport = Type.Object(
  {
    /** Changed disk ranges outside file data, with what they hold. */
    ranges: Type.Array(ClassifiedRange),
    'bdev-pages-dropped': Type.Integer(),
    /** Ranges whose buffers the kernel keeps pinned (ext4 superblock, group descriptors): not refreshed. */
    pinned: Type.Array(ClassifiedRange),
    dentries: Type.Array(
      Type.Object(
        { dir: Type.String(), names: Type.Array(Type.String()), dropped: Type.Integer(), busy: Type.Integer(), mountpoints: Type.Integer() },
        strict,
      ),
    ),
    inodes: Type.Object(
      {
        evicted: Type.Integer(),
        'not-cached': Type.Integer(),
        'in-use': Type.Array(
          Type.Object(
            {
              ino: Type.Integer(),
              path: Type.Optional(Type.String()),
              reasons: Type.Array(Type.String()),
              mappers: Type.Array(Mapper),
              /** The new tree gives this in-use inode's number to another file: it cannot be seen until the users exit. */
              'number-reused-by': Type.Optional(Type.String()),
            },
            strict,
          ),
        ),
      },
      strict,
    ),
  },
  strict,
);
export type MetadataReport = Static<typeof MetadataReport>;

export const BlockClassName = Type.Union([
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
]);

/** A filesystem of the disk (or a device stacked on it) and how a substitution goes under it. */
export const PlannedFilesystem = Type.Object(
  {
    /** The partition or disk it lives on (sysfs name). */
    device: Type.String(),
    mount: Type.Optional(Type.String()),
    /** Filesystem type from mountinfo, or `device-mapper`, or what the superblock says. */
    type: Type.String(),
    handling: Type.Union([Type.Literal('data-and-metadata'), Type.Literal('data-only'), Type.Literal('refused')]),
    reason: Type.Optional(Type.String()),
  },
  strict,
);
export type PlannedFilesystem = Static<typeof PlannedFilesystem>;

export const PlannedMapper = Type.Object(
  {
    pid: Type.Integer(),
    comm: Type.String(),
    /** The systemd unit owning the process, from /proc/PID/cgroup, when there is one. */
    unit: Type.Optional(Type.String()),
    /** Why the `restart` policy will not restart this process's unit (a user unit, a scope, the agent's own unit). */
    'not-restartable': Type.Optional(Type.String()),
    /** Bytes of the file it maps; what a pin copies. */
    'mapped-bytes': Type.Integer({ minimum: 0 }),
  },
  strict,
);
export type PlannedMapper = Static<typeof PlannedMapper>;

/** A process holding a changed file open (not mapped). Since 1 (capability "readers"). */
export const OpenReader = Type.Object(
  {
    pid: Type.Integer(),
    comm: Type.String(),
    unit: Type.Optional(Type.String()),
    fd: Type.Integer({ minimum: 0 }),
    /** The fd's file position (fdinfo pos): where its next read starts. */
    pos: Type.Integer({ minimum: 0 }),
    /** The file is the script the process executes (its command line names it, or a shell holds it read-only past its start). */
    script: Type.Boolean(),
    /**
     * What happens: `none` (not a script: it reads on in the new content), `restart` (its unit is restarted
     * after the invalidation), `refuse` (prepare refuses the substitution unless forced), `forced` (forced:
     * the script reads on at its offset in the new content), `reads-on` (the one-shot substitute or a
     * commit, after the host wrote: nothing can be refused any more; it reads on in the new content).
     */
    handling: Type.Union([Type.Literal('none'), Type.Literal('restart'), Type.Literal('refuse'), Type.Literal('forced'), Type.Literal('reads-on')]),
    detail: Type.Optional(Type.String()),
  },
  strict,
);
export type OpenReader = Static<typeof OpenReader>;

/** Why a process still runs old content (the `stale` command, and the plan's prediction). Since 1 (capability "stale"). */
export const StaleProcess = Type.Object(
  {
    pid: Type.Integer(),
    comm: Type.String(),
    /** The systemd unit owning the process (from /proc/PID/cgroup), when there is one. */
    unit: Type.Optional(Type.String()),
    file: Type.String(),
    /**
     * pinned: it was given private copies of the old image (the `pin` policy) and runs them until it exits;
     * old-inode: it maps an inode that is deleted or no longer at its path (replaced by a new tree);
     * mixed: it maps a file substituted under the `report` policy: its mapped pages may mix old and new content.
     */
    why: Type.Union([Type.Literal('pinned'), Type.Literal('old-inode'), Type.Literal('mixed')]),
    /** The substitution that left it so, when known. */
    substitution: Type.Optional(Type.String()),
  },
  strict,
);
export type StaleProcess = Static<typeof StaleProcess>;

export const PlannedFile = Type.Object(
  {
    path: Type.String(),
    ino: Type.Integer(),
    mount: Type.String(),
    /** One of FileClass; an older agent (no capability "elf-code") answers elf-same-layout or elf-new-layout. */
    class: Type.Union([FileClass, Type.Literal('elf-same-layout'), Type.Literal('elf-new-layout')]),
    policy: Policy,
    /** Where the policy came from. */
    'policy-from': Type.Union([Type.Literal('default'), Type.Literal('config'), Type.Literal('notification')]),
    /** What the policy does here, in words. */
    action: Type.String(),
    ranges: Type.Array(ByteRange),
    mappers: Type.Array(PlannedMapper),
    /**
     * Processes that have the file open without mapping it (/proc/PID/fd, fdinfo pos): after the
     * invalidation they read on at their offset in the new content. A script being executed is
     * restarted with its unit, or refuses the substitution (ScriptInUse) unless forced.
     */
    readers: Type.Optional(Type.Array(OpenReader)),
  },
  strict,
);
export type PlannedFile = Static<typeof PlannedFile>;

/** What a substitution will do; returned by a dry run and by `prepare`, and kept in every report. */
export const Plan = Type.Object(
  {
    files: Type.Array(PlannedFile),
    /** Every changed range, split by what its blocks hold. */
    blocks: Type.Array(Type.Object({ offset: Offset, length: ByteRange.properties.length, class: BlockClassName, mount: Type.Optional(Type.String()) }, strict)),
    'restart-required': Type.Boolean(),
    /** Why a restart is required (read-write metadata change, ...). */
    reasons: Type.Array(Type.String()),
    /** systemd units the `restart` policy would restart. */
    units: Type.Array(Type.String()),
    /** Memory the `pin` policy copies, in bytes, over all pinned processes. */
    'pin-bytes': Type.Integer({ minimum: 0 }),
    /** Every filesystem of the disk, decided per mount (Since: 0.4). */
    filesystems: Type.Optional(Type.Array(PlannedFilesystem)),
    /** Why prepare/commit refuse this substitution as `Unsupported` (empty: they do not) (Since: 0.4). */
    unsupported: Type.Optional(Type.Array(Type.String())),
    /**
     * The processes that will still run old content afterwards: for a metadata substitution, those
     * mapping an inode the new tree replaces at its path (from the host's file hints).
     */
    stale: Type.Optional(Type.Array(StaleProcess)),
  },
  strict,
);
export type Plan = Static<typeof Plan>;

export const PinOutcome = Type.Object(
  { pid: Type.Integer(), comm: Type.String(), path: Type.String(), 'bytes-copied': Type.Integer(), status: Type.Union([Type.Literal('pinned'), Type.Literal('exited'), Type.Literal('failed')]), detail: Type.Optional(Type.String()) },
  strict,
);
export type PinOutcome = Static<typeof PinOutcome>;

export const RestartOutcome = Type.Object(
  { unit: Type.String(), status: Type.Union([Type.Literal('restarted'), Type.Literal('failed'), Type.Literal('no-systemd')]), detail: Type.Optional(Type.String()) },
  strict,
);
export type RestartOutcome = Static<typeof RestartOutcome>;

/** Present when an answer's lists were cut to fit one message; the full report is kept in the guest. Since 1 (capability "report"). */
export const Truncated = Type.Object(
  {
    /** The true length of each list that was cut, by path (files, plan.files, files[].mappers: summed over the entries kept). */
    counts: Type.Record(Type.String(), Type.Integer({ minimum: 0 })),
    /** Size of the full report's JSON, in bytes: what `report` pages through. */
    'report-bytes': Type.Integer({ minimum: 0 }),
    detail: Type.String(),
  },
  strict,
);
export type Truncated = Static<typeof Truncated>;

/** A file's changed ranges as read back (offsets in the file; never content). */
export const FileRanges = Type.Object({ path: Type.String(), ino: Type.Integer(), ranges: Type.Array(ByteRange) }, strict);
export type FileRanges = Static<typeof FileRanges>;

export const Readback = Type.Object(
  {
    files: Type.Integer({ minimum: 0 }),
    bytes: Type.Integer({ minimum: 0 }),
    /** Files under the `report` policy whose mapped pages were kept and still read old: by choice, listed by `stale` as mixed. */
    mixed: Type.Optional(Type.Array(FileRanges)),
    /** Ranges not read back, and why (the path names another inode now, or the file got shorter). */
    skipped: Type.Optional(Type.Array(Type.Object({ path: Type.String(), reason: Type.String() }, strict))),
  },
  strict,
);
export type Readback = Static<typeof Readback>;

export const SubstituteReport = Type.Object(
  {
    truncated: Type.Optional(Truncated),
    id: Type.String(),
    device: Type.String(),
    'dry-run': Type.Boolean(),
    /** Answered from the journal: this id was already substituted; nothing was done again. */
    replayed: Type.Optional(Type.Boolean()),
    /** This id had been interrupted (agent crash or stop) and was run again to completion. */
    recovered: Type.Optional(Type.Boolean()),
    'verified-bytes': Type.Integer(),
    files: Type.Array(FileReport),
    /** Changed disk ranges that belong to no file's data (metadata, free space). */
    unmapped: Type.Array(ByteRange),
    /** Present when the substitution changed filesystem metadata. */
    metadata: Type.Optional(MetadataReport),
    /** One outcome per customization item, when the notification carried any. */
    customization: Type.Optional(Type.Array(CustomizationOutcome)),
    /** What was decided per file; with dry-run, all that is returned of substance. */
    plan: Type.Optional(Plan),
    /** Processes pinned (by prepare, or by substitute before invalidating). */
    pinned: Type.Optional(Type.Array(PinOutcome)),
    /** Units restarted by the `restart` policy. */
    restarted: Type.Optional(Type.Array(RestartOutcome)),
    /**
     * The end-to-end check: every changed range of a file read back through the filesystem (buffered,
     * as a process reads it) and compared with what was verified on the disk. Present when it ran.
     */
    readback: Type.Optional(Readback),
    /** Per stage: verify (O_DIRECT + sha256), map (index lookup), classify (plan, block classes, mappers), module (ioctls), readback, report. */
    'timings-ms': Type.Object(
      {
        verify: Type.Number(),
        map: Type.Number(),
        classify: Type.Optional(Type.Number()),
        module: Type.Optional(Type.Number()),
        readback: Type.Optional(Type.Number()),
        invalidate: Type.Number({ description: 'classify + module, kept for older hosts' }),
        report: Type.Optional(Type.Number()),
        total: Type.Number(),
      },
      strict,
    ),
  },
  strict,
);
export type SubstituteReport = Static<typeof SubstituteReport>;

/** `prepare`: the first phase. Plan, and pin the processes whose policy is `pin`, while the disk still holds the old blocks. Since 1. */
export const PrepareArgs = Type.Object(
  { ...Type.Omit(SubstituteArgs, ['dry-run']).properties },
  strict,
);
export type PrepareArgs = Static<typeof PrepareArgs>;

export const PrepareReport = Type.Object(
  {
    truncated: Type.Optional(Truncated),
    id: Type.String(),
    device: Type.String(),
    /** This id was prepared already (a retry): the same answer, nothing done again. */
    replayed: Type.Optional(Type.Boolean()),
    plan: Plan,
    pinned: Type.Array(PinOutcome),
    'timings-ms': Type.Object({ map: Type.Number(), classify: Type.Number(), pin: Type.Number(), total: Type.Number() }, strict),
    /** The secret that binds commit and abort to this prepare: send it back with them (or sign them). */
    token: Type.String({ pattern: '^[0-9a-f]{32}$' }),
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
    token: Type.Optional(Type.String({ pattern: '^[0-9a-f]{32}$', description: "prepare's token" })),
    signature: Type.Optional(Envelope),
  },
  strict,
);
export type PhaseArgs = Static<typeof PhaseArgs>;

export const AbortReport = Type.Object(
  {
    id: Type.String(),
    /** aborted: prepare's state is dropped; not-prepared: nothing was prepared under this id; committed: too late. */
    status: Type.Union([Type.Literal('aborted'), Type.Literal('not-prepared'), Type.Literal('committed')]),
    /** Pinned processes keep their private copies (harmless, freed when they exit). */
    'pins-kept': Type.Array(PinOutcome),
    detail: Type.String(),
  },
  strict,
);
export type AbortReport = Static<typeof AbortReport>;

/** `report`: a page of the full report of a substitution whose answer was truncated. Since 1 (capability "report"). */
export const ReportArgs = Type.Object(
  {
    id: Type.String({ pattern: '^[0-9a-f]{16,64}$', description: 'the substitution id' }),
    offset: Type.Integer({ minimum: 0, maximum: Number.MAX_SAFE_INTEGER, description: "byte offset into the full report's JSON" }),
    limit: Type.Integer({ minimum: 1, maximum: MAX_REPORT_PAGE_BYTES, description: 'bytes wanted; fewer come back at the end' }),
    signature: Type.Optional(Envelope),
  },
  strict,
);
export type ReportArgs = Static<typeof ReportArgs>;

export const ReportPage = Type.Object(
  {
    id: Type.String(),
    offset: Type.Integer({ minimum: 0 }),
    /** The full report's size; the pages concatenated are its JSON. */
    bytes: Type.Integer({ minimum: 0 }),
    /** base64 of the bytes [offset, offset + limit). */
    data: Type.String(),
    /** This page reaches the end. */
    done: Type.Boolean(),
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
    processes: Type.Array(StaleProcess),
    /** What was looked at: pins and `report`-policy files from the journal's last reports, and every process's mappings. */
    sources: Type.Object({ substitutions: Type.Integer({ minimum: 0 }), processes: Type.Integer({ minimum: 0 }) }, strict),
  },
  strict,
);
export type StaleReport = Static<typeof StaleReport>;

/**
 * Every command: its arguments and what it returns. Handlers are typed from
 * this table, so adding a command here is what makes it exist.
 */
export const Commands = {
  /** Returns the greeting body; for channels with no connect event (virtio-serial). Since 1. */
  hello: { args: NoArgs, returns: Greeting.properties.vmsubst },
  /** Liveness. Since 1. */
  ping: { args: NoArgs, returns: NoArgs },
  substitute: { args: SubstituteArgs, returns: SubstituteReport },
  /** Two-phase substitution: prepare → (host writes) → commit, or abort. Since 1 (capability "two-phase"). */
  prepare: { args: PrepareArgs, returns: PrepareReport },
  commit: { args: PhaseArgs, returns: SubstituteReport },
  abort: { args: PhaseArgs, returns: AbortReport },
  /**
   * A page of the full report kept for a substitution whose answer carried `truncated`: `limit` bytes
   * of its JSON from `offset` (base64); read until `done` and parse the concatenation.
   * Since 1 (capability "report").
   */
  report: { args: ReportArgs, returns: ReportPage },
  /**
   * Every process that still runs old content: pinned to an old image, mapping a deleted or replaced
   * inode, or mapping a file substituted under the `report` policy (pid, command, unit, file, why).
   * Read-only; admitted like `report` (the hypervisor's side, or signed). Since 1 (capability "stale").
   */
  stale: { args: StaleArgs, returns: StaleReport },
} as const satisfies Record<string, { args: TSchema; returns: TSchema }>;

/**
 * Capabilities that are not commands: what an agent does within its commands. The greeting
 * announces every command of `Commands` by its name, then these; a host checks for a command
 * by its name (`prepare`, `report`, `stale`) and for a feature by one of these.
 */
export const Features = {
  'two-phase': { description: 'prepare, commit and abort; announced as well for hosts that look for this name rather than the commands', since: 1 },
  plan: { description: "substitute takes dry-run and answers with the plan (files, block classes, processes, policies)", since: 1 },
  'envelope-v2': { description: 'signed envelopes bound to a nonce, a validity window and the VM (the `signature` argument)', since: 1 },
  'elf-code': { description: 'the file classes elf-code-unchanged and elf-code-changed (before: elf-same-layout, elf-new-layout)', since: 1 },
  readback: { description: "a substitution reads its changed file ranges back through the filesystem (the answer's `readback`; error Stale)", since: 1 },
  readers: { description: "the plan lists processes holding a changed file open (`readers`; error ScriptInUse)", since: 1 },
} as const satisfies Record<string, { description: string; since: number }>;
export type FeatureName = keyof typeof Features;

export type CommandName = keyof typeof Commands;
export type ArgsOf<C extends CommandName> = Static<(typeof Commands)[C]['args']>;
export type ReturnOf<C extends CommandName> = Static<(typeof Commands)[C]['returns']>;

export const Request = Type.Object(
  {
    execute: Type.String({ minLength: 1, maxLength: 64 }),
    arguments: Type.Optional(Type.Record(Type.String(), Type.Unknown())),
    id: Type.Optional(Id),
  },
  strict,
);
export type Request = Static<typeof Request>;

/** Error classes, QMP-style; `desc` is for humans, `class` for programs. */
export const ErrorClass = Type.Union([
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
]);
export type ErrorClass = Static<typeof ErrorClass>;

export const ErrorReply = Type.Object(
  {
    error: Type.Object(
      { class: ErrorClass, desc: Type.String(), data: Type.Optional(Type.Unknown()) },
      strict,
    ),
    id: Type.Optional(Id),
  },
  strict,
);
export type ErrorReply = Static<typeof ErrorReply>;

export const ReturnReply = Type.Object({ return: Type.Unknown(), id: Type.Optional(Id) }, strict);
export type ReturnReply = Static<typeof ReturnReply>;

export const Reply = Type.Union([ReturnReply, ErrorReply]);
export type Reply = Static<typeof Reply>;
