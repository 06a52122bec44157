"""Multi-task prompt training: one prompt per task of a mixture, each example training its own."""

from __future__ import annotations

import functools
import json
import os

import jax
import numpy as np
import pytest

from prompt_tuning import load_pretrained, param_tree
from prompt_tuning.checkpoints import bundle as bundle_lib
from prompt_tuning.checkpoints.structure import CheckpointError
from prompt_tuning.checkpoints.train_state import RunConfig, write_run_config
from prompt_tuning.data.mixture import Mixture
from prompt_tuning.data.pipeline import BatchIterator
from prompt_tuning.data.quickstart import data_path
from prompt_tuning.data.task import DataError, TextTask, register_task
from prompt_tuning.errors import RunError
from prompt_tuning.evaluation import Evaluator
from prompt_tuning.models.model import EncoderDecoderModel
from prompt_tuning.models.prompt import Prompt, PromptConfig, PromptedTransformer, task_prompts
from prompt_tuning.models.t5 import get_config, network
from prompt_tuning.runs import bundles as bundles_lib
from prompt_tuning.runs import multitask, preflight, specs
from prompt_tuning.runs import setup as setup_lib
from prompt_tuning.runs.train import train
from prompt_tuning.task_registry import resolve_task
from prompt_tuning.train import optimizer
from prompt_tuning.train import step as step_lib
from prompt_tuning.train.per_task import per_task_rows
from prompt_tuning.train.state import TrainState

CONFIG = get_config("tiny", vocab_size=256)
LENGTHS = {"inputs": 32, "targets": 4}
NAMES = ("mt_a", "mt_b", "mt_c")


@pytest.fixture(scope="module")
def mixture():
  """Three small tasks over the quick start's sentences (train and validation), their mixture, and
  one more mixture whose second task has no train split."""
  vocabulary = resolve_task("quickstart_sentiment").vocabulary
  train_rows = [json.loads(line) for line in open(data_path("train.jsonl"))]
  validation_rows = [json.loads(line) for line in open(data_path("validation.jsonl"))]
  made = []
  for row, name in enumerate(NAMES):
    splits = {
      "train": lambda c=train_rows[8 * row : 8 * row + 8]: c,
      "validation": lambda c=validation_rows[4 * row : 4 * row + 4]: c,
    }
    task = TextTask(name, vocabulary, splits, f"{name} says: {{sentence}}", "label", ["negative", "positive"])
    made.append(register_task(task, overwrite=True))
  no_train = TextTask("mt_no_train", vocabulary, {"validation": lambda: validation_rows[:2]}, "{sentence}", "label")
  register_task(no_train, overwrite=True)
  register_task(Mixture("mt_ab", made[:2]), overwrite=True)
  register_task(Mixture("mt_no_train_mix", [made[0], no_train]), overwrite=True)
  return register_task(Mixture("mt_abc", made), overwrite=True)


def _params(prompt: PromptConfig, seed: int = 0) -> dict:
  """Random frozen T5 plus random prompt parameters (the table, and the shared part if any) for `prompt`."""
  rng = np.random.RandomState(seed)
  parts = {"prompt": rng.uniform(-0.5, 0.5, (prompt.num_tasks, prompt.task_length, CONFIG.emb_dim))}
  if prompt.shared_length:
    parts["shared_prompt"] = rng.uniform(-0.5, 0.5, (prompt.shared_length, CONFIG.emb_dim))
  t5 = jax.tree.map(np.asarray, network.init_params(CONFIG, jax.random.PRNGKey(seed)))
  return {**t5, "prompt": {k: v.astype(np.float32) for k, v in parts.items()}}


def _batch(mixture, batch_size: int = 12, only: int | None = None) -> dict[str, np.ndarray]:
  ids = {name: row for row, name in enumerate(NAMES)}
  batches = BatchIterator(
    mixture, "train", LENGTHS, 24, shuffle=True, seed=0, repeat=False, drop_remainder=False, task_ids=ids
  )
  arrays = next(batches).arrays
  rows = np.arange(batch_size) if only is None else np.flatnonzero(arrays["task_ids"] == only)
  return {k: v[rows] for k, v in arrays.items() if k != "mask"}


