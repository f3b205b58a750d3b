import { readFileSync } from 'node:fs';

/** A test-bed VM's serial console, captured in a file (QEMU's or libvirt's). */
export abstract class ConsoleVm {
  constructor(readonly consoleLogPath: string) {}

  /** Whether the VM's QEMU process still runs. */
  abstract get running(): boolean;

  console(): string {
    try {
      return readFileSync(this.consoleLogPath, 'utf8').replace(/\r/g, '');
    } catch {
      return '';
    }
  }

  /**
   * Resolves with the first console line matching, looking only past `from` characters (e.g. the console's length
   * before a reboot); rejects (with the console tail) on timeout or QEMU exit.
   */
  async waitForConsole(pattern: RegExp, timeoutMs = 60000, from = 0): Promise<string> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const line = this.console().slice(from).split('\n').find((l) => pattern.test(l));
      if (line) return line;
      if (!this.running) throw new Error(`QEMU exited before the console showed ${pattern}\n${this.consoleTail()}`);
      if (Date.now() > deadline) throw new Error(`the console did not show ${pattern} within ${timeoutMs} ms\n${this.consoleTail()}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  consoleTail(lines = 40): string {
    return `--- guest console (${this.consoleLogPath}), last ${lines} lines ---\n${this.console().split('\n').slice(-lines).join('\n')}\n---`;
  }
}
