/**
 * The `--json` documents of every `vmsubst` command: one TypeBox schema each,
 * the one definition of their fields. Each command builds its document typed
 * as `Static<typeof ItsSchema>`, so the compiler checks it against the schema;
 * the unit tests validate every command's actual output against it with ajv,
 * and docs/cli.md describes each field.
 *
 * Field names are kebab-case, as in the wire protocol; documents that are the
 * agent's own answers (notify, stale, report) are the protocol's schemas.
 * Where a field is shown it is always present unless marked optional.
 */
import { Type, type Static, type TSchema } from '@sinclair/typebox';
import { Plan, PrepareReport, StaleReport, SubstituteReport } from '@vmsubst/common/protocol/schema';
import { Manifest } from '@vmsubst/common/bundle/schema';

const strict = { additionalProperties: false } as const;
const Count = Type.Integer({ minimum: 0 });
const Ms = Type.Number({ minimum: 0 });
const Strings = Type.Array(Type.String());
const Nullable = <T extends TSchema>(t: T) => Type.Union([t, Type.Null()]);
const Literals = <T extends string[]>(...values: [...T]) => Type.Union(values.map((v) => Type.Literal(v)));

/** An error as a result carries it (per VM in a rollout, per agent in a plan): code, message, hint. */
export const ErrorJson = Type.Object(
  { code: Type.String({ pattern: '^E_VMSUBST_' }), message: Type.String(), hint: Type.Optional(Type.String()) },
  strict,
);

/** What any command prints instead of its result when it fails (exit status 1 or 2). */
export const ErrorOutput = Type.Object({ error: ErrorJson }, strict);
export type ErrorOutput = Static<typeof ErrorOutput>;

/** `vmsubst --version --json`. */
export const VersionOutput = Type.Object({ version: Type.String() }, strict);

/** `vmsubst diff`. */
export const DiffOutput = Type.Object(
  {
    bundle: Type.String({ description: 'the bundle file written' }),
    id: Type.String({ description: "the bundle's id (sha256 of its manifest)" }),
    'base-size': Count,
    'read-bytes': Type.Integer({ minimum: 0, description: 'bytes read of each image (holes are skipped)' }),
    ranges: Count,
    'changed-bytes': Count,
    filesystems: Type.Integer({ minimum: 0, description: 'ext4 and XFS filesystems found in the base' }),
    hints: Literals('computed', 'off', 'unavailable'),
    files: Type.Integer({ minimum: 0, description: 'changed files named by the hints' }),
    'elf-code-unchanged': Count,
    'elf-code-changed': Count,
    notes: Strings,
    native: Type.Optional(
      Type.Object(
        {
          loaded: Type.Boolean({
            description: "whether the host's addon loaded (else the comparison ran in JavaScript)",
          }),
          path: Type.Optional(Type.String({ description: 'the .node file loaded' })),
          error: Type.Optional(Type.String({ description: 'why it did not load' })),
        },
        { ...strict, description: 'the native comparison, when both images are plain files' },
      ),
    ),
    'elapsed-ms': Ms,
    'compare-ms': Ms,
    'hints-ms': Ms,
  },
  strict,
);
export type DiffOutput = Static<typeof DiffOutput>;

/** `vmsubst inspect`. */
export const InspectOutput = Type.Object(
  {
    path: Type.String(),
    'file-size': Count,
    'data-verified': Type.Boolean(),
    signature: Type.Union([
      Type.Object({ status: Type.Literal('unsigned') }, strict),
      Type.Object({ status: Type.Literal('valid'), keyId: Type.String() }, strict),
      Type.Object({ status: Literals('unverified', 'invalid'), keyId: Type.String(), reason: Type.String() }, strict),
    ]),
    manifest: Manifest,
  },
  strict,
);
export type InspectOutput = Static<typeof InspectOutput>;

/** `vmsubst export`. */
export const ExportOutput = Type.Object(
  {
    id: Type.String(),
    path: Type.String(),
    'file-size': Count,
    'cluster-size': Count,
    'data-clusters': Count,
    'changed-bytes': Count,
    'filled-bytes': Type.Integer({
      minimum: 0,
      description: 'unchanged bytes of changed clusters, copied from the base',
    }),
    backing: Nullable(Type.Object({ name: Type.String(), format: Literals('raw', 'qcow2') }, strict)),
  },
  strict,
);
export type ExportOutput = Static<typeof ExportOutput>;

/** `vmsubst keygen`. */
export const KeygenOutput = Type.Object(
  { 'private-key': Type.String(), 'public-key': Type.String(), 'key-id': Type.String() },
  strict,
);
export type KeygenOutput = Static<typeof KeygenOutput>;

/** `vmsubst sign`. */
export const SignOutput = Type.Object(
  { bundle: Type.String(), id: Type.String(), 'previous-id': Type.String(), 'key-id': Type.String() },
  strict,
);
export type SignOutput = Static<typeof SignOutput>;

