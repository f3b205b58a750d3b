import { strict as assert } from 'node:assert';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { v1, PortholeError } from '@porthole/protocol';
import { AgentConfig, LOADER_ENV, Policy, defaultConfig, isWithin, normalize, parseConfig, showPath } from '@porthole/agent';

const example = readFileSync(join(__dirname, '../../installers/agent.conf.example'), 'utf8');
const snake = (s: string) => s.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`);
const policyOf = (tune: (c: AgentConfig) => void) => {
  const c = defaultConfig();
  tune(c);
  return new Policy(c);
};

describe('agent: config and policy', () => {
  it('the example config documents every option with its default', () => {
    assert.deepEqual(parseConfig(example), defaultConfig(), 'all commented out: the defaults');
    // Uncomment every setting line: the file must still be valid and mean the defaults.
    const uncommented = example.replace(/^# ((\[[a-z_]+\])|([a-z_]+ = .*))$/gm, '$1');
    assert.deepEqual(parseConfig(uncommented), defaultConfig());
    for (const [section, keys] of Object.entries(defaultConfig())) {
      assert.match(uncommented, new RegExp(`^\\[${snake(section)}\\]$`, 'm'), `section ${section}`);
      for (const key of Object.keys(keys)) assert.match(uncommented, new RegExp(`^${snake(key)} = `, 'm'), `${section}.${key} is documented`);
    }
  });

  it('parses values and sizes, and names the offending key', () => {
    const c = parseConfig('[file_write]\nmax_file_size = "512 MiB"\nallow = ["/srv"]\n[exec]\nenabled = false\nmax_concurrent = 3\n');
    assert.equal(c.fileWrite.maxFileSize, 512 * 1024 * 1024);
    assert.deepEqual(c.fileWrite.allow, ['/srv']);
    assert.equal(c.exec.enabled, false);
    assert.equal(c.exec.maxConcurrent, 3);
    assert.equal(c.fileRead.enabled, true, 'untouched settings keep their defaults');
    assert.throws(() => parseConfig('[exec]\nenabeld = false\n', 'x.conf'), /x\.conf: unknown key exec\.enabeld/);
    assert.throws(() => parseConfig('[execs]\n'), /unknown section \[execs\]/);
    assert.throws(() => parseConfig('[exec]\nenabled = "no"\n'), /exec\.enabled: expected true or false/);
    assert.throws(() => parseConfig('[file_write]\nmax_file_size = "lots"\n'), /max_file_size: expected a size/);
    assert.throws(() => parseConfig('[file_read]\nallow = ["srv"]\n'), /must be absolute/);
    assert.throws(() => parseConfig('[file_read]\nallow = ["/srv/../etc"]\n'), /must not contain/);
    assert.throws(() => parseConfig('[log]\nlevel = "loud"\n'), /log\.level/);
    assert.throws(() => parseConfig('[exec\n'), /agent\.conf/);
  });

  it('announces capabilities and limits', () => {
    const p = policyOf((c) => { c.exec.enabled = false; c.fileWrite.allow = ['/srv/', '/opt']; c.exec.users = ['app']; });
    assert.deepEqual(p.capabilities(), [v1.Capability.CAPABILITY_FILE_WRITE, v1.Capability.CAPABILITY_FILE_READ, v1.Capability.CAPABILITY_PAYLOAD]);
    const limits = p.limits();
    assert.deepEqual(limits.writeAllowPrefixes!.map((x) => Buffer.from(x).toString()), ['/srv', '/opt']);
    assert.deepEqual(limits.execUsers, ['app']);
    assert.equal(limits.maxConcurrentExecs, 64);
  });

  it('refuses exec users and commands outside the lists, naming the rule', () => {
    const p = policyOf((c) => { c.exec.users = ['app']; c.exec.commands = ['/usr/bin/systemctl', 'uptime']; });
    assert.throws(() => p.checkExec('/usr/bin/uptime', undefined), (e: PortholeError) =>
      e.code === v1.ErrorCode.ERROR_CODE_POLICY_DENIED && e.rule === 'exec.users = [app]' && /as root/.test(e.message));
    assert.doesNotThrow(() => p.checkExec('/usr/bin/uptime', 'app'));
    assert.doesNotThrow(() => p.checkExec('/usr/bin/systemctl', 'app'));
    assert.throws(() => p.checkExec('/bin/systemctl', 'app'), (e: PortholeError) => e.rule === 'exec.commands = [/usr/bin/systemctl, uptime]');
    assert.throws(() => p.checkExec('rm', 'app'), /not in the guest owner's allow-list/);
  });

  it("groups: a command runs only with its user's own groups unless exec.groups names more", () => {
    const nobody = { name: 'nobody', groups: [65534] };
    const p = policyOf(() => undefined);
    assert.doesNotThrow(() => p.checkGroup(65534, 'nogroup', nobody));
    assert.throws(() => p.checkGroup(0, 'root', nobody), (e: PortholeError) =>
      e.code === v1.ErrorCode.ERROR_CODE_POLICY_DENIED && e.rule === "exec.groups = [] (only the user's own groups)" && /as nobody with group root/.test(e.message));
    const wider = policyOf((c) => { c.exec.groups = ['adm', '40*', 'app?']; });
    assert.doesNotThrow(() => wider.checkGroup(4, 'adm', nobody));
    assert.doesNotThrow(() => wider.checkGroup(4042, '4042', nobody), 'a gid matches too');
    assert.doesNotThrow(() => wider.checkGroup(1001, 'app2', nobody));
    assert.doesNotThrow(() => wider.checkGroup(65534, 'nogroup', nobody), 'the own groups stay allowed');
    assert.throws(() => wider.checkGroup(0, 'root', nobody), (e: PortholeError) => e.rule === 'exec.groups = [adm, 40*, app?]');
  });

  it('environment: variables that change what a command loads are refused unless exec.env_allow names them', () => {
    const p = policyOf(() => undefined);
    assert.doesNotThrow(() => p.checkEnv(['FOO', 'LANG', 'TZ', 'PATH', 'PYTHONUNBUFFERED', 'LDFLAGS']));
    for (const name of ['LD_PRELOAD', 'LD_LIBRARY_PATH', 'LD_AUDIT', 'GCONV_PATH', 'GLIBC_TUNABLES', 'NODE_OPTIONS', 'PYTHONPATH', 'PYTHONSTARTUP',
      'PERL5LIB', 'PERL5OPT', 'RUBYOPT', 'BASH_ENV', 'ENV', 'IFS', 'BASH_FUNC_ls%%', 'JAVA_TOOL_OPTIONS', 'HOME', 'GIT_SSH_COMMAND']) {
      assert.throws(() => p.checkEnv(['FOO', name]), (e: PortholeError) =>
        e.code === v1.ErrorCode.ERROR_CODE_POLICY_DENIED && e.rule === 'exec.env_allow = []' && e.message.includes(name), name);
    }
    const documented = example.slice(example.indexOf('# Environment variables a request may set'), example.indexOf('# env_allow = []'));
    for (const name of LOADER_ENV) assert.ok(documented.split(/[\s#:]+/).includes(name), `${name} is listed in agent.conf.example`);
    const allowing = policyOf((c) => { c.exec.envAllow = ['LD_LIBRARY_PATH', 'PYTHON*']; });
    assert.doesNotThrow(() => allowing.checkEnv(['LD_LIBRARY_PATH', 'PYTHONPATH']));
    assert.throws(() => allowing.checkEnv(['LD_PRELOAD']), (e: PortholeError) => e.rule === 'exec.env_allow = [LD_LIBRARY_PATH, PYTHON*]');
    // A name carrying "=" would smuggle another variable in: NAME=x.so= is LD_PRELOAD to the loader.
    assert.throws(() => p.checkEnv(['LD_PRELOAD=/tmp/x.so']), (e: PortholeError) => e.code === v1.ErrorCode.ERROR_CODE_INVALID_ARGUMENT);
    assert.throws(() => p.checkEnv(['']), (e: PortholeError) => e.code === v1.ErrorCode.ERROR_CODE_INVALID_ARGUMENT);
  });

  it('redacts secret argv values', () => {
    const p = policyOf((c) => { c.exec.secretArgs = ['--password', '-p']; });
    assert.deepEqual(p.redactArgv(['mysql', '-p', 'hunter2', '--password=x', '--user', 'bob', 'tok'], ['tok']),
      ['mysql', '-p', '***', '--password=***', '--user', 'bob', '***']);
    assert.deepEqual(p.redactArgv(['/bin/sh', '-c', 'curl -H "X-Token: s3cr3t" url'], ['s3cr3t']), ['/bin/sh', '-c', 'curl -H "X-Token: ***" url']);
  });

  it('paths: `..` and NUL refused, prefixes compared by component, bytes shown escaped', () => {
    assert.throws(() => normalize(Buffer.from('/a/../b')), /\.\./);
    assert.throws(() => normalize(Buffer.from('/a\0b')), /NUL/);
    assert.throws(() => normalize(Buffer.from('a/b')), /not an absolute path/);
    assert.equal(normalize(Buffer.from('//a/./b/')).toString(), '/a/b');
    assert.ok(isWithin(Buffer.from('/srv/app/x'), Buffer.from('/srv/app')));
    assert.ok(!isWithin(Buffer.from('/srv/application'), Buffer.from('/srv/app')));
    assert.equal(showPath(Buffer.from([0x2f, 0x61, 0xff])), '/a\\xff');
    const p = policyOf((c) => { c.fileWrite.allow = ['/srv']; c.fileWrite.deny = ['/srv/secret']; });
    assert.throws(() => p.checkPath('file_write', Buffer.from('/srv/secret/k')), (e: PortholeError) => e.rule === 'file_write.deny contains /srv/secret');
    assert.doesNotThrow(() => p.checkPath('file_write', Buffer.from('/srv/secrets')));
  });
});
