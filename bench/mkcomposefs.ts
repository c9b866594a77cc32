/**
 * Benchmark: build the image of the largest conformance dumpfile (cs9-x86_64-developer).
 * Run: node dist/bench/mkcomposefs.js [DUMPFILE[.gz]]
 */
import { readFileSync } from 'node:fs';
import { gunzipSync } from 'node:zlib';
import { createHash } from 'node:crypto';
import { parseDumpfile } from '../src/dumpfile/parse.js';
import { writeErofs } from '../src/erofs/writer.js';

const file = process.argv[2] ?? new URL('../../../shared/conformance/cs9-x86_64-developer.dump.gz', import.meta.url).pathname;
const rounds = Number(process.env.BENCH_ROUNDS ?? 1);

for (let r = 0; r < rounds; r++) {
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  const raw = readFileSync(file);
  const input = file.endsWith('.gz') ? gunzipSync(raw, { chunkSize: 32 << 20 }) : raw;
  const t1 = performance.now();
  const root = parseDumpfile(input, { strict: true });
  const t2 = performance.now();
  const image = writeErofs(root);
  const t3 = performance.now();
  const cpu = process.cpuUsage(cpu0);
  let lines = 0;
  for (let i = input.indexOf(10); i >= 0; i = input.indexOf(10, i + 1)) lines++;
  const sha = createHash('sha256').update(image).digest('hex');
  const ms = (a: number, b: number): string => `${(b - a).toFixed(1)} ms`;
  process.stdout.write(
    `read+gunzip ${ms(t0, t1)}  parse ${ms(t1, t2)}  write ${ms(t2, t3)}  total ${ms(t0, t3)} (cpu ${((cpu.user + cpu.system) / 1000).toFixed(1)} ms)\n` +
      `${lines} entries, ${Math.round(lines / ((t3 - t0) / 1000))} entries/s, image ${image.length} bytes sha256 ${sha}\n` +
      `peak RSS ${(process.resourceUsage().maxRSS / 1024).toFixed(1)} MiB\n`,
  );
}
