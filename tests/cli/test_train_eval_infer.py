"""The gin-driven commands, run exactly as the README says, and their one-line errors."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys

import numpy as np
import pytest

from prompt_tuning.cli import main as cli

README = os.path.join(os.path.dirname(__file__), "..", "..", "README.md")


def _readme_quickstart_train_command() -> str:
  """The part after `&&` of the quick start's first command (the install is the suite's own)."""
  text = open(README).read()
  block = text.split("## Quick start", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
  first = [line for line in block.strip().splitlines() if line.strip()][0]
  command = first.split("&&", 1)[1].strip()
  assert command.startswith("prompt-tuning train"), command
  return command


@pytest.fixture(scope="module")
def quickstart_dir(tmp_path_factory):
  """Runs the README's main command (300 steps on the built-in task) in a fresh directory."""
  cwd = tmp_path_factory.mktemp("quickstart")
  bin_dir = os.path.dirname(sys.executable)
  env = dict(os.environ, PATH=bin_dir + os.pathsep + os.environ.get("PATH", ""))
  result = subprocess.run(
    shlex.split(_readme_quickstart_train_command()), cwd=cwd, env=env, capture_output=True, text=True, timeout=600
  )
  assert result.returncode == 0, result.stderr[-3000:]
  model_dir = re.search(r"MODEL_DIR=\"?'([^']+)'", _readme_quickstart_train_command()).group(1)
  return os.path.join(cwd, model_dir), result.stdout, result.stderr


@pytest.mark.slow
def test_quickstart_trains_evaluates_and_says_where_things_went(quickstart_dir):
  model_dir, out, err = quickstart_dir
  assert "RANDOM weights" in out and "INITIAL_CHECKPOINT_PATH" in out  # says plainly it is a toy
  for what in ("prompt:", "metrics:", "tensorboard:", "gin config:"):
    assert what in out
  # The evaluation names its decoding; counts are integers.
  assert "evaluated on validation: decode/ by greedy decoding; rank/ by rank classification\n" in out
  assert "  eval examples: 100\n" in out
  # A line before each quiet phase, on stderr with the progress bar.
  phases = [
    "initializing the frozen model at random (no initial checkpoint), seed 0",
    "reading the train split of quickstart_sentiment",
    "compiling the train step",
    "evaluating quickstart_sentiment on validation: greedy decoding; rank classification",
  ]
  lines = err.splitlines()
  assert [line for line in lines if line in phases] == phases
  rows = [json.loads(line) for line in open(os.path.join(model_dir, "metrics.jsonl"))]
  losses = [r["train/loss"] for r in rows if "train/loss" in r]
  assert losses[-1] < 0.25 * losses[0], losses  # the loss falls well below its start
  final = [r for r in rows if "eval/rank/accuracy" in r][-1]
  assert final["eval/rank/accuracy"] > 75.0 and final["eval/decode/accuracy"] > 75.0  # chance is 50
  assert {"train/learning_rate", "train/token_accuracy", "train/examples_per_s"} <= set(rows[0])
  assert os.path.isfile(os.path.join(model_dir, "prompts", "step_300.npy"))
  assert os.listdir(os.path.join(model_dir, "tensorboard", "train"))
  assert os.listdir(os.path.join(model_dir, "tensorboard", "eval"))
  assert "PromptSpec.length = %PROMPT_LENGTH" in open(os.path.join(model_dir, "config.gin")).read()


@pytest.mark.slow
def test_eval_and_infer_read_the_trained_prompt(quickstart_dir, capsys):
  model_dir, _, _ = quickstart_dir
  flags = ["--gin_file=quickstart.gin", f"--gin.MODEL_DIR='{model_dir}'"]
  assert cli.main(["evaluate", *flags, "--gin_file=runs/evaluate.gin", "--gin_file=decoding/beam.gin"]) == 0
  out, err = capsys.readouterr()
  accuracy = float(re.search(r"rank/accuracy: ([\d.]+)", out).group(1))
  assert accuracy > 75.0
  assert (
    out.startswith(
      "evaluated step 300 on validation: decode/ by beam decoding with alpha=0.6, beam_size=4; "
      "rank/ by rank classification\n"
    )
    and "\n  examples: 100\n" in out
  )
  assert f"restored the trained parameters of step 300 from {model_dir}/checkpoints/300" in err.splitlines()
  assert (
    "evaluating quickstart_sentiment on validation: beam decoding with alpha=0.6, beam_size=4; "
    "rank classification" in err.splitlines()
  )
  assert (
    cli.main(
      [
        "infer",
        *flags,
        "--gin_file=runs/infer.gin",
        "--gin.infer.output_path='%s'" % os.path.join(model_dir, "preds.jsonl"),
      ]
    )
    == 0
  )
  records = [json.loads(line) for line in open(os.path.join(model_dir, "preds.jsonl"))]
  assert len(records) == 100 and {"input", "prediction", "score", "target"} <= set(records[0])
  assert sum(r["prediction"] == r["target"] for r in records) > 75


