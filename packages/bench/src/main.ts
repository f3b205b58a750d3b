// `npm run bench`: runs the benchmark sections, prints their tables and writes
// them to bench-results/latest.{md,json}. `-- --only channel,vm` picks sections.
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import * as os from 'node:os';
import { BenchTable, renderTable } from './table';
import { SECTIONS } from './sections';

async function main(): Promise<void> {
  const onlyArg = process.argv.find((a) => a.startsWith('--only='))?.slice(7)
    ?? (process.argv.includes('--only') ? process.argv[process.argv.indexOf('--only') + 1] : undefined);
  const only = onlyArg ? new Set(onlyArg.split(',')) : undefined;
  const unknown = [...(only ?? [])].filter((n) => !SECTIONS.some((s) => s.name === n));
  if (unknown.length) throw new Error(`unknown section(s): ${unknown.join(', ')}; known: ${SECTIONS.map((s) => s.name).join(', ')}`);
  const machine = `${os.cpus()[0]?.model ?? 'unknown CPU'}, ${os.cpus().length} cores, ${Math.round(os.totalmem() / 2 ** 30)} GiB, Linux ${os.release()}, Node ${process.version}`;
  const header = `Porthole benchmarks, ${new Date().toISOString().slice(0, 10)} on ${machine}`;
  console.log(header + '\n');
  const tables: BenchTable[] = [];
  for (const section of SECTIONS) {
    if (only && !only.has(section.name)) continue;
    process.stderr.write(`running ${section.name}...\n`);
    try {
      const result = await section.run();
      for (const t of Array.isArray(result) ? result : [result]) {
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
  const dir = join(__dirname, '..', '..', '..', 'bench-results');
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, 'latest.md'), [header, '', ...tables.map(renderTable)].join('\n\n') + '\n');
  writeFileSync(join(dir, 'latest.json'), JSON.stringify({ header, machine, date: new Date().toISOString(), tables }, null, 2));
  console.log(`written to ${join(dir, 'latest.md')}`);
}

main().catch((err) => {
  console.error(err instanceof Error ? err.message : err);
  process.exit(1);
});
