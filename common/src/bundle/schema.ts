/**
 * The one definition of the bundle manifest. Types are derived from it and the
 * codec's Validator checks every manifest read; unknown fields are errors.
 *
 * Field names are kebab-case like the wire protocol's, so a manifest's ranges
 * read the same as a `substitute` request's.
 */
import { Type, type Static } from '@sinclair/typebox';
import { Customization, MAX_RANGES, MAX_RANGE_BYTES } from '../protocol/schema.js';
import { MAX_FILES, READABLE_FORMATS } from './version.js';

export { BUNDLE_FORMAT, MAX_FILES, READABLE_FORMATS } from './version.js';

const strict = { additionalProperties: false } as const;
const Sha256 = Type.String({ pattern: '^[0-9a-f]{64}$' });
const Offset = Type.Integer({ minimum: 0, maximum: Number.MAX_SAFE_INTEGER });

export const BundleRange = Type.Object(
  {
    offset: Offset,
    length: Type.Integer({ minimum: 1, maximum: MAX_RANGE_BYTES }),
    'old-sha256': Sha256,
    'new-sha256': Sha256,
    /** Absolute offset in the bundle file of this range's new bytes; 4 KiB aligned. */
    'data-offset': Offset,
    /** Indexes into the manifest's `files` of the files whose blocks this range changes (format 2). */
    files: Type.Optional(Type.Array(Type.Integer({ minimum: 0, maximum: MAX_FILES - 1 }), { maxItems: MAX_FILES })),
  },
  strict,
);
export type BundleRange = Static<typeof BundleRange>;

/** A filesystem found in the base image: where it starts and its identity (ext4 or XFS superblock). */
export const BaseFilesystem = Type.Object(
  {
    type: Type.Union([Type.Literal('ext4'), Type.Literal('xfs')]),
    /** Byte offset of the filesystem in the image (0 for a bare filesystem, else the partition start). */
    offset: Offset,
    /** Bytes the filesystem spans (block count × block size). */
    size: Type.Integer({ minimum: 1, maximum: Number.MAX_SAFE_INTEGER }),
    'block-size': Type.Integer({ minimum: 1024, maximum: 65536 }),
    /** s_uuid (XFS: sb_uuid), lower-case, dashed. */
    uuid: Type.String({ pattern: '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$' }),
    /** s_volume_name (XFS: sb_fname), when set. */
    label: Type.Optional(Type.String({ minLength: 1, maxLength: 64 })),
    /** 1-based partition number when the image has a partition table. */
    partition: Type.Optional(Type.Integer({ minimum: 1, maximum: 128 })),
    'partition-table': Type.Optional(Type.Union([Type.Literal('mbr'), Type.Literal('gpt')])),
  },
  strict,
);
export type BaseFilesystem = Static<typeof BaseFilesystem>;

export const BaseImage = Type.Object(
  {
    size: Type.Integer({ minimum: 1, maximum: Number.MAX_SAFE_INTEGER }),
    label: Type.Optional(Type.String({ minLength: 1, maxLength: 256 })),
    /** Filesystems of the base image (format 2); the guest's disk should hold the same UUIDs. */
    filesystems: Type.Optional(Type.Array(BaseFilesystem, { maxItems: 128 })),
  },
  strict,
);
export type BaseImage = Static<typeof BaseImage>;

/**
 * A changed file, from the patched image (debugfs, xfs_db): its path inside its
 * filesystem and, for an ELF file, whether its code is the base's.
 */
export const FileEntry = Type.Object(
  {
    path: Type.String({ pattern: '^/[^\\0]*$', maxLength: 4096 }),
    /** Index into base.filesystems. */
    filesystem: Type.Integer({ minimum: 0, maximum: 127 }),
    inode: Type.Integer({ minimum: 1, maximum: 0xffffffff }),
    /**
     * Absent: not an ELF file. code-unchanged (format 3): the program headers,
     * every byte of the executable segments and the tables the dynamic loader
     * reads at run time equal the base's file at this path; code-changed
     * (format 3): they differ, the base has no ELF file there, or the file was
     * not compared. same-layout, new-layout (format 2, older vmsubst): headers
     * and symbols compared, not the code; both are taken as code-changed.
     */
    elf: Type.Optional(
      Type.Union([
        Type.Literal('code-unchanged'),
        Type.Literal('code-changed'),
        Type.Literal('same-layout'),
        Type.Literal('new-layout'),
      ]),
    ),
    /** For code-changed (and new-layout): the first difference found, for people. */
    'elf-change': Type.Optional(Type.String({ maxLength: 512 })),
  },
  strict,
);
export type FileEntry = Static<typeof FileEntry>;

/** Ed25519 over "vmsubst-manifest-v1\n" + the canonical manifest without `signature` (bundle/signature.ts). */
export const ManifestSignature = Type.Object(
  {
    'key-id': Type.String({ pattern: '^[0-9a-f]{16}$' }),
    ed25519: Type.String({ pattern: '^[A-Za-z0-9+/]{86}==$' }),
  },
  strict,
);
export type ManifestSignature = Static<typeof ManifestSignature>;

export const Manifest = Type.Object(
  {
    format: Type.Union(READABLE_FORMATS.map((f) => Type.Literal(f))),
    /** sha256 (hex) of the canonical JSON of this manifest without `id`. */
    id: Sha256,
    'block-size': Type.Integer({ minimum: 512, maximum: 1 << 20 }),
    base: BaseImage,
    created: Type.String({ pattern: '^\\d{4}-\\d{2}-\\d{2}T\\d{2}:\\d{2}:\\d{2}(\\.\\d+)?Z$' }),
    'tool-version': Type.String({ minLength: 1, maxLength: 64 }),
    ranges: Type.Array(BundleRange, { maxItems: MAX_RANGES }),
    /** Changed files the ranges point to (format 2). */
    files: Type.Optional(Type.Array(FileEntry, { maxItems: MAX_FILES })),
    /** Applied by the guest after the blocks (format 2). */
    customization: Type.Optional(Customization),
    signature: Type.Optional(ManifestSignature),
  },
  strict,
);
export type Manifest = Static<typeof Manifest>;
/** A manifest before its id (and signature) exist. */
export type ManifestBody = Omit<Manifest, 'id' | 'signature'>;
