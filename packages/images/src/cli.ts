// `porthole image ...`: run the image server, manage tickets, upload, download and import images.
// Registered into the porthole CLI by the broker, whose conventions apply: actions throw
// (InvalidArgumentError for a usage error) and read --json with optsWithGlobals().
import { existsSync, readFileSync, statSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { Command, InvalidArgumentError, Option } from 'commander';
import { downloadImage, ImageEndpoint, readCa, uploadImage } from './client';
import { createImageServer } from './server';
import type { TicketInfo, TicketOp, TicketStatus } from './tickets';

/** Where the CLI finds a local image server unless told otherwise. */
export const DEFAULT_SERVER = process.env.PORTHOLE_IMAGES ?? 'unix:/run/porthole/images.sock';

interface ClientFlags {
  server: string;
  url?: string;
  ticket?: string;
  ca?: string;
  insecure?: boolean;
  connections: string;
  resume?: boolean;
  ticketTimeout: string;
  inactivityTimeout: string;
  format?: 'raw' | 'qcow2';
}

const int = (what: string, min: number, max = Number.MAX_SAFE_INTEGER) => (v: string): string => {
  const n = Number(v);
  if (!Number.isSafeInteger(n) || n < min || n > max) throw new InvalidArgumentError(`${what} must be an integer ${min}..${max}, not ${JSON.stringify(v)}`);
  return v;
};

function progress(label: string): { update(done: number, total: number): void; stop(): void } {
  if (!process.stderr.isTTY) return { update() {}, stop() {} };
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const { SingleBar, Presets } = require('cli-progress') as typeof import('cli-progress');
  const bar = new SingleBar({ stream: process.stderr, format: `${label} {bar} {percentage}% | {value}/{total} bytes | {speed} MiB/s | eta {eta}s`, hideCursor: true }, Presets.shades_classic);
  const started = Date.now();
  let running = false;
  return {
    update(done, total) {
      const speed = ((done / 2 ** 20) / Math.max(0.001, (Date.now() - started) / 1000)).toFixed(1);
      if (!running) bar.start(total, done, { speed });
      running = true;
      bar.update(done, { speed });
    },
    stop: () => running && bar.stop(),
  };
}

function endpoint(o: ClientFlags): ImageEndpoint {
  if (o.url && !o.ticket) throw new InvalidArgumentError('--url needs --ticket (tickets are created through the local --server)');
  return new ImageEndpoint(o.url ?? o.server, { ca: readCa(o.ca), insecure: o.insecure, connections: Number(o.connections) });
}

/** `--json` may be this command's or, when the porthole program defines it too, the program's (it parses it first). */
function print(cmd: Command, value: unknown, human: string): void {
  process.stdout.write((cmd.optsWithGlobals<{ json?: boolean }>().json ? JSON.stringify(value) : human) + '\n');
}

function clientOptions(cmd: Command, connections: boolean): Command {
  cmd
    .option('--server <addr>', 'local image server with the ticket control API: unix:PATH or http://127.0.0.1:PORT', DEFAULT_SERVER)
    .option('--url <addr>', 'image data server to use with --ticket (https://HOST:PORT), e.g. a remote one')
    .option('--ticket <id>', 'use this existing ticket instead of creating one through --server')
    .option('--ca <file>', 'PEM CA to trust for https')
    .option('--insecure', 'do not verify the https certificate')
    .option('--json', 'print the result as JSON');
  if (connections) cmd.option('--connections <n>', 'parallel connections', int('--connections', 1, 16), '4').option('--resume', 'continue an earlier transfer that was cut');
  return cmd;
}

const ticketFlags = (cmd: Command): Command =>
  cmd
    .option('--ticket-timeout <seconds>', 'ticket lifetime', int('--ticket-timeout', 1, 30 * 86400), '3600')
    .option('--inactivity-timeout <seconds>', 'ticket expires after this long without requests (0: never)', int('--inactivity-timeout', 0, 30 * 86400), '300')
    .addOption(new Option('--format <format>', 'format the image must have').choices(['raw', 'qcow2']));

function describe(t: TicketStatus): string {
  const lines = [
    `ticket ${t.id}`,
    `  ${t.image ? `image ${t.image}` : 'NBD export'} (${t.size} bytes, ${t.mode}), ops ${t.ops.join(',')}, state ${t.state}${t.expired ? ' (expired)' : ''}`,
    `  expires ${t.expiresAt} (timeout ${t.timeout} s), idle ${t.idle_time} s, ${t.connections} connection(s), ${t.active ? 'active' : 'no request in progress'}`,
    `  bytes read ${t.bytes.read}, written ${t.bytes.written}; upload covers ${t.upload.covered} bytes, resume at ${t.upload.resumeOffset}`,
  ];
  if (t.import) lines.push(`  import ${t.import.url}: ${t.import.state}, ${t.import.bytes}/${t.import.total ?? '?'} bytes, attempt ${t.import.attempts}${t.import.error ? `, ${t.import.error}` : ''}`);
  if (t.check) lines.push(`  check: ${t.check.ok ? `ok, ${t.check.format}${t.check.content ? ` (${t.check.content})` : ''}, virtual size ${t.check.virtualSize}` : `refused: ${t.check.reason}`}`);
  return lines.join('\n');
}

export function registerImageCommands(program: Command): Command {
  const image = program.command('image').description('image transfer: serve a storage directory, tickets, upload, download, import from a URL')
    .addHelpText('after', `
Examples:
  porthole image serve --storage /var/lib/porthole/images
  porthole image upload ./disk.qcow2 web1-root.qcow2 --format qcow2
  porthole image download web1-root.qcow2 ./backup.qcow2
  porthole image ticket list --json`);

  image
    .command('serve')
    .description('run the ticketed image data server over a storage directory (https, or plain http on loopback / a Unix socket)')
    .requiredOption('--storage <dir>', 'directory holding the images')
    .option('--listen <addr...>', 'unix:PATH or tcp:HOST:PORT; tcp on a non-loopback address needs --cert/--key', [DEFAULT_SERVER])
    .option('--cert <file>', 'PEM certificate (chain) for https')
    .option('--key <file>', 'PEM private key for https')
    .option('--default-timeout <seconds>', 'ticket lifetime when a request names none', int('--default-timeout', 1), '300')
    .option('--default-inactivity-timeout <seconds>', 'idle connection timeout when a ticket names none', int('--default-inactivity-timeout', 0), '60')
    .option('--cors-origin <origin...>', 'web portal origin allowed to use the data API from a browser, e.g. https://engine.example:8443')
    .option('--control-token-file <file>', 'file holding a bearer token: mounts the ticket control API on loopback TCP listeners too')
    .option('--json', 'print the listening addresses as JSON')
    .addHelpText('after', `
Examples:
  porthole image serve --storage /var/lib/porthole/images
  porthole image serve --storage /srv/images --listen unix:/run/porthole/images.sock tcp:0.0.0.0:54322 --cert tls.pem --key tls.key`)
    .action(async (o: { storage: string; listen: string[]; cert?: string; key?: string; defaultTimeout: string; defaultInactivityTimeout: string; corsOrigin?: string[]; controlTokenFile?: string }, cmd: Command) => {
      if (!!o.cert !== !!o.key) throw new InvalidArgumentError('--cert and --key go together');
      const controlToken = o.controlTokenFile ? readFileSync(o.controlTokenFile, 'utf8').trim() : undefined;
      if (controlToken === '') throw new Error(`${o.controlTokenFile} is empty`);
      const server = await createImageServer({
        storageDir: o.storage,
        listen: o.listen,
        defaultTimeout: Number(o.defaultTimeout),
        defaultInactivityTimeout: Number(o.defaultInactivityTimeout),
        ...(o.corsOrigin ? { corsOrigins: o.corsOrigin } : {}),
        ...(controlToken ? { controlToken } : {}),
        ...(o.cert && o.key ? { tls: { cert: readFileSync(o.cert), key: readFileSync(o.key) } } : {}),
      });
      print(cmd, { ok: true, listening: server.urls }, [...server.urls.map((u) => `image server listening on ${u}`), 'upload page: <server>/upload#ticket=<ticket id>'].join('\n'));
      await new Promise<void>((resolve) => {
        process.once('SIGINT', resolve);
        process.once('SIGTERM', resolve);
      });
      await server.close();
    });

  clientOptions(ticketFlags(image.command('upload <file> <name>')), true)
    .description('upload a local disk image or ISO as NAME (format-checked before it is published)')
    .addHelpText('after', `
Examples:
  porthole image upload ./disk.qcow2 web1-root.qcow2 --format qcow2 --connections 4
  porthole image upload ./disk.qcow2 web1-root.qcow2 --resume          # after a cut
  porthole image upload ./d.raw d.raw --url https://host:54322 --ticket 3f2a… --ca ca.pem`)
    .action(async (file: string, name: string, o: ClientFlags, cmd: Command) => {
      const size = statSync(file).size;
      const ep = endpoint(o);
      let ticket = o.ticket;
      let created = false;
      try {
        if (!ticket && o.resume) {
          const open = (await ep.listTickets()).find((t) => t.image === name && t.mode === 'new' && t.state === 'active' && t.ops.includes('write'));
          if (!open) throw new Error(`--resume: there is no unfinished upload of ${name} on ${o.server}`);
          ticket = open.id;
        }
        if (!ticket) {
          const ops: TicketOp[] = ['write'];
          ticket = (await ep.createTicket({ image: name, size, ops, timeout: Number(o.ticketTimeout), inactivityTimeout: Number(o.inactivityTimeout), ...(o.format ? { format: o.format } : {}) })).id;
          created = true;
        }
        const bar = progress(`upload ${name}`);
        const result = await uploadImage(ep, ticket, file, { connections: Number(o.connections), resume: o.resume, onProgress: (d, t) => bar.update(d, t) }).finally(() => bar.stop());
        const c = result.status.check;
        print(cmd, { ok: true, image: name, size, sent: result.sent, check: c }, `${name}: ${size} bytes uploaded (${result.sent} sent now)${c ? `, ${c.format}${c.content ? ` (${c.content})` : ''}` : ''}`);
        if (created) await ep.revokeTicket(ticket);
      } catch (err) {
        const hint = ticket && !/refused|differ/.test((err as Error).message) ? ` (resume with: porthole image upload ${file} ${name} --resume${o.ticket || o.url ? ` --ticket ${ticket}` : ''})` : '';
        throw new Error(`${(err as Error).message}${hint}`);
      } finally {
        ep.close();
      }
    });

  clientOptions(image.command('download <name> <file>'), true)
    .description('download image NAME to FILE (written as FILE.part, renamed when complete)')
    .addHelpText('after', `
Examples:
  porthole image download web1-root.qcow2 ./backup.qcow2
  porthole image download web1-root.qcow2 ./backup.qcow2 --resume --json`)
    .action(async (name: string, file: string, o: ClientFlags, cmd: Command) => {
      const ep = endpoint(o);
      let created: string | undefined;
      try {
        const ticket = o.ticket ?? (created = (await ep.createTicket({ image: name, ops: ['read'], timeout: 3600, inactivityTimeout: 300 })).id);
        if (o.ticket) {
          const { target: actual } = await ep.json<TicketInfo>('GET', `/images/${encodeURIComponent(o.ticket)}/info`);
          if (actual !== name) throw new Error(`ticket ${o.ticket} is for image ${actual}, not ${name}`);
        }
        const bar = progress(`download ${name}`);
        const r = await downloadImage(ep, ticket, file, { connections: Number(o.connections), resume: o.resume, onProgress: (d, t) => bar.update(d, t) }).finally(() => bar.stop());
        print(cmd, { ok: true, image: name, file, size: r.size, fetched: r.fetched }, `${file}: ${r.size} bytes (${r.fetched} fetched now, the rest zero extents or resumed)`);
      } catch (err) {
        const resumable = !o.resume && existsSync(`${file}.part.json`);
        throw new Error(`${(err as Error).message}${resumable ? ` (resume with --resume${o.ticket ? ` --ticket ${o.ticket}` : ''})` : ''}`);
      } finally {
        if (created) await ep.revokeTicket(created).catch(() => undefined);
        ep.close();
      }
    });

  ticketFlags(image.command('import <url> <name>'))
    .description('have the server download an https URL into image NAME (resumes after a cut; checked before it is published)')
    .option('--server <addr>', 'local image server', DEFAULT_SERVER)
    .option('--ca <file>', 'PEM CA the server should trust for this URL')
    .option('--no-wait', 'print the ticket and return; progress is in `porthole image ticket status`')
    .option('--json', 'print the final ticket status as JSON')
    .addHelpText('after', `
Examples:
  porthole image import https://mirror.example/debian-12.iso debian-12.iso
  porthole image import https://10.0.0.5/disk.qcow2 disk.qcow2 --format qcow2 --ca ca.pem --no-wait`)
    .action(async (url: string, name: string, o: ClientFlags & { wait: boolean }, cmd: Command) => {
      const ep = endpoint({ ...o, url: undefined, connections: '1' });
      try {
        const ca = o.ca ? readFileSync(o.ca, 'utf8') : undefined;
        let t = await ep.importUrl({ url, image: name, timeout: Number(o.ticketTimeout), inactivityTimeout: Number(o.inactivityTimeout), ...(ca ? { ca } : {}), ...(o.format ? { format: o.format } : {}) });
        const bar = progress(`import ${name}`);
        while (o.wait && t.import?.state === 'running') {
          bar.update(t.import.bytes, t.import.total ?? 0);
          await sleep(300);
          t = await ep.ticketStatus(t.id);
        }
        bar.stop();
        print(cmd, t, describe(t));
        if (o.wait && t.import?.state !== 'done') process.exitCode = 1;
      } finally {
        ep.close();
      }
    });

  const ticket = image.command('ticket').description('create, inspect, extend and revoke tickets on a local image server')
    .addHelpText('after', `
Examples:
  porthole image ticket create new.raw --size 10737418240 --ops read,write
  porthole image ticket list --json
  porthole image ticket revoke 3f2a…`);
  const examples = (cmd: Command, ...lines: string[]) => cmd.addHelpText('after', `\nExamples:\n${lines.map((l) => `  porthole image ticket ${l}`).join('\n')}`);
  const control = (cmd: Command) => cmd.option('--server <addr>', 'local image server', DEFAULT_SERVER).option('--json', 'print JSON');
  const withEp = async (o: { server: string }, fn: (ep: ImageEndpoint) => Promise<void>) => {
    const ep = new ImageEndpoint(o.server, { connections: 1 });
    try {
      await fn(ep);
    } finally {
      ep.close();
    }
  };
  control(ticketFlags(ticket.command('create <name>')))
    .description('create a ticket for image NAME (a new image needs --size)')
    .option('--size <bytes>', 'size of a new image', int('--size', 0))
    .option('--ops <ops>', 'read, write or read,write', 'read')
    .addHelpText('after', `
Examples:
  porthole image ticket create web1-root.qcow2 --ops read --ticket-timeout 600
  porthole image ticket create new.raw --size 10737418240 --ops read,write --format raw --json`)
    .action(async (name: string, o: ClientFlags & { size?: string; ops: string }, cmd: Command) => withEp(o, async (ep) => {
      const t = await ep.createTicket({
        image: name, ops: o.ops.split(',').map((s) => s.trim()) as TicketOp[], timeout: Number(o.ticketTimeout), inactivityTimeout: Number(o.inactivityTimeout),
        ...(o.size !== undefined ? { size: Number(o.size) } : {}), ...(o.format ? { format: o.format } : {}),
      });
      print(cmd, t, `${describe(t)}\n  data URL: <server>/images/${t.id}   upload page: <server>/upload#ticket=${t.id}`);
    }));
  examples(control(ticket.command('add <json>')), `add '{"uuid": "3f2a…", "size": 1073741824, "ops": ["write"], "timeout": 300, "url": "file:///var/lib/porthole/images/disk1"}'`, 'add @ticket.json')
    .description("add a ticket in ovirt-imageio's schema, as vdsm does (JSON object or @FILE): uuid, size, ops, timeout, url (file:///STORAGE/NAME or nbd:unix:PATH:exportname=NAME), …")
    .action(async (json: string, o: ClientFlags, cmd: Command) => withEp(o, async (ep) => {
      const t = await ep.addTicket(JSON.parse(json.startsWith('@') ? readFileSync(json.slice(1), 'utf8') : json) as { uuid: string });
      print(cmd, t, `${describe(t)}\n  data URL: <server>/images/${t.id}`);
    }));
  examples(control(ticket.command('status <id>')), 'status 3f2a…', 'status 3f2a… --json').description('show a ticket').action(async (id: string, o: ClientFlags, cmd: Command) => withEp(o, async (ep) => {
    const t = await ep.ticketStatus(id);
    print(cmd, t, describe(t));
  }));
  examples(control(ticket.command('list')), 'list', 'list --json --server http://127.0.0.1:54323').description('list tickets').action(async (o: ClientFlags, cmd: Command) => withEp(o, async (ep) => {
    const all = await ep.listTickets();
    print(cmd, all, all.map(describe).join('\n') || 'no tickets');
  }));
  examples(control(ticket.command('extend <id> <seconds>')), 'extend 3f2a… 3600').description('make the ticket expire SECONDS from now').action(async (id: string, seconds: string, o: ClientFlags, cmd: Command) => withEp(o, async (ep) => {
    const t = await ep.extendTicket(id, Number(int('seconds', 1, 30 * 86400)(seconds)));
    print(cmd, t, describe(t));
  }));
  examples(control(ticket.command('revoke <id>')).alias('delete'), 'revoke 3f2a…', 'delete 3f2a…')
    .description('delete the ticket: its requests end, a staged upload is checked and published (or refused), an image written in place is checked')
    .action(async (id: string, o: ClientFlags, cmd: Command) => withEp(o, async (ep) => {
      const t = await ep.revokeTicket(id);
      print(cmd, t ?? { id, state: 'deleted' }, t ? describe(t) : `ticket ${id} deleted`);
    }));
  return image;
}
