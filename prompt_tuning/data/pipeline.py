"""Deterministic, resumable, multi-host batch iteration over a task split.

The split is read and tokenized once, in memory (prompt-tuning data sets are
small). The example stream is the concatenation of per-epoch orders:

  stream[i] = perm(seed, i // N)[i % N]    (N examples; perm = identity without shuffle)

and global batch k holds stream[start + k*B : start + (k+1)*B]. Batches may
straddle epochs when repeating. `position` = stream examples consumed so far
(the same on every process): a new iterator built with
`start_position=position` continues the stream bit-exactly, so the position
int is the whole checkpointable iterator state.

Length buckets (data/buckets.py): each global batch is padded to the smallest bucket lengths that
hold its longest rows, computed from all of the batch's rows so every process pads alike; the
order and the position are unchanged.

Packing (data/packing.py): each global batch is `batch_size` rows filled greedily with whole
examples from the stream, so it holds a varying number of examples; `position` still counts the
stream examples consumed, and a batch's rows depend only on where it starts.

Multi-host: process p of P yields rows [p*B/P, (p+1)*B/P) of each global batch.
Without `repeat`, the last partial global batch is padded with all-zero rows
(unless `drop_remainder`), and `mask` marks the real rows; every process yields
the same number of batches.
"""

from __future__ import annotations

from typing import Any, Mapping, NamedTuple

import numpy as np

from prompt_tuning.data import buckets as buckets_lib
from prompt_tuning.data import features as features_lib
from prompt_tuning.data import packing as packing_lib
from prompt_tuning.data import sentinel
from prompt_tuning.data.task import Task


class Batch(NamedTuple):
  """One process's share of a global batch.

  Attributes:
    arrays: int32 numpy arrays, b = batch_size // process_count rows:
      encoder_input_tokens [b, n], decoder_input_tokens [b, m],
      decoder_target_tokens [b, m], decoder_loss_weights [b, m], mask [b]
      (1 = real example, 0 = padding row); with the iterator's `task_ids`, also
      task_ids [b] (each example's prompt row; 0 for padding rows). n, m: the
      feature lengths, or with length buckets the batch's bucket lengths.
      Packed (the iterator's `packing`): b packed rows, encoder_input_tokens [b, p + n] and
      data/packing.py's segment ids and positions; mask marks rows holding an example, and
      encoder_task_ids / decoder_task_ids replace task_ids.
    text: {"inputs": list[str], "targets": list[str], "idx": list, "examples":
      list[dict]} of length b; padding rows hold "", "", None and None. Packed: one entry per example
      of this process's rows, in row order (no padding entries).
  """

  arrays: dict[str, np.ndarray]
  text: dict[str, list]


def epoch_permutation(num_examples: int, seed: int, epoch: int) -> np.ndarray:
  """The example order of `epoch`: a permutation of range(num_examples) from (seed, epoch)."""
  return np.random.default_rng(np.random.SeedSequence([seed, epoch])).permutation(num_examples)