/** `vmsubst recover`, and `recovered` in apply's document. */
export const RecoverOutput = Type.Object(
  {
    status: Literals('nothing-to-do', 'recovered', 'stale'),
    qmp: Type.String(),
    'state-file': Type.String(),
    interrupted: Type.Optional(
      Type.Object(
        {
          pid: Type.Integer(),
          'started-at': Type.String(),
          bundle: Type.Object({ id: Type.String(), path: Type.Optional(Type.String()) }, strict),
          mode: Literals('nbd', 'overlay'),
          node: Type.String(),
          phase: Literals('verifying', 'writing', 'written'),
        },
        strict,
      ),
    ),
    completed: Type.Optional(
      Type.Object(
        {
          bundle: Type.String(),
          ranges: Count,
          'ranges-already-new': Count,
          'ranges-written': Count,
          'ranges-neither': Count,
          written: Count,
          'verified-bytes': Count,
          ms: Ms,
        },
        strict,
      ),
    ),
    removed: Strings,
    kept: Strings,
    resumed: Type.Boolean(),
    'vm-status': Type.Optional(Type.String()),
    notes: Strings,
  },
  strict,
);
export type RecoverOutput = Static<typeof RecoverOutput>;

/** What happened with a guest's agent; apply adds `target`, rollout `agent` (the agent's address). */
const agentFields = {
  told: Type.Boolean(),
  version: Type.Optional(Type.String()),
  mode: Type.Optional(Literals('two-phase', 'substitute')),
  unreachable: Type.Optional(Type.String({ description: 'why no agent answered' })),
  meaning: Type.Optional(Type.String({ description: 'what a guest written to but not told means' })),
  replayed: Type.Optional(Type.Literal(true)),
  recovered: Type.Optional(Type.Literal(true)),
  resends: Count,
  report: Type.Optional(SubstituteReport),
};
export type AgentFields = Static<ReturnType<typeof Type.Object<typeof agentFields>>>;

/** The substitution's part of apply's document, for both kinds of target. */
const applyFields = {
  status: Literals('applied', 'already-applied', 'no-changes'),
  id: Type.String(),
  ranges: Count,
  'ranges-written': Count,
  'ranges-already-new': Count,
  written: Count,
  'verified-bytes': Count,
  'pause-ms': Nullable(Ms),
  'window-ms': Nullable(Ms),
  'timings-ms': Type.Object({ verify: Ms, write: Ms }, strict),
  'elapsed-ms': Ms,
  warnings: Strings,
};

/** The guest's part of apply's document. */
const applyGuestFields = {
  agent: Type.Object(
    {
      ...agentFields,
      target: Type.Optional(Type.String()),
      'two-phase': Type.Optional(Type.Boolean()),
      prepare: Type.Optional(PrepareReport),
    },
    strict,
  ),
  reset: Type.Boolean(),
  notes: Strings,
  'phases-ms': Type.Optional(
    Type.Object(
      {
        agent: Type.Optional(Ms),
        prepare: Type.Optional(Ms),
        write: Type.Optional(Ms),
        notify: Type.Optional(Ms),
        reset: Type.Optional(Ms),
      },
      {
        ...strict,
        description:
          "wall time of each phase: waiting for the agent's connection (made while the host verifies the disk), its prepare, the host's verify and write, its commit (notify), a reset",
      },
    ),
  ),
};

/** The QEMU overlay an overlay-mode apply put on top of the drive. */
export const OverlayJson = Type.Object(
  {
    path: Type.String(),
    node: Type.String(),
    'cluster-size': Count,
    backing: Type.Object({ name: Type.String(), format: Type.String() }, strict),
    committed: Type.Boolean(),
    'commit-ms': Type.Optional(Ms),
  },
  strict,
);

export const QemuApplyJson = Type.Object(
  {
    ...applyFields,
    mode: Literals('nbd', 'overlay'),
    target: Type.Object(
      { kind: Type.Literal('qemu'), qmp: Type.String(), node: Type.String(), device: Type.Optional(Type.String()) },
      strict,
    ),
    'vm-status': Type.String(),
    resumed: Type.Boolean(),
    recheck: Nullable(Literals('clean', 'reverified')),
    recovered: Type.Optional(RecoverOutput),
    overlay: Type.Optional(OverlayJson),
  },
  strict,
);

export const ImageApplyJson = Type.Object(
  {
    ...applyFields,
    mode: Type.Literal('raw-file'),
    target: Type.Object({ kind: Type.Literal('image'), path: Type.String() }, strict),
    openers: Type.Array(
      Type.Object(
        { pid: Type.Integer(), comm: Type.String(), direct: Type.Boolean(), writable: Type.Boolean() },
        strict,
      ),
    ),
  },
  strict,
);
/** The overlay a libvirt apply switched the domain's disk onto (libvirt names no node). */
export const LibvirtOverlayJson = Type.Omit(OverlayJson, ['node'], strict);

