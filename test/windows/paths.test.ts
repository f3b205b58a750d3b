// The Windows path rules (packages/agent/src/windows/paths.ts) are pure functions: checked here
// on Linux directly; agent-under-wine.test.ts shows a few of them through the real executable.
import { strict as assert } from 'node:assert';
import { v1 } from '@porthole/protocol';
import { components, isAbsolute, isWithin, joinComponents } from '@porthole/agent/windows/paths';
import { windowsShellArgv, isVerbatimCmd } from '@porthole/agent/windows/exec';
import { shellArgv } from '@porthole/agent/shell';

const norm = (p: string | Buffer) => joinComponents(components(typeof p === 'string' ? Buffer.from(p) : p)).toString('utf8');

describe('Windows path rules (pure, on Linux)', () => {
  it('puts drive and UNC paths in one normal form', () => {
    assert.equal(norm('c:\\Data\\x.txt'), 'C:\\Data\\x.txt');
    assert.equal(norm('C:/data//sub/./x.txt'), 'C:\\data\\sub\\x.txt');
    assert.equal(norm('d:\\'), 'D:\\');
    assert.equal(norm('\\\\server\\share\\dir\\f'), '\\\\server\\share\\dir\\f');
    assert.equal(norm('//server/share/f'), '\\\\server\\share\\f');
    assert.equal(norm('C:\\Users\\Zoë\\résumé.txt'), 'C:\\Users\\Zoë\\résumé.txt');
  });

  it('refuses relative, drive-relative, device and literal paths, and ..', () => {
    for (const p of ['data\\x', 'C:x', '\\x', '/x', '', '\\\\.\\PhysicalDrive0', '\\\\?\\C:\\x', '//./pipe/p', 'C:\\a\\..\\b', '\\\\server', '\\\\server\\']) {
      assert.throws(() => components(Buffer.from(p)), Error, p);
    }
  });

  it('refuses names Windows forbids, reserved device names (with an extension too) and trailing dots or spaces', () => {
    for (const p of ['C:\\a<b', 'C:\\a>b', 'C:\\a"b', 'C:\\a|b', 'C:\\a?b', 'C:\\a*b', 'C:\\f:stream', 'C:\\a\u0001b', 'C:\\a\0b',
      'C:\\NUL', 'C:\\nul.txt', 'C:\\d\\CON', 'C:\\com1.log', 'C:\\LPT9', 'C:\\COM\u00b9', 'C:\\conin$', 'C:\\AUX .txt',
      'C:\\name.', 'C:\\name ', 'C:\\dir.\\x', '\\\\srv\\NUL\\x']) {
      assert.throws(() => components(Buffer.from(p)), Error, JSON.stringify(p));
    }
    for (const ok of ['C:\\CONSOLE', 'C:\\nul_', 'C:\\COM10', 'C:\\LPT', 'C:\\.hidden', 'C:\\a.b.c', 'C:\\x y']) assert.doesNotThrow(() => components(Buffer.from(ok)), ok);
  });

  it('refuses bytes that are not UTF-8, naming why', () => {
    assert.throws(() => components(Buffer.from([0x43, 0x3a, 0x5c, 0xff, 0x66])), /must be UTF-8/);
  });

  it('matches policy prefixes without regard to case, component-wise', () => {
    const within = (p: string, x: string) => isWithin(Buffer.from(norm(p)), Buffer.from(norm(x)));
    assert.equal(within('c:\\DATA\\sub\\f', 'C:\\data'), true);
    assert.equal(within('C:\\data', 'c:\\Data'), true);
    assert.equal(within('C:\\database\\f', 'C:\\data'), false);
    assert.equal(within('C:\\anything', 'c:\\'), true);
    assert.equal(within('D:\\data', 'C:\\'), false);
    assert.equal(within('C:\\ÄRGER\\x', 'c:\\ärger'), true);
    assert.equal(within('\\\\srv\\share\\x', 'C:\\'), false);
    assert.equal(within('\\\\SRV\\Share\\x', '\\\\srv\\share'), true);
  });

  it('says which config prefixes are absolute', () => {
    for (const p of ['C:\\', 'c:/data', '\\\\srv\\share']) assert.equal(isAbsolute(p), true, p);
    for (const p of ['C:', 'C:data', '\\data', '/data', 'data', '\\\\?\\C:\\', '\\\\.\\pipe']) assert.equal(isAbsolute(p), false, p);
  });

  it('runs shell lines through cmd.exe verbatim, or PowerShell when asked', () => {
    const cmd = windowsShellArgv('echo a & exit /b 3', v1.ShellKind.SHELL_KIND_DEFAULT);
    assert.deepEqual(cmd.slice(1), ['/d', '/s', '/c', '"echo a & exit /b 3"']);
    assert.equal(isVerbatimCmd(cmd[0], cmd.slice(1)), true);
    assert.equal(isVerbatimCmd('C:\\Windows\\System32\\cmd.exe', ['/d', '/s', '/c', 'x']), true);
    assert.equal(isVerbatimCmd('node.exe', ['/d', '/s', '/c', 'x']), false);
    assert.deepEqual(windowsShellArgv('Get-Date', v1.ShellKind.SHELL_KIND_POWERSHELL), ['powershell.exe', '-NoLogo', '-NoProfile', '-NonInteractive', '-Command', 'Get-Date']);
    // A Unix agent refuses PowerShell lines rather than handing them to /bin/sh.
    assert.throws(() => shellArgv('Get-Date', v1.ShellKind.SHELL_KIND_POWERSHELL), (e: Error & { codeName?: string }) => e.codeName === 'UNSUPPORTED');
    assert.deepEqual(shellArgv('echo a', v1.ShellKind.SHELL_KIND_DEFAULT), ['/bin/sh', '-c', 'echo a']);
  });
});
