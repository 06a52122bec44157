"""train() end to end on the built-in quickstart task: what trains, what stays frozen, resuming."""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prompt_tuning import param_tree, prompt_init
from prompt_tuning.checkpoints import bundle as bundle_lib
from prompt_tuning.checkpoints import hf
from prompt_tuning.models.model import EncoderDecoderModel
from prompt_tuning.models.prompt import PromptConfig, PromptedTransformer
from prompt_tuning.models.t5 import get_config
from prompt_tuning.param_tree import flatten
from prompt_tuning.runs import records, selection, specs
from prompt_tuning.runs.train import train
from prompt_tuning.train import guard, optimizer

TASK = "quickstart_sentiment"
LENGTHS = {"inputs": 24, "targets": 4}


def _train(
  model_dir,
  steps,
  task=TASK,
  progress=False,
  optimizer_factory=optimizer.adafactor,
  length_buckets=None,
  packing=False,
  lengths=LENGTHS,
  **model,
):
  """train() on TASK with a 5-token prompt on the tiny T5 (`model`: ModelSpec fields to replace)."""
  model = specs.ModelSpec(**{"config": "tiny", "prompt": specs.PromptSpec(length=5), **model})
  return train(
    model,
    specs.TaskSpec(task, lengths, length_buckets=length_buckets, packing=packing),
    str(model_dir),
    specs.TrainSpec(steps=steps, batch_size=8, save_period=3, log_period=1, optimizer=optimizer_factory),
    specs.EvaluationSpec(rank_classification=True),
    progress=progress,
  )


@pytest.fixture(scope="module")
def hf_checkpoint(tmp_path_factory):
  """A tiny T5 1.1 saved by transformers, with the quickstart vocabulary's 256 ids."""
  from support import hf_models

  path = str(tmp_path_factory.mktemp("hf256"))
  hf_models.save_hf_t5("t5_1_1", path, vocab_size=256)
  return path


@pytest.mark.slow
def test_prompt_training_keeps_the_loaded_model_bit_identical(hf_checkpoint, tmp_path):
  result = _train(tmp_path / "run", 4, checkpoint=hf_checkpoint, config=None)
  _, loaded = hf.load_hf(hf_checkpoint)
  frozen = flatten(result.frozen)
  assert set(frozen) == set(flatten(loaded))  # everything but the prompt is frozen ...
  for name, value in flatten(loaded).items():  # ... and is exactly the checkpoint's, not a re-init
    kept = np.asarray(frozen[name])  # in the run's dtype: float32 here, bfloat16 on accelerators
    np.testing.assert_array_equal(kept, value.astype(kept.dtype), err_msg=name)
  initial = prompt_init.random_uniform()(jax.random.PRNGKey(1), (5, 32))  # train() seeds the prompt with seed + 1
  trained = result.trainable["prompt"]["prompt"]
  assert trained.shape == (5, 32) and not np.allclose(trained, initial)
  np.testing.assert_array_equal(np.load(result.prompt_path), trained)
  # The same prompt as a bundle, with the record of the frozen model and the run (issue 13).
  bundle = bundle_lib.read_bundle(str(tmp_path / "run" / "prompts" / "step_4.safetensors"))
  np.testing.assert_array_equal(bundle.prompt, trained)
  assert (bundle.task, bundle.step, bundle.placement) == (TASK, 4, "prefix")
  assert bundle.fingerprint == param_tree.fingerprint(loaded) and bundle.feature_lengths == LENGTHS
  assert bundle.metrics == result.eval_metrics  # the evaluation of the step it was saved at
  bundle_lib.check_fits(bundle, result.config, param_tree.fingerprint(loaded), "step_4")
  # The checkpoint holds the prompt and its optimizer state, never the frozen model.
  size = sum(
    os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(tmp_path / "run" / "checkpoints") for f in files
  )
  model_bytes = sum(v.nbytes for v in flatten(loaded).values())
  assert size < model_bytes / 4, (size, model_bytes)
  assert {"decode/accuracy", "rank/accuracy"} <= set(result.eval_metrics)


