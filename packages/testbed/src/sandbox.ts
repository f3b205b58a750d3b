// `npm run sandbox`: a VM with the agent that stays up for trying the CLI by hand.
import { bootVm } from './vm';
import { agentBundlePath, agentExecutablePath } from './artifacts';

void (async () => {
  const exe = agentExecutablePath();
  console.log('booting a sandbox VM (QEMU, TCG)...');
  const vm = await bootVm({ agent: exe ? { executable: exe } : { bundle: agentBundlePath() }, rawPorts: 0, log: (m) => console.log(m) });
  console.log(`\nsandbox up. Target: ${vm.target}\n\nTry:\n  npx porthole info ${vm.target}\n  npx porthole exec ${vm.target} -- uname -a\n  npx porthole cp README.md ${vm.target}:/root/README.md\n  npx porthole cp ${vm.target}:/etc/passwd -\n\nQMP: ${vm.qmpSocketPath}   console log: ${vm.consoleLogPath}\nCtrl-C stops the VM.`);
  const stop = async () => {
    console.log('\nstopping the sandbox VM');
    await vm.shutdown();
    process.exit(0);
  };
  process.on('SIGINT', () => void stop());
  process.on('SIGTERM', () => void stop());
})().catch((err) => {
  console.error(`sandbox failed: ${(err as Error).message}`);
  process.exit(1);
});
