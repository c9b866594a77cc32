/**
 * How the contents of files stored as objects reached objects/: one tally shared by every
 * import path (tar, splitdirfdstream, containers-storage, copy).
 */
export interface ObjectCounts {
  copied: number;
  reflinked: number;
  hardlinked: number;
  /** Written by nobody: the object was there already. */
  present: number;
}

export function noObjects(): ObjectCounts {
  return { copied: 0, reflinked: 0, hardlinked: 0, present: 0 };
}

export function addObjects(into: ObjectCounts, from: ObjectCounts): void {
  into.copied += from.copied;
  into.reflinked += from.reflinked;
  into.hardlinked += from.hardlinked;
  into.present += from.present;
}

/** Count a content whose bytes went through an object writer (written, or found there). */
export function countWritten(counts: ObjectCounts, alreadyPresent: boolean): void {
  if (alreadyPresent) counts.present++;
  else counts.copied++;
}

/** `n` contents counted as copied turned out to be there already (ObjectSink.takePresent). */
export function recountPresent(counts: ObjectCounts, n: number): void {
  counts.copied -= n;
  counts.present += n;
}
