"""Model selection (runs/selection.py): the best step per metric on a constructed history, its record
rebuilt on resume from metrics.jsonl, and a best checkpoint that the keep-N rotation never deletes."""

from __future__ import annotations

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest

from prompt_tuning.checkpoints.train_state import TrainCheckpointer
from prompt_tuning.errors import RunError
from prompt_tuning.metrics_writer import MetricsWriter
from prompt_tuning.runs import selection

# A constructed validation history: accuracy peaks at step 300 (and ties it at 500, later: not taken),
# rank accuracy at 400, the loss is lowest at 200.
HISTORY = [
  (100, {"decode/accuracy": 50.0, "rank/accuracy": 55.0, "loss": 2.0, "examples": 8}),
  (200, {"decode/accuracy": 62.5, "rank/accuracy": 60.0, "loss": 0.5, "examples": 8}),
  (300, {"decode/accuracy": 87.5, "rank/accuracy": 70.0, "loss": 0.9, "examples": 8}),
  (400, {"decode/accuracy": 75.0, "rank/accuracy": 90.0, "loss": 1.1, "examples": 8}),
  (500, {"decode/accuracy": 87.5, "rank/accuracy": 80.0, "loss": 1.5, "examples": 8}),
]


def test_best_step_per_metric_on_a_constructed_history():
  best = selection.best_steps(HISTORY)
  assert best == {
    "decode/accuracy": {"value": 87.5, "step": 300},  # the tie at 500 keeps the earlier step
    "rank/accuracy": {"value": 90.0, "step": 400},
    "loss": {"value": 0.5, "step": 200},  # lower is better
  }  # 'examples' is a count, not a metric
  assert [selection.higher_is_better(m) for m in ("decode/f1", "rank/pearson_corrcoef", "eval/loss", "z_loss")] == [
    True,
    True,
    False,
    False,
  ]


def test_the_tracker_says_when_the_selection_metric_improves(tmp_path):
  default = selection.BestTracker(str(tmp_path))  # the first metric evaluated: the task's first by decoding
  assert [default.update(step, metrics) for step, metrics in HISTORY] == [True, True, True, False, False]
  assert default.selection_metric == "decode/accuracy" and default.selected_step == 300
  ranked = selection.BestTracker(str(tmp_path), "eval/rank/accuracy")  # metrics.jsonl's name works too
  assert [ranked.update(step, metrics) for step, metrics in HISTORY] == [True, True, True, True, False]
  assert ranked.selected_step == 400
  ranked.write()
  record = json.loads((tmp_path / "best.json").read_text())
  assert record == {"selection_metric": "rank/accuracy", "best": selection.best_steps(HISTORY)}
  assert selection.read_best(str(tmp_path)) == record
  with pytest.raises(RunError, match=r"^TrainSpec.selection_metric='rank/f1' is not among the evaluation's metrics"):
    selection.BestTracker(str(tmp_path), "rank/f1").update(100, HISTORY[0][1])


def test_resuming_rebuilds_the_record_from_metrics_jsonl(tmp_path):
  # Session 1 evaluated steps 100..400 and was killed; its last checkpoint was step 200.
  with MetricsWriter(str(tmp_path)) as writer:
    for step, metrics in HISTORY[:4]:
      writer.write(step, {"loss": 3.0}, prefix="train")
      writer.write(step, metrics, prefix="eval")
  resumed = selection.BestTracker(str(tmp_path), resumed_step=200)  # steps after 200 will be trained again
  assert resumed.selection_metric == "decode/accuracy" and resumed.selected_step == 200
  # Session 1 was killed mid-append: a cut line, which session 2's first record continues.
  with open(tmp_path / "metrics.jsonl", "a") as f:
    f.write('{"step": 500, "eval/decode/acc')
  # Session 2 evaluates step 300 again, worse this time: the later record wins.
  with MetricsWriter(str(tmp_path)) as writer:
    writer.write(250, {"loss": 1.0}, prefix="train")  # lost with the cut line
    writer.write(300, {**HISTORY[2][1], "decode/accuracy": 10.0}, prefix="eval")
  history = selection.read_eval_history(str(tmp_path))
  assert [step for step, _ in history] == [100, 200, 300, 400]
  assert history[2][1]["decode/accuracy"] == 10.0 and "examples" in history[2][1]
  assert selection.best_steps(history)["decode/accuracy"] == {"value": 75.0, "step": 400}


