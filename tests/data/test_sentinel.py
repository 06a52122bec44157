"""TARGET_SENTINEL ("span corruption + sentinel"): targets gain <extra_id_0> in the data pipeline, rank
candidates gain it in the Evaluator, and predictions lose it before the task's metrics see them."""

from __future__ import annotations

import itertools

import jax
import numpy as np
import pytest

from prompt_tuning.data import quickstart
from prompt_tuning.data.features import shift_right, trim_with_eos
from prompt_tuning.data.pipeline import BatchIterator
from prompt_tuning.data.sentinel import TargetSentinel, strip_target_prefix
from prompt_tuning.data.task import DataError, TextTask, read_records
from prompt_tuning.data.vocab import SentencePieceVocabulary
from prompt_tuning.evaluation import Evaluator, score_records
from prompt_tuning.models.model import EncoderDecoderModel
from prompt_tuning.models.t5 import get_config, network
from prompt_tuning.param_tree import flatten, unflatten

# The quick start's vocabulary with two sentinels, as seqio adds them: <extra_id_0> = 257, the last id.
VOCAB = SentencePieceVocabulary(quickstart.data_path("sentencepiece.model"), extra_ids=2)
SENTINEL = 257
LENGTHS = {"inputs": 16, "targets": 3}
ROWS = 6


def _task() -> TextTask:
  records = [r for _, r in itertools.islice(read_records(quickstart.data_path("validation.jsonl")), ROWS)]
  return TextTask(
    "sentinel_unit",
    VOCAB,
    {"validation": lambda: records},
    "sentence: {sentence}",
    "label",
    labels=["negative", "positive"],
  )


def _batch(task) -> dict:
  iterator = BatchIterator(task, "validation", LENGTHS, ROWS, shuffle=False, seed=0, repeat=False, drop_remainder=False)
  return next(iterator)


def test_the_sentinel_is_t5s_extra_id_0():
  assert VOCAB.sentinel_id(0) == SENTINEL == VOCAB.vocab_size - 1
  assert TargetSentinel(_task()).target_prefix == (SENTINEL,)
  assert VOCAB.decode([SENTINEL]) == "<extra_id_0>"


def test_targets_gain_the_sentinel_in_the_data_pipeline():
  plain, marked = _batch(_task()), _batch(TargetSentinel(_task()))
  np.testing.assert_array_equal(marked.arrays["encoder_input_tokens"], plain.arrays["encoder_input_tokens"])
  assert marked.text["targets"] == plain.text["targets"]  # the text stays as it is: the sentinel is a token
  for row, target in zip(marked.arrays["decoder_target_tokens"], marked.text["targets"]):
    # Before trimming, as the reference's token preprocessor runs before append_eos_after_trim.
    expected = trim_with_eos([SENTINEL, *VOCAB.encode(target)], LENGTHS["targets"])
    assert row.tolist() == expected + [0] * (LENGTHS["targets"] - len(expected))
  np.testing.assert_array_equal(
    marked.arrays["decoder_input_tokens"], shift_right(marked.arrays["decoder_target_tokens"])
  )
  assert (plain.arrays["decoder_target_tokens"][:, 0] != SENTINEL).all()


def test_target_sentinel_in_the_task_spec_wraps_the_task():
  from prompt_tuning.data.task import register_task
  from prompt_tuning.runs.setup import task_with_splits
  from prompt_tuning.runs.specs import TaskSpec

  register_task(_task(), overwrite=True)
  marked = task_with_splits(TaskSpec("sentinel_unit", LENGTHS, target_sentinel=True), ["validation"])
  assert isinstance(marked, TargetSentinel) and marked.name == "sentinel_unit"
  assert not isinstance(task_with_splits(TaskSpec("sentinel_unit", LENGTHS), ["validation"]), TargetSentinel)


def test_a_vocabulary_without_sentinels_is_one_line():
  with pytest.raises(DataError) as error:
    TargetSentinel(quickstart.TASK)
  assert "TARGET_SENTINEL needs the sentinel <extra_id_0>, but the vocabulary of task quickstart_sentiment" in str(
    error.value
  ) and "has 0 extra ids" in str(error.value)


