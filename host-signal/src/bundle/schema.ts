/**
 * The one definition of the bundle manifest. Types are derived from it and the
 * codec's Validator checks every manifest read; unknown fields are errors.
 *
 * Field names are kebab-case like the wire protocol's, so a manifest's ranges
 * read the same as a `substitute` request's.
 */
import { Type, type Static } from '@sinclair/typebox';
import { MAX_RANGES, MAX_RANGE_BYTES } from '../../../agent/src/protocol/schema.js';

/** Format version; also written in the file header. */
export const BUNDLE_FORMAT = 1;

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
  },
  strict,
);
export type BundleRange = Static<typeof BundleRange>;

export const BaseImage = Type.Object(
  {
    size: Type.Integer({ minimum: 1, maximum: Number.MAX_SAFE_INTEGER }),
    label: Type.Optional(Type.String({ minLength: 1, maxLength: 256 })),
  },
  strict,
);
export type BaseImage = Static<typeof BaseImage>;

export const Manifest = Type.Object(
  {
    format: Type.Literal(BUNDLE_FORMAT),
    /** sha256 (hex) of the canonical JSON of this manifest without `id`. */
    id: Sha256,
    'block-size': Type.Integer({ minimum: 512, maximum: 1 << 20 }),
    base: BaseImage,
    created: Type.String({ pattern: '^\\d{4}-\\d{2}-\\d{2}T\\d{2}:\\d{2}:\\d{2}(\\.\\d+)?Z$' }),
    'tool-version': Type.String({ minLength: 1, maxLength: 64 }),
    ranges: Type.Array(BundleRange, { maxItems: MAX_RANGES }),
  },
  strict,
);
export type Manifest = Static<typeof Manifest>;
export type ManifestBody = Omit<Manifest, 'id'>;
