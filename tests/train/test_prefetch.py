"""DevicePrefetcher: order, resumable positions, read-ahead, errors and shutdown."""

from __future__ import annotations

import threading
import time

import jax
import numpy as np
import pytest

from prompt_tuning.train.prefetch import DevicePrefetcher


class CountingSource:
  """Yields batch i = [i, i] for i < n; `position` = batches yielded so far (like BatchIterator's)."""

  def __init__(self, n: int, fail_at: int | None = None):
    self.n, self.fail_at, self.position = n, fail_at, 0
    self.read = threading.Event()

  def __iter__(self):
    return self

  def __next__(self):
    if self.position == self.fail_at:
      raise KeyError("corrupt record 3")
    if self.position >= self.n:
      raise StopIteration
    self.position += 1
    self.read.set()
    return np.full((2,), self.position - 1, np.int32)


def _wait_for(condition, timeout=5.0):
  deadline = time.time() + timeout
  while not condition() and time.time() < deadline:
    time.sleep(0.01)
  return condition()


def test_yields_every_batch_in_order_on_device_with_the_position_after_it():
  source = CountingSource(5)
  with DevicePrefetcher(source, jax.device_put, lambda s: s.position, size=2) as prefetcher:
    items = list(prefetcher)
  assert [position for position, _ in items] == [1, 2, 3, 4, 5]
  assert all(isinstance(batch, jax.Array) for _, batch in items)
  np.testing.assert_array_equal(np.stack([np.asarray(b) for _, b in items]), np.repeat(np.arange(5), 2).reshape(5, 2))


def test_reads_ahead_but_positions_stay_those_of_the_returned_batch():
  source = CountingSource(100)
  with DevicePrefetcher(source, jax.device_put, lambda s: s.position, size=3) as prefetcher:
    position, batch = next(prefetcher)
    # The thread fills the queue while the consumer holds batch 0: 1 returned + 3 queued + 1 waiting to be queued.
    assert _wait_for(lambda: source.position >= 4)
    assert source.position <= 5  # bounded by size
    assert position == 1 and int(batch[0]) == 0  # a checkpoint now resumes after batch 0, not at the read-ahead
    assert next(prefetcher)[0] == 2


def test_a_reading_error_reaches_the_consumer_with_its_type_after_the_good_batches():
  source = CountingSource(10, fail_at=3)
  prefetcher = DevicePrefetcher(source, jax.device_put, lambda s: s.position, size=2)
  assert [p for p, _ in (next(prefetcher) for _ in range(3))] == [1, 2, 3]
  with pytest.raises(KeyError, match="corrupt record 3"):
    next(prefetcher)
  with pytest.raises(StopIteration):  # closed after the error
    next(prefetcher)


def test_close_stops_a_thread_blocked_on_a_full_queue():
  source = CountingSource(10_000)
  prefetcher = DevicePrefetcher(source, jax.device_put, lambda s: s.position, size=1)
  assert _wait_for(lambda: source.position >= 2)  # queue full, the thread is waiting
  prefetcher.close()
  assert not prefetcher._thread.is_alive()
  assert source.position <= 3


def test_size_must_be_positive():
  with pytest.raises(ValueError, match="prefetch size must be >= 1, got 0"):
    DevicePrefetcher(CountingSource(1), jax.device_put, lambda s: s.position, size=0)
