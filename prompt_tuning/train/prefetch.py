"""Input prefetched to the devices: the next batches are read and copied while the step runs.

A background thread pulls host batches from the pipeline, places them on the
mesh (an asynchronous host-to-device copy) and queues them, `size` ahead of
the step. Each queued item carries the pipeline position *after* its batch,
so a checkpoint written after step k records where step k+1 must resume,
however far the thread has read ahead.
"""

from __future__ import annotations

import queue
import threading
from typing import Any, Callable, Iterator

_DONE = object()  # the source is exhausted


class DevicePrefetcher:
  """Iterates (position, placed batch), keeping up to `size` batches in flight.

  Args:
    batches: yields host batches; `position_of(batches)` is read after each one.
    place: host batch -> device batch (e.g. `lambda b: partitioning.to_global_batch(b.arrays, mesh)`).
    position_of: the resumable position of `batches` after its latest batch.
    size: batches read ahead (>= 1).

  An exception raised while reading or placing is raised again from
  `__next__`, with its own type. `close()` stops the thread (also on `with`).
  """

  def __init__(
    self, batches: Iterator[Any], place: Callable[[Any], Any], position_of: Callable[[Any], int], size: int = 2
  ):
    if size < 1:
      raise ValueError(f"prefetch size must be >= 1, got {size}")
    self._queue: queue.Queue = queue.Queue(maxsize=size)
    self._stop = threading.Event()
    self._thread = threading.Thread(
      target=self._fill, args=(batches, place, position_of), daemon=True, name="device-prefetch"
    )
    self._thread.start()

  def _put(self, item: Any) -> bool:
    """Queues item unless stopped; False when stopped."""
    while not self._stop.is_set():
      try:
        self._queue.put(item, timeout=0.1)
        return True
      except queue.Full:
        continue
    return False

  def _fill(self, batches: Iterator[Any], place: Callable[[Any], Any], position_of: Callable[[Any], int]) -> None:
    try:
      for batch in batches:
        if not self._put((position_of(batches), place(batch))):
          return
      self._put(_DONE)
    except BaseException as e:  # noqa: BLE001 -- handed to the consumer
      self._put(e)

  def __iter__(self) -> DevicePrefetcher:
    return self

  def __next__(self) -> tuple[int, Any]:
    if self._stop.is_set():
      raise StopIteration
    item = self._queue.get()
    if item is _DONE:
      self.close()
      raise StopIteration
    if isinstance(item, BaseException):
      self.close()
      raise item
    return item

  def close(self) -> None:
    """Stops the thread; batches read ahead are dropped (their position was never returned)."""
    self._stop.set()
    while True:  # unblock a thread waiting on a full queue
      try:
        self._queue.get_nowait()
      except queue.Empty:
        break
    self._thread.join(timeout=10)

  def __enter__(self) -> DevicePrefetcher:
    return self

  def __exit__(self, *exc: Any) -> None:
    self.close()
