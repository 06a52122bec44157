"""A trained prompt in Python: train_prompt without gin, then load_pretrained(prompt=...) on text.

One tiny run (3 steps, checkpoints at 2 and 3) serves every test here. The text
handle is checked against the evaluator's own path (the same predictions, scores and
rank scores from the same parameters), not against numbers written down.
"""

from __future__ import annotations

import contextlib
import io
import json
import os

import numpy as np
import pytest

import prompt_tuning
from prompt_tuning.checkpoints.structure import CheckpointError
from prompt_tuning.evaluation import Evaluator
from prompt_tuning.models.prompt import PromptConfig
from prompt_tuning.models.t5 import get_config
from prompt_tuning.param_tree import flatten
from prompt_tuning.task_registry import resolve_task

pytestmark = pytest.mark.slow  # every test here shares one training run

TASK = "quickstart_sentiment"
LENGTHS = {"inputs": 24, "targets": 4}
BATCH = 16  # every batch here: one shape, compiled once per function


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """(model_dir, TrainResult, what the run printed on stderr)."""
  model_dir = str(tmp_path_factory.mktemp("prompted") / "model")
  err = io.StringIO()
  with contextlib.redirect_stderr(err):
    result = prompt_tuning.train_prompt(
      prompt_tuning.ModelSpec(get_config("tiny", vocab_size=256), prompt=prompt_tuning.PromptSpec(4, "suffix")),
      prompt_tuning.TaskSpec(TASK, LENGTHS),
      model_dir,
      prompt_tuning.TrainSpec(steps=3, batch_size=8, save_period=2, log_period=1),
      prompt_tuning.EvaluationSpec(batch_size=BATCH),
    )
  return model_dir, result, err.getvalue()


def test_training_announces_each_quiet_phase(run):
  lines = run[2].splitlines()
  phases = [
    "initializing the frozen model at random (no initial checkpoint), seed 0",
    "reading the train split of quickstart_sentiment",
    "compiling the train step",
    "evaluating quickstart_sentiment on validation: greedy decoding; rank classification",
  ]
  assert [line for line in lines if line in phases] == phases  # each once, in this order
  # Step 1 compiled: the ETA has no rate to go by yet, rather than one inflated by compilation.
  bar = [line for line in lines if line.startswith("step ")]
  assert bar[0].startswith("step 1/3") and bar[0].endswith("| ETA ?") and "ETA ?" not in bar[1]


def test_model_dir_gives_the_trained_model_prompt_and_text_handling(run):
  model_dir, result, _ = run
  model = prompt_tuning.load_pretrained(prompt=model_dir)
  assert model.step == 3 and model.prompt_config == PromptConfig(4, "suffix")  # placement as trained
  assert model.feature_lengths == LENGTHS and model.candidates == ["negative", "positive"]
  np.testing.assert_array_equal(model.prompt, np.load(os.path.join(model_dir, "prompts", "step_3.npy")))
  frozen = {k: v for k, v in flatten(model.params).items() if k != "prompt/prompt"}
  assert set(frozen) == set(flatten(result.frozen))  # the same random frozen model, from the run's seed
  for name, value in flatten(result.frozen).items():
    np.testing.assert_array_equal(np.asarray(frozen[name]), value, err_msg=name)
  run_config = json.load(open(os.path.join(model_dir, "run_config.json")))
  assert run_config["task"] == TASK and run_config["model_config"]["vocab_size"] == 256

  # Text in, the evaluator's own records out: same tokenization, decoding, scores and ranking.
  evaluator = Evaluator(model.model, resolve_task(TASK), LENGTHS, BATCH)
  records = [r for _, r in zip(range(2 * BATCH), evaluator.predictions(model.params, "validation"))]
  texts = [r["input"] for r in records]
  predictions = model.predict(texts, batch_size=BATCH)
  assert [p.text for p in predictions] == [r["prediction"] for r in records]
  np.testing.assert_allclose([p.score for p in predictions], [r["score"] for r in records], atol=1e-4)
  rankings = model.rank(texts, batch_size=BATCH)
  assert [r.prediction for r in rankings] == [r["rank_prediction"] for r in records]
  for ranking, record in zip(rankings, records):
    np.testing.assert_allclose(list(ranking.scores.values()), list(record["rank_scores"].values()), atol=1e-4)
  # A target's score is its rank score.
  np.testing.assert_allclose(
    model.score(texts, ["positive"] * len(texts), batch_size=BATCH), [r.scores["positive"] for r in rankings], atol=1e-4
  )


