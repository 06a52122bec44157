"""Multi-host runs: the flags, their one-line errors, and two real local processes on the CPU.

The two-process run (jax.distributed over localhost, gloo collectives, 2 CPU
devices each: a 4-way data mesh) trains 3 steps, stops, resumes to step 6 and
runs inference; it must give the prompt, the metrics and the predictions of one
process on one device training 6 steps straight.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from prompt_tuning.cli import main as cli
from support import processes

FLAGS = [
  "--gin_file=quickstart.gin",
  "--gin.BATCH_SIZE=8",
  "--gin.TrainSpec.save_period=3",
  "--gin.TrainSpec.log_period=2",
  # 30 rows over a 4-way data axis: padded to 32; 100 examples: a last, partial batch of 10.
  "--gin.EVAL_BATCH_SIZE=30",
]
PREDICTIONS = "inference/quickstart_sentiment-validation-step6.jsonl"
# Prompts of a split job against one device differ by the order of float32 sums. Measured on a
# 2-core x86 CPU: at most 5.3e-6 apart (4-way data split, 6 steps; one replica over two processes,
# 4 steps) on prompts of 1.1 rms, where an element near 0 breaks any relative bound.
ROUNDING_BOUND = 1e-4


# --- flags ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
  "flags, message",
  [
    (["--process_index=1"], "--process_index also needs --coordinator_address and --process_count"),
    (["--coordinator_address=localhost:1234", "--process_count=2"], "--process_count also need --process_index"),
    (
      ["--coordinator_address=localhost:1234", "--process_count=2", "--process_index=2"],
      "--process_index=2 is not in [0, 2)",
    ),
    (
      ["--coordinator_address=localhost:1234", "--process_count=0", "--process_index=0"],
      "--process_count=0 must be >= 1",
    ),
    (["--coordinator_address=localhost", "--process_count=2", "--process_index=0"], "is not HOST:PORT"),
    (["--coordinator_address=localhost:99999", "--process_count=2", "--process_index=0"], "is not HOST:PORT"),
    (["--process_count=two"], "argument --process_count: invalid int value: 'two'"),
    (["--coordinator_address"], "argument --coordinator_address: expected one argument"),
  ],
)
def test_bad_multihost_flags_are_one_line_and_start_nothing(flags, message, capsys, monkeypatch):
  monkeypatch.setattr(jax.distributed, "initialize", lambda *a, **k: pytest.fail("initialize was called"))
  for command, name in (("train", "train"), ("evaluate", "evaluate"), ("eval", "evaluate")):  # eval: the old name
    assert cli.main([command, "--gin_file=quickstart.gin", *flags]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"prompt-tuning {name}: error: ") and message in err, err


@pytest.mark.parametrize(
  "flags, call",
  [
    (
      ["--coordinator_address=10.0.0.1:1234", "--process_count=4", "--process_index=3"],
      (("10.0.0.1:1234",), {"num_processes": 4, "process_id": 3}),
    ),
    (
      ["--coordinator_address=[::1]:8476", "--process_count=1", "--process_index=0", "--multiprocess"],
      (("[::1]:8476",), {"num_processes": 1, "process_id": 0}),
    ),
    (["--multiprocess"], ((), {})),
    (["--multiprocess_gpu"], ((), {})),  # t5x's name
    ([], None),
  ],
)
def test_flags_reach_jax_distributed_initialize(flags, call, capsys, monkeypatch):
  calls = []
  monkeypatch.setattr(jax.distributed, "initialize", lambda *a, **k: calls.append((a, k)))
  # Initialization comes first; the missing gin file then stops the run.
  assert cli.main(["infer", "--gin_file=no_such.gin", *flags]) == 1
  assert "gin file not found: no_such.gin" in capsys.readouterr().err
  assert calls == ([call] if call else [])


def test_initialize_failure_is_one_line(capsys, monkeypatch):
  def fail(*args, **kwargs):
    raise RuntimeError("DEADLINE_EXCEEDED: Barrier timed out\n  (details...)")

  monkeypatch.setattr(jax.distributed, "initialize", fail)
  assert cli.main(["train", "--gin_file=quickstart.gin", "--multiprocess"]) == 1
  err = capsys.readouterr().err
  assert err == "prompt-tuning train: error: jax.distributed.initialize failed: DEADLINE_EXCEEDED: Barrier timed out\n"


def test_help_lists_the_multihost_flags():
  out = subprocess.run(
    [sys.executable, "-m", "prompt_tuning.cli.main", "train", "--help"],
    capture_output=True,
    text=True,
    timeout=60,
    cwd=os.path.dirname(__file__),
  ).stdout
  assert out.startswith("usage: prompt-tuning train")
  for flag in (
    "--multiprocess, --multiprocess_gpu",
    "--coordinator_address HOST:PORT",
    "--process_count N",
    "--process_index I",
  ):
    assert flag in out


# --- two processes -------------------------------------------------------------------------------------


def _run_one(cwd, *args) -> str:
  result = subprocess.run(
    [sys.executable, "-m", "prompt_tuning.cli.main", *args],
    cwd=cwd,
    env=processes.cpu_env(1),
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  return result.stdout


def _run_two(cwd, *args, devices: int = 2) -> list[str]:
  """Runs `prompt-tuning ARGS` as processes 0 and 1 of one job (`devices` CPU devices each); their stdouts."""
  return processes.run_processes(cwd, args, processes=2, devices=devices)


def _eval_lines(stdout: str) -> list[str]:
  return [line for line in stdout.splitlines() if line.strip().startswith("eval ")]


@pytest.mark.slow
def test_two_processes_train_resume_and_infer_like_one(tmp_path):
  single, multi = "single", "multi"
  out_single = _run_one(tmp_path, "train", *FLAGS, f"--gin.MODEL_DIR='{single}'", "--gin.TRAIN_STEPS=6")
  _run_one(tmp_path, "infer", *FLAGS, f"--gin.MODEL_DIR='{single}'", "--gin_file=runs/infer.gin")

  _run_two(tmp_path, "train", *FLAGS, f"--gin.MODEL_DIR='{multi}'", "--gin.TRAIN_STEPS=3")
  outs = _run_two(tmp_path, "train", *FLAGS, f"--gin.MODEL_DIR='{multi}'", "--gin.TRAIN_STEPS=6")  # resumes
  infer_outs = _run_two(tmp_path, "infer", *FLAGS, f"--gin.MODEL_DIR='{multi}'", "--gin_file=runs/infer.gin")

  # The same prompt as one process on one device (the 4-way data split sums in another order).
  prompts = [np.load(tmp_path / d / "prompts" / "step_6.npy") for d in (single, multi)]
  np.testing.assert_allclose(prompts[1], prompts[0], rtol=0, atol=ROUNDING_BOUND)
  assert not np.allclose(prompts[1], np.load(tmp_path / multi / "prompts" / "step_3.npy"))  # it did train on

  # Both processes report the single run's evaluation, over all 100 examples.
  assert _eval_lines(outs[0]) == _eval_lines(outs[1]) == _eval_lines(out_single)
  assert "  eval examples: 100" in _eval_lines(out_single)

  # One writer: each record once (two appending writers would double them).
  def records(d):
    return [json.loads(line) for line in open(tmp_path / d / "metrics.jsonl")]

  multi_rows = records(multi)
  keys = [(r["step"], "eval/examples" in r) for r in multi_rows]
  # train at 2, 3 (the end of the first run), 4, 6; eval at 3 and 6
  assert sorted(keys) == [(2, False), (3, False), (3, True), (4, False), (6, False), (6, True)]
  evals = {d: [r for r in records(d) if "eval/examples" in r][-1] for d in (single, multi)}
  assert evals[multi] == evals[single]
  train = {d: {r["step"]: r for r in records(d) if "train/loss" in r} for d in (single, multi)}
  for step in (2, 6):  # the log periods both runs share (steps 1-2 and 5-6)
    for name in ("train/loss", "train/token_accuracy", "train/grad_norm"):
      np.testing.assert_allclose(train[multi][step][name], train[single][step][name], rtol=1e-4)
  assert (tmp_path / multi / "config.gin").is_file()

  # Inference: process 0 writes all 100 predictions, row for row the single run's.
  said = [[line for line in out.splitlines() if line.startswith("predictions:")] for out in infer_outs]
  assert said[0] == said[1] == [f"predictions: {multi}/{PREDICTIONS}"]
  preds = {d: [json.loads(line) for line in open(tmp_path / d / PREDICTIONS)] for d in (single, multi)}
  assert len(preds[multi]) == 100
  assert [(p["input"], p["prediction"]) for p in preds[multi]] == [(p["input"], p["prediction"]) for p in preds[single]]
  np.testing.assert_allclose([p["score"] for p in preds[multi]], [p["score"] for p in preds[single]], rtol=1e-4)


@pytest.mark.slow
def test_a_model_replica_spanning_two_processes_trains_like_one_device(tmp_path):
  """NUM_PARTITIONS=2 over two processes of one CPU device each: one model replica across both
  hosts, so both feed the same (whole) batch. Same prompt and evaluation as one device."""
  out_single = _run_one(tmp_path, "train", *FLAGS, "--gin.MODEL_DIR='single'", "--gin.TRAIN_STEPS=4")
  outs = _run_two(
    tmp_path, "train", *FLAGS, "--gin.MODEL_DIR='spanning'", "--gin.TRAIN_STEPS=4", "--gin.NUM_PARTITIONS=2", devices=1
  )
  prompts = [np.load(tmp_path / d / "prompts" / "step_4.npy") for d in ("single", "spanning")]
  np.testing.assert_allclose(prompts[1], prompts[0], rtol=0, atol=ROUNDING_BOUND)
  assert _eval_lines(outs[0]) == _eval_lines(outs[1]) == _eval_lines(out_single)