class BatchIterator:
  """Iterates `Batch`es of `task`'s `split`; see the module docstring for the order.

  Args:
    task: anything implementing the `Task` protocol.
    split: split name.
    feature_lengths: {"inputs": n, "targets": m}.
    batch_size: the global batch size B (divisible by process_count).
    shuffle: new order each epoch, from (seed, epoch).
    seed: non-negative int.
    repeat: cycle through epochs forever; else stop after one pass.
    drop_remainder: without repeat, drop the last partial batch instead of
      padding it.
    start_position: stream examples already consumed (a saved `position`).
    process_index, process_count: this process and how many share each batch
      (jax.process_index() / jax.process_count()).
    counter: a `TruncationCounter` to record into (default: a new one, see
      `truncation`).
    task_ids: {task name: prompt row}: batches carry arrays['task_ids'], each
      example's row by its mixture tag (`task`); an example of another task is
      an error.
    length_buckets: pad each batch to its bucket lengths (data/buckets.py); None:
      to the feature lengths.
    packing: pack several examples per row (data/packing.py); exclusive with length_buckets.
  """

  def __init__(
    self,
    task: Task,
    split: str,
    feature_lengths: Mapping[str, int],
    batch_size: int,
    *,
    shuffle: bool,
    seed: int,
    repeat: bool,
    drop_remainder: bool,
    start_position: int = 0,
    process_index: int = 0,
    process_count: int = 1,
    counter: features_lib.TruncationCounter | None = None,
    task_ids: Mapping[str, int] | None = None,
    length_buckets: buckets_lib.LengthBuckets | None = None,
    packing: packing_lib.Packing | None = None,
  ):
    if batch_size < 1 or batch_size % process_count:
      raise ValueError(f"batch_size {batch_size} must be >= 1 and divisible by process_count {process_count}")
    if not 0 <= process_index < process_count:
      raise ValueError(f"process_index {process_index} not in [0, {process_count})")
    if seed < 0 or start_position < 0:
      raise ValueError(f"seed and start_position must be >= 0, got {seed}, {start_position}")
    self.task, self.split = task, split
    self.feature_lengths = features_lib.check_feature_lengths(feature_lengths)
    self.batch_size = batch_size
    packing_lib.check_exclusive(packing is not None, length_buckets)
    self.length_buckets = length_buckets
    self.packing = packing
    self.shuffle, self.seed, self.repeat, self.drop_remainder = shuffle, seed, repeat, drop_remainder
    self.process_index, self.process_count = process_index, process_count
    self.local_batch_size = batch_size // process_count
    self.truncation = counter if counter is not None else features_lib.TruncationCounter()
    self._examples = features_lib.tokenize(
      task.examples(split),
      task.vocabulary,
      self.feature_lengths,
      split=split,
      counter=self.truncation,
      target_prefix=sentinel.target_prefix(task),  # TARGET_SENTINEL's <extra_id_0>
    )
    if repeat and not self._examples:
      raise ValueError(f"task {task.name} split {split} is empty; cannot repeat it")
    self._position = int(start_position)
    self.task_ids = None if task_ids is None else dict(task_ids)
    if self.task_ids is not None:
      unknown = sorted({str(ex.get("task")) for ex in self._examples} - set(self.task_ids))
      if unknown:
        raise ValueError(
          f"task {task.name} split {split}: examples of task {unknown[0]} have no prompt row "
          f"(rows: {', '.join(self.task_ids)})"
        )
    self._perms: dict[int, np.ndarray] = {}

  @property
  def position(self) -> int:
    """Stream examples consumed so far (global, identical on all processes)."""
    return self._position

  @property
  def num_examples(self) -> int:
    return len(self._examples)

  def task_counts(self) -> dict[str, int]:
    """{task tag: examples} of the split (a mixture tags each example with its task; else {})."""
    counts: dict[str, int] = {}
    for ex in self._examples:
      if "task" in ex:
        counts[ex["task"]] = counts.get(ex["task"], 0) + 1
    return counts

  @property
  def num_batches(self) -> int | None:
    """Batches left to yield (None when repeating, or packing: that depends on the lengths)."""
    if self.repeat or self.packing is not None:
      return None
    left = max(self.num_examples - self._position, 0)
    return left // self.batch_size if self.drop_remainder else -(-left // self.batch_size)

  def _order(self, epoch: int) -> np.ndarray:
    if epoch not in self._perms:  # keep two epochs: a batch may straddle them
      n = self.num_examples
      self._perms = {e: p for e, p in self._perms.items() if e == epoch - 1}
      self._perms[epoch] = epoch_permutation(n, self.seed, epoch) if self.shuffle else np.arange(n)
    return self._perms[epoch]

  def _stream(self, start: int, stop: int) -> list[int]:
    n = self.num_examples
    return [int(self._order(i // n)[i % n]) for i in range(start, stop)]

  def __iter__(self) -> BatchIterator:
    return self

  def __next__(self) -> Batch:
    if self.packing is not None:
      return self._next_packed()
    start, n = self._position, self.num_examples
    stop = start + self.batch_size
    if not self.repeat:
      stop = min(stop, n)
      if stop <= start or (self.drop_remainder and stop - start < self.batch_size):
        raise StopIteration
    lo = self.process_index * self.local_batch_size
    hi = lo + self.local_batch_size
    # The whole global batch (the bucket is its longest row's, the same on every process), then
    # this process's rows of it; past `stop` they are padding.
    batch = [self._examples[i] for i in self._stream(start, stop)]
    rows = batch[lo:hi]
    self._position = stop
    lengths = buckets_lib.batch_lengths(self.length_buckets, self.feature_lengths, batch)
    arrays = features_lib.make_batch(rows, lengths, self.local_batch_size)
    mask = np.zeros(self.local_batch_size, np.int32)
    mask[: len(rows)] = 1
    arrays["mask"] = mask
    if self.task_ids is not None:
      arrays["task_ids"] = np.zeros(self.local_batch_size, np.int32)
      arrays["task_ids"][: len(rows)] = [self.task_ids[ex["task"]] for ex in rows]
    pad = self.local_batch_size - len(rows)
    text: dict[str, list[Any]] = {
      "inputs": [ex["inputs"] for ex in rows] + [""] * pad,
      "targets": [ex["targets"] for ex in rows] + [""] * pad,
      "idx": [ex.get("idx") for ex in rows] + [None] * pad,
      # The whole example, for task metrics that need more than the target (groups, all answers)
      # and for per-example rank-classification candidates.
      "examples": [{k: v for k, v in ex.items() if not k.endswith("_ids")} for ex in rows] + [None] * pad,
    }
    return Batch(arrays, text)

  def _next_packed(self) -> Batch:
    """The next global batch of packed rows (data/packing.py), this process's rows of it."""
    start, n = self._position, self.num_examples
    cursor = start

    def next_example():
      nonlocal cursor
      if not self.repeat and cursor >= n:
        return None
      cursor += 1
      return self._examples[self._stream(cursor - 1, cursor)[0]]

    # The whole global batch is packed on every process (all hold the split), so all agree on its rows.
    rows, consumed = packing_lib.pack_rows(next_example, self.batch_size, self.packing, self.feature_lengths)
    if not rows or (not self.repeat and self.drop_remainder and len(rows) < self.batch_size):
      raise StopIteration
    self._position = start + consumed
    lo = self.process_index * self.local_batch_size
    local = rows[lo : lo + self.local_batch_size]
    arrays = packing_lib.make_packed_batch(
      local, self.packing, self.feature_lengths, self.local_batch_size, task_ids=self.task_ids
    )
    arrays["mask"] = np.zeros(self.local_batch_size, np.int32)
    arrays["mask"][: len(local)] = 1
    examples = [ex for row in local for ex in row]
    text: dict[str, list[Any]] = {
      "inputs": [ex["inputs"] for ex in examples],
      "targets": [ex["targets"] for ex in examples],
      "idx": [ex.get("idx") for ex in examples],
      "examples": [{k: v for k, v in ex.items() if not k.endswith("_ids")} for ex in examples],
    }
    return Batch(arrays, text)
