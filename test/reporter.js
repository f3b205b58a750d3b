// Mocha's spec reporter plus one closing line in the plain form CI reads:
// "N passed, N failed" (", N skipped" when any test was pending).
'use strict';
const Mocha = require('mocha');

class PortholeReporter extends Mocha.reporters.Spec {
  constructor(runner, options) {
    super(runner, options);
    runner.once('end', () => {
      const s = runner.stats || { passes: 0, failures: 0, pending: 0 };
      const skipped = s.pending ? `, ${s.pending} skipped` : '';
      process.stdout.write(`\n${s.passes} passed, ${s.failures} failed${skipped}\n`);
    });
  }
}

module.exports = PortholeReporter;
