/** Waiting on helper processes without hanging the suite when they die first. */
import type { ChildProcess } from 'node:child_process';

/** The first chunk the child writes to stdout; rejects (with `what`) if it exits before. */
export function firstOutput(child: ChildProcess, what: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const onExit = (code: number | null, signal: NodeJS.Signals | null): void => reject(new Error(`${what} exited (${signal ?? code}) before writing anything`));
    child.once('exit', onExit);
    child.stdout!.once('data', (d: Buffer) => {
      child.off('exit', onExit);
      resolve(d.toString());
    });
  });
}

/** Signal a child and wait for its exit (at once when it has exited already). */
export async function stopChild(child: ChildProcess, signal: NodeJS.Signals = 'SIGTERM'): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((resolve) => child.once('exit', resolve));
  child.kill(signal);
  await exited;
}
