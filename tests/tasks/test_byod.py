"""Bring-your-own-data tasks: built from files by `byod.text_task`, trained through the trainer and the CLI."""

from __future__ import annotations

import csv
import json
import random

import pytest

import gin
from prompt_tuning.data import quickstart
from prompt_tuning.data.task import DataError, get_task
from prompt_tuning.data.vocab import T5_VOCABULARY_PATH, SentencePieceVocabulary, set_default_vocabulary
from prompt_tuning.tasks import byod

VOCAB_PATH = quickstart.data_path("sentencepiece.model")
LABELS = ["negative", "positive"]
WORDS = {0: ["awful", "boring", "dull", "terrible"], 1: ["brilliant", "lovely", "superb", "wonderful"]}
SUBJECTS = ["the film", "the plot", "the cast", "the ending", "the script"]


def _records(n: int, seed: int) -> list[dict]:
  """`n` records {"text", "y", "idx"}: the adjective decides y (0 negative, 1 positive)."""
  rng = random.Random(seed)
  out = []
  for i in range(n):
    y = i % 2
    out.append({"idx": i, "text": f"{rng.choice(SUBJECTS)} was {rng.choice(WORDS[y])}", "y": y})
  return out


def _write(path, records: list[dict]) -> str:
  path = str(path)
  if path.endswith(".jsonl"):
    with open(path, "w") as f:
      f.writelines(json.dumps(r) + "\n" for r in records)
  else:
    with open(path, "w", newline="") as f:
      writer = csv.DictWriter(f, fieldnames=list(records[0]), delimiter="\t" if path.endswith(".tsv") else ",")
      writer.writeheader()
      writer.writerows(records)
  return path


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  """{ext: (train path, validation path)} for jsonl, tsv and csv, with the same records."""
  root = tmp_path_factory.mktemp("byod")
  train, validation = _records(64, 0), _records(24, 1)
  return {
    ext: (_write(root / f"train.{ext}", train), _write(root / f"validation.{ext}", validation))
    for ext in ("jsonl", "tsv", "csv")
  }


def _task(name, paths, **overrides):
  kwargs = dict(
    name=name,
    train_path=paths[0],
    validation_path=paths[1],
    input_template="review: {text}",
    target_field="y",
    labels=LABELS,
    vocabulary_path=VOCAB_PATH,
  )
  kwargs.update(overrides)
  return byod.text_task(**kwargs)


def test_text_task_registers_and_reads_every_format(data):
  names = {ext: _task(f"byod_test_formats_{ext}", paths) for ext, paths in data.items()}
  examples = {ext: list(get_task(name).examples("validation")) for ext, name in names.items()}
  first = examples["jsonl"][0]
  assert first["inputs"].startswith("review: the ") and first["targets"] == "negative" and first["idx"] == 0
  for ext in ("tsv", "csv"):  # TSV/CSV cells are strings: "0"/"1" still index the labels
    assert [(e["inputs"], e["targets"]) for e in examples[ext]] == [
      (e["inputs"], e["targets"]) for e in examples["jsonl"]
    ]
  task = get_task(names["jsonl"])
  assert task.splits == ["train", "validation"] and task.candidates == LABELS and task.metrics == ("accuracy",)
  assert task.vocabulary.vocab_size == SentencePieceVocabulary(VOCAB_PATH).vocab_size


def test_text_task_is_idempotent_and_refuses_conflicts(data):
  paths = data["jsonl"]
  name = _task("byod_test_idempotent", paths)
  task = get_task(name)
  assert _task("byod_test_idempotent", paths, labels=("negative", "positive")) == name  # list or tuple: same
  assert get_task(name) is task
  with pytest.raises(ValueError, match=r"already registered with other arguments: input_template='{text}'"):
    _task("byod_test_idempotent", paths, input_template="{text}")
  with pytest.raises(ValueError, match="already taken"):
    _task(quickstart.NAME, paths)


@pytest.mark.parametrize(
  "overrides, message",
  [
    ({"train_path": "/nonexistent/train.jsonl"}, "train_path file not found: /nonexistent/train.jsonl"),
    ({"vocabulary_path": "/nonexistent/sp.model"}, "vocabulary_path file not found: /nonexistent/sp.model"),
    ({"metric": ["accuracy", "bleu"]}, "unknown metric 'bleu'; known: accuracy, exact_match, "),
    ({"input_template": "review: {review}"}, "input_template field 'review' is not in the first record of .*train"),
    ({"target_field": "label"}, "target_field 'label' is not in the first record of .*train"),
    ({"target_field": "text"}, "train.jsonl:1: target 'the .*' is not one of the labels"),
    ({"labels": "negative,positive"}, "labels must be a non-empty list"),
    ({"input_template": "review: {}"}, "use named fields"),
    ({"labels": ["negative", "negative"]}, "duplicate labels"),
  ],
)
def test_text_task_errors_are_one_line(data, overrides, message):
  with pytest.raises(ValueError, match=message) as info:
    _task("byod_test_errors", data["jsonl"], **overrides)
  assert "\n" not in str(info.value)
  with pytest.raises(KeyError):  # nothing was registered
    get_task("byod_test_errors")
  if "not found" in message or "first record" in message:  # problems with the data, not the arguments
    assert isinstance(info.value, DataError)


