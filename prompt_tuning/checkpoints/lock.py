"""One trainer per MODEL_DIR: a lock file that names its holder.

Two trainers on one MODEL_DIR interleave their checkpoints (one then fails on an
orbax path the other renamed), rotate away each other's checkpoints and write
conflicting lines to metrics.jsonl. `train()` therefore holds `MODEL_DIR/train.lock`
from before it writes anything until it returns or raises:

  {"host": "worker-0", "pid": 4242, "started": "2026-01-02T03:04:05+00:00",
   "process_start": 123456, "token": "9f..."}

A second trainer stops with one line naming the holder. A lock left by a trainer
that died without releasing it (kill -9, a lost host) is stale: on the holder's
own host, a pid that no longer runs (or now runs another process: `process_start`,
the kernel's start time of the pid, differs) is taken over with one warning line.
From another host nothing tells whether the holder lives, so the line says how to
remove the lock. Evaluating and inferring only read and take no lock.

Locally the lock file appears whole and at once (written under a temporary name,
then hard-linked to `train.lock`, which fails if it exists). In a bucket (gs://)
there is no exclusive create through etils; the lock is written after checking
for one and read back to see whose it is, which closes all but a sub-second race.

Multi-host: process 0 takes the lock for the job; the others learn the outcome
from it, so every process stops or none does.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import os
import socket
import uuid
from typing import Callable, Iterator

from prompt_tuning import atomic
from prompt_tuning.checkpoints.structure import CheckpointError
from prompt_tuning.errors import first_line

LOCK_FILE = "train.lock"


class ModelDirInUse(CheckpointError):
  """Another trainer holds MODEL_DIR (or could not be shown not to). One line, naming the holder."""


@dataclasses.dataclass(frozen=True)
class Holder:
  host: str
  pid: int
  started: str  # when the holder took the lock (UTC, ISO 8601)
  process_start: int | None  # the pid's start time in clock ticks since boot (Linux); None elsewhere
  token: str  # unique per acquisition: a holder releases only its own lock

  @classmethod
  def me(cls) -> "Holder":
    now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat()
    pid = os.getpid()
    return cls(socket.gethostname(), pid, now, _process_start(pid), uuid.uuid4().hex)

  def describe(self) -> str:
    return f"pid {self.pid} on host {self.host}, since {self.started}"


def _process_start(pid: int) -> int | None:
  """The start time of process `pid` (field 22 of /proc/<pid>/stat), or None when unknown."""
  try:
    with open(f"/proc/{pid}/stat") as f:
      # The command name (field 2) is in parentheses and may hold spaces: count after the last ')'.
      return int(f.read().rsplit(")", 1)[1].split()[19])
  except (OSError, IndexError, ValueError):
    return None


def _runs(holder: Holder) -> bool:
  """Whether `holder`'s process (on this host) still runs."""
  try:
    os.kill(holder.pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    pass  # it exists, under another user
  if holder.process_start is not None:
    now = _process_start(holder.pid)
    if now is not None and now != holder.process_start:
      return False  # the pid was reused by a later process
  return True


class ModelDirLock:
  """MODEL_DIR/train.lock for this process: `acquire()`, then `release()`."""

  def __init__(self, model_dir: str):
    self.model_dir = model_dir
    self.path = os.path.join(model_dir, LOCK_FILE) if not atomic.is_remote(model_dir) else f"{model_dir}/{LOCK_FILE}"
    self._holder: Holder | None = None
    self._created_dir = False

  def acquire(self, warn: Callable[[str], None]) -> None:
    """Takes the lock; raises ModelDirInUse when a live (or possibly live) trainer holds it."""
    if not self.model_dir.strip():
      return  # an empty MODEL_DIR is refused by the run's own checks, not as a lock problem
    me = Holder.me()
    try:
      for _ in range(2):  # a second try after removing a stale lock
        if self._create(me):
          self._holder = me
          return
        holder = self._read()
        if holder is None:  # released meanwhile (or empty): try again
          continue
        if holder.host != me.host:
          raise ModelDirInUse(
            f"{self.model_dir} is in use by another trainer ({holder.describe()}); if it is no longer "
            f"running, delete {self.path} and start again"
          )
        if _runs(holder):
          raise ModelDirInUse(
            f"{self.model_dir} is in use by another trainer ({holder.describe()}); wait for it to finish, "
            f"stop it, or train into another MODEL_DIR"
          )
        warn(f"warning: taking over the stale lock {self.path} of a trainer that no longer runs ({holder.describe()})")
        self._remove(holder.token)
    except OSError as e:
      raise CheckpointError(f"{self.model_dir}: cannot take the trainer lock ({first_line(e, typed=True)})") from None
    raise ModelDirInUse(f"{self.model_dir}: another trainer took the lock {self.path} while this one started")

  def release(self) -> None:
    """Removes the lock if it is still this process's; and MODEL_DIR if acquire() created it and it stayed empty."""
    if self._holder is None:
      return
    token, self._holder = self._holder.token, None
    with contextlib.suppress(OSError, CheckpointError):  # an exception on its way out stays the one reported
      self._remove(token)
      if self._created_dir and not os.listdir(self.model_dir):
        os.rmdir(self.model_dir)  # a run that failed before writing anything leaves no trace

  # --- the file, local or remote

  def _create(self, me: Holder) -> bool:
    """Creates the lock naming `me`; False when one exists."""
    data = json.dumps(dataclasses.asdict(me))
    if atomic.is_remote(self.model_dir):
      from etils import epath

      path = epath.Path(self.path)
      if path.exists():
        return False
      atomic.write_text(path, data)
      return self._read() == me  # read back: of two near-simultaneous writers, the later one wins
    if not os.path.isdir(self.model_dir):
      os.makedirs(self.model_dir)
      self._created_dir = True
    temporary = os.path.join(self.model_dir, f"{atomic.TEMP_PREFIX}{me.token}-{LOCK_FILE}")
    with open(temporary, "w") as f:
      f.write(data)
    try:
      os.link(temporary, self.path)  # atomic, and fails if the lock exists: the file appears whole
      return True
    except FileExistsError:
      return False
    finally:
      os.unlink(temporary)

  def _read(self) -> Holder | None:
    """The lock's holder; None when there is no lock file."""
    try:
      if atomic.is_remote(self.path):
        from etils import epath

        text = epath.Path(self.path).read_text()
      else:
        with open(self.path) as f:
          text = f.read()
    except FileNotFoundError:
      return None
    try:
      return Holder(**json.loads(text))
    except (ValueError, TypeError) as e:
      raise ModelDirInUse(
        f"{self.path} is not a trainer lock ({first_line(e, typed=True)}); delete it if no trainer uses "
        f"{self.model_dir}"
      ) from None

  def _remove(self, token: str) -> None:
    """Deletes the lock file if it still holds `token` (never another trainer's fresh lock)."""
    holder = self._read()
    if holder is None or holder.token != token:
      return
    if atomic.is_remote(self.path):
      from etils import epath

      epath.Path(self.path).unlink()
    else:
      os.unlink(self.path)


@contextlib.contextmanager
def hold(model_dir: str, warn: Callable[[str], None] | None = None) -> Iterator[None]:
  """Holds MODEL_DIR's trainer lock for the `with` block (process 0 for the job; see the module doc)."""
  import jax

  from prompt_tuning.progress import say

  lock = ModelDirLock(model_dir)
  failure = None
  if jax.process_index() == 0:
    try:
      lock.acquire(warn or say)
    except CheckpointError as e:
      failure = e
  if jax.process_count() > 1:  # every process stops, or none does
    import numpy as np
    from jax.experimental import multihost_utils

    ok = int(multihost_utils.broadcast_one_to_all(np.int32(failure is None)))
    if not ok and failure is None:
      failure = ModelDirInUse(f"{model_dir}: process 0 could not take the trainer lock (its error says why)")
  if failure is not None:
    raise failure
  try:
    yield
  finally:
    lock.release()
