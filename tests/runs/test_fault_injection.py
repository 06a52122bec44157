"""Fault injection on real `prompt-tuning train` processes: kill -9, SIGTERM and divergence lose nothing.

Each case runs the quick start's tiny model for a few steps in CLI subprocesses (sharing the
session's JAX compilation cache, tests/conftest.py) and compares with one straight run:
  - kill -9 at seeded random points, one of them between a checkpoint's commit and its prompt
    file (prompt_tuning/faults.py): the resumed run ends bit-identical to the straight one;
  - SIGTERM mid-run: a checkpoint at that very step, exit 143 with one line, and the resumed run
    ends bit-identical;
  - an infinite learning rate from a good checkpoint: exit 1 with one error line, not one
    non-finite array on disk, and the last good checkpoint and prompt untouched (byte for byte).
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import os
import random
import shutil
import subprocess
import sys
import warnings
from typing import Any

import numpy as np
import pytest

from prompt_tuning import faults
from prompt_tuning.checkpoints import bundle as bundle_lib
from prompt_tuning.checkpoints.train_state import CHECKPOINTS_DIR, PROMPTS_DIR, STATE_ITEM
from prompt_tuning.runs import records

STEPS, SAVE_PERIOD = 12, 3
PROMPT_KEY = "['params']['prompt']['prompt']"  # in _checkpoint_arrays
FLAGS = [
  "--gin_file=quickstart.gin",
  f"--gin.TRAIN_STEPS={STEPS}",
  "--gin.BATCH_SIZE=8",
  "--gin.PROMPT_LENGTH=4",
  f"--gin.TrainSpec.save_period={SAVE_PERIOD}",
  "--gin.TrainSpec.log_period=2",
]


def _train(model_dir, *flags, fault: str | None = None) -> subprocess.CompletedProcess:
  env = {k: v for k, v in os.environ.items() if k != faults.ENV}
  if fault:
    env[faults.ENV] = fault
  return subprocess.run(
    [sys.executable, "-m", "prompt_tuning.cli.main", "train", *FLAGS, f"--gin.MODEL_DIR='{model_dir}'", *flags],
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )


def _prompt(model_dir, step: int) -> np.ndarray:
  return np.load(os.path.join(model_dir, PROMPTS_DIR, f"step_{step}.npy"), allow_pickle=False)


def _checkpoint_steps(model_dir) -> list[int]:
  return sorted(int(name) for name in os.listdir(os.path.join(model_dir, CHECKPOINTS_DIR)) if name.isdigit())


def _checkpoint_arrays(model_dir, step: int) -> dict:
  """Every array of checkpoint `step`'s train state (step, trainable parameters, optimizer state)."""
  import jax
  import orbax.checkpoint as ocp

  with ocp.PyTreeCheckpointer() as checkpointer, warnings.catch_warnings():
    warnings.simplefilter("ignore")  # "Sharding info not provided": a test reads them on the CPU, as saved
    tree = checkpointer.restore(os.path.join(os.path.abspath(model_dir), CHECKPOINTS_DIR, str(step), STATE_ITEM))
  return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def _digests(model_dir) -> dict[str, str]:
  out = {}
  for root, _, files in os.walk(model_dir):
    for name in files:
      path = os.path.join(root, name)
      with open(path, "rb") as f:
        out[os.path.relpath(path, model_dir)] = hashlib.sha256(f.read()).hexdigest()
  return out


def _one_error_line(stderr: str) -> str:
  """The run's single error line; no traceback."""
  assert "Traceback" not in stderr, stderr[-3000:]
  errors = [line for line in stderr.splitlines() if "error" in line.lower()]
  assert len(errors) == 1, stderr[-3000:]
  return errors[0]


def _assert_same_end(model_dir, straight_dir) -> None:
  """The final prompt file and the final checkpoint's arrays bit-identical to the straight run's."""
  np.testing.assert_array_equal(_prompt(model_dir, STEPS), _prompt(straight_dir, STEPS))
  ours, theirs = _checkpoint_arrays(model_dir, STEPS), _checkpoint_arrays(straight_dir, STEPS)
  assert ours.keys() == theirs.keys()
  for name, value in theirs.items():
    np.testing.assert_array_equal(ours[name], value, err_msg=name)


def _kill_chain(model_dir) -> tuple[list[tuple[str, int]], int]:
  """Kills (-9) a run at three seeded random points, resuming after each, then runs it to its end.

  Returns (the kills as (point, step), the step of the kill between commit and prompt write).
  """
  rng = random.Random(12)
  first = rng.randrange(2, 6)  # mid-run, before the second checkpoint
  committed = rng.choice([6, 9])  # between a checkpoint's commit and its prompt .npy; kept to the end (keep=3)
  last = rng.randrange(committed + 1, STEPS)  # after that, before the end
  kills = [("step_done", first), ("checkpoint_committed", committed), ("step_done", last)]
  for point, step in kills:
    result = _train(model_dir, fault=f"{point}@{step}")
    assert result.returncode == -9, (point, step, result.returncode, result.stderr[-3000:])
  result = _train(model_dir)
  assert result.returncode == 0, result.stderr[-3000:]
  return kills, committed


