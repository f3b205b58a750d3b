// Where the agent keeps its files on Windows, and the owner's policy before any edit.
import { win32 } from 'node:path';
import type { AgentConfig } from '../config';

/** %ProgramData%\Porthole: the config, the state and the log; an upgrade or uninstall of the MSI leaves the config. */
export const PROGRAM_DATA_DIR = win32.join(process.env.ProgramData || 'C:\\ProgramData', 'Porthole');
export const WINDOWS_CONFIG_PATH = win32.join(PROGRAM_DATA_DIR, 'agent.conf');

/**
 * The Linux defaults with Windows places: writes and reads on the system drive (other drives and
 * UNC shares only when the owner lists them), state under %ProgramData%\Porthole, and a log file
 * (a service has no console to log to).
 */
export function windowsDefaults(config: AgentConfig): AgentConfig {
  const systemDrive = `${(process.env.SystemDrive || 'C:').toUpperCase()}\\`;
  config.fileWrite.allow = [systemDrive];
  config.fileWrite.deny = [];
  config.fileRead.allow = [systemDrive];
  config.fileRead.deny = [];
  config.payload.stateDir = win32.join(PROGRAM_DATA_DIR, 'payloads');
  config.transfers.stateDir = win32.join(PROGRAM_DATA_DIR, 'transfers');
  config.log.file = win32.join(PROGRAM_DATA_DIR, 'agent.log');
  return config;
}
