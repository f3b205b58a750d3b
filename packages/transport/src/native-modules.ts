import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';

/**
 * Load a package with native code, which a single executable cannot carry:
 * from the directory named by the environment variable `override` when set,
 * else from node_modules beside the executable (where the packages install it;
 * a single executable's own require reaches only built-in modules), else
 * normally (running from sources). The error names every place tried.
 */
export function requireBesideExecutable<T>(name: string, override: string): T {
  const attempts: Array<() => unknown> = [
    () => createRequire(join(dirname(process.execPath), 'lib', 'index.js'))(name),
    () => createRequire(__filename)(name),
  ];
  const explicit = process.env[override];
  if (explicit) attempts.unshift(() => createRequire(join(explicit, 'index.js'))(explicit));
  const errors: string[] = [];
  for (const attempt of attempts) {
    try {
      return attempt() as T;
    } catch (err) {
      errors.push((err as Error).message.split('\n')[0]);
    }
  }
  throw new Error(`${name} could not be loaded (beside the executable, or at $${override}): ${errors.join('; ')}`);
}
