export { QmpClient, type QmpConnectOptions, type QmpEvent, type QmpGreeting } from './client.js';
export {
  Qemu,
  MIGRATION_STATES,
  type BlockDeviceInfo,
  type BlockExportInfo,
  type BlockInfo,
  type StatusInfo,
} from './commands.js';
