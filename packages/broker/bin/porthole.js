#!/usr/bin/env node
'use strict';
require('../dist/cli.js').main().catch((err) => {
  process.stderr.write(`porthole: ${err && err.message ? err.message : err}\n`);
  process.exit(1);
});
