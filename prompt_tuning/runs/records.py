"""MODEL_DIR/run_status.json: where a training run stands, for `prompt-tuning results` and sweeps.

  {"status": "running" | "finished" | "stopped" | "failed", "step": 3000, "train_steps": 30000,
   "error": null, "wall_seconds": 812.4, "sessions": 2, "trainable_params": 76800,
   "model_params": 247577856, "updated": 1764624000.0}

train() writes it (process 0) when a session starts, after every checkpoint and when the session
ends: 'finished' at TRAIN_STEPS, 'stopped' when preempted (SIGTERM/SIGINT; the same command resumes
it), 'failed' with the error's first line. A process killed outright leaves 'running' behind, which
a reader sees as incomplete. `step` is the last step whose checkpoint was committed. wall_seconds
sums every session's time from the start of train() (setup, compilation and evaluation included)
to its last write. trainable_params counts the trained tree, model_params the frozen model's
parameters (every parameter outside the prompt), both from the run's own arrays.
"""

from __future__ import annotations

import json
import time
from typing import Any

from etils import epath

from prompt_tuning import atomic, param_tree
from prompt_tuning.errors import RunError, first_line

STATUS_FILE = "run_status.json"
STATUSES = ("running", "finished", "stopped", "failed")


def count_params(tree: Any) -> int:
  """Number of scalars in a parameter tree (arrays or ShapeDtypeStructs)."""
  import math

  return sum(int(math.prod(getattr(leaf, "shape", ()))) for leaf in param_tree.flatten(tree).values())


def model_param_count(params: Any) -> int:
  """The frozen model's parameters: every one outside the prompt layer."""
  return count_params({k: v for k, v in param_tree.flatten(params).items() if not k.startswith("prompt/")})


def read_status(model_dir: str) -> dict[str, Any] | None:
  """MODEL_DIR/run_status.json, or None when there is none or it cannot be parsed."""
  try:
    record = atomic.read_json(epath.Path(model_dir) / STATUS_FILE)
  except RunError:  # a status is advisory: unreadable reads as none
    return None
  return record if isinstance(record, dict) else None


def record_early_failure(model_dir: str, train_steps: Any, error: str) -> bool:
  """Marks a run 'failed' that stopped before train() wrote any status (its gin, its checkpoint or
  its prompt initializer refused), so that `results` does not list it as never started.

  Returns whether it wrote: a status the run wrote itself is left as it is.
  """
  if (epath.Path(model_dir) / STATUS_FILE).exists():
    return False
  record = {
    "status": "failed",
    "step": None,
    "train_steps": train_steps if isinstance(train_steps, int) else None,
    "error": error,
    "wall_seconds": None,
    "updated": time.time(),
  }
  atomic.write_text(epath.Path(model_dir) / STATUS_FILE, json.dumps(record, indent=1))
  return True


class StatusRecord:
  """Writes MODEL_DIR/run_status.json for one session of train(); wall time adds up over sessions.

  Args:
    model_dir: MODEL_DIR.
    train_steps: TRAIN_STEPS of this session.
    trainable_params, model_params: parameter counts (see the module docstring).
    started: when this session began (time.time()).
    enabled: False on processes other than 0: every method does nothing.
  """

  def __init__(
    self,
    model_dir: str,
    *,
    train_steps: int,
    trainable_params: int,
    model_params: int,
    started: float,
    enabled: bool = True,
  ):
    self.model_dir, self.enabled, self._started = model_dir, enabled, started
    previous = (read_status(model_dir) or {}) if enabled else {}
    self._earlier = float(previous.get("wall_seconds") or 0.0)  # the sessions before this one
    self._record = {
      "train_steps": int(train_steps),
      "sessions": int(previous.get("sessions") or 0) + 1,
      "trainable_params": int(trainable_params),
      "model_params": int(model_params),
    }

  def write(self, step: int, status: str = "running", error: BaseException | None = None) -> None:
    if not self.enabled:
      return
    if status not in STATUSES:
      raise ValueError(f"run status must be one of {', '.join(STATUSES)}, got {status!r}")
    now = time.time()
    record = {
      "status": status,
      "step": int(step),
      **self._record,
      "error": None if error is None else first_line(error, typed=True),
      "wall_seconds": round(self._earlier + now - self._started, 3),
      "updated": now,
    }
    atomic.write_text(epath.Path(self.model_dir) / STATUS_FILE, json.dumps(record, indent=1))

  def end(self, step: int, status: str, error: BaseException | None = None) -> None:
    """`write` for a session that stops on an exception: a failing write must not hide the run's own error."""
    try:
      self.write(step, status, error)
    except Exception:  # noqa: BLE001  (the exception being raised is the one to report)
      pass