def test_leaderboard_dir_on_a_task_without_a_format_fails_before_decoding(quickstart_dir, capsys, tmp_path):
  model_dir, _, _ = quickstart_dir
  output = tmp_path / "preds.jsonl"
  assert (
    cli.main(
      [
        "infer",
        "--gin_file=quickstart.gin",
        f"--gin.MODEL_DIR='{model_dir}'",
        "--gin_file=runs/infer.gin",
        f"--gin.infer.output_path='{output}'",
        f"--gin.infer.leaderboard_dir='{tmp_path / 'lb'}'",
      ]
    )
    == 1
  )
  err = capsys.readouterr().err.strip()
  assert err.count("\n") == 0 and "quickstart_sentiment has no SuperGLUE leaderboard format" in err
  assert not output.exists() and not (tmp_path / "lb").exists()  # nothing decoded or written


def test_missing_macros_and_typos_are_one_line(capsys, tmp_path):
  assert cli.main(["train", "--gin_file=runs/prompt_finetune.gin"]) == 1
  err = capsys.readouterr().err.strip()
  assert err.count("\n") == 0
  assert "missing required gin macros INITIAL_CHECKPOINT_PATH, MIXTURE_OR_TASK_NAME, MODEL_DIR" in err
  assert (
    cli.main(["train", "--gin_file=quickstart.gin", f"--gin.MODEL_DIR='{tmp_path}'", "--gin.TrainSpec.batch_sise=3"])
    == 1
  )
  err = capsys.readouterr().err.strip()
  assert err.count("\n") == 0 and "batch_sise" in err and "(did you mean 'batch_size'?)" in err
  # A parameter the entry points took before they took specs: where it lives now.
  assert (
    cli.main(["train", "--gin_file=quickstart.gin", f"--gin.MODEL_DIR='{tmp_path}'", "--gin.train.batch_size=3"]) == 1
  )
  err = capsys.readouterr().err.strip()
  assert err.endswith("(did you mean 'EvaluationSpec.batch_size' or 'TrainSpec.batch_size'?)"), err
  assert cli.main(["train", "--gin_file=no_such.gin"]) == 1
  assert "gin file not found: no_such.gin" in capsys.readouterr().err
  assert (
    cli.main(
      [
        "evaluate",
        "--gin_file=quickstart.gin",
        "--gin_file=runs/evaluate.gin",
        f"--gin.MODEL_DIR='{tmp_path / 'empty'}'",
      ]
    )
    == 1
  )
  assert "empty does not exist: train first" in capsys.readouterr().err
  assert not (tmp_path / "empty").exists()  # evaluate creates nothing


@pytest.mark.slow
def test_quickstart_with_a_checkpoint_takes_the_checkpoints_config(tmp_path, capsys):
  """quickstart.gin's tiny config is for random init only: INITIAL_CHECKPOINT_PATH alone switches models."""
  from prompt_tuning.data import quickstart
  from support import hf_models

  hf_dir = str(tmp_path / "hf_t5")
  # A tiny HF T5 (emb_dim 32, unlike the quick start's 128) whose vocabulary covers the task's 256 pieces.
  hf_models.save_hf_t5("t5_1_1", hf_dir, vocab_size=quickstart.vocabulary().vocab_size)
  model_dir = tmp_path / "model"
  assert (
    cli.main(
      [
        "train",
        "--gin_file=quickstart.gin",
        f"--gin.MODEL_DIR='{model_dir}'",
        "--gin.TRAIN_STEPS=2",
        f"--gin.INITIAL_CHECKPOINT_PATH='{hf_dir}'",
      ]
    )
    == 0
  )
  out = capsys.readouterr().out
  assert "trained to step 2" in out and "RANDOM weights" not in out
  assert np.load(model_dir / "prompts" / "step_2.npy").shape == (20, 32)  # the checkpoint's width
  # A t5x checkpoint carries no config: one line says what to pass.
  t5x_dir = tmp_path / "t5x" / "checkpoint_1"
  t5x_dir.mkdir(parents=True)
  (t5x_dir / "checkpoint").write_bytes(b"")
  assert (
    cli.main(
      [
        "train",
        "--gin_file=quickstart.gin",
        f"--gin.MODEL_DIR='{tmp_path / 'other'}'",
        f"--gin.INITIAL_CHECKPOINT_PATH='{t5x_dir}'",
      ]
    )
    == 1
  )
  # Phase lines ("loading the frozen model from ...") may come first; the error is the one last line.
  err = capsys.readouterr().err.strip().splitlines()
  assert [line for line in err if "error" in line] == err[-1:], err
  assert err[-1].startswith("prompt-tuning train: error: ") and "carries no model config" in err[-1]
  assert "MODEL_CONFIG='t5_1_1_base'" in err[-1]
