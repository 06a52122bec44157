"""End to end through train(): a damaged latest checkpoint (flipped bytes, truncated files) and a
truncated prompt file. The run warns in one line, resumes from the previous checkpoint, and ends
with the prompt of an uninterrupted run; every prompt file loads."""

from __future__ import annotations

import glob
import os
import re

import numpy as np
import pytest

from prompt_tuning.runs import specs
from prompt_tuning.runs.train import train


def _train(model_dir, steps: int):
  # A 20-token prompt (2.5 KB): orbax stores it in a data file of its own, without a checksum.
  return train(
    specs.ModelSpec(config="tiny", prompt=specs.PromptSpec(length=20)),
    specs.TaskSpec("quickstart_sentiment", {"inputs": 24, "targets": 4}),
    str(model_dir),
    specs.TrainSpec(steps=steps, batch_size=8, save_period=3, log_period=3),
    specs.EvaluationSpec(rank_classification=False),
    progress=False,
  )


def _data_files(model_dir, step: int) -> list[str]:
  return glob.glob(os.path.join(model_dir, "checkpoints", str(step), "state", "**", "d", "*"), recursive=True)


def _flip(model_dir, step: int) -> None:
  # The largest: the prompt's, or its optimizer statistic of the same size (either is the step's state).
  path = max(_data_files(model_dir, step), key=os.path.getsize)
  data = bytearray(open(path, "rb").read())
  data[len(data) // 2 : len(data) // 2 + 8] = b"\x7f" * 8
  open(path, "wb").write(bytes(data))


def _truncate(model_dir, step: int) -> None:
  for path in _data_files(model_dir, step):
    with open(path, "r+b") as f:
      f.truncate(os.path.getsize(path) // 2)


@pytest.mark.slow
def test_a_damaged_latest_checkpoint_resumes_from_the_previous_one(tmp_path, capsys):
  run = tmp_path / "run"
  straight = _train(run, 6).trainable["prompt"]["prompt"]  # checkpoints 3 and 6
  for damage, cause in (
    (_flip, r"is corrupt: (params|opt_state/\S+)/prompt/prompt differs from its checksum"),
    (_truncate, r"cannot be read \("),
  ):
    damage(run, 6)
    with open(run / "prompts" / "step_3.npy", "r+b") as f:
      f.truncate(64)  # as a kill between checkpoint 3's commit and its .npy write would leave it
    capsys.readouterr()
    resumed = _train(run, 6)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith(("warning", "note"))]
    assert len(lines) == 2, lines
    assert re.match(rf"warning: checkpoint {re.escape(str(run))}/checkpoints/6 {cause}", lines[0]), lines[0]
    assert lines[0].endswith("; resuming from step 3")
    assert lines[1].startswith(f"note: rewrote {run}/prompts/step_3.npy (unreadable")
    # The same prompt as the uninterrupted run (restarting from step 3 is bit-identical to it) ...
    np.testing.assert_array_equal(resumed.trainable["prompt"]["prompt"], straight)
    # ... and every prompt file loads, step 6's being the final prompt.
    np.testing.assert_array_equal(np.load(run / "prompts" / "step_6.npy"), straight)
    assert np.load(run / "prompts" / "step_3.npy").shape == straight.shape
  assert sorted(os.listdir(run / "checkpoints")) == ["3", "6"] and not os.path.exists(run / "train.lock")