def test_shared_and_task_parts_combine_by_the_reference_rules():
  # The reference repository's multitask_prompts.py: concat_shared_and_tasks gives [shared; task]
  # along the sequence, add_shared_and_tasks shared + task.
  rng = np.random.RandomState(0)
  table, shared = rng.randn(3, 2, 8).astype(np.float32), rng.randn(3, 8).astype(np.float32)
  concat = np.asarray(task_prompts(table, shared, "concat"))
  assert concat.shape == (3, 5, 8)
  for t in range(3):
    np.testing.assert_array_equal(concat[t], np.concatenate([shared, table[t]]))
  own = rng.randn(3, 3, 8).astype(np.float32)  # 'add': the task parts are as long as the shared one
  added = np.asarray(task_prompts(own, shared, "add"))
  for t in range(3):
    np.testing.assert_array_equal(added[t], shared + own[t])
  # The layer: an example of task t gets exactly what a lone prompt [shared; task t] gives it.
  embedded, mask = rng.randn(3, 4, 8).astype(np.float32), np.array([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]], np.int32)
  config = PromptConfig(5, "after_first", num_tasks=3, shared_length=3)
  ids = np.array([2, 0, 1])
  got, got_mask = Prompt(config, 8).apply({"params": {"prompt": table, "shared_prompt": shared}}, embedded, mask, ids)
  for b, t in enumerate(ids):
    want, want_mask = Prompt(PromptConfig(5, "after_first"), 8).apply(
      {"params": {"prompt": concat[t]}}, embedded[b : b + 1], mask[b : b + 1]
    )
    np.testing.assert_array_equal(got[b], want[0])
    np.testing.assert_array_equal(got_mask[b], want_mask[0])


def test_batches_carry_each_examples_task_row(mixture):
  ids = {name: row for row, name in enumerate(NAMES)}
  batches = BatchIterator(mixture, "train", LENGTHS, 8, shuffle=True, seed=3, repeat=True, drop_remainder=True)
  assert batches.task_counts() == {name: 8 for name in NAMES}
  batches = BatchIterator(
    mixture, "train", LENGTHS, 8, shuffle=True, seed=3, repeat=True, drop_remainder=True, task_ids=ids
  )
  for _ in range(3):
    batch = next(batches)
    assert batch.arrays["task_ids"].tolist() == [ids[ex["task"]] for ex in batch.text["examples"]]
  with pytest.raises(ValueError, match="examples of task mt_b have no prompt row"):
    BatchIterator(
      mixture, "train", LENGTHS, 8, shuffle=False, seed=0, repeat=True, drop_remainder=True, task_ids={"mt_a": 0}
    )


def test_a_batch_of_one_task_moves_only_its_row_and_the_shared_part(mixture):
  prompt = PromptConfig(4, num_tasks=3, shared_length=1)
  model = EncoderDecoderModel(PromptedTransformer(CONFIG, prompt_config=prompt))
  trainable, frozen = param_tree.split_trainable(_params(prompt), r"prompt/.*")
  batch = _batch(mixture, only=1)  # examples of mt_b alone
  tx, schedule = optimizer.adafactor(learning_rate=0.3, weight_decay_rate=1e-5)

  rows = per_task_rows(tx)
  before = TrainState.create(trainable, rows)
  after, _ = jax.jit(step_lib.make_train_step(model, rows, schedule, num_tasks=3))(
    before, frozen, batch, jax.random.PRNGKey(0)
  )
  table, new_table = before.params["prompt"]["prompt"], np.asarray(after.params["prompt"]["prompt"])
  for row in (0, 2):  # absent: value and optimizer state bit for bit
    np.testing.assert_array_equal(new_table[row], table[row])
    for old, new in zip(jax.tree.leaves(before.opt_state.tasks), jax.tree.leaves(after.opt_state.tasks)):
      np.testing.assert_array_equal(np.asarray(new)[row], np.asarray(old)[row])
  assert not np.array_equal(new_table[1], table[1])
  assert not np.array_equal(after.params["prompt"]["shared_prompt"], before.params["prompt"]["shared_prompt"])
  # Why the optimizer runs per row: one Adafactor over the whole table moves a row whose gradient is
  # exactly zero (its weight decay), as it would the absent rows.
  grads = jax.tree.map(np.zeros_like, trainable)
  grads["prompt"]["prompt"][1] = 0.1
  updates, _ = tx.update(grads, tx.init(trainable), trainable)
  assert np.any(np.asarray(updates["prompt"]["prompt"])[0] != 0)
  row_updates, _ = rows.update(grads, rows.init(trainable), trainable)
  assert not np.any(np.asarray(row_updates["prompt"]["prompt"])[[0, 2]])


