/**
 * The typed facade of the agent's native addon (agent/native): everything
 * the agent imports of it. Importing it loads nothing; the first call does
 * (binding.ts), and throws then if the addon is not built.
 *
 *   binding.ts  loading the .node file, its typed exports, the constants
 *   errors.ts   NativeError (code, errno, syscall, path) and argument checks
 *   kmod.ts     KmodDevice: /dev/vmsubst and the kernel's answers
 *   fs.ts       FIEMAP, the native tree walk, O_DIRECT reads
 *   stream.ts   fds adopted into libuv as Duplex streams (classes in @vmsubst/common/native)
 *   vsock.ts    the vsock listener, local CID, dup, sd_notify
 */
export { constants, nativeAddonCandidates, nativeAddonPath, type NativeConstants } from './binding.js';
export { NativeError, isNativeError } from '@vmsubst/common/native/errors';
export * from './kmod.js';
export * from './fs.js';
export { adoptStream, VsockSocket, type AdoptOptions, type VsockAddresses } from './stream.js';
export * from './vsock.js';
