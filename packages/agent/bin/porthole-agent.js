#!/usr/bin/env node
'use strict';
require('../dist/main.js').main().catch((err) => {
  console.error(`porthole-agent: ${err && err.message ? err.message : err}`);
  process.exit(1);
});