@pytest.mark.slow
def test_resuming_gives_the_same_prompt_as_one_uninterrupted_run(tmp_path, capsys):
  config = get_config("tiny", vocab_size=256, dropout_rate=0.1)  # dropout: the rng stream must resume too
  whole = _train(tmp_path / "whole", 6, config=config)
  _train(tmp_path / "split", 3, config=config)
  capsys.readouterr()
  resumed = _train(tmp_path / "split", 6, config=config, progress=True)
  said = capsys.readouterr().err.splitlines()
  assert f"resuming at step 3 from checkpoint {tmp_path / 'split' / 'checkpoints' / '3'}" in said  # announced
  assert resumed.step == whole.step == 6
  np.testing.assert_array_equal(resumed.trainable["prompt"]["prompt"], whole.trainable["prompt"]["prompt"])
  assert sorted(os.listdir(tmp_path / "split" / "prompts")) == [
    "best.npy",  # the best validation step's (runs/selection.py)
    "best.safetensors",
    "step_3.npy",
    "step_3.safetensors",
    "step_6.npy",
    "step_6.safetensors",
  ]
  # Model selection over both sessions: the evaluations at the ends of both (3 and 6), the best step's
  # prompt copied, and the status record adding up the two sessions.
  history = selection.read_eval_history(str(tmp_path / "split"))
  assert [step for step, _ in history] == [3, 6]
  best = selection.read_best(str(tmp_path / "split"))
  assert best == resumed.best == {"selection_metric": "decode/accuracy", "best": selection.best_steps(history)}
  chosen = best["best"]["decode/accuracy"]["step"]
  np.testing.assert_array_equal(
    np.load(tmp_path / "split" / "prompts" / "best.npy"), np.load(tmp_path / "split" / "prompts" / f"step_{chosen}.npy")
  )
  status = records.read_status(str(tmp_path / "split"))
  assert (status["status"], status["step"], status["train_steps"], status["sessions"]) == ("finished", 6, 6, 2)
  assert status["trainable_params"] == 5 * 32 and status["model_params"] == records.model_param_count(resumed.frozen)
  assert status["wall_seconds"] > 0 and status["error"] is None


@pytest.mark.slow
def test_length_buckets_compile_up_front_and_resume_bit_identically(tmp_path, capsys, caplog):
  """LENGTH_BUCKETS: every bucket's step compiled before the first step (one line lists them) and
  none after, and a resumed run ends with the prompt of an uninterrupted one."""
  from jax._src import dispatch, monitoring

  compiles = []

  def listener(event, duration, **kwargs):
    if event == dispatch.BACKEND_COMPILE_EVENT and "train_step" in kwargs.get("fun_name", ""):
      compiles.append(kwargs["fun_name"])

  config = get_config("tiny", vocab_size=256, dropout_rate=0.1)  # dropout: masks drawn per bucket shape
  buckets = {"inputs": [16, 20]}  # + the inputs length 24: quick-start batches of 8 fill 20 or 24
  monitoring.register_event_duration_secs_listener(listener)
  try:
    whole = _train(tmp_path / "whole", 4, config=config, length_buckets=buckets)
    assert len(compiles) == 3  # the three buckets' programs, up front; no step compiled again
    _train(tmp_path / "split", 2, config=config, length_buckets=buckets)
    capsys.readouterr()
    # The absl logger's own level: an in-process CLI test before this one may have left it at WARNING.
    with caplog.at_level("INFO", logger="absl"):
      resumed = _train(tmp_path / "split", 4, config=config, length_buckets=buckets, progress=True)
    assert len(compiles) == 9
  finally:
    monitoring.unregister_event_duration_listener(listener)
  assert "compiling the train step for the length buckets: inputs 16/20/24, targets 4 (3 shapes)" in (
    capsys.readouterr().err.splitlines()
  )
  assert any("compiled the train step for 3 length buckets (inputs x targets: 16x4, 20x4, 24x4)" in r.getMessage()
             for r in caplog.records)  # fmt: skip
  assert resumed.step == whole.step == 4
  np.testing.assert_array_equal(resumed.trainable["prompt"]["prompt"], whole.trainable["prompt"]["prompt"])


@pytest.mark.slow
def test_packing_trains_and_resumes_bit_identically(tmp_path):
  """PACKING through train(): packed batches reach the step, and a resumed run ends with the prompt of an uninterrupted one (the data position is exact)."""
  from etils import epath

  from prompt_tuning.checkpoints import integrity

  config = get_config("tiny", vocab_size=256, dropout_rate=0.1)
  run = functools.partial(_train, config=config, packing=True, lengths={"inputs": 64, "targets": 12})
  whole = run(tmp_path / "whole", 4)
  run(tmp_path / "split", 2)
  resumed = run(tmp_path / "split", 4)
  assert resumed.step == whole.step == 4
  # Rows of 5 + 64 and 12 hold 2-4 quick-start examples: the 4 steps of 8 rows read more than 32.
  assert integrity.read_manifest(epath.Path(tmp_path / "whole"), 3)["position"] > 3 * 8 * 1.5
  np.testing.assert_array_equal(resumed.trainable["prompt"]["prompt"], whole.trainable["prompt"]["prompt"])


