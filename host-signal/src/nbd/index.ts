export { NbdClient, type ExportInfo, type NbdOptions } from './client.js';
