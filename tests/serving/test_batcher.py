"""The dynamic batcher alone (no model): batch sizes, waits, keys, and failures kept to their rows."""

from __future__ import annotations

import threading
import time

import pytest

from prompt_tuning.serving.batcher import Batcher
from prompt_tuning.serving.engine import default_buckets


class Recorder:
  """A run function that records each batch and answers each payload with payload * 10."""

  def __init__(self, delay: float = 0.0):
    self.batches, self.delay = [], delay
    self.lock = threading.Lock()

  def __call__(self, key, payloads):
    with self.lock:
      self.batches.append((key, list(payloads)))
    time.sleep(self.delay)
    return [ValueError(f"bad {p}") if p == "bad" else p * 10 for p in payloads]


def test_rows_queued_together_run_as_full_batches_of_one_key():
  run = Recorder()
  batcher = Batcher(run, max_batch_size=4, max_wait_s=0.5)  # only a full batch runs before the wait is over
  futures = batcher.submit("a", [1, 2, 3]) + batcher.submit("b", [4]) + batcher.submit("a", [5, 6])
  batcher.start()
  try:
    assert [f.result(timeout=10) for f in futures[:4] + futures[4:5]] == [10, 20, 30, 40, 50]
    assert run.batches[0] == ("a", [1, 2, 3, 5])  # full: it ran at once, without waiting
    # What is left (a: [6], b: [4]) runs once its wait is over, oldest first.
    assert [f.result(timeout=10) for f in futures] == [10, 20, 30, 40, 50, 60]
    assert run.batches[1:] == [("b", [4]), ("a", [6])]
  finally:
    batcher.stop()


def test_a_lone_row_waits_at_most_max_wait():
  run = Recorder()
  batcher = Batcher(run, max_batch_size=64, max_wait_s=0.05)
  batcher.start()
  try:
    started = time.monotonic()
    assert batcher.submit("a", [7])[0].result(timeout=10) == 70
    assert 0.04 <= time.monotonic() - started < 2.0
  finally:
    batcher.stop()


def test_rows_that_come_while_the_device_works_fill_the_next_batch():
  run = Recorder(delay=0.2)
  batcher = Batcher(run, max_batch_size=8, max_wait_s=0.0)
  batcher.start()
  try:
    first = batcher.submit("a", [1])
    time.sleep(0.05)  # the first batch is running now
    rest = [f for i in range(5) for f in batcher.submit("a", [i + 2])]
    assert [f.result(timeout=10) for f in first + rest] == [10, 20, 30, 40, 50, 60]
    assert [payloads for _, payloads in run.batches] == [[1], [2, 3, 4, 5, 6]]
  finally:
    batcher.stop()


def test_a_failing_row_or_batch_fails_alone_and_the_worker_goes_on():
  calls = []

  def run(key, payloads):
    calls.append(payloads)
    if key == "broken":
      raise RuntimeError("device fell over")
    return [ValueError("bad row") if p == "bad" else p for p in payloads]

  batcher = Batcher(run, max_batch_size=4, max_wait_s=0.01)
  batcher.start()
  try:
    good, bad = batcher.submit("a", ["ok", "bad"])
    assert good.result(timeout=10) == "ok"
    with pytest.raises(ValueError, match="bad row"):
      bad.result(timeout=10)
    with pytest.raises(RuntimeError, match="device fell over"):
      batcher.submit("broken", [1])[0].result(timeout=10)
    assert batcher.submit("a", ["again"])[0].result(timeout=10) == "again"
  finally:
    batcher.stop()
  with pytest.raises(RuntimeError, match="shutting down"):
    batcher.submit("a", [1])


def test_stopping_fails_what_is_still_queued():
  batcher = Batcher(Recorder(), max_batch_size=4, max_wait_s=60.0)
  batcher.start()
  future = batcher.submit("a", [1])[0]
  batcher.stop()
  with pytest.raises(RuntimeError, match="shut down before this request ran"):
    future.result(timeout=10)


def test_buckets_are_powers_of_two_up_to_the_batch_size():
  assert default_buckets(1) == (1,)
  assert default_buckets(32) == (1, 2, 4, 8, 16, 32)
  assert default_buckets(24) == (1, 2, 4, 8, 16, 24)
