/**
 * Writing a bundle's blocks into a disk: a running QEMU's drive (applyToQemu)
 * or a raw image file (applyToImage). Both verify every range first and write
 * nothing unless the disk holds the bundle's base.
 */
export {
  applyToQemu,
  applyToMonitor,
  type ApplyFault,
  commitApplied,
  commitOverlay,
  defaultOverlayPath,
  resolveDrive,
  deviceId,
  type DriveSelector,
  type OverlayOutcome,
  type QemuMode,
  type QemuApplyOptions,
  type QemuApplyResult,
  type ResolvedDrive,
} from './qemu.js';
export { applyToImage, type ImageApplyOptions, type ImageApplyResult } from './image.js';
export {
  IO_CHUNK,
  checkTargetSize,
  inspectTarget,
  refuseMismatch,
  substitute,
  writeRanges,
  type ApplyPhase,
  type ApplyProgress,
  type BlockTarget,
  type BundleData,
  type Inspection,
  type RangeState,
  type Substitution,
  type SubstitutionStatus,
} from './core.js';
export {
  alignedClusterSize,
  buildOverlay,
  changedClusters,
  exportOverlay,
  DEFAULT_CLUSTER_SIZE,
  type ExportOptions,
  type ExportResult,
} from './overlay.js';
export {
  applyAndTell,
  errorJson,
  NoAgentError,
  NOT_TOLD,
  NO_AGENT_ACTIONS,
  type AgentOutcome,
  type ApplyAndTellOptions,
  type GuestOutcome,
  type GuestPhase,
  type GuestStatus,
  type NoAgentAction,
} from './guest.js';
export { recoverVm, removeLeftovers, findLeftovers, type Present, type RecoveryReport } from './recover.js';
export { StateStore, stateDir, DEFAULT_STATE_DIR, type ApplyRecord } from './state-file.js';
export { fileLocks, fileOpeners, isQemuLock, locksOn, type FileLock, type FileOpener } from './locks.js';

import type { ImageApplyResult } from './image.js';
import type { QemuApplyResult } from './qemu.js';
export type ApplyResult = QemuApplyResult | ImageApplyResult;