def test_per_task_losses_equal_each_prompt_alone(mixture):
  prompt = PromptConfig(4, num_tasks=3, shared_length=2)
  params = _params(prompt, seed=1)
  model = EncoderDecoderModel(PromptedTransformer(CONFIG, prompt_config=prompt))
  batch = _batch(mixture)
  assert len(set(batch["task_ids"].tolist())) == 3
  _, sums = jax.jit(model.loss, static_argnames="num_tasks")(params, batch, num_tasks=3)
  summary = step_lib.summarize(
    {**sums, "learning_rate": 0.3, "skipped_steps": 0, "grad_norm": 1.0}, ("mt_a", "mt_b", "mt_c")
  )
  whole = np.asarray(task_prompts(params["prompt"]["prompt"], params["prompt"]["shared_prompt"]))
  alone = EncoderDecoderModel(PromptedTransformer(CONFIG, prompt_config=PromptConfig(4)))
  alone_loss = jax.jit(alone.loss)
  for row, name in enumerate(NAMES):
    # Task `row`'s examples alone: the others' targets weigh nothing (one shape: one compilation).
    own = {k: v for k, v in batch.items() if k != "task_ids"}
    own["decoder_loss_weights"] = own["decoder_loss_weights"] * (batch["task_ids"] == row)[:, None]
    _, single = alone_loss({**params, "prompt": {"prompt": whole[row]}}, own)
    np.testing.assert_allclose(summary[f"{name}/loss"], single["loss_sum"] / single["num_tokens"], rtol=1e-5)
    assert summary[f"{name}/token_accuracy"] == pytest.approx(single["correct_tokens"] / single["num_tokens"])


def test_bad_input_gives_one_line(mixture, tmp_path):
  with pytest.raises(ValueError, match="SHARED_PROMPT_LENGTH=2 needs MULTI_TASK_PROMPTS = True"):
    specs.PromptSpec(length=4, shared_length=2)
  with pytest.raises(ValueError, match="SHARED_PROMPT_LENGTH=4 must be below PROMPT_LENGTH=4"):
    specs.PromptSpec(length=4, per_task=True, shared_length=4)
  with pytest.raises(ValueError, match="so it must be PROMPT_LENGTH=4"):
    specs.PromptSpec(length=4, per_task=True, shared_length=2, shared_combine="add")
  with pytest.raises(ValueError, match="leaves the shared prompt part .* frozen"):
    specs.ModelSpec("tiny", prompt=specs.PromptSpec(length=4, per_task=True, shared_length=2))
  model = specs.ModelSpec("tiny", prompt=specs.PromptSpec(length=4, per_task=True))
  with pytest.raises(DataError, match="quickstart_sentiment is a single task"):
    setup_lib.build(model, specs.TaskSpec("quickstart_sentiment", LENGTHS), specs.MeshSpec(), splits=["train"])
  with pytest.raises(DataError, match="task mt_no_train of the mixture has no train split"):
    setup_lib.build(model, specs.TaskSpec("mt_no_train_mix", LENGTHS), specs.MeshSpec(), splits=["train", "validation"])
  with pytest.raises(DataError, match="task mt_b of the mixture has no train examples"):
    multitask.check_examples({"mt_a": 3}, {"mt_a": 0, "mt_b": 1})
  (tmp_path / "prompts" / "step_2").mkdir(parents=True)
  (tmp_path / "prompts" / "step_2" / "mt_a.safetensors").write_bytes(b"")
  with pytest.raises(CheckpointError, match="prompts of mt_a; it has no prompt of task mt_b$"):
    bundle_lib.latest_bundle(str(tmp_path), "prompts", "mt_b")
  with pytest.raises(CheckpointError, match="prompts of mt_a; name the task$"):
    bundle_lib.latest_bundle(str(tmp_path), "prompts")


def test_resuming_with_other_multi_task_settings_stops_in_one_line(tmp_path):
  run = RunConfig(5, "prefix", "prompt/.*", "mt_ab", None, None, LENGTHS, "", CONFIG, 0, ("mt_a", "mt_b"), 2)
  write_run_config(str(tmp_path), run)
  same = functools.partial(preflight.same_run, str(tmp_path), 5, "prefix", "prompt/.*")
  same(prompt_tasks=("mt_a", "mt_b"), shared_length=2)  # the same run: no error
  with pytest.raises(RunError, match="MULTI_TASK_PROMPTS=True, this run has MULTI_TASK_PROMPTS=False"):
    same(shared_length=2)
  with pytest.raises(RunError, match="SHARED_PROMPT_LENGTH=2, this run has SHARED_PROMPT_LENGTH=0"):
    same(prompt_tasks=("mt_a", "mt_b"))
  with pytest.raises(RunError, match="tasks mt_a, mt_b .in this order., this mixture has mt_b, mt_a"):
    same(prompt_tasks=("mt_b", "mt_a"), shared_length=2)


