/** Where the repository lives: --repo, --system, --user, $CFS_REPO, else by uid (root of the initial user namespace: the system one). */
import path from 'node:path';
import { CfsError } from '../errors.js';
import { inInitialUserNamespace } from '../userns.js';

export const SYSTEM_REPO_PATH = '/sysroot/composefs';

/** Deployments (prepare-boot, setup-root): `<repository's parent>/state/deploy/<image id>/{etc,var}`. */
export const STATE_DEPLOY_DIR = 'state/deploy';

export interface RepoLocationOptions {
  repo?: string;
  user?: boolean;
  system?: boolean;
}

function userRepoPath(): string {
  const home = process.env.HOME;
  if (!home) throw new CfsError('EINVAL', 'cannot locate the user repository: $HOME is not set');
  return path.join(home, '.var/lib/composefs');
}

export function resolveRepositoryPath(opts: RepoLocationOptions = {}): string {
  const chosen = [opts.repo !== undefined, !!opts.user, !!opts.system].filter(Boolean).length;
  if (chosen > 1) throw new CfsError('EINVAL', '--repo, --user and --system are mutually exclusive');
  if (opts.repo !== undefined) return path.resolve(opts.repo);
  if (opts.system) return SYSTEM_REPO_PATH;
  if (opts.user) return userRepoPath();
  const env = process.env.CFS_REPO;
  if (env) return path.resolve(env);
  // Root of a user namespace (`podman unshare`) is a user: its system repository is not its to write.
  return process.getuid?.() === 0 && inInitialUserNamespace() ? SYSTEM_REPO_PATH : userRepoPath();
}
