/**
 * A three-layer OCI image exercising what a mount must show: whiteouts (file and subtree),
 * an opaque directory, a directory restat, file↔directory replacement, hardlinks across
 * layers, symlinks, devices, a fifo, setuid/sticky modes, owners, nanosecond mtimes,
 * security.capability (kept) and user xattrs (dropped by the OCI transform), inline (≤ 64
 * bytes) and external (> 64 bytes) files, and /run (emptied by the transform).
 */
import { createHash } from 'node:crypto';
import type { EntrySpec } from './oci-fixture.js';

const T = 1_600_000_000;

/** Deterministic pseudo-random bytes (content must not dedupe by accident). */
export function bytes(seed: string, n: number): Buffer {
  const out = Buffer.alloc(n);
  let block = Buffer.alloc(0);
  for (let off = 0, i = 0; off < n; off += block.length, i++) {
    block = createHash('sha256').update(`${seed}:${i}`).digest();
    block.copy(out, off);
  }
  return out;
}

// v2 file capability: cap_net_bind_service permitted+effective.
const CAP = Buffer.from('0100000200040000000000000000000000000000', 'hex');

/** Path of a > 64-byte file whose object a test may delete. */
export const EXTERNAL_FILE = '/usr/lib/file65';

export function mountFixtureLayers(): EntrySpec[][] {
  const base: EntrySpec[] = [
    { path: 'usr/', mode: 0o755, mtime: T, mtimeNsec: 5 },
    { path: 'usr/bin/', mode: 0o755, mtime: T },
    { path: 'usr/bin/tool', mode: 0o755, content: bytes('tool', 200_000), mtime: T },
    { path: 'usr/bin/hard', type: 'hardlink', linkname: 'usr/bin/tool' },
    { path: 'usr/lib/', mode: 0o755, mtime: T },
    { path: 'usr/lib/small', mode: 0o644, content: 'tiny', mtime: T, xattrs: { 'user.note': 'dropped' } },
    { path: 'usr/lib/cap', mode: 0o755, content: bytes('cap', 100), mtime: T, xattrs: { 'security.capability': CAP } },
    { path: 'usr/lib/inline64', mode: 0o644, content: bytes('i64', 64), mtime: T + 1, mtimeNsec: 999_999_999 },
    { path: 'usr/lib/file65', mode: 0o640, uid: 7, gid: 8, content: bytes('e65', 65), mtime: T },
    { path: 'usr/lib/empty', mode: 0o600, content: '', mtime: T },
    { path: 'usr/lib/suid', mode: 0o4755, content: bytes('suid', 3000), mtime: T },
    { path: 'etc/', mode: 0o755, mtime: T },
    { path: 'etc/gone', content: 'deleted later', mtime: T },
    { path: 'etc/keep/', mode: 0o700, uid: 4242, gid: 4242, mtime: T },
    { path: 'etc/keep/a', mode: 0o600, uid: 4242, content: bytes('a', 65), mtime: T },
    { path: 'etc/secret', mode: 0o600, content: bytes('secret', 90), mtime: T },
    { path: 'gonedir/', mtime: T },
    { path: 'gonedir/inner/', mtime: T },
    { path: 'gonedir/inner/f', content: 'x', mtime: T },
    { path: 'opaque/', mtime: T },
    { path: 'opaque/old', content: 'old', mtime: T },
    { path: 'opaque/olddir/', mtime: T },
    { path: 'opaque/olddir/f', content: 'old too', mtime: T },
    { path: 'was-dir/', mtime: T },
    { path: 'was-dir/child', content: 'dropped with its directory', mtime: T },
    { path: 'was-file', content: 'replaced by a directory', mtime: T },
    { path: 'link', type: 'symlink', linkname: 'usr/bin/tool', mtime: T },
    { path: 'abs-dangling', type: 'symlink', linkname: '/no/such/target', mtime: T + 2 },
    { path: 'long-link', type: 'symlink', linkname: `${'d/'.repeat(120)}end`, mtime: T },
    { path: 'dev/', mtime: T },
    { path: 'dev/null', type: 'char', mode: 0o666, devmajor: 1, devminor: 3, mtime: T },
    { path: 'dev/loop0', type: 'block', mode: 0o660, gid: 6, devmajor: 7, devminor: 0, mtime: T },
    { path: 'dev/fifo', type: 'fifo', mode: 0o644, mtime: T },
    { path: 'tmp/', mode: 0o1777, mtime: T },
    { path: 'run/', mtime: T },
    { path: 'run/stale', content: 'x', mtime: T },
  ];
  const update: EntrySpec[] = [
    { path: 'etc/.wh.gone', content: '' },
    { path: '.wh.gonedir', content: '' },
    { path: 'opaque/', mtime: T + 5 },
    { path: 'opaque/.wh..wh..opq', content: '' },
    { path: 'opaque/new', content: 'new', mtime: T },
    { path: 'usr/lib/hard2', type: 'hardlink', linkname: 'usr/bin/tool' },
    { path: 'usr/lib/small', mode: 0o664, uid: 1, gid: 2, content: 'tiny but newer', mtime: T + 3 },
    { path: 'etc/keep/', mode: 0o750, uid: 4242, gid: 4242, mtime: T + 4 },
    { path: 'was-dir', content: bytes('file now', 70), mtime: T },
    { path: 'was-file/', mtime: T },
    { path: 'was-file/inside', content: 'inside', mtime: T },
  ];
  const data: EntrySpec[] = [
    { path: 'usr/share/', mtime: T },
    { path: 'usr/share/big', content: bytes('big', 3 * 1024 * 1024 + 7), mtime: T },
    { path: 'usr/share/same-as-tool', content: bytes('tool', 200_000), mtime: T },
  ];
  return [base, update, data];
}
