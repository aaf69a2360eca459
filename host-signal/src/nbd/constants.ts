/**
 * NBD protocol constants, from NetworkBlockDevice/nbd doc/proto.md.
 * All integers are big-endian on the wire.
 */
export const NBDMAGIC = 0x4e42444d41474943n; // "NBDMAGIC"
export const IHAVEOPT = 0x49484156454f5054n; // "IHAVEOPT"
export const OPT_REPLY_MAGIC = 0x3e889045565a9n;
export const REQUEST_MAGIC = 0x25609513;
export const SIMPLE_REPLY_MAGIC = 0x67446698;
export const STRUCTURED_REPLY_MAGIC = 0x668e33ef;

// Handshake flags (server) and client flags.
export const FLAG_FIXED_NEWSTYLE = 1 << 0;
export const FLAG_NO_ZEROES = 1 << 1;
export const FLAG_C_FIXED_NEWSTYLE = 1 << 0;
export const FLAG_C_NO_ZEROES = 1 << 1;

// Options.
export const OPT_EXPORT_NAME = 1;
export const OPT_ABORT = 2;
export const OPT_GO = 7;

// Option replies.
export const REP_ACK = 1;
export const REP_INFO = 3;
export const REP_FLAG_ERROR = 0x80000000;
// Error replies have bit 31 set; spelled out, as `|` in JavaScript yields a negative int32.
export const REP_ERR_UNSUP = 0x80000001;
export const REP_ERR_UNKNOWN = 0x80000006;

export const REP_ERRORS: Readonly<Record<number, string>> = {
  [0x80000001]: 'NBD_REP_ERR_UNSUP',
  [0x80000002]: 'NBD_REP_ERR_POLICY',
  [0x80000003]: 'NBD_REP_ERR_INVALID',
  [0x80000004]: 'NBD_REP_ERR_PLATFORM',
  [0x80000005]: 'NBD_REP_ERR_TLS_REQD',
  [0x80000006]: 'NBD_REP_ERR_UNKNOWN',
  [0x80000007]: 'NBD_REP_ERR_SHUTDOWN',
  [0x80000008]: 'NBD_REP_ERR_BLOCK_SIZE_REQD',
  [0x80000009]: 'NBD_REP_ERR_TOO_BIG',
};

// Info types (NBD_OPT_GO / NBD_REP_INFO).
export const INFO_EXPORT = 0;
export const INFO_BLOCK_SIZE = 3;

// Transmission flags.
export const TFLAG_HAS_FLAGS = 1 << 0;
export const TFLAG_READ_ONLY = 1 << 1;
export const TFLAG_SEND_FLUSH = 1 << 2;
export const TFLAG_SEND_FUA = 1 << 3;

// Commands and command flags.
export const CMD_READ = 0;
export const CMD_WRITE = 1;
export const CMD_DISC = 2;
export const CMD_FLUSH = 3;
export const CMD_FLAG_FUA = 1 << 0;

export const REQUEST_BYTES = 28;
export const SIMPLE_REPLY_BYTES = 16;

/** Largest payload a client may send when the server advertises no limit. */
export const DEFAULT_MAX_PAYLOAD = 32 << 20;

/** Error values of simple replies (Linux errno numbers, fixed by the protocol). */
export const ERRNO_NAMES: Readonly<Record<number, string>> = {
  1: 'EPERM',
  5: 'EIO',
  12: 'ENOMEM',
  22: 'EINVAL',
  28: 'ENOSPC',
  75: 'EOVERFLOW',
  95: 'ENOTSUP',
  108: 'ESHUTDOWN',
};
