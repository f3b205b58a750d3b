// What Porthole's payload media and foreign media share in the agent: the
// records of what was applied (so nothing is applied twice), and reading a
// file off a mounted medium.
import { createReadStream, promises as fsp } from 'node:fs';
import { join } from 'node:path';
import type { ManifestPayload } from '@porthole/media/manifest';
import type { ChunkSource } from './files';
import { crypto } from './builtins';

interface AppliedRecord {
  id: string;
  contentSha256: string;
  availability: string;
  bootId: string;
  appliedAt: string;
}

function recordPath(stateDir: string, id: string): string {
  // Ids are limited to [A-Za-z0-9._:-] and start with a letter or digit (PAYLOAD_ID_PATTERN): safe as a file name.
  return join(stateDir, 'applied', `${id}.json`);
}

/** What a record of an applied payload is kept for. */
type Recorded = Pick<ManifestPayload, 'id' | 'contentSha256' | 'availability'>;

export async function readRecord(stateDir: string, id: string): Promise<AppliedRecord | undefined> {
  try {
    return JSON.parse(await fsp.readFile(recordPath(stateDir, id), 'utf8')) as AppliedRecord;
  } catch {
    return undefined;
  }
}

/** A permanent payload is applied once per content; a run-once payload once per boot (it is gone on the next start). */
export function alreadyApplied(record: AppliedRecord | undefined, p: Recorded, bootId: string): boolean {
  if (!record || record.contentSha256 !== p.contentSha256) return false;
  return p.availability === 'permanent' || record.bootId === bootId;
}

export async function writeRecord(stateDir: string, p: Recorded, bootId: string): Promise<void> {
  const path = recordPath(stateDir, p.id);
  await fsp.mkdir(join(stateDir, 'applied'), { recursive: true, mode: 0o700 });
  const record: AppliedRecord = { id: p.id, contentSha256: p.contentSha256, availability: p.availability, bootId, appliedAt: new Date().toISOString() };
  const temp = `${path}.${process.pid}.tmp`;
  await fsp.writeFile(temp, JSON.stringify(record), { mode: 0o600 });
  await fsp.rename(temp, path);
}

export async function sha256File(path: string | Buffer): Promise<string> {
  const hash = crypto().createHash('sha256');
  for await (const data of createReadStream(path, { highWaterMark: 1 << 20 })) hash.update(data as Buffer);
  return hash.digest('hex');
}

export function chunksOf(path: string | Buffer): ChunkSource {
  return {
    async *[Symbol.asyncIterator]() {
      let offset = 0;
      for await (const data of createReadStream(path, { highWaterMark: 1 << 20 })) {
        yield { offset, data: data as Buffer };
        offset += (data as Buffer).length;
      }
    },
  };
}
