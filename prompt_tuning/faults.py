"""Test-only fault points: PROMPT_TUNING_FAULT=<point>@<step>[:<signal>] signals this process there.

tests/runs/test_fault_injection.py stops training runs at exact moments that random timing
rarely hits, e.g. between a checkpoint's commit and the write of its prompt file:

  PROMPT_TUNING_FAULT=checkpoint_committed@6          SIGKILL (kill -9) right after checkpoint 6 commits
  PROMPT_TUNING_FAULT=step_done@5:SIGTERM             SIGTERM to itself once step 5 is done

Points: 'step_done' (runs/train.py, after a step's update, before anything of it is written) and
'checkpoint_committed' (checkpoints/train_state.py, after the orbax commit, before the prompt .npy).
Unset, as everywhere outside these tests, `point` costs one environment lookup.
"""

from __future__ import annotations

import os
import signal

ENV = "PROMPT_TUNING_FAULT"


def point(name: str, step: int) -> None:
  """Sends the signal PROMPT_TUNING_FAULT names (default SIGKILL) to this process when it names `name`@`step`."""
  spec = os.environ.get(ENV)
  if not spec:
    return
  where, _, signame = spec.partition(":")
  if where == f"{name}@{step}":
    os.kill(os.getpid(), signal.Signals[signame or "SIGKILL"])
