"""`prompt-tuning sweep` end to end on the tiny 2 x 2 x 2 grid (tests/support/sweeps.py): stopped
part-way and killed mid-run, it finishes only what is missing; its printed commands, run by hand,
make the same run directories; SIGTERM stops the run in progress and the sweep."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from support import sweeps


def _finished(run_dir: str) -> bool:
  return os.path.isdir(os.path.join(run_dir, "checkpoints", "2"))


def _stamps(run_dir: str) -> dict[str, int]:
  """What a finished run wrote, and when (ns): any retraining or re-evaluation changes one."""
  paths = ["metrics.jsonl", "config.gin", "sweep.json", "checkpoints/2", "prompts/step_2.safetensors"]
  return {p: os.stat(os.path.join(run_dir, p)).st_mtime_ns for p in paths}


@pytest.mark.slow
def test_sweep_stops_resumes_and_prints_the_commands_it_runs(tmp_path):
  experiment = sweeps.write_tiny_experiment(tmp_path)
  root = tmp_path / "grid"
  runs = [str(root / name) for name in sweeps.TINY_RUNS]

  # 1. Three runs now, the rest later.
  first = sweeps.run_sweep([experiment, "--root", str(root), "--max_runs", "3"])
  assert first.returncode == 0, first.stderr[-3000:]
  assert [_finished(r) for r in runs] == [True] * 3 + [False] * 5
  assert "3 runs trained, 0 already finished, 5 left by --max_runs=3" in first.stderr

  # 2. Killed (kill -9) right after step 1's checkpoint, twice: each failure is one line, and the sweep
  # goes on with the next run; it exits 1 naming both.
  killed = sweeps.run_sweep(
    [experiment, "--root", str(root), "--max_runs", "2"], env={"PROMPT_TUNING_FAULT": "checkpoint_committed@1"}
  )
  assert killed.returncode == 1
  assert f"[4/8] {sweeps.TINY_RUNS[3]} failed (exit status 137" in killed.stderr
  assert (
    f"0 runs trained, 3 already finished, 3 left by --max_runs=2 (run again for them); "
    f"2 failed: {sweeps.TINY_RUNS[3]} (exit status 137), "
    f"{sweeps.TINY_RUNS[4]} (exit status 137)" in killed.stderr
  )
  for run in runs[3:5]:
    assert os.listdir(os.path.join(run, "checkpoints")) == ["1"]
  before = {r: _stamps(r) for r in runs[:3]}

  # 3. Restarted: the finished runs are skipped untouched, the killed ones resume from step 1, the rest train.
  rest = sweeps.run_sweep([experiment, "--root", str(root)])
  assert rest.returncode == 0, rest.stderr[-3000:]
  for i, name in enumerate(sweeps.TINY_RUNS[:3], 1):
    assert f"[{i}/8] {name}: finished (step 2), skipped" in rest.stderr
  assert f"[4/8] {sweeps.TINY_RUNS[3]}: training to step 2, resuming at step 1" in rest.stderr
  assert rest.stderr.count("resuming at step 1 from checkpoint") == 2  # train's own line, for runs 4 and 5
  assert "5 runs trained, 3 already finished" in rest.stderr
  assert all(_finished(r) for r in runs)
  assert {r: _stamps(r) for r in runs[:3]} == before
  for run, name in zip(runs, sweeps.TINY_RUNS):
    record = json.load(open(os.path.join(run, "sweep.json")))
    assert list(record) == ["experiment", "axes", "gin_files", "bindings", "command"]
    assert record["experiment"] == "tiny_grid" and record["gin_files"] == [experiment]
    model, length, method = (part.split("=")[1] for part in name.split(","))
    assert record["axes"] == {"model": model, "PROMPT_LENGTH": int(length), "method": method}
    trained = json.load(open(os.path.join(run, "run_config.json")))
    assert trained["prompt_length"] == int(length)
    assert trained["trainable_params"] == ("prompt/prompt" if method == "prompt_tuning" else ".*")
    assert trained["model_config"]["emb_dim"] == int(model[1:])

  # 4. All finished: nothing to do.
  again = sweeps.run_sweep([experiment, "--root", str(root)])
  assert again.returncode == 0 and "0 runs trained, 8 already finished" in again.stderr

  # 5. The printed commands, for another root, run by hand: the same directory as the sweep made.
  other = tmp_path / "by_hand"
  commands = tmp_path / "commands.sh"
  printed = sweeps.run_sweep([experiment, "--root", str(other), "--print_commands", str(commands)])
  assert printed.returncode == 0, printed.stderr[-3000:]
  lines = open(commands).read().splitlines()
  assert len(lines) == 8 and all(line.startswith("prompt-tuning train --gin_file=") for line in lines)
  assert sorted(os.listdir(other)) == sorted(sweeps.TINY_RUNS)  # each with its sweep.json, before any run
  env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
  by_hand = subprocess.run(lines[-1], shell=True, env=env, capture_output=True, text=True, timeout=600)
  assert by_hand.returncode == 0, by_hand.stderr[-3000:]
  mine, theirs = os.path.join(other, sweeps.TINY_RUNS[-1]), runs[-1]

  def same(name: str) -> str:
    return open(os.path.join(mine, name)).read().replace(str(other), str(root))

  for name in ("sweep.json", "config.gin", "run_config.json"):
    assert same(name) == open(os.path.join(theirs, name)).read(), name
  assert sorted(os.listdir(mine)) == sorted(os.listdir(theirs))
  assert sorted(os.listdir(os.path.join(mine, "checkpoints"))) == sorted(
    os.listdir(os.path.join(theirs, "checkpoints"))
  )
  np.testing.assert_array_equal(  # the same training, bit for bit
    np.load(os.path.join(mine, "prompts", "step_2.npy")), np.load(os.path.join(theirs, "prompts", "step_2.npy"))
  )
  # Printing again lists only what is left.
  reprinted = sweeps.run_sweep([experiment, "--root", str(other), "--print_commands"])
  assert reprinted.returncode == 0 and len(reprinted.stdout.splitlines()) == 7

  # 6. A run stopped by SIGTERM (a preempted job) saves its step, and the sweep stops with it (143).
  stopped = sweeps.run_sweep([experiment, "--root", str(other)], env={"PROMPT_TUNING_FAULT": "step_done@1:SIGTERM"})
  assert stopped.returncode == 143
  assert f"stopped in run {sweeps.TINY_RUNS[0]} (exit status 143)" in stopped.stderr
  assert os.listdir(os.path.join(other, sweeps.TINY_RUNS[0], "checkpoints")) == ["1"]
  assert not os.path.exists(os.path.join(other, sweeps.TINY_RUNS[1], "checkpoints"))  # no other run started
