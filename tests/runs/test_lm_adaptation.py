"""LM adaptation (the paper's §3.2) end to end on a tiny T5: prefix-LM training on the shipped
corpus lowers the held-out loss, and the run's MODEL_DIR then serves as INITIAL_CHECKPOINT_PATH."""

from __future__ import annotations

import functools
import json

import jax
import numpy as np
import pytest

from prompt_tuning import param_tree
from prompt_tuning.checkpoints import loader
from prompt_tuning.data import features
from prompt_tuning.data.quickstart import data_path
from prompt_tuning.models.t5 import get_config, network
from prompt_tuning.pretrained import PretrainedT5
from prompt_tuning.runs import specs
from prompt_tuning.runs.train import train
from prompt_tuning.task_registry import resolve_task
from prompt_tuning.tasks import lm
from prompt_tuning.train import optimizer

LENGTHS = {"inputs": 32, "targets": 32}
CONFIG = get_config("tiny", vocab_size=256)  # the quickstart vocabulary's 256 pieces, no sentinels
STEPS = 200


def held_out_loss(params, task) -> float:
  """Mean per-token cross-entropy of the corpus task's held-out examples (prefix -> continuation)."""
  encoded = features.tokenize(task.examples("validation"), task.vocabulary, LENGTHS)
  batch = features.make_batch(encoded, LENGTHS)
  logits = PretrainedT5(CONFIG, params).logits(batch["encoder_input_tokens"], batch["decoder_input_tokens"])
  logp = jax.nn.log_softmax(logits.astype(np.float32), axis=-1)
  targets = batch["decoder_target_tokens"]
  token_logp = np.take_along_axis(np.asarray(logp), targets[..., None], axis=-1)[..., 0]
  weights = batch["decoder_loss_weights"]
  return float(-(token_logp * weights).sum() / weights.sum())


@pytest.mark.slow
def test_prefix_lm_lowers_held_out_loss_and_the_run_is_a_checkpoint(tmp_path):
  name = lm.text_corpus_task(
    "lm_adaptation_test",
    data_path("corpus_train.txt"),
    data_path("corpus_validation.txt"),
    feature_lengths=LENGTHS,
    vocabulary_path=data_path("sentencepiece.model"),
    extra_ids=0,
    eval_examples=50,
  )
  task = resolve_task(name)
  model_dir = str(tmp_path / "lm_adapted")
  # runs/lm_adaptation.gin's optimizer (T5's pre-training Adafactor), from step 0 with a short warm-up.
  pretraining = functools.partial(
    optimizer.adafactor,
    learning_rate=optimizer.rsqrt_decay(1.0, warmup_steps=100),
    multiply_by_parameter_scale=True,
    weight_decay_rate=None,
  )
  result = train(
    specs.ModelSpec(config=CONFIG, prompt=specs.PromptSpec(length=1), trainable_params=".*"),
    specs.TaskSpec(name, LENGTHS),
    model_dir,
    specs.TrainSpec(steps=STEPS, batch_size=8, save_period=STEPS, log_period=50, eval_period=0, optimizer=pretraining),
    specs.EvaluationSpec(batch_size=50),
    progress=False,
  )
  assert result.step == STEPS and not result.frozen  # every weight trained (and the 1-vector prompt)

  before = held_out_loss(network.init_params(CONFIG, jax.random.PRNGKey(0)), task)  # train()'s random init, seed 0
  assert loader.detect_format(model_dir) == "run"
  config, adapted = loader.load_checkpoint(model_dir)  # MODEL_DIR as a checkpoint: its latest step
  assert not list(config.architecture_differences(CONFIG)) and "prompt" not in adapted
  after = held_out_loss(adapted, task)
  assert after < before - 1.0, (before, after)
  trained = param_tree.flatten(result.trainable)
  for key, value in param_tree.flatten(adapted).items():  # exactly the weights the run ended with
    np.testing.assert_array_equal(value, trained[key], err_msg=key)
  _, same = loader.load_checkpoint(f"{model_dir}/checkpoints/{STEPS}")  # or one step of it, as t5x's checkpoint_<step>
  assert param_tree.fingerprint(same) == param_tree.fingerprint(adapted)

  # Prompt tuning on top: INITIAL_CHECKPOINT_PATH = the LM-adapted MODEL_DIR.
  tuned = train(
    specs.ModelSpec(checkpoint=model_dir, prompt=specs.PromptSpec(length=4)),
    specs.TaskSpec("quickstart_sentiment", {"inputs": 32, "targets": 4}),
    str(tmp_path / "prompt"),
    specs.TrainSpec(steps=2, batch_size=8, save_period=2, log_period=1),
    specs.EvaluationSpec(batch_size=100, rank_classification=False),
    progress=False,
  )
  assert tuned.step == 2 and set(param_tree.flatten(tuned.trainable)) == {"prompt/prompt"}
  for key, value in param_tree.flatten(adapted).items():  # the frozen model is the adapted one
    np.testing.assert_array_equal(np.asarray(param_tree.flatten(tuned.frozen)[key]), value, err_msg=key)


def test_a_prompt_tuning_run_is_not_a_model_checkpoint(tmp_path):
  """A MODEL_DIR that trained only its prompt is refused in one line naming its real model."""
  from prompt_tuning.checkpoints.structure import CheckpointError
  from prompt_tuning.checkpoints.train_state import RunConfig, write_run_config

  (tmp_path / "checkpoints").mkdir()
  write_run_config(
    str(tmp_path), RunConfig(1, "prefix", "prompt/prompt", "t", None, None, LENGTHS, "/models/t5_base", CONFIG, 0)
  )
  with pytest.raises(CheckpointError, match=r"trained only its prompt .*its model is /models/t5_base"):
    loader.load_checkpoint(str(tmp_path))