def _tree(step: int) -> dict:
  rng = np.random.RandomState(step)
  return {
    "step": jnp.asarray(step, jnp.int32),
    "params": {"prompt": {"prompt": jnp.asarray(rng.randn(4, 8).astype(np.float32))}},
    "opt_state": ({"v_row": jnp.asarray(rng.rand(3).astype(np.float32))},),
  }


def test_the_rotation_keeps_the_best_checkpoint_and_its_prompt(tmp_path):
  checkpointer = TrainCheckpointer(str(tmp_path), save_period=1, keep=2, warn=lambda m: None)
  tracker = selection.BestTracker(str(tmp_path))
  try:
    for step, metrics in HISTORY:
      if tracker.update(step, metrics):
        checkpointer.protect(step)
      checkpointer.save(step, _tree(step), data_position=step)
      if tracker.selected_step == step:
        selection.keep_best_prompt(str(tmp_path), step)
    # keep=2 alone would leave 400 and 500; the best (300) stays beside them.
    assert sorted(checkpointer.manager.all_steps()) == [300, 400, 500]
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["300", "400", "500"]
    np.testing.assert_array_equal(np.load(tmp_path / "prompts" / "best.npy"), _tree(300)["params"]["prompt"]["prompt"])
    # A new best frees the old one: it rotates away as any other (keep=2 besides the best).
    checkpointer.protect(500)
    checkpointer.save(600, _tree(600), data_position=600)
    assert sorted(checkpointer.manager.all_steps()) == [400, 500, 600]
  finally:
    checkpointer.close()


@pytest.mark.slow
def test_training_keeps_the_best_validation_checkpoint_beside_the_last(tmp_path):
  """eval_period=1, no periodic saves, keep=1: the best step's checkpoint is forced and survives the rotation."""
  from prompt_tuning.checkpoints.train_state import restore_trained
  from prompt_tuning.models.t5 import get_config
  from prompt_tuning.runs import specs
  from prompt_tuning.runs.train import train

  model = specs.ModelSpec(config=get_config("tiny", vocab_size=256), prompt=specs.PromptSpec(length=5))
  result = train(
    model,
    specs.TaskSpec("quickstart_sentiment", {"inputs": 24, "targets": 4}),
    str(tmp_path),
    specs.TrainSpec(steps=4, batch_size=8, save_period=0, keep=1, log_period=1, eval_period=1),
    specs.EvaluationSpec(rank_classification=True, batch_size=32),
    progress=False,
  )
  history = selection.read_eval_history(str(tmp_path))
  assert [step for step, _ in history] == [1, 2, 3, 4]
  best = selection.read_best(str(tmp_path))
  assert best == result.best and best["selection_metric"] == "decode/accuracy"
  chosen = best["best"]["decode/accuracy"]["step"]
  # The random tiny model decodes no label in 4 steps: every decode/accuracy ties at 0 and the earliest
  # step is the best, so the rotation (keep=1) had to spare it.
  assert chosen < 4
  assert chosen == selection.best_steps(history)["decode/accuracy"]["step"]
  assert sorted(int(s) for s in os.listdir(tmp_path / "checkpoints")) == sorted({chosen, 4})
  # prompts/best.npy is the selected checkpoint's prompt.
  params, step = restore_trained(str(tmp_path), {**result.frozen, **result.trainable}, model.trainable_params, chosen)
  assert step == chosen
  np.testing.assert_array_equal(np.load(tmp_path / "prompts" / "best.npy"), params["prompt"]["prompt"])
