"""Preemption: SIGTERM (or SIGINT, Ctrl-C) during training ends it at a step boundary, saved.

Cloud TPU, GCE spot VMs and SLURM announce a preemption with SIGTERM, a grace period before
SIGKILL. `Preemption` is installed around the training loop only: its handler merely records
the signal, and the loop asks `requested(step)` after each step, then saves a checkpoint (and its
prompt) at that step and raises `Preempted`, which the CLI reports in one line with exit status
128 + the signal's number (143 for SIGTERM, 130 for SIGINT, as a shell reports a process the
signal ended; SLURM and Kubernetes read any non-zero status as "did not finish"). Starting the
same command again resumes from that checkpoint without losing a step.

Acting at the step boundary, not inside the handler, is what keeps it correct: the handler runs
between two Python bytecodes, possibly in the middle of a save, while at the boundary the state
is a whole step's. A second Ctrl-C does not wait: it raises KeyboardInterrupt at once (nothing
is saved; the last checkpoint stays as it was, orbax commits a checkpoint atomically).

Multi-host: orbax's save is collective, so every process must save at the same step. There,
SIGTERM is left to JAX's preemption service (installed by jax.distributed.initialize): it
propagates a notice that reached any host to all of them and agrees on one step, which
`requested` asks every step (jax.experimental.multihost_utils.reached_preemption_sync_point;
no collective per step). SIGINT is not handled on multi-host runs: the process it reaches stops
at once (one line, exit 130) without a checkpoint, and the others fail on their next collective.
Signal handlers can only be installed from the main thread; train() called from another thread
runs without them.
"""

from __future__ import annotations

import signal
import threading
from typing import Any

import jax

_HANDLED = (signal.SIGTERM, signal.SIGINT)


class Preempted(KeyboardInterrupt):
  """Training stopped on a signal after saving a checkpoint at `step` (a KeyboardInterrupt, like Ctrl-C).

  exit_status: 128 + the signal's number, what the CLI exits with.
  """

  def __init__(self, message: str, step: int, signum: int):
    super().__init__(message)
    self.step = step
    self.exit_status = 128 + signum


class Preemption:
  """A context manager around the training loop: records SIGTERM/SIGINT, restores the previous handlers."""

  def __init__(self):
    self.signum: int | None = None
    self._previous: dict[int, Any] = {}
    self._multihost = jax.process_count() > 1

  def _handle(self, signum: int, frame: Any) -> None:
    del frame
    if self.signum == signal.SIGINT and signum == signal.SIGINT:
      raise KeyboardInterrupt  # the second Ctrl-C: stop now, without saving
    self.signum = signum

  def __enter__(self) -> Preemption:
    if threading.current_thread() is not threading.main_thread():
      return self
    handled = (signal.SIGTERM, signal.SIGINT) if not self._multihost else ()
    for signum in handled:
      self._previous[signum] = signal.signal(signum, self._handle)
    return self

  def __exit__(self, *exc: Any) -> None:
    for signum, previous in self._previous.items():
      # None: the previous handler was not installed from Python (e.g. by a C library); the default it is.
      signal.signal(signum, signal.SIG_DFL if previous is None else previous)
    self._previous.clear()

  def requested(self, step: int) -> bool:
    """Whether to save at `step` (the number of steps done) and stop; call it after every step."""
    if self._multihost:
      return _reached_preemption_sync_point(step)
    return self.signum is not None

  def stopped(self, step: int, where: str) -> Preempted:
    """The exception to raise once the checkpoint of `step` is saved at `where`."""
    signum = self.signum if self.signum is not None else signal.SIGTERM  # multi-host: JAX's notice is SIGTERM's
    name = signal.Signals(signum).name
    return Preempted(
      f"stopped by {name} after step {step}; saved the checkpoint {where}: run the same command again to resume "
      f"from step {step}",
      step,
      signum,
    )


def _reached_preemption_sync_point(step: int) -> bool:
  from jax.experimental import multihost_utils

  try:
    return bool(multihost_utils.reached_preemption_sync_point(step))
  except RuntimeError:  # the preemption service is off (jax_enable_preemption_service=False)
    return False
