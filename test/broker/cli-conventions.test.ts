// The conventions README promises for every `porthole` command: --help with
// examples, exit 2 on a usage error, --json answers in JSON. The commands are
// found by walking the commander tree, so a command added later is held to them
// too.
import { strict as assert } from 'node:assert';
import { mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { buildProgram, runPorthole } from '@porthole/broker/cli';
import { commandPath, commandTree } from '@porthole/broker/cli-conventions';
import { porthole } from './guest';

/** `porthole ARGS` in this process: exit code (undefined: a command ran) and what it printed. */
async function run(args: string[]): Promise<{ code: number | undefined; out: string; err: string }> {
  let out = '';
  let err = '';
  const code = await runPorthole(args, { stdout: { write: (s: string) => (out += s) }, stderr: { write: (s: string) => (err += s) } });
  return { code, out, err };
}

/** What `--no-such-option` gets: that, or the required option the command misses first. */
const USAGE_MESSAGE = /(?:unknown option '--no-such-option'|required option '[^']+' not specified)/;

const commands = commandTree(buildProgram()).map((c) => commandPath(c).split(' ').slice(1));

describe('broker: CLI conventions of every command (walked from the commander tree)', function () {
  this.timeout(60000);

  it('finds every command and subcommand', () => {
    const names = commands.map((w) => w.join(' '));
    for (const expected of ['', 'info', 'ping', 'exec', 'cp', 'inject', 'serve', 'boot-iso', 'payload', 'payload build', 'payload attach', 'payload eject',
      'payload xml', 'image', 'image serve', 'image upload', 'image download', 'image import', 'image ticket', 'image ticket create', 'image ticket revoke']) {
      assert.ok(names.includes(expected), `${expected || '(the program)'} is in the tree`);
    }
  });

  for (const words of commands) {
    const name = ['porthole', ...words].join(' ');
    describe(name, () => {
      it('--help shows examples of this very command', async () => {
        const r = await run([...words, '--help']);
        assert.equal(r.code, 0);
        assert.match(r.out, /\nExamples:\n/);
        const examples = r.out.slice(r.out.indexOf('\nExamples:\n')).split('\n').filter((l) => /^ {2}\S/.test(l));
        assert.ok(examples.some((l) => l.startsWith(`  ${name} `) || l.startsWith(`  porthole --`) && l.includes(` ${words.join(' ')} `)), `an example of ${name}:\n${examples.join('\n')}`);
        // Every example starts with a command that exists.
        for (const l of examples.filter((e) => e.startsWith('  porthole '))) {
          const rest = l.trim().split(/\s+/).slice(1);
          // The first word that is neither an option nor the value of the program's --timeout.
          const first = rest.find((w, i) => !w.startsWith('-') && rest[i - 1] !== '--timeout');
          assert.ok(commands.some((c) => c[0] === first), `${l.trim()}: no command ${first}`);
        }
      });

      it('a usage error exits 2 with one line and a hint, not the whole help', async () => {
        const r = await run([...words, '--no-such-option']);
        assert.equal(r.code, 2);
        assert.equal(r.out, '');
        // A command with a required option reports that one first.
        assert.match(r.err, new RegExp(`^${name}: ${USAGE_MESSAGE.source}\nTry '${name} --help' for usage and examples\\.\n$`));
      });

      it('with --json (before or after the command) a usage error is one JSON object on stdout', async () => {
        for (const args of [['--json', ...words, '--no-such-option'], [...words, '--json', '--no-such-option']]) {
          const r = await run(args);
          assert.equal(r.code, 2);
          assert.equal(r.err, '');
          const answer = JSON.parse(r.out);
          assert.deepEqual([answer.ok, answer.error.code], [false, 'USAGE']);
          assert.match(answer.error.message, new RegExp(`^${USAGE_MESSAGE.source}$`));
        }
      });
    });
  }

  describe('the real executable, on the cases users met', () => {
    let dir: string;
    before(() => (dir = mkdtempSync(join(tmpdir(), 'porthole-cli-'))));
    after(() => rmSync(dir, { recursive: true, force: true }));

    it('exits 2 for a bad target, a missing argument, conflicting or missing options, an unknown option', async () => {
      const cases: Array<[string[], RegExp]> = [
        [['info', 'foo:bar'], /^porthole: bad target "foo:bar": use unix:\/path\/to\/socket/],
        [['inject', 'unix:/run/vm.sock'], /^porthole inject: missing required argument 'manifest'\nTry 'porthole inject --help'/],
        [['payload', 'build', '--cd', '--floppy', '-o', join(dir, 'x'), '--b64', '/a=YQ=='], /^porthole payload build: option '--cd' cannot be used with option '--floppy'\n/],
        [['payload', 'build', '--cd', '--b64', '/a=YQ=='], /^porthole payload build: required option '-o, --output <file>' not specified\n/],
        [['payload', 'build', '-o', join(dir, 'x'), '--b64', '/a=YQ=='], /^porthole: choose the medium: --cd or --floppy\n$/],
        [['ping', '--bogus', 'unix:/x'], /^porthole ping: unknown option '--bogus'/],
        [['--timeout', 'soon', 'ping', 'unix:/x'], /^porthole: option '--timeout <seconds>' argument 'soon' is invalid/],
      ];
      for (const [args, message] of cases) {
        const r = await porthole(args);
        assert.equal(r.code, 2, `${args.join(' ')}: ${r.stderr}`);
        assert.match(r.stderr, message);
        assert.doesNotMatch(r.stderr, /Usage:/, 'not the whole help');
      }
      const json = await porthole(['--json', 'info', 'foo:bar']);
      assert.equal(json.code, 2);
      assert.equal(JSON.parse(json.stdout.toString()).error.code, 'USAGE');
    });

    it('payload build --json and porthole --json payload build print JSON; a build failure is one line, exit 1', async () => {
      for (const [i, args] of [['payload', 'build', '--json'], ['--json', 'payload', 'build']].entries()) {
        const out = join(dir, `p${i}.iso`);
        const r = await porthole([...args, '--cd', '-o', out, '--b64', '/etc/motd=aGkK']);
        assert.equal(r.code, 0, r.stderr);
        const result = JSON.parse(r.stdout.toString());
        assert.deepEqual([result.layout, result.medium, result.path, result.imageBytes], ['porthole', 'cd', out, statSync(out).size]);
      }
      const local = join(dir, 'big.bin');
      writeFileSync(local, Buffer.alloc(1_500_000));
      const big = await porthole(['payload', 'build', '--floppy', '-o', join(dir, 'big.img'), '--entry', `/big=${local}`]);
      assert.equal(big.code, 1);
      assert.match(big.stderr, /^porthole: payload does not fit on a 1\.44 MB floppy: it needs \d+ bytes, the floppy holds 1457664 bytes \(use a CD instead\)\n$/);
      const bigJson = await porthole(['--json', 'payload', 'build', '--floppy', '-o', join(dir, 'big.img'), '--entry', `/big=${local}`]);
      assert.equal(bigJson.code, 1);
      assert.match(JSON.parse(bigJson.stdout.toString()).error.message, /does not fit on a 1\.44 MB floppy/);
    });
  });
});
