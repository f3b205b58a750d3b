export { bootVm, BootOptions, Vm, GUEST_KERNEL_CMDLINE } from './vm';
export { ConsoleVm } from './console';
export { bootLibvirtVm, LibvirtBootOptions, LibvirtVm, testbedDomainXml } from './libvirt-vm';
export { ensureLibvirtd, restartLibvirtd, TESTBED_LIBVIRT_URI } from './libvirtd';
export { buildBootIso, BootIso, BootIsoOptions } from './boot-iso';
export { prepareBaseImage, buildOverlay, buildGuestInitramfs, packCpio, CACHE_DIR, AgentSource, GuestOptions } from './guest-image';
export { hostKernel, GuestArch } from './guest-arch';
export { AGENT_PORT_NAME, QGA_PORT_NAME, rawPortName, RawTool, GUEST_MODULES, GUEST_SPAWN_HELPER, GUEST_SPAWN_TIMER } from './guest-files';
export { agentBundlePath, agentExecutablePath, agentExecutableFor } from './artifacts';
