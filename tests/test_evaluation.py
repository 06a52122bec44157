"""Evaluator: rank classification with shared and per-example candidates, and task-defined metrics."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from prompt_tuning.data.buckets import make_buckets
from prompt_tuning.data.features import trim_with_eos
from prompt_tuning.evaluation import Evaluator
from prompt_tuning.models.model import EncoderDecoderModel
from prompt_tuning.models.prompt import PromptConfig, PromptedTransformer
from prompt_tuning.models.t5 import get_config
from prompt_tuning.task_registry import resolve_task
from support import processes

LENGTHS = {"inputs": 24, "targets": 6}


class ChoiceTask:
  """Quickstart sentences, each with its own candidate list (of varying size)."""

  name = "choice_task"

  def __init__(self):
    self.base = resolve_task("quickstart_sentiment")
    self.vocabulary = self.base.vocabulary
    self.splits = ["validation"]
    self.candidates = None
    self.seen = []

  def examples(self, split):
    for i, ex in enumerate(self.base.examples(split)):
      if i == 5:
        return
      options = ["good", "bad", "fine"][: 2 + i % 2]
      yield dict(ex, targets=options[i % len(options)], candidates=options, group=i // 2)

  def score(self, records):
    self.seen.append(records)
    return {"accuracy": 100.0 * np.mean([r["prediction"] == r["example"]["targets"] for r in records])}


@pytest.mark.slow
def test_per_example_candidates_are_scored_by_teacher_forcing():
  config = get_config("tiny", vocab_size=256)
  model = EncoderDecoderModel(PromptedTransformer(config, prompt_config=PromptConfig(3)))
  tokens = np.ones((1, 4), np.int32)
  params = model.module.init(jax.random.PRNGKey(0), tokens, tokens)["params"]
  params = jax.tree.map(lambda x: getattr(x, "value", x), params, is_leaf=lambda x: hasattr(x, "names"))
  task = ChoiceTask()
  evaluator = Evaluator(model, task, LENGTHS, batch_size=4)
  records = list(evaluator.predictions(params, "validation"))
  assert len(records) == 5
  vocab = task.vocabulary
  for record in records:
    candidates = record["example"]["candidates"]
    assert list(record["rank_scores"]) == candidates  # padding candidates never appear
    assert record["rank_prediction"] == max(candidates, key=record["rank_scores"].get)
    enc = np.zeros((1, LENGTHS["inputs"]), np.int32)
    ids = trim_with_eos(vocab.encode(record["input"]), LENGTHS["inputs"])
    enc[0, : len(ids)] = ids
    for candidate, score in record["rank_scores"].items():
      target = np.array([vocab.encode(candidate) + [1]], np.int32)
      dec_in = np.concatenate([np.zeros((1, 1), np.int32), target[:, :-1]], axis=1)
      np.testing.assert_allclose(score, float(model.score(params, enc, dec_in, target)[0]), rtol=1e-4, atol=1e-4)
  metrics = evaluator.evaluate(params, "validation")
  assert set(metrics) == {"decode/accuracy", "rank/accuracy", "examples"}
  # The task saw whole examples (with its extra fields) and the rank predictions.
  assert task.seen[-1][0]["example"]["group"] == 0
  assert metrics["rank/accuracy"] == 100.0 * np.mean(
    [r["prediction"] == r["example"]["targets"] for r in task.seen[-1]]
  )


def test_truncation_is_reported_once_per_split(caplog):
  config = get_config("tiny", vocab_size=256)
  model = EncoderDecoderModel(PromptedTransformer(config, prompt_config=PromptConfig(2)))
  tokens = np.ones((1, 4), np.int32)
  params = model.module.init(jax.random.PRNGKey(0), tokens, tokens)["params"]
  params = jax.tree.map(lambda x: getattr(x, "value", x), params, is_leaf=lambda x: hasattr(x, "names"))
  evaluator = Evaluator(model, resolve_task("quickstart_sentiment"), {"inputs": 6, "targets": 4}, batch_size=50)
  with caplog.at_level("WARNING"):
    evaluator.evaluate(params)
    evaluator.evaluate(params)
  lines = [r.getMessage() for r in caplog.records if "truncated" in r.getMessage()]
  assert len(lines) == 1 and lines[0].startswith("validation: truncated 100 of 100 inputs to 6 tokens"), lines


@pytest.mark.slow  # compiles decoding and scoring for four input widths
def test_length_buckets_give_the_predictions_and_scores_of_full_length_batches():
  config = get_config("tiny", vocab_size=256)
  model = EncoderDecoderModel(PromptedTransformer(config, prompt_config=PromptConfig(3, "suffix")))
  tokens = np.ones((1, 4), np.int32)
  params = model.module.init(jax.random.PRNGKey(0), tokens, tokens)["params"]
  params = jax.tree.map(lambda x: getattr(x, "value", x), params, is_leaf=lambda x: hasattr(x, "names"))
  task, lengths = resolve_task("quickstart_sentiment"), {"inputs": 32, "targets": 4}
  full = Evaluator(model, task, lengths, batch_size=20)
  bucketed = Evaluator(
    model, task, lengths, batch_size=20, length_buckets=make_buckets({"inputs": [16, 20, 24]}, lengths)
  )
  widths = [b.arrays["encoder_input_tokens"].shape[1] for b in bucketed._batches("validation")]
  assert len(set(widths)) >= 2 and min(widths) < 32, widths  # the batches really are narrower
  r_full, r_bucketed = list(full.predictions(params, "validation")), list(bucketed.predictions(params, "validation"))
  assert [r["prediction"] for r in r_bucketed] == [r["prediction"] for r in r_full]
  np.testing.assert_allclose([r["score"] for r in r_bucketed], [r["score"] for r in r_full], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(
    [list(r["rank_scores"].values()) for r in r_bucketed],
    [list(r["rank_scores"].values()) for r in r_full],
    rtol=1e-5,
    atol=1e-5,
  )


SHARDED_SCRIPT = textwrap.dedent("""
    import jax, numpy as np
    from prompt_tuning import partitioning
    from prompt_tuning.evaluation import Evaluator
    from prompt_tuning.models.model import EncoderDecoderModel
    from prompt_tuning.models.prompt import PromptConfig, PromptedTransformer
    from prompt_tuning.models.t5 import get_config
    from prompt_tuning.task_registry import resolve_task

    assert len(jax.devices()) == 4, jax.devices()
    model = EncoderDecoderModel(PromptedTransformer(get_config("tiny", vocab_size=256), prompt_config=PromptConfig(3)))
    tokens = np.ones((1, 4), np.int32)
    params = model.module.init(jax.random.PRNGKey(0), tokens, tokens)["params"]
    params = jax.tree.map(lambda x: getattr(x, "value", x), params, is_leaf=lambda x: hasattr(x, "names"))
    task = resolve_task("quickstart_sentiment")
    out = {}
    for name, mesh in (("one", partitioning.make_mesh(1, jax.devices()[:1])), ("four", partitioning.make_mesh())):
      # 6 rows over a 4-way data axis: padded to 8; 100 examples: a last batch of 4 real rows.
      evaluator = Evaluator(model, task, {"inputs": 16, "targets": 4}, batch_size=6, mesh=mesh)
      out[name] = (list(evaluator.predictions(params, "validation")), evaluator.evaluate(params))
    (r1, m1), (r4, m4) = out["one"], out["four"]
    assert len(r4) == 100 and m4 == m1, (m4, m1)
    assert [r["prediction"] for r in r4] == [r["prediction"] for r in r1]
    np.testing.assert_allclose([r["score"] for r in r4], [r["score"] for r in r1], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose([list(r["rank_scores"].values()) for r in r4],
                               [list(r["rank_scores"].values()) for r in r1], rtol=1e-5, atol=1e-5)
    print("MATCH")
""")


@pytest.mark.slow
def test_a_batch_split_over_four_devices_scores_like_one_device():
  env = processes.cpu_env(4)
  result = subprocess.run(
    [sys.executable, "-c", SHARDED_SCRIPT],
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
    cwd=os.path.dirname(__file__),
  )
  assert result.returncode == 0, result.stderr[-3000:]
  assert "MATCH" in result.stdout, result.stdout


@pytest.mark.slow
def test_a_batch_mixing_three_tasks_gives_each_task_its_single_task_results():
  """Three tasks with prompts of 4, 2 and 3 vectors in one table, evaluated as one mixture whose
  batches straddle tasks: every example's decode, decode score and rank scores equal those of its
  task evaluated alone with its own prompt."""
  import json

  from prompt_tuning.data.mixture import Mixture
  from prompt_tuning.data.quickstart import data_path
  from prompt_tuning.data.task import TextTask

  base = resolve_task("quickstart_sentiment")
  rows = [json.loads(line) for line in open(data_path("validation.jsonl"))]
  specs = [
    ("mixed_a", "sentence: {sentence}", ["negative", "positive"], 5),
    ("mixed_b", "review: {sentence}", ["bad", "good"], 4),
    ("mixed_c", "{sentence} overall:", ["no", "yes", "unsure"], 3),
  ]
  tasks, start = [], 0
  for name, template, labels, count in specs:
    chosen = [dict(r, label=int(r["label"] == "positive")) for r in rows[start : start + count]]
    start += count
    tasks.append(TextTask(name, base.vocabulary, {"validation": lambda c=chosen: c}, template, "label", labels))
  lengths = (4, 2, 3)
  config = get_config("tiny", vocab_size=256)
  table_model = EncoderDecoderModel(
    PromptedTransformer(config, prompt_config=PromptConfig(4, num_tasks=3, task_lengths=lengths))
  )
  tokens, ids = np.ones((1, 4), np.int32), np.zeros((1,), np.int32)
  params = table_model.module.init(jax.random.PRNGKey(0), tokens, tokens, task_ids=ids)["params"]
  params = jax.tree.map(lambda x: getattr(x, "value", x), params, is_leaf=lambda x: hasattr(x, "names"))
  table = np.asarray(jax.random.normal(jax.random.PRNGKey(5), (3, 4, config.emb_dim)))
  params = {**params, "prompt": {"prompt": table}}

  mixture = Mixture("mixed_abc", tasks)
  evaluator = Evaluator(
    table_model, mixture, LENGTHS, batch_size=6, prompt_ids={t.name: i for i, t in enumerate(tasks)}
  )
  mixed = list(evaluator.predictions(params, "validation"))
  assert [r["example"]["task"] for r in mixed] == ["mixed_a"] * 5 + ["mixed_b"] * 4 + ["mixed_c"] * 3
  for t, task in enumerate(tasks):
    alone_model = EncoderDecoderModel(PromptedTransformer(config, prompt_config=PromptConfig(lengths[t])))
    alone_params = {**params, "prompt": {"prompt": table[t, : lengths[t]]}}
    alone = list(Evaluator(alone_model, task, LENGTHS, batch_size=6).predictions(alone_params, "validation"))
    ours = [r for r in mixed if r["example"]["task"] == task.name]
    assert [r["prediction"] for r in ours] == [r["prediction"] for r in alone]
    np.testing.assert_allclose([r["score"] for r in ours], [r["score"] for r in alone], atol=1e-4)
    for mine, theirs in zip(ours, alone):
      assert mine["rank_prediction"] == theirs["rank_prediction"]
      np.testing.assert_allclose(
        [mine["rank_scores"][c] for c in task.labels], [theirs["rank_scores"][c] for c in task.labels], atol=1e-4
      )
  metrics = evaluator.evaluate(params, "validation")
  assert {"decode/mixed_a/accuracy", "rank/mixed_c/accuracy", "decode/average"} <= set(metrics)
