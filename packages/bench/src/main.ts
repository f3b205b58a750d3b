// `npm run bench`: runs the benchmark sections, prints their tables and writes
// them to bench-results/ (latest.md, latest.json and a dated copy of the JSON).
// `-- --only channel,vm` picks sections; `-- --readme` also puts the tables in
// README.md between the BENCH markers. Sizes come from PORTHOLE_BENCH_* (sections.ts).
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import * as os from 'node:os';
import { BenchTable, renderTable } from './table';
import { SECTIONS } from './sections';
import { cpuTicks, stealShare } from './cpu-steal';

const REPO = join(__dirname, '..', '..', '..');
const README_START = '<!-- BENCH:START -->';
const README_END = '<!-- BENCH:END -->';

/** The test bed always runs TCG (KVM hangs on these hosts); say whether KVM was even there. */
const kvm = () => (existsSync('/dev/kvm') ? '/dev/kvm present, unused' : 'no /dev/kvm');

/** Replace what is between the markers; the rest of the README stays byte for byte. */
function updateReadme(block: string): void {
  const path = join(REPO, 'README.md');
  const text = readFileSync(path, 'utf8');
  const start = text.indexOf(README_START);
  const end = text.indexOf(README_END);
  if (start < 0 || end < start) throw new Error(`README.md has no ${README_START} … ${README_END} markers: add them under "## Benchmarks"`);
  writeFileSync(path, `${text.slice(0, start + README_START.length)}\n${block}\n${text.slice(end)}`);
}

async function main(): Promise<void> {
  const onlyArg = process.argv.find((a) => a.startsWith('--only='))?.slice(7)
    ?? (process.argv.includes('--only') ? process.argv[process.argv.indexOf('--only') + 1] : undefined);
  const only = onlyArg ? new Set(onlyArg.split(',')) : undefined;
  const unknown = [...(only ?? [])].filter((n) => !SECTIONS.some((s) => s.name === n));
  if (unknown.length) throw new Error(`unknown section(s): ${unknown.join(', ')}; known: ${SECTIONS.map((s) => s.name).join(', ')}`);
  const sections = SECTIONS.filter((s) => !only || only.has(s.name));
  const sizes = Object.fromEntries(sections.map((s) => [s.name, s.sizes()]));
  const sizeText = sections.map((s) => `${s.name} ${Object.entries(sizes[s.name]).map(([k, v]) => `${k}=${v}`).join(' ')}`).join('; ');
  const cpus = os.cpus();
  const machine = `${cpus[0]?.model ?? 'unknown CPU'}, ${cpus.length} cores, ${Math.round(os.totalmem() / 2 ** 30)} GiB, Linux ${os.release()}, Node ${process.version}; guests under QEMU TCG (${kvm()})`;
  const date = new Date().toISOString();
  const header = `Porthole benchmarks, ${date.slice(0, 10)} on ${machine}`;
  console.log(`${header}\nsizes: ${sizeText}\n`);
  const tables: BenchTable[] = [];
  for (const section of sections) {
    process.stderr.write(`running ${section.name}...\n`);
    try {
      const before = cpuTicks();
      const result = await section.run(sizes[section.name]);
      const steal = stealShare(before, cpuTicks());
      for (const t of Array.isArray(result) ? result : [result]) {
        // Figures from a host that was busy elsewhere are low; say how busy, so runs can be compared.
        if (steal !== undefined) t.notes = [...(t.notes ?? []), `CPU steal while this section ran: ${(steal * 100).toFixed(1)} % of the machine's CPU time went to other guests of the hypervisor (/proc/stat)`];
        tables.push(t);
        console.log(renderTable(t) + '\n');
      }
    } catch (err) {
      const t: BenchTable = { title: section.name, columns: ['error'], rows: [[(err as Error).message]] };
      tables.push(t);
      console.log(renderTable(t) + '\n');
      process.exitCode = 1;
    }
  }
  const dir = join(REPO, 'bench-results');
  mkdirSync(dir, { recursive: true });
  const command = `npm run bench${only ? ` -- --only ${[...only].join(',')}` : ''}`;
  const markdown = [header, `sizes: ${sizeText}`, ...tables.map(renderTable)].join('\n\n') + '\n';
  const json = JSON.stringify({ header, machine, date, command, sizes, tables }, null, 2);
  writeFileSync(join(dir, 'latest.md'), markdown);
  writeFileSync(join(dir, 'latest.json'), json);
  writeFileSync(join(dir, `${date.replace(/[:.]/g, '-')}.json`), json);
  console.log(`written to ${join(dir, 'latest.md')} and latest.json`);
  if (process.argv.includes('--readme')) {
    if (process.exitCode) throw new Error('a section failed: README.md left as it was');
    updateReadme([
      `Measured ${date.slice(0, 10)} on ${machine}.`,
      `Sizes: ${sizeText}. Reproduce: \`${command}\` (prints these tables, writes \`bench-results/\`; \`-- --readme\` rewrites this section; \`PORTHOLE_BENCH_QUICK=1\` or the \`PORTHOLE_BENCH_*\` sizes in packages/bench/src/sections.ts for a quicker run).`,
      '',
      tables.map((t) => renderTable(t).replace(/^### /, '#### ')).join('\n\n'),
    ].join('\n'));
    console.log('README.md benchmark section updated');
  }
}

main().catch((err) => {
  console.error(err instanceof Error ? err.message : err);
  process.exit(1);
});
