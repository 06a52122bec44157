"""Prompt design (evaluate with a PromptDesignSpec): the frozen model alone on templated inputs with a
demonstration, scored by rank classification; checked against a computation by hand."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from prompt_tuning.data import quickstart
from prompt_tuning.data.features import shift_right
from prompt_tuning.data.task import TextTask, read_records, register_task
from prompt_tuning.models.model import EncoderDecoderModel
from prompt_tuning.models.t5 import network
from prompt_tuning.models.t5.config import random_init_config
from prompt_tuning.runs import evaluate as evaluate_lib
from prompt_tuning.runs import prompt_design
from prompt_tuning.runs import setup as setup_lib
from prompt_tuning.runs.specs import EvaluationSpec, MeshSpec, ModelSpec, PromptDesignSpec, TaskSpec

NAME = "prompt_design_unit"
LENGTHS = {"inputs": 64, "targets": 4}
TEMPLATE = "{inputs} so it is"
VALIDATION = [r for _, r in itertools.islice(read_records(quickstart.data_path("validation.jsonl")), 12)]
TRAIN = next(read_records(quickstart.data_path("train.jsonl")))[1]  # one example: the only demonstration
# quickstart.gin's frozen model: the tiny T5 with the quick start's 256-piece vocabulary, random weights.
MODEL = ModelSpec(config=random_init_config("tiny", vocab_size=256, emb_dim=128, head_dim=32, mlp_dim=256))


@pytest.fixture(scope="module")
def task_name():
  register_task(
    TextTask(
      NAME,
      quickstart.vocabulary(),
      {"train": lambda: [TRAIN], "validation": lambda: VALIDATION},
      "sentence: {sentence}",
      "label",
      labels=quickstart.LABELS,
    ),
    overwrite=True,
  )
  return NAME


def _by_hand() -> tuple[list[str], np.ndarray]:
  """(each example's designed text, the log-likelihood of each label [examples, labels]) from token ids
  built here and the model's own score function."""
  vocab = quickstart.vocabulary()
  demonstration = f"sentence: {TRAIN['sentence']} so it is {TRAIN['label']}"
  texts = [f"{demonstration} sentence: {r['sentence']} so it is" for r in VALIDATION]
  config, params = setup_lib.frozen_model(MODEL)  # the random weights evaluate() draws (seed 0)
  model = EncoderDecoderModel(network.Transformer(config))
  rows = len(texts) * len(quickstart.LABELS)
  encoder = np.zeros((rows, LENGTHS["inputs"]), np.int32)
  targets = np.zeros((rows, LENGTHS["targets"]), np.int32)
  for i, (text, label) in enumerate(itertools.product(texts, quickstart.LABELS)):
    ids = vocab.encode(text) + [1]
    assert len(ids) <= LENGTHS["inputs"], "the hand computation assumes nothing is cut"
    encoder[i, : len(ids)] = ids
    target = vocab.encode(label) + [1]
    targets[i, : len(target)] = target
  scores = np.asarray(model.score(params, encoder, shift_right(targets), targets))
  return texts, scores.reshape(len(texts), len(quickstart.LABELS))


@pytest.mark.slow
def test_rank_accuracy_with_a_template_equals_a_hand_computation(task_name, tmp_path):
  design = PromptDesignSpec(template=TEMPLATE, shots=1)
  task, evaluation = TaskSpec(task_name, LENGTHS), EvaluationSpec(batch_size=len(VALIDATION))
  metrics = evaluate_lib.evaluate(MODEL, task, str(tmp_path / "design"), evaluation, design=design, progress=False)
  texts, scores = _by_hand()
  predicted = [quickstart.LABELS[i] for i in scores.argmax(axis=1)]
  accuracy = 100.0 * np.mean([p == r["label"] for p, r in zip(predicted, VALIDATION)])
  assert metrics["rank/accuracy"] == pytest.approx(accuracy)
  assert metrics["examples"] == len(VALIDATION) and "decode/accuracy" in metrics and "step" not in metrics
  assert (metrics["design/demonstrations"], metrics["design/examples_short"]) == (1.0, 0)
  written = [json.loads(line) for line in open(tmp_path / "design" / "metrics.jsonl")]
  assert written[-1]["step"] == 0 and written[-1]["eval/rank/accuracy"] == pytest.approx(accuracy)
  # Example by example: the designed text and every label's score.
  setup = prompt_design.build(MODEL, task, MeshSpec(), design, split="validation")
  records = list(setup_lib.evaluator(setup, task, evaluation).predictions(setup.params, "validation"))
  assert [r["input"] for r in records] == texts
  np.testing.assert_allclose(
    [[r["rank_scores"][label] for label in quickstart.LABELS] for r in records], scores, rtol=1e-5, atol=1e-4
  )


def test_prompt_design_takes_no_prompt_bundles(task_name, tmp_path):
  model = ModelSpec(config=MODEL.config, bundles={task_name: "somewhere"})
  with pytest.raises(
    ValueError, match="prompt design .* scores the frozen model without a prompt; unset PROMPT_BUNDLES"
  ):
    evaluate_lib.evaluate(model, TaskSpec(task_name, LENGTHS), str(tmp_path), design=PromptDesignSpec(), progress=False)


@pytest.mark.parametrize(
  "make, message",
  [
    (lambda: PromptDesignSpec(shots=-1), "PROMPT_DESIGN_SHOTS must be an integer >= 0, got -1"),
    (lambda: PromptDesignSpec(template="{inputs} {targets}"), "names {targets}, the answer"),
    (lambda: TaskSpec("t", LENGTHS, target_sentinel="yes"), "TARGET_SENTINEL must be True or False, got 'yes'"),
  ],
)
def test_a_bad_spec_is_one_line(make, message):
  with pytest.raises(ValueError) as error:
    make()
  assert message in str(error.value) and "\n" not in str(error.value)


@pytest.mark.slow
def test_the_evaluate_command_runs_prompt_design_from_gin(tmp_path, capsys):
  from prompt_tuning.cli import main

  status = main.main([
    "evaluate", "--gin_file=quickstart.gin", "--gin_file=runs/prompt_design.gin",
    f"--gin.MODEL_DIR='{tmp_path / 'design'}'", "--gin.PROMPT_DESIGN_TEMPLATE='{inputs} so it is'",
    "--gin.PROMPT_DESIGN_SHOTS=2", "--gin.TASK_FEATURE_LENGTHS={'inputs': 64, 'targets': 4}",
    "--gin.EVAL_BATCH_SIZE=50",
  ])  # fmt: skip
  out = capsys.readouterr().out
  assert status == 0, out
  assert "evaluated prompt design on the frozen model (no prompt) on validation" in out
  assert "rank/accuracy" in out and "design/demonstrations" in out
  written = json.loads(open(tmp_path / "design" / "metrics.jsonl").read().splitlines()[-1])
  assert written["step"] == 0 and written["eval/examples"] == 100