@pytest.mark.slow
def test_model_tuning_with_the_same_trainer_updates_every_weight(tmp_path):
  config = get_config("tiny", vocab_size=256)
  result = _train(
    tmp_path / "full",
    2,
    config=config,
    trainable_params=param_tree.EVERYTHING,
    optimizer_factory=functools.partial(optimizer.adafactor, learning_rate=1e-2),
  )
  assert not result.frozen
  from prompt_tuning.models.t5 import network

  initial = flatten(network.init_params(config, jax.random.PRNGKey(0)))
  trained = flatten(result.trainable)
  assert set(trained) == set(initial) | {"prompt/prompt"}
  for name, value in initial.items():
    assert not np.array_equal(np.asarray(trained[name]), np.asarray(value)), name


@pytest.mark.slow
def test_prompt_gradient_matches_finite_differences():
  config = get_config("tiny", vocab_size=64)
  module = PromptedTransformer(config, prompt_config=PromptConfig(4, "suffix"))
  rng = np.random.RandomState(0)
  enc = rng.randint(2, 64, size=(3, 7)).astype(np.int32)
  enc[1, 4:] = 0
  targets = rng.randint(2, 64, size=(3, 3)).astype(np.int32)
  targets[:, -1] = 1
  batch = {
    "encoder_input_tokens": enc,
    "decoder_target_tokens": targets,
    "decoder_input_tokens": np.concatenate([np.zeros((3, 1), np.int32), targets[:, :-1]], axis=1),
  }
  params = module.init(jax.random.PRNGKey(0), enc, batch["decoder_input_tokens"])["params"]
  params = jax.tree.map(lambda x: getattr(x, "value", x), params, is_leaf=lambda x: hasattr(x, "names"))
  trainable, frozen = param_tree.split_trainable(params, param_tree.PROMPT_ONLY)
  model = EncoderDecoderModel(module)
  loss = jax.jit(lambda t: model.loss(param_tree.merge_params(t, frozen), batch)[0])
  grad = jax.grad(loss)(trainable)["prompt"]["prompt"]
  assert float(jnp.abs(grad).max()) > 0
  for seed in range(3):
    direction = np.random.RandomState(seed).randn(4, 32).astype(np.float32)
    eps = 1e-3  # central differences in float32: small enough for curvature, large enough for rounding
    shifted = [{"prompt": {"prompt": trainable["prompt"]["prompt"] + s * eps * direction}} for s in (1.0, -1.0)]
    numeric = (float(loss(shifted[0])) - float(loss(shifted[1]))) / (2 * eps)
    analytic = float(jnp.sum(grad * direction))
    assert abs(numeric - analytic) <= 2e-2 * abs(analytic) + 2e-3, (numeric, analytic)


def test_bad_inputs_give_one_clear_error(tmp_path, hf_checkpoint):
  with pytest.raises(ValueError, match="regex 'promt' matches no parameter"):
    _train(tmp_path / "a", 1, trainable_params="promt")
  with pytest.raises(ValueError, match="the task vocabulary has 256 ids but the model only 96"):
    from support import hf_models

    small = str(tmp_path / "hf96")
    hf_models.save_hf_t5("t5_1_0", small)
    _train(tmp_path / "b", 1, checkpoint=small, config=None)
  with pytest.raises(KeyError, match="no_such_task"):
    _train(tmp_path / "c", 1, task="no_such_task")


def test_an_inf_in_the_initial_prompt_stops_before_model_dir_is_touched(tmp_path):
  path = tmp_path / "prompt.npy"
  prompt = np.zeros((5, 32), np.float32)
  prompt[0, 3] = np.inf
  np.save(path, prompt)
  init = functools.partial(prompt_init.from_npy, path=str(path))
  with pytest.raises(guard.DivergenceError, match=r"^the initial value of prompt/prompt \[5, 32\] holds 1 non-finite"):
    _train(tmp_path / "run", 2, config=get_config("tiny", vocab_size=256), prompt=specs.PromptSpec(length=5, init=init))
  assert not (tmp_path / "run").exists()
