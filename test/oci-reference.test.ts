import assert from 'node:assert/strict';
import { test } from 'node:test';
import { isCfsError } from '../src/errors.js';
import { parseImageReference } from '../src/oci/reference.js';
import { parsePlatform } from '../src/oci/platform.js';

test('parseImageReference: table', () => {
  const table: Array<[string, ReturnType<typeof parseImageReference>]> = [
    ['oci:/p', { transport: 'oci', path: '/p', tag: null }],
    ['oci:/p:tag', { transport: 'oci', path: '/p', tag: 'tag' }],
    // The first colon splits, as in containers/image: tags may hold colons and slashes.
    ['oci:/p:a:b', { transport: 'oci', path: '/p', tag: 'a:b' }],
    ['oci:/p:mid/x', { transport: 'oci', path: '/p', tag: 'mid/x' }],
    ['oci:/l:docker.io/library/foo:1.0', { transport: 'oci', path: '/l', tag: 'docker.io/library/foo:1.0' }],
    ['oci-archive:/x/img.tar:quay.io/a/b:v2', { transport: 'oci-archive', path: '/x/img.tar', tag: 'quay.io/a/b:v2' }],
    ['oci:/p:', { transport: 'oci', path: '/p', tag: '' }],
    ['oci:rel/dir:v1.2', { transport: 'oci', path: 'rel/dir', tag: 'v1.2' }],
    ['oci-archive:/x/img.tar', { transport: 'oci-archive', path: '/x/img.tar', tag: null }],
    ['oci-archive:/x/img.tar:latest', { transport: 'oci-archive', path: '/x/img.tar', tag: 'latest' }],
    ['containers-storage:quay.io/a/b:1', { transport: 'containers-storage', path: 'quay.io/a/b:1', tag: null }],
    ['containers-storage:[overlay@/var/lib/x]img', { transport: 'containers-storage', path: '[overlay@/var/lib/x]img', tag: null }],
  ];
  for (const [s, want] of table) assert.deepEqual(parseImageReference(s), want, s);
});

test('parseImageReference: rejected references', () => {
  const bad: Array<[string, string, RegExp]> = [
    ['quay.io/x/y', 'EINVAL', /missing transport/],
    ['foo:/x', 'EINVAL', /unknown transport "foo"/],
    ['docker://quay.io/x', 'ENOTSUP', /transport "docker" is not supported/],
    ['dir:/x', 'ENOTSUP', /not supported/],
    ['oci:', 'EINVAL', /empty path/],
    ['oci::tag', 'EINVAL', /empty path/],
    ['containers-storage:', 'EINVAL', /empty image name/],
  ];
  for (const [s, code, msg] of bad) {
    assert.throws(() => parseImageReference(s), (e) => isCfsError(e) && e.code === code && msg.test(e.message), s);
  }
});

test('parsePlatform: case-insensitive, uname architecture names as OCI names them', () => {
  const table: Array<[string, ReturnType<typeof parsePlatform>]> = [
    ['linux/amd64', { os: 'linux', architecture: 'amd64' }],
    ['Linux/AMD64', { os: 'linux', architecture: 'amd64' }],
    ['linux/x86_64', { os: 'linux', architecture: 'amd64' }],
    ['linux/aarch64', { os: 'linux', architecture: 'arm64' }],
    ['linux/arm/v7', { os: 'linux', architecture: 'arm', variant: 'v7' }],
    ['linux/armhf', { os: 'linux', architecture: 'arm', variant: 'v7' }],
    ['linux/i386', { os: 'linux', architecture: '386' }],
  ];
  for (const [s, want] of table) assert.deepEqual(parsePlatform(s), want, s);
  assert.throws(() => parsePlatform('linux'), /expected os\/arch\[\/variant\]/);
});
