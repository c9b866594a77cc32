/** runLayerTasks: after a failure nothing new starts, and nothing is still running when it throws. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { runLayerTasks } from '../src/oci/layer-tasks.js';

test('the first failure is thrown only once the running tasks have finished; queued ones never start', async () => {
  const started: string[] = [];
  const finished: string[] = [];
  const task = async (name: string): Promise<void> => {
    started.push(name);
    if (name === 'fails') throw new Error('layer fails');
    await new Promise((r) => setTimeout(r, name === 'slow' ? 200 : 10));
    finished.push(name);
  };
  await assert.rejects(runLayerTasks(['slow', 'fails', 'queued1', 'queued2'], 2, task), /layer fails/);
  assert.deepEqual(started, ['slow', 'fails'], 'nothing starts after the failure');
  assert.deepEqual(finished, ['slow'], 'the running task finished before the failure was thrown');
  await runLayerTasks(['a', 'b', 'c'], 2, task);
  assert.deepEqual(finished.slice(1).sort(), ['a', 'b', 'c']);
});