def test_strip_target_prefix_only_strips_a_leading_prefix():
  assert strip_target_prefix([SENTINEL, 32, 1], (SENTINEL,)) == [32, 1]
  assert strip_target_prefix([32, SENTINEL, 1], (SENTINEL,)) == [32, SENTINEL, 1]
  assert strip_target_prefix([32, 1], ()) == [32, 1]


def _sentinel_model() -> tuple[EncoderDecoderModel, dict]:
  """A tiny T5 whose greedy decoding is <extra_id_0> positive EOS, whatever the input.

  The decoder's layers add nothing to the residual stream (their output projections are 0), so its
  output at a step is the normalized embedding of the step's input token; tokens 0 (the first
  decoder input), <extra_id_0> and 'positive' get orthogonal embeddings, and logits_dense maps
  them to <extra_id_0>, 'positive' and EOS.
  """
  config = get_config("tiny", vocab_size=VOCAB.vocab_size)
  flat = {k: np.array(v) for k, v in flatten(network.init_params(config, jax.random.PRNGKey(0))).items()}
  for path in flat:
    if path.startswith("decoder/layers_") and path.endswith(("out/kernel", "wo/kernel")):
      flat[path][:] = 0
  flat["decoder/decoder_norm/scale"][:] = 1
  positive = VOCAB.encode("positive")[0]
  kernel = flat["decoder/logits_dense/kernel"]
  kernel[:] = 0
  for axis, (token, successor) in enumerate([(0, SENTINEL), (SENTINEL, positive), (positive, 1)]):
    flat["token_embedder/embedding"][token] = 0
    flat["token_embedder/embedding"][token, axis] = 1
    kernel[axis, successor] = 20.0
  return EncoderDecoderModel(network.Transformer(config)), unflatten(flat)


@pytest.mark.slow
def test_predictions_lose_the_sentinel_and_candidates_gain_it_in_the_evaluator():
  model, params = _sentinel_model()
  plain = Evaluator(model, _task(), LENGTHS, batch_size=ROWS, rank_classification=False)
  marked = Evaluator(model, TargetSentinel(_task()), LENGTHS, batch_size=ROWS)
  raw = list(plain.predictions(params, "validation"))
  assert {r["prediction"] for r in raw} == {"<extra_id_0> positive"}  # what the model decodes
  records = list(marked.predictions(params, "validation"))
  assert {r["prediction"] for r in records} == {"positive"}  # ... and what the metrics see
  targets = [r["target"] for r in records]
  assert set(targets) == {"negative", "positive"}
  metrics = score_records(marked.task, records)  # what Evaluator.evaluate reports, from these records
  expected = 100.0 * targets.count("positive") / len(targets)
  assert metrics["decode/accuracy"] == pytest.approx(expected) == metrics["rank/accuracy"]
  assert score_records(plain.task, raw)["decode/accuracy"] == 0.0  # unstripped, no prediction is a label
  # Rank classification scored each candidate with the sentinel first, as training's targets: by hand,
  # every (example, candidate) pair as one row of one call of the model's score function.
  pairs = [(r, c) for r in records for c in r["rank_scores"]]
  encoder = np.zeros((len(pairs), LENGTHS["inputs"]), np.int32)
  target = np.zeros((len(pairs), LENGTHS["targets"]), np.int32)
  for row, (record, candidate) in enumerate(pairs):
    ids = trim_with_eos(VOCAB.encode(record["input"]), LENGTHS["inputs"])
    encoder[row, : len(ids)] = ids
    target[row] = [SENTINEL, *VOCAB.encode(candidate), 1]
  by_hand = np.asarray(model.score(params, encoder, shift_right(target), target))
  np.testing.assert_allclose([r["rank_scores"][c] for r, c in pairs], by_hand, rtol=1e-5, atol=1e-4)
  assert {r["rank_prediction"] for r in records} == {"positive"}
