import type { Command } from 'commander';

export function register(_program: Command): void {
  // Boot tooling commands are added by their module owner.
}