export const LibvirtApplyJson = Type.Object(
  {
    ...applyFields,
    mode: Type.Literal('overlay'),
    target: Type.Object(
      {
        kind: Type.Literal('libvirt'),
        domain: Type.String(),
        connect: Type.Optional(Type.String()),
        disk: Type.String({ description: "the disk's target (vdb)" }),
        serial: Type.Optional(Type.String()),
        image: Type.String({ description: "the disk's top image before the apply" }),
      },
      strict,
    ),
    'vm-status': Type.String(),
    resumed: Type.Boolean(),
    'chain-length': Type.Integer({ minimum: 1, description: "images in the disk's chain afterwards" }),
    overlay: Type.Optional(LibvirtOverlayJson),
  },
  strict,
);
export type ApplyJson = Static<typeof QemuApplyJson> | Static<typeof ImageApplyJson> | Static<typeof LibvirtApplyJson>;

/** `vmsubst apply`: the substitution (QEMU, image or libvirt domain), then the guest. */
export const ApplyOutput = Type.Union([
  Type.Object({ ...QemuApplyJson.properties, ...applyGuestFields }, strict),
  Type.Object({ ...ImageApplyJson.properties, ...applyGuestFields }, strict),
  Type.Object({ ...LibvirtApplyJson.properties, ...applyGuestFields }, strict),
]);
export type ApplyOutput = Static<typeof ApplyOutput>;

/** `vmsubst notify`: the agent's report itself (the protocol's SubstituteReport). */
export const NotifyOutput = SubstituteReport;

/** `vmsubst stale`: the agent's answer itself (the protocol's StaleReport). */
export const StaleOutput = StaleReport;

/** `vmsubst report -o FILE`: where the report went. */
export const ReportSavedOutput = Type.Object(
  { id: Type.String(), bytes: Count, pages: Count, output: Type.String() },
  strict,
);
export type ReportSavedOutput = Static<typeof ReportSavedOutput>;

/** `vmsubst report`: the kept report as the agent kept it (a substitution's, or a prepare's without its token). */
export const ReportOutput = Type.Union([SubstituteReport, Type.Omit(PrepareReport, ['token']), ReportSavedOutput]);

/** `vmsubst plan`: each agent's dry-run plan. */
export const PlanOutput = Type.Object(
  {
    bundle: Type.String({ description: "the bundle's id" }),
    vms: Type.Array(
      Type.Object(
        {
          name: Type.String(),
          target: Type.Optional(Type.String()),
          status: Literals('planned', 'no-plan', 'no-agent', 'failed'),
          agentVersion: Type.Optional(Type.String()),
          plan: Type.Optional(Plan),
          report: Type.Optional(SubstituteReport),
          error: Type.Optional(ErrorJson),
        },
        strict,
      ),
    ),
  },
  strict,
);
export type PlanOutput = Static<typeof PlanOutput>;

const GuestStatus = Literals('applied', 'done-before', 'refused', 'failed', 'not-started');

/** One VM of a rollout. */
export const RolloutVmJson = Type.Object(
  {
    name: Type.String(),
    status: GuestStatus,
    id: Type.String(),
    apply: Type.Optional(
      Type.Object(
        {
          status: Literals('applied', 'already-applied', 'no-changes'),
          node: Type.String(),
          device: Type.Optional(Type.String()),
          'ranges-written': Count,
          written: Count,
          'pause-ms': Nullable(Ms),
          'elapsed-ms': Ms,
        },
        strict,
      ),
    ),
    guest: Type.Object({ ...agentFields, agent: Type.Optional(Type.String()) }, strict),
    reset: Type.Boolean(),
    notes: Strings,
    error: Type.Optional(ErrorJson),
    'elapsed-ms': Ms,
  },
  strict,
);
export type RolloutVmJson = Static<typeof RolloutVmJson>;

/** `vmsubst rollout`. */
export const RolloutOutput = Type.Object(
  {
    bundle: Type.String(),
    ok: Type.Boolean({ description: 'every VM applied or done before' }),
    halted: Type.Optional(Type.String()),
    canary: Count,
    concurrency: Count,
    counts: Type.Object(
      {
        applied: Count,
        'done-before': Count,
        refused: Count,
        failed: Count,
        'not-started': Count,
      },
      strict,
    ),
    vms: Type.Array(RolloutVmJson),
    skipped: Type.Optional(
      Type.Array(Type.Object({ name: Type.String(), reason: Type.String() }, strict), {
        description: '--libvirt-all: the running domains left out (no disk matches the bundle base) and why',
      }),
    ),
    'elapsed-ms': Ms,
  },
  strict,
);
export type RolloutOutput = Static<typeof RolloutOutput>;

/**
 * Each command's document by command name (commands/index.ts lists the
 * commands): what the tests validate every run's `--json` output against.
 * The commands import only the types, so running one loads no schema.
 */
export const OUTPUTS: Readonly<Record<string, TSchema>> = {
  diff: DiffOutput,
  apply: ApplyOutput,
  recover: RecoverOutput,
  export: ExportOutput,
  notify: NotifyOutput,
  report: ReportOutput,
  inspect: InspectOutput,
  keygen: KeygenOutput,
  sign: SignOutput,
  plan: PlanOutput,
  stale: StaleOutput,
  rollout: RolloutOutput,
};
