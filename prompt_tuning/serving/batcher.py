"""Dynamic batching: rows of concurrent requests, grouped into device batches by one worker thread.

Requests are split into rows (one input each) and queued under a key naming the compiled program
they need (('predict', method, decode length) or ('score',)); rows of every task share a key, so
one device batch mixes tasks. The worker takes the key whose oldest row came first among those
that are ready (max_batch_size rows queued, or the oldest has waited max_wait_s) and runs up to
max_batch_size of its rows. While the device works, new rows queue up: under load the batches
fill by themselves, and an idle server answers a lone request after max_wait_s.

The device work runs in this thread, off the event loop, so the server keeps answering (health,
task lists, validation errors) while a batch runs. A batch that fails fails its own rows only.
"""

from __future__ import annotations

import collections
import concurrent.futures
import threading
import time
from typing import Any, Callable, Hashable, Sequence

# run(key, payloads) -> one result per payload, or an Exception instance for a row that failed alone.
RunBatch = Callable[[Hashable, Sequence[Any]], Sequence[Any]]


class _Row:
  __slots__ = ("payload", "future", "queued_at")

  def __init__(self, payload: Any):
    self.payload, self.future, self.queued_at = payload, concurrent.futures.Future(), time.monotonic()


class Batcher:
  """Queues rows and runs them in batches of at most `max_batch_size`, each row waiting at most
  about `max_wait_s` for company.

  Args:
    run: computes one batch (see RunBatch); called in the worker thread only.
    max_batch_size: rows per batch, at most.
    max_wait_s: how long the first row of a batch waits for more before the batch runs anyway.
  """

  def __init__(self, run: RunBatch, max_batch_size: int, max_wait_s: float):
    if max_batch_size < 1 or max_wait_s < 0:
      raise ValueError(f"max_batch_size must be >= 1 and max_wait >= 0, got {max_batch_size}, {max_wait_s}")
    self._run, self.max_batch_size, self.max_wait_s = run, max_batch_size, max_wait_s
    self._queues: dict[Hashable, collections.deque[_Row]] = {}
    self._ready = threading.Condition()
    self._stopped = False
    self._thread: threading.Thread | None = None
    self.batches = 0  # statistics, for /health
    self.rows = 0

  def start(self) -> None:
    if self._thread is None:
      self._thread = threading.Thread(target=self._loop, name="prompt-tuning-batcher", daemon=True)
      self._thread.start()

  def stop(self, timeout: float = 30.0) -> None:
    """Stops taking rows; the queued ones fail; waits for the batch in flight."""
    with self._ready:
      self._stopped = True
      self._ready.notify_all()
    if self._thread is not None:
      self._thread.join(timeout)
      self._thread = None

  @property
  def queued(self) -> int:
    with self._ready:
      return sum(len(q) for q in self._queues.values())

  def submit(self, key: Hashable, payloads: Sequence[Any]) -> list[concurrent.futures.Future]:
    """Queues `payloads` (rows of one request) under `key`; one future per row."""
    rows = [_Row(p) for p in payloads]
    with self._ready:
      if self._stopped:
        raise RuntimeError("the server is shutting down")
      self._queues.setdefault(key, collections.deque()).extend(rows)
      self._ready.notify()
    return [row.future for row in rows]

  def _next_batch(self) -> tuple[Hashable, list[_Row]] | None:
    """Waits for a ready key and takes its batch; None once stopped."""
    with self._ready:
      while True:
        if self._stopped:
          for queue in self._queues.values():
            for row in queue:
              row.future.set_exception(RuntimeError("the server shut down before this request ran"))
          self._queues.clear()
          return None
        now = time.monotonic()
        waiting = [(q[0].queued_at, key) for key, q in self._queues.items() if q]
        ready = [
          (first, key)
          for first, key in waiting
          if len(self._queues[key]) >= self.max_batch_size or now - first >= self.max_wait_s
        ]
        if ready:
          _, key = min(ready, key=lambda item: item[0])
          queue = self._queues[key]
          return key, [queue.popleft() for _ in range(min(self.max_batch_size, len(queue)))]
        timeout = None if not waiting else max(0.0, min(first for first, _ in waiting) + self.max_wait_s - now)
        self._ready.wait(timeout)

  def _loop(self) -> None:
    while (taken := self._next_batch()) is not None:
      key, rows = taken
      live = [row for row in rows if row.future.set_running_or_notify_cancel()]
      if not live:
        continue
      try:
        results = self._run(key, [row.payload for row in live])
      except Exception as e:  # the whole batch failed: its rows say why, the server goes on
        results = [e] * len(live)
      self.batches += 1
      self.rows += len(live)
      for row, result in zip(live, results):
        if isinstance(result, Exception):
          row.future.set_exception(result)
        else:
          row.future.set_result(result)