@pytest.mark.parametrize(
  "run_file, objective, step_offset",
  [("runs/lm_adaptation.gin", "prefix_lm", 1_000_000), ("runs/span_corruption.gin", "span_corruption", 0)],
)
def test_run_configs_bind_t5s_pretraining_settings(run_file, objective, step_offset):
  """T5's pre-training Adafactor and rsqrt schedule, every weight trained, the objective reaching the corpus task."""
  import gin
  from prompt_tuning import gin_utils
  from prompt_tuning.cli import gin_runner

  gin.clear_config()
  gin_runner.register_all()
  try:
    gin_utils.parse_gin_flags(
      [run_file, "tasks/text_corpus.gin"],
      [
        "MODEL_DIR = '/tmp/unused'",
        "INITIAL_CHECKPOINT_PATH = ''",
        f"CORPUS_TRAIN = '{data_path('corpus_train.txt')}'",
        f"CORPUS_VALIDATION = '{data_path('corpus_validation.txt')}'",
      ],
      finalize=False,
    )
    assert gin_utils.unused_macros() == {}
    macro = lambda name: gin.query_parameter(f"{name}/gin.macro.value")  # noqa: E731
    assert (macro("TRAINABLE_PARAMS"), macro("PROMPT_LENGTH")) == (".*", 1)
    assert macro("TRAIN_STEPS") == (100_000 if objective == "prefix_lm" else 524_288)
    assert gin.query_parameter("lm.text_corpus_task.objective") == objective
    tx, schedule = gin.query_parameter("TrainSpec.optimizer").scoped_configurable_fn()
    expected = 1 / np.sqrt(max(step_offset, 10_000))
    np.testing.assert_allclose(
      [schedule(0), schedule(5000)], [expected, 1 / np.sqrt(max(5000 + step_offset, 10_000))], rtol=1e-6
    )
    assert (
      gin.query_parameter("optimizer.adafactor.decay_rate"),
      gin.query_parameter("optimizer.adafactor.multiply_by_parameter_scale"),
      gin.query_parameter("optimizer.adafactor.weight_decay_rate"),
      gin.query_parameter("optimizer.adafactor.clipping_threshold"),
    ) == (0.8, True, None, 1.0)
  finally:
    gin.clear_config()


@pytest.mark.slow
def test_a_partly_trained_run_takes_the_rest_from_its_initial_model(tmp_path):
  """TRAINABLE_PARAMS covering some T5 weights: those come from the checkpoint, the others from the
  run's own initial model (here its random init, seed 0), the prompt from neither."""
  result = train(
    specs.ModelSpec(config=CONFIG, prompt=specs.PromptSpec(length=2), trainable_params="decoder/.*|prompt/prompt"),
    specs.TaskSpec("quickstart_sentiment", {"inputs": 16, "targets": 4}),
    str(tmp_path),
    specs.TrainSpec(steps=1, batch_size=4, save_period=1, log_period=1),
    specs.EvaluationSpec(batch_size=100, rank_classification=False),
    progress=False,
  )
  _, params = loader.load_checkpoint(str(tmp_path))
  loaded, trained, frozen = (param_tree.flatten(t) for t in (params, result.trainable, result.frozen))
  assert set(loaded) == (set(trained) - {"prompt/prompt"}) | set(frozen) and any(
    k.startswith("decoder/") for k in trained
  )
  for key, value in loaded.items():
    np.testing.assert_array_equal(value, np.asarray((trained if key in trained else frozen)[key]), err_msg=key)


@pytest.mark.slow
def test_span_corruption_pretrains_a_tiny_model(tmp_path):
  """runs/span_corruption.gin's objective through the trainer: sentinels from the vocabulary's extra ids."""
  lengths = {"inputs": 32, "targets": 8}
  name = lm.text_corpus_task(
    "span_corruption_test",
    data_path("corpus_train.txt"),
    data_path("corpus_validation.txt"),
    objective="span_corruption",
    feature_lengths=lengths,
    vocabulary_path=data_path("sentencepiece.model"),
    extra_ids=8,  # ids 256..263; a 34-token segment uses 3 of them
    eval_examples=8,
  )
  train(
    specs.ModelSpec(
      config=get_config("tiny", vocab_size=264), prompt=specs.PromptSpec(length=1), trainable_params=".*"
    ),
    specs.TaskSpec(name, lengths),
    str(tmp_path),
    specs.TrainSpec(
      steps=40,
      batch_size=8,
      save_period=40,
      log_period=10,
      eval_period=0,
      optimizer=functools.partial(
        optimizer.adafactor,
        learning_rate=optimizer.rsqrt_decay(1.0, warmup_steps=100),
        multiply_by_parameter_scale=True,
        weight_decay_rate=None,
      ),
    ),
    specs.EvaluationSpec(batch_size=8),
    progress=False,
  )
  losses = [r["train/loss"] for r in map(json.loads, open(tmp_path / "metrics.jsonl")) if "train/loss" in r]
  assert len(losses) == 4 and losses[-1] < losses[0] - 1.0, losses
  example = next(resolve_task(name).examples("validation"))
  assert 263 in example["inputs_ids"] and example["targets_ids"][0] == 263  # <extra_id_0> = the last id
