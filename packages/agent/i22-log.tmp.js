const { createAuditLogger } = require('./dist/audit.js');
const log = createAuditLogger({ level: 'info', file: '/tmp/i22-audit.log' });
const meta = { request: 'exec', requestId: 'abc', argv: ['/bin/true'], exitCode: 0, result: 'ok', durationMs: 12 };
for (let i = 0; i < 200; i++) log.info('request done', meta);
let t = process.hrtime.bigint();
for (let i = 0; i < 2000; i++) log.info('request done', meta);
console.error('us per line', Number(process.hrtime.bigint() - t) / 2000 / 1000);
