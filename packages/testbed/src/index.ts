export { bootVm, BootOptions, Vm } from './vm';
export { prepareBaseImage, buildOverlay, hostKernel, packCpio, CACHE_DIR, AgentSource, GuestOptions } from './guest-image';
export { AGENT_PORT_NAME, QGA_PORT_NAME, rawPortName, GUEST_MODULES } from './guest-files';
export { agentBundlePath, agentExecutablePath } from './artifacts';
