import { test } from 'node:test';
import assert from 'node:assert/strict';
import { CfsError } from '../src/errors.js';
import { formatKarg, kargToString, parseKargs, splitCmdline } from '../src/boot/karg.js';

const H256 = '8b7df143d91c716ecfa5fc1730022f6b421b05cedee8fd52b1fc65a96030ad52';
const H512 = '6f06b5e82420abec546d6e6d3ddd612c50cfa9b707c129345b7ec16f456b92fe35df68999b042e1a6a70dfe75f2fed8cf9f67afd0bf08d2374678d75e2f65a02';

test('formatKarg: the forms cfsctl prints', () => {
  assert.equal(formatKarg(H256, 'sha256'), `composefs.digest=v1-sha256-12:${H256}`);
  assert.equal(formatKarg(Buffer.from(H512, 'hex'), 'sha512'), `composefs.digest=v1-sha512-12:${H512}`);
  assert.equal(formatKarg(H256, 'sha256', { insecure: true }), `composefs.digest=?v1-sha256-12:${H256}`);
  assert.equal(formatKarg(H256, 'sha256', { erofsVersion: 0 }), `composefs.digest=v1-sha256-12:${H256}`);
  assert.equal(formatKarg(H256, 'sha256', { erofsVersion: 2 }), `composefs=${H256}`);
  assert.equal(formatKarg(H256, 'sha256', { erofsVersion: 2, insecure: true }), `composefs=?${H256}`);
  assert.throws(() => formatKarg(H256, 'sha512'), CfsError);
});

test('parseKargs: round trip of every form', () => {
  for (const alg of ['sha256', 'sha512'] as const) {
    const hex = alg === 'sha256' ? H256 : H512;
    for (const insecure of [false, true]) {
      for (const erofsVersion of [1, 2] as const) {
        const s = formatKarg(hex, alg, { insecure, erofsVersion });
        assert.deepEqual(parseKargs(`root=UUID=abc ${s} rw`), [{ hex, alg, erofsVersion, insecure }]);
        assert.equal(kargToString(parseKargs(s)[0]), s);
      }
    }
  }
});

test('parseKargs: all arguments in command-line order; explicit v2 form', () => {
  const cmd = `composefs=${H256} composefs.digest=v1-sha512-12:${H512}  composefs.digest=?v2-sha256-12:${H256.toUpperCase()}`;
  assert.deepEqual(parseKargs(cmd), [
    { hex: H256, alg: 'sha256', erofsVersion: 2, insecure: false },
    { hex: H512, alg: 'sha512', erofsVersion: 1, insecure: false },
    { hex: H256, alg: 'sha256', erofsVersion: 2, insecure: true },
  ]);
  assert.deepEqual(parseKargs('quiet splash composefs rw'), []);
  assert.deepEqual(parseKargs(''), []);
});

test('splitCmdline: double quotes protect whitespace and stay in the token', () => {
  assert.deepEqual(splitCmdline(' a  b="c d"\te\n'), ['a', 'b="c d"', 'e']);
  assert.deepEqual(parseKargs(`x="composefs=${H256} y" composefs.digest=v1-sha256-12:${H256}`).length, 1);
  // The kernel hands `composefs="HEX"` and `"composefs=HEX"` over without their quotes.
  for (const quoted of [`composefs="${H256}"`, `"composefs=${H256}"`]) assert.deepEqual(parseKargs(quoted), [{ hex: H256, alg: 'sha256', erofsVersion: 2, insecure: false }], quoted);
});

test('parseKargs: malformed composefs arguments are errors', () => {
  for (const bad of [
    'composefs=foo',
    'composefs.digest=v1-sha256-12:notahex',
    `composefs.digest=v3-sha256-12:${H256}`,
    `composefs.digest=v1-sha256-8:${H256}`,
    `composefs.digest=v1-md5-12:${H256}`,
    `composefs.digest=v1-sha512-12:${H256}`,
    `composefs.digest=${H256}`,
  ]) {
    assert.throws(() => parseKargs(`quiet ${bad}`), (e: unknown) => e instanceof CfsError && e.code === 'EINVAL' && e.message.includes(bad.split('=')[0]), bad);
  }
});
