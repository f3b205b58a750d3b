// `npm run bench`: runs the benchmark sections, prints their tables and writes
// them to bench-results/ (latest.md, latest.json and a dated copy of the JSON).
// `-- --only channel,vm` picks sections; `-- --docs` also puts each section's tables in
// docs/BENCHMARKS.md between that section's markers, leaving the other sections' tables as they
// were. Sizes come from PORTHOLE_BENCH_* (sections.ts).
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import * as os from 'node:os';
import { BenchTable, renderTable } from './table';
import { SECTIONS } from './sections';
import { cpuTicks, stealShare } from './cpu-steal';

const REPO = join(__dirname, '..', '..', '..');
const DOCS = join(REPO, 'docs', 'BENCHMARKS.md');

/** The test bed always runs TCG (KVM hangs on these hosts); say whether KVM was even there. */
const kvm = () => (existsSync('/dev/kvm') ? '/dev/kvm present, unused' : 'no /dev/kvm');

/**
 * Replace what is between a section's markers in docs/BENCHMARKS.md (appended at the end the first
 * time); the rest of the file stays byte for byte.
 */
function updateDocs(section: string, block: string): void {
  const start = `<!-- BENCH:${section}:START -->`;
  const end = `<!-- BENCH:${section}:END -->`;
  const text = readFileSync(DOCS, 'utf8');
  const a = text.indexOf(start);
  const b = text.indexOf(end);
  writeFileSync(DOCS, a >= 0 && b > a
    ? `${text.slice(0, a + start.length)}\n${block}\n${text.slice(b)}`
    : `${text.trimEnd()}\n\n${start}\n${block}\n${end}\n`);
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
  const tableSection = new Map<BenchTable, string>();
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
        tableSection.set(t, section.name);
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
  if (process.argv.includes('--docs')) {
    if (process.exitCode) throw new Error('a section failed: docs/BENCHMARKS.md left as it was');
    for (const section of sections) {
      const sectionSizes = Object.entries(sizes[section.name]).map(([k, v]) => `${k}=${v}`).join(' ');
      updateDocs(section.name, [
        `Measured ${date.slice(0, 10)} on ${machine}. Sizes: ${sectionSizes || 'fixed'}. Reproduce: \`npm run bench -- --only ${section.name}\` (\`-- --docs\` rewrites this block).`,
        '',
        tables.filter((t) => tableSection.get(t) === section.name).map((t) => renderTable(t).replace(/^### /, '#### ')).join('\n\n'),
      ].join('\n'));
    }
    console.log(`docs/BENCHMARKS.md: tables of ${sections.map((s) => s.name).join(', ')} updated`);
  }
}

main().catch((err) => {
  console.error(err instanceof Error ? err.message : err);
  process.exit(1);
});
