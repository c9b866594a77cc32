/** Structural consistency of a repository directory, independent of the code under test. */
import { readdirSync, lstatSync, readlinkSync, existsSync } from 'node:fs';
import path from 'node:path';

function walk(dir: string, out: string[] = []): string[] {
  if (!existsSync(dir)) return out;
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) walk(p, out);
    else out.push(p);
  }
  return out;
}

/** Problems found: dangling links, objects under wrong names/with temp names. Empty = consistent. */
export function repoProblems(repo: string): string[] {
  const problems: string[] = [];
  for (const kind of ['streams', 'images']) {
    for (const link of walk(path.join(repo, kind))) {
      if (!lstatSync(link).isSymbolicLink()) {
        problems.push(`${path.relative(repo, link)}: not a symlink`);
        continue;
      }
      const target = path.resolve(path.dirname(link), readlinkSync(link));
      if (!existsSync(target)) problems.push(`${path.relative(repo, link)}: dangling (${readlinkSync(link)})`);
    }
  }
  for (const obj of walk(path.join(repo, 'objects'))) {
    const rel = path.relative(path.join(repo, 'objects'), obj);
    if (!/^[0-9a-f]{2}\/([0-9a-f]{62}|[0-9a-f]{126})$/.test(rel)) problems.push(`objects/${rel}: unexpected name`);
  }
  return problems;
}
