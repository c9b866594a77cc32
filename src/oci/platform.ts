/**
 * OCI platforms (os/architecture/variant) and the host's platform in OCI (Go) names.
 *
 * Matching rule: os and architecture equal; variants compared after normalising the defaults
 * (arm64 → v8, arm → v7); a side without a variant for other architectures matches any variant.
 */
import { endianness } from 'node:os';
import { CfsError } from '../errors.js';

export interface Platform {
  os: string;
  architecture: string;
  variant?: string;
}

const ARCH: Readonly<Record<string, string>> = {
  x64: 'amd64',
  arm64: 'arm64',
  arm: 'arm',
  ia32: '386',
  ppc64: endianness() === 'LE' ? 'ppc64le' : 'ppc64',
  s390x: 's390x',
  riscv64: 'riscv64',
  loong64: 'loong64',
  mips64el: 'mips64le',
};

const OS: Readonly<Record<string, string>> = { win32: 'windows' };

export function hostPlatform(): Platform {
  const os = OS[process.platform] ?? process.platform;
  const architecture = ARCH[process.arch] ?? process.arch;
  if (architecture === 'arm64') return { os, architecture, variant: 'v8' };
  if (architecture === 'arm') {
    const v = (process.config.variables as Record<string, unknown>)['arm_version'];
    return { os, architecture, variant: `v${typeof v === 'string' || typeof v === 'number' ? v : 7}` };
  }
  return { os, architecture };
}

/** Architecture names people (and uname) use, as OCI (Go) names them, with the variant they imply (as containerd normalises them). */
const ARCH_ALIASES: Readonly<Record<string, { architecture: string; variant?: string }>> = {
  x86_64: { architecture: 'amd64' },
  'x86-64': { architecture: 'amd64' },
  aarch64: { architecture: 'arm64' },
  i386: { architecture: '386' },
  i686: { architecture: '386' },
  armhf: { architecture: 'arm', variant: 'v7' },
  armel: { architecture: 'arm', variant: 'v6' },
};

/** Parses `os/arch[/variant]` (the `--platform` option), case-insensitively, with uname's architecture names (x86_64, aarch64…). */
export function parsePlatform(s: string): Platform {
  const parts = s.toLowerCase().split('/');
  if (parts.length < 2 || parts.length > 3 || parts.some((p) => p === '')) {
    throw new CfsError('EINVAL', `platform "${s}": expected os/arch[/variant]`);
  }
  const [os, arch, given] = parts as [string, string, string | undefined];
  const alias = ARCH_ALIASES[arch];
  const architecture = alias?.architecture ?? arch;
  const variant = given ?? alias?.variant;
  return variant === undefined ? { os, architecture } : { os, architecture, variant };
}

export function formatPlatform(p: Platform): string {
  return p.variant ? `${p.os}/${p.architecture}/${p.variant}` : `${p.os}/${p.architecture}`;
}

function normVariant(p: Platform): string | undefined {
  if (p.variant) return p.variant;
  if (p.architecture === 'arm64') return 'v8';
  if (p.architecture === 'arm') return 'v7';
  return undefined;
}

/** Does an image platform `have` satisfy the wanted platform `want`? */
export function platformMatches(want: Platform, have: Platform): boolean {
  if (want.os !== have.os || want.architecture !== have.architecture) return false;
  const w = normVariant(want);
  const h = normVariant(have);
  return w === undefined || h === undefined || w === h;
}
