"""Signals during and outside training: recorded at the step boundary inside the loop, one line outside it.

The end-to-end case (SIGTERM mid-run, checkpoint, bit-identical resume) is in test_fault_injection.py.
"""

from __future__ import annotations

import os
import signal

import pytest

from prompt_tuning.cli import gin_runner
from prompt_tuning.runs import preemption


def test_the_handler_records_the_signal_and_the_previous_one_comes_back():
  previous = signal.getsignal(signal.SIGTERM)
  with preemption.Preemption() as preempt:
    assert not preempt.requested(1)
    os.kill(os.getpid(), signal.SIGTERM)  # recorded, nothing else: the loop acts at its next step boundary
    assert preempt.requested(2)
    stopped = preempt.stopped(2, "/m/checkpoints/2")
  assert signal.getsignal(signal.SIGTERM) is previous
  assert isinstance(stopped, KeyboardInterrupt) and (stopped.step, stopped.exit_status) == (2, 143)
  assert str(stopped) == (
    "stopped by SIGTERM after step 2; saved the checkpoint /m/checkpoints/2: run the same command again to resume "
    "from step 2"
  )


def test_a_second_ctrl_c_does_not_wait_for_the_step():
  with preemption.Preemption() as preempt:
    os.kill(os.getpid(), signal.SIGINT)
    assert preempt.requested(1) and preempt.stopped(1, "x").exit_status == 130
    with pytest.raises(KeyboardInterrupt):
      os.kill(os.getpid(), signal.SIGINT)
  assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_ctrl_c_outside_training_is_one_line_and_exit_130(monkeypatch, capsys):
  def interrupted(command_line):
    raise KeyboardInterrupt

  monkeypatch.setattr(gin_runner, "parse_gin", interrupted)  # e.g. while loading the model
  assert gin_runner.run(["--gin_file=quickstart.gin"], "train", lambda result: None) == 130
  assert capsys.readouterr().err == "prompt-tuning train: interrupted (Ctrl-C)\n"
