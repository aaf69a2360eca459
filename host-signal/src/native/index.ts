/**
 * The typed facade of the host's native addon (host-signal/native): what the
 * differ and the vsock transport use. Importing it loads nothing; see
 * binding.ts for how a missing addon is reported.
 */
export { hostAddonCandidates, nativeStatus, type NativeStatus } from './binding.js';
export { COMPARE_SPAN_MAX, loadNativeDiff, type NativeDiff } from './diff.js';
export { vsockConnect, VsockSocket, type VsockConnectOptions } from './vsock.js';
export { NativeError, isNativeError } from '@vmsubst/common/native/errors';