@pytest.mark.slow
def test_a_multi_task_run_resumes_and_its_task_bundles_serve_like_its_own_table(mixture, tmp_path):
  model_dir = str(tmp_path / "run")
  model = specs.ModelSpec(
    CONFIG, prompt=specs.PromptSpec(length=5, per_task=True, shared_length=2), trainable_params="prompt/.*"
  )

  def run(steps: int):
    return train(
      model,
      specs.TaskSpec("mt_ab", LENGTHS),
      model_dir,
      specs.TrainSpec(steps=steps, batch_size=8, save_period=2, log_period=1, eval_period=2),
      specs.EvaluationSpec(rank_classification=True),
      progress=False,
    )

  run(2)
  lost = os.path.join(model_dir, "prompts", "step_2", "mt_b.safetensors")
  kept = bundle_lib.read_bundle(lost).prompt
  os.remove(lost)  # as a kill between the checkpoint's commit and the bundle's write leaves it
  result = run(4)  # resumes at step 2, and rewrites the lost bundle from its checkpoint
  np.testing.assert_array_equal(bundle_lib.read_bundle(lost).prompt, kept)
  assert result.step == 4
  records = [json.loads(line) for line in open(os.path.join(model_dir, "metrics.jsonl"))]
  assert [r["step"] for r in records if "train/loss" in r] == [1, 2, 3, 4]
  assert all({"train/mt_a/loss", "train/mt_b/token_accuracy"} <= set(r) for r in records if "train/loss" in r)
  assert {"eval/rank/mt_a/accuracy", "eval/rank/mt_b/accuracy"} <= set(records[-1])
  for step in (2, 4):
    assert sorted(os.listdir(os.path.join(model_dir, "prompts", f"step_{step}"))) == [
      "mt_a.safetensors",
      "mt_b.safetensors",
    ]
  # Each task's bundle is its whole prompt, shared part first, with its own evaluation.
  whole = np.asarray(task_prompts(result.trainable["prompt"]["prompt"], result.trainable["prompt"]["shared_prompt"]))
  for row, name in enumerate(("mt_a", "mt_b")):
    bundle = bundle_lib.read_bundle(bundle_lib.latest_bundle(model_dir, "prompts", name))
    assert (bundle.task, bundle.step) == (name, 4) and set(bundle.metrics) >= {"rank/accuracy", "decode/accuracy"}
    np.testing.assert_array_equal(bundle.prompt, whole[row])
  # PROMPT_BUNDLES={'mt_a': MODEL_DIR, 'mt_b': MODEL_DIR}: the same predictions as the run's table.
  served = bundles_lib.build(
    specs.ModelSpec(CONFIG, bundles={"mt_a": model_dir, "mt_b": model_dir}),
    specs.TaskSpec("mt_ab", LENGTHS),
    specs.MeshSpec(),
    note=lambda _: None,
    splits=["validation"],
  )
  own = EncoderDecoderModel(PromptedTransformer(CONFIG, prompt_config=PromptConfig(5, num_tasks=2, shared_length=2)))
  ids = {"mt_a": 0, "mt_b": 1}
  want = list(
    Evaluator(own, resolve_task("mt_ab"), LENGTHS, 8, prompt_ids=ids).predictions(
      {**result.frozen, **result.trainable}, "validation"
    )
  )
  got = list(
    Evaluator(served.model, served.task, LENGTHS, 8, prompt_ids=served.prompt_ids).predictions(
      served.params, "validation"
    )
  )
  assert [r["prediction"] for r in got] == [r["prediction"] for r in want]
  np.testing.assert_allclose([r["score"] for r in got], [r["score"] for r in want], atol=1e-5)
  # The Python API takes the task's whole prompt from the MODEL_DIR too.
  loaded = load_pretrained(prompt=model_dir, task="mt_b")
  np.testing.assert_array_equal(loaded.params["prompt"]["prompt"], whole[1])
  with pytest.raises(ValueError, match=r"trained a prompt per task \(mt_a, mt_b\): pass task= one of them"):
    load_pretrained(prompt=model_dir)


def test_a_packed_multi_task_run_trains_each_tasks_prompt(mixture, tmp_path):
  """PACKING with a prompt table through train(): packed batches mix the tasks' examples, each with its own
  task's prompt copy, and every task's loss and bundle come out of the run."""
  model = specs.ModelSpec(CONFIG, prompt=specs.PromptSpec(length=5, per_task=True), trainable_params="prompt/.*")
  result = train(
    model,
    specs.TaskSpec("mt_ab", LENGTHS, packing=True),
    str(tmp_path),
    specs.TrainSpec(steps=2, batch_size=4, save_period=2, log_period=1, eval_period=0),
    progress=False,
  )
  assert result.step == 2
  records = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
  trained = [r for r in records if "train/loss" in r]
  assert [r["step"] for r in trained] == [1, 2]
  assert any({"train/mt_a/loss", "train/mt_b/loss"} <= set(r) for r in trained)  # a step training both
  assert sorted(os.listdir(tmp_path / "prompts" / "step_2")) == ["mt_a.safetensors", "mt_b.safetensors"]
  for row, name in enumerate(("mt_a", "mt_b")):  # each task's bundle is its row of the trained table
    bundle = bundle_lib.read_bundle(bundle_lib.latest_bundle(str(tmp_path), "prompts", name))
    np.testing.assert_array_equal(bundle.prompt, np.asarray(result.trainable["prompt"]["prompt"])[row])