def test_a_step_a_npy_file_and_an_array_give_the_same_prompt(run):
  model_dir, _, _ = run
  step2 = np.load(os.path.join(model_dir, "prompts", "step_2.npy"))
  # The frozen model as trained, rebuilt from the MODEL_DIR: its seed and the run's dtype (on accelerators
  # bfloat16, whose random draws differ from float32's).
  frozen = prompt_tuning.load_pretrained(prompt=model_dir)
  by_step = frozen.with_prompt(model_dir, step=2)
  by_file = prompt_tuning.load_pretrained(prompt=os.path.join(model_dir, "prompts", "step_2.npy"))
  by_array = frozen.with_prompt(step2, vocabulary=resolve_task(TASK).vocabulary, placement="suffix")
  for model in (by_step, by_file, by_array):
    np.testing.assert_array_equal(model.prompt, step2)
    assert model.prompt_config == PromptConfig(4, "suffix")
  assert by_step.step == by_file.step == 2 and by_array.step is None
  assert by_file.feature_lengths == LENGTHS  # its MODEL_DIR's run config applies
  texts = ["a warm, funny film", "a dull mess"]
  expected = by_step.rank(texts)
  assert by_file.rank(texts) == expected
  single = by_file.rank(texts[1])  # one string in, one answer out
  assert single.prediction == expected[1].prediction
  np.testing.assert_allclose(list(single.scores.values()), list(expected[1].scores.values()), atol=1e-5)
  # A bare array knows no labels or lengths: they are given.
  ranked = by_array.rank(texts, ["negative", "positive"])
  for got, want in zip(ranked, expected):
    np.testing.assert_allclose(list(got.scores.values()), list(want.scores.values()), atol=1e-5)
  assert by_array.predict(texts, max_decode_length=4)[1].text == by_step.predict(texts)[1].text
  assert frozen.with_prompt(step2, task=TASK).prompt_config.placement == "prefix"  # the default for arrays


def test_bad_prompts_and_calls_are_one_line(run, tmp_path):
  model_dir, _, _ = run
  frozen = prompt_tuning.load_pretrained(None, config=get_config("tiny", vocab_size=256))
  cases = [
    (lambda: frozen.with_prompt(str(tmp_path)), CheckpointError, "neither a .npy file nor a MODEL_DIR"),
    (lambda: frozen.with_prompt(str(tmp_path / "p.npy")), CheckpointError, "p.npy: file not found"),
    (
      lambda: frozen.with_prompt(np.zeros((4, 16)), task=TASK),
      ValueError,
      r"must be \[length, 32\] \(the model's emb_dim\), got shape \(4, 16\)",
    ),
    (lambda: frozen.with_prompt(np.zeros((2, 4, 32)), task=TASK), ValueError, "a table of prompts: pick one row"),
    (lambda: frozen.with_prompt(np.zeros((4, 32))), ValueError, "no vocabulary for text: pass vocabulary="),
    # A SentencePiece path is read with T5's 100 extra ids: too many for this 256-id model.
    (
      lambda: frozen.with_prompt(np.zeros((4, 32)), vocabulary=resolve_task(TASK).vocabulary.path),
      ValueError,
      "the vocabulary has 356 ids but the model only 256",
    ),
    (
      lambda: prompt_tuning.load_pretrained(prompt=np.zeros((4, 32))),
      ValueError,
      "without a checkpoint path or config= needs a MODEL_DIR",
    ),
    (lambda: frozen.with_prompt(model_dir, step=1), CheckpointError, "no train checkpoint at step 1"),
    (
      lambda: frozen.with_prompt(np.zeros((4, 32)), step=2, task=TASK),
      ValueError,
      "step=2 picks a checkpoint of a MODEL_DIR",
    ),
    (
      lambda: frozen.with_prompt(np.zeros((4, 32)), task=TASK).predict("x"),
      ValueError,
      "predict needs max_decode_length=",
    ),
    (
      lambda: frozen.with_prompt(np.zeros((4, 32)), vocabulary=resolve_task(TASK).vocabulary).rank("x"),
      ValueError,
      "rank needs candidates=",
    ),
    (
      lambda: frozen.with_prompt(np.zeros((4, 32)), task=TASK).score(["a", "b"], ["c"]),
      ValueError,
      "one target per text: 2 texts, 1 targets",
    ),
  ]
  for call, error, message in cases:
    with pytest.raises(error, match=message) as info:
      call()
    assert "\n" not in str(info.value)