def _terminate_then_resume_or_diverge(base) -> dict[str, Any]:
  """A run SIGTERMed right after step 5 (not a save step); then two copies of it, one resumed
  as it was, one with an infinite learning rate (inf in float32)."""
  out = {"terminated": base / "terminated"}
  out["terminated_result"] = _train(out["terminated"], fault="step_done@5:SIGTERM")
  assert out["terminated_result"].returncode == 143, out["terminated_result"].stderr[-3000:]
  for name in ("resumed", "diverging"):
    out[name] = base / name
    shutil.copytree(out["terminated"], out[name])
  out["diverging_before"] = _digests(out["diverging"])
  with concurrent.futures.ThreadPoolExecutor(2) as pool:
    resumed = pool.submit(_train, out["resumed"])
    out["diverging_result"] = _train(out["diverging"], "--gin.adafactor.learning_rate=1e39")
    out["resumed_result"] = resumed.result()
  return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """Every run of this module, as concurrent chains (2 cores: about 40 s instead of 60 in a row)."""
  base = tmp_path_factory.mktemp("faults")
  with concurrent.futures.ThreadPoolExecutor(3) as pool:
    straight = pool.submit(_train, base / "straight")
    killed = pool.submit(_kill_chain, base / "killed")
    terminated = pool.submit(_terminate_then_resume_or_diverge, base)
    assert straight.result().returncode == 0, straight.result().stderr[-3000:]
    kills, committed = killed.result()
    out = terminated.result()
  return dict(out, straight=base / "straight", killed=base / "killed", kills=kills, committed=committed)


@pytest.mark.slow
def test_kill_9_anywhere_then_resume_ends_bit_identical(runs):
  model_dir = runs["killed"]
  _assert_same_end(model_dir, runs["straight"])
  for name in os.listdir(os.path.join(model_dir, PROMPTS_DIR)):  # every prompt file there loads
    path = os.path.join(model_dir, PROMPTS_DIR, name)
    prompt = bundle_lib.read_bundle(path).prompt if name.endswith(".safetensors") else np.load(path, allow_pickle=False)
    assert prompt.shape == (4, 128) and np.isfinite(prompt).all(), name
  status = records.read_status(str(model_dir))  # run_status.json: three killed sessions, then the last
  assert (status["status"], status["step"], status["sessions"], status["error"]) == ("finished", STEPS, 4, None)


@pytest.mark.slow
def test_kill_9_between_commit_and_prompt_write_leaves_every_checkpoint_its_prompt(runs):
  model_dir, committed = runs["killed"], runs["committed"]
  assert committed in _checkpoint_steps(model_dir)
  for step in _checkpoint_steps(model_dir):
    np.testing.assert_array_equal(_prompt(model_dir, step), _checkpoint_arrays(model_dir, step)[PROMPT_KEY])


@pytest.mark.slow
def test_sigterm_saves_the_current_step_and_the_resumed_run_loses_nothing(runs):
  model_dir, result = runs["terminated"], runs["terminated_result"]
  assert "Traceback" not in result.stderr
  assert result.stderr.splitlines()[-1] == (
    f"prompt-tuning train: stopped by SIGTERM after step 5; saved the checkpoint {model_dir}/checkpoints/5: "
    "run the same command again to resume from step 5"
  )
  assert _checkpoint_steps(model_dir) == [3, 5]
  np.testing.assert_array_equal(_prompt(model_dir, 5), _checkpoint_arrays(model_dir, 5)[PROMPT_KEY])
  status = records.read_status(str(model_dir))
  assert (status["status"], status["step"], status["train_steps"]) == ("stopped", 5, STEPS)
  resumed, result = runs["resumed"], runs["resumed_result"]
  assert result.returncode == 0, result.stderr[-3000:]
  assert f"resuming at step 5 from checkpoint {resumed}/checkpoints/5" in result.stderr
  _assert_same_end(resumed, runs["straight"])
  assert records.read_status(str(resumed))["status"] == "finished"


@pytest.mark.slow
def test_an_infinite_learning_rate_stops_before_writing_anything_non_finite(runs):
  diverging, result, before = runs["diverging"], runs["diverging_result"], runs["diverging_before"]
  assert result.returncode == 1, result.stderr[-3000:]
  line = _one_error_line(result.stderr)
  assert line.startswith(
    "prompt-tuning train: error: training diverged at step 6: the updated trainable parameters hold 512 "
    "non-finite values (learning rate inf); stopped before writing anything of it: the last good checkpoint, "
    f"{diverging}/checkpoints/5, is untouched"
  ), line
  status = records.read_status(str(diverging))
  assert (status["status"], status["step"]) == ("failed", 5)
  assert status["error"].startswith("DivergenceError: training diverged at step 6"), status["error"]
  after = _digests(diverging)
  for name in ("checkpoints", "prompts"):  # the checkpoints and prompts, byte for byte
    assert {k: v for k, v in after.items() if k.startswith(name)} == {
      k: v for k, v in before.items() if k.startswith(name)
    }
  for root, _, files in os.walk(diverging):  # nothing non-finite anywhere
    for name in files:
      if name.endswith(".npy"):
        assert np.isfinite(np.load(os.path.join(root, name))).all(), name
      if name.endswith(".safetensors"):
        assert np.isfinite(bundle_lib.read_bundle(os.path.join(root, name)).prompt).all(), name
  for step in _checkpoint_steps(diverging):
    for name, value in _checkpoint_arrays(diverging, step).items():
      assert not np.issubdtype(value.dtype, np.floating) or np.isfinite(value).all(), (step, name)