@pytest.mark.slow
def test_trains_end_to_end_through_the_trainer(data, tmp_path):
  from prompt_tuning.models import t5
  from prompt_tuning.runs import specs
  from prompt_tuning.runs.train import train

  name = _task("byod_test_train", data["jsonl"])
  vocab_size = SentencePieceVocabulary(VOCAB_PATH).vocab_size
  model = specs.ModelSpec(t5.get_config("tiny", vocab_size=vocab_size), prompt=specs.PromptSpec(length=5))
  result = train(
    model,
    specs.TaskSpec(name, {"inputs": 16, "targets": 4}),
    str(tmp_path / "model"),
    specs.TrainSpec(steps=40, batch_size=8, log_period=10, save_period=1000),
    specs.EvaluationSpec(rank_classification=True),
    progress=False,
  )
  assert result.step == 40
  accuracy = result.eval_metrics["rank/accuracy"]
  assert isinstance(accuracy, float) and 0.0 <= accuracy <= 100.0
  rows = [json.loads(line) for line in open(tmp_path / "model" / "metrics.jsonl")]
  assert sum("train/loss" in r for r in rows) == 4


@pytest.mark.slow
def test_trains_through_the_cli_with_byod_gin(data, tmp_path, capsys):
  from prompt_tuning.cli import main as cli

  gin.clear_config()  # registering needs an unlocked config (an earlier in-process run finalizes it)
  train_path, validation_path = data["csv"]
  flags = [
    "train",
    "--gin_file=runs/prompt_finetune.gin",
    "--gin_file=tasks/byod.gin",
    f"--gin.MODEL_DIR='{tmp_path / 'model'}'",
    "--gin.INITIAL_CHECKPOINT_PATH=''",
    "--gin.MODEL_CONFIG=@t5.config.t5_config()",
    "--gin.t5_config.name='tiny'",
    f"--gin.t5_config.vocab_size={SentencePieceVocabulary(VOCAB_PATH).vocab_size}",
    f"--gin.VOCABULARY_PATH='{VOCAB_PATH}'",
    "--gin.TASK_FEATURE_LENGTHS={'inputs': 16, 'targets': 4}",
    "--gin.BATCH_SIZE=8",
    "--gin.PROMPT_LENGTH=5",
    "--gin.TRAIN_STEPS=20",
    "--gin.TrainSpec.log_period=10",
    "--gin.train.progress=False",
    "--gin.BYOD_NAME='byod_test_cli'",
    f"--gin.BYOD_TRAIN='{train_path}'",
    f"--gin.BYOD_VALIDATION='{validation_path}'",
    "--gin.BYOD_TEMPLATE='review: {text}'",
    "--gin.BYOD_TARGET='y'",
    f"--gin.BYOD_LABELS={LABELS}",
  ]
  try:
    assert cli.main(flags) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "trained to step 20" in out and "eval rank/accuracy:" in out
    # VOCABULARY_PATH reached the task (it names no vocabulary of its own).
    assert get_task("byod_test_cli").vocabulary.path == VOCAB_PATH
    # eval builds the task again from the same gin config: the same arguments, the same task.
    assert cli.main(["evaluate", *flags[1:], "--gin_file=runs/evaluate.gin"]) == 0, capsys.readouterr().err
    assert "evaluated step 20" in capsys.readouterr().out
    config = open(tmp_path / "model" / "config.gin").read()
    assert "MIXTURE_OR_TASK_NAME = @byod.text_task()" in config and "text_task.train_path = %BYOD_TRAIN" in config
    # A missing REQUIRED macro and a bad field are one-line errors.
    assert cli.main([f for f in flags if not f.startswith("--gin.BYOD_LABELS")]) == 1
    assert "missing required gin macro BYOD_LABELS" in capsys.readouterr().err
    bad = [f if not f.startswith("--gin.BYOD_TARGET") else "--gin.BYOD_TARGET='label'" for f in flags]
    bad = [f if not f.startswith("--gin.BYOD_NAME") else "--gin.BYOD_NAME='byod_test_cli_bad'" for f in bad]
    assert cli.main(bad) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "target_field 'label' is not in the first record of" in err, err
  finally:
    set_default_vocabulary(T5_VOCABULARY_PATH)
