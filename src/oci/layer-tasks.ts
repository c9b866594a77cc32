/** Running one task per layer, several at once, so that nothing is still writing after a failure. */
import pLimit from 'p-limit';

/**
 * Run `task` for every item, `parallel` at a time. After the first failure the queued tasks are
 * skipped and the running ones awaited, then that failure is thrown: when this returns or throws,
 * no task is writing into the repository any more (its caller may release its lock).
 */
export async function runLayerTasks<T>(items: readonly T[], parallel: number, task: (item: T) => Promise<void>): Promise<void> {
  const limit = pLimit(Math.max(1, parallel));
  let failure: { error: unknown } | null = null;
  await Promise.all(
    items.map((item) =>
      limit(async () => {
        if (failure) return;
        try {
          await task(item);
        } catch (e) {
          failure ??= { error: e };
        }
      }),
    ),
  );
  if (failure) throw (failure as { error: unknown }).error;
}
