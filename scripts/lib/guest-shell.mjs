// A shell command run in the guest through a Porthole client, for the measuring scripts: resolves to its stdout.
export function guestShell(client) {
  return (cmd) => new Promise((resolve, reject) => {
    const task = client.exec({ shell: cmd });
    let out = '';
    task.stdout.on('data', (d) => (out += d));
    task.stderr.resume();
    task.exit.then(() => resolve(out), reject);
  });
}
