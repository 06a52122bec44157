"""Prompt ensembling (paper Table 3): evaluate with a task mapped to a list of bundles."""

from __future__ import annotations

import json
import os
from collections import Counter

import jax
import numpy as np
import pytest

from prompt_tuning import param_tree
from prompt_tuning.checkpoints import bundle as bundle_lib
from prompt_tuning.cli import main as cli
from prompt_tuning.data.mixture import Mixture
from prompt_tuning.data.quickstart import data_path
from prompt_tuning.data.task import DataError, TextTask, register_task
from prompt_tuning.ensemble import majority_vote, mean_score_choice
from prompt_tuning.evaluation import score_records
from prompt_tuning.models.t5 import get_config, network
from prompt_tuning.runs import bundles as bundles_lib
from prompt_tuning.runs import setup as setup_lib
from prompt_tuning.runs import specs
from prompt_tuning.runs.evaluate import evaluate
from prompt_tuning.runs.infer import infer
from prompt_tuning.task_registry import resolve_task

CONFIG = get_config("tiny", vocab_size=256)
LENGTHS = {"inputs": 24, "targets": 4}
TASK = "ensemble_sentiment"
EVALUATION = specs.EvaluationSpec(batch_size=8)  # 12 examples: a full batch and a padded one


@pytest.fixture(scope="module")
def task():
  vocabulary = resolve_task("quickstart_sentiment").vocabulary
  rows = [json.loads(line) for line in open(data_path("validation.jsonl"))][:12]
  made = TextTask(
    TASK, vocabulary, {"validation": lambda: rows}, "sentence: {sentence}", "label", ["negative", "positive"]
  )
  other = TextTask("ensemble_other", vocabulary, {"validation": lambda: rows[:2]}, "{sentence}", "label", ["a", "b"])
  register_task(made, overwrite=True)
  register_task(other, overwrite=True)
  register_task(Mixture("ensemble_mix", [made, other]), overwrite=True)
  return made


def _write_prompts(root, config, lengths, scale=3.0, first_seed=48):
  """Bundle files of random prompts (one seed each) for the random-init frozen model of `config`.

  Seeds 48-50 at scale 3 make members that disagree, and on one example the mean score picks
  another label than the members' majority (found by a search over seeds; asserted in the test)."""
  fingerprint = param_tree.fingerprint(network.init_params(config, jax.random.PRNGKey(0)))
  paths = []
  for seed, length in enumerate(lengths):
    prompt = scale * np.random.RandomState(first_seed + seed).randn(length, config.emb_dim).astype(np.float32)
    bundle = bundle_lib.PromptBundle(prompt, bundle_lib.architecture(config), fingerprint, task=TASK)
    paths.append(bundle_lib.write_bundle(os.path.join(root, f"member{seed}.safetensors"), bundle))
  return paths


@pytest.fixture(scope="module")
def members(task, tmp_path_factory):
  """Three different prompts (two lengths: the table pads and masks) as bundle files."""
  return _write_prompts(str(tmp_path_factory.mktemp("ensemble")), CONFIG, (3, 3, 2))


def _evaluator(paths):
  model = specs.ModelSpec(CONFIG, bundles={TASK: paths})
  task = specs.TaskSpec(TASK, LENGTHS)
  setup = bundles_lib.build(model, task, specs.MeshSpec(), note=lambda m: None, splits=["validation"])
  return setup, setup_lib.evaluator(setup, task, EVALUATION)


def test_votes_and_mean_scores_break_ties_deterministically():
  assert majority_vote(["a", "b", "b"]) == 1
  assert majority_vote(["a", "b", "c"]) == 0  # all tied: the earliest member
  assert majority_vote(["b", "a", "a", "b"]) == 0  # tied counts: the earliest member among them
  best, mean = mean_score_choice(np.array([[-1.0, -3.0], [-4.0, -1.0]]))
  assert best == 1 and mean.tolist() == [-2.5, -2.0]
  assert mean_score_choice(np.array([[-1.0, -1.0]]))[0] == 0  # tied candidates: the earlier
  assert mean_score_choice(np.array([[-1.0, -np.inf], [-2.0, -np.inf]]))[0] == 0  # padding never wins


@pytest.mark.slow
def test_an_ensemble_of_3_reports_4_sets_and_is_the_vote_of_the_single_runs(members, tmp_path):
  singles = []  # each member alone, through the single-bundle path
  for path in members:
    setup, evaluator = _evaluator(path)
    assert setup.ensemble is None
    singles.append((list(evaluator.predictions(setup.params, "validation")), evaluator.evaluate(setup.params)))
  # evaluate() with one bundle for the task scores it as the evaluator does (no MODEL_DIR checkpoint, no step).
  alone = evaluate(
    specs.ModelSpec(CONFIG, bundles={TASK: members[0]}),
    specs.TaskSpec(TASK, LENGTHS),
    str(tmp_path / "single"),
    EVALUATION,
    progress=False,
  )
  assert alone == pytest.approx(singles[0][1])
  decodes = [[r["prediction"] for r in records] for records, _ in singles]
  ranks = [[r["rank_prediction"] for r in records] for records, _ in singles]
  # The members disagree on some examples, by decoding and by rank, or the vote proves nothing.
  assert any(len(set(column)) > 1 for column in zip(*decodes)), decodes
  assert any(len(set(column)) > 1 for column in zip(*ranks)), ranks

  metrics = evaluate(
    specs.ModelSpec(CONFIG, bundles={TASK: members}),
    specs.TaskSpec(TASK, LENGTHS),
    str(tmp_path / "out"),
    EVALUATION,
    progress=False,
  )
  sets = {k.split("/")[0] for k in metrics if "/" in k}
  assert sets == {"member_0", "member_1", "member_2", "ensemble"} and metrics["examples"] == 12
  for m, (_, alone) in enumerate(singles):
    for name in ("decode/accuracy", "rank/accuracy"):
      assert metrics[f"member_{m}/{name}"] == pytest.approx(alone[name]), (m, name)
  # The vote and the mean score, computed here from the single runs.
  base = singles[0][0]
  voted = []
  for i, record in enumerate(base):
    column = [d[i] for d in decodes]
    counts = Counter(column)
    vote = next(p for p in column if counts[p] == max(counts.values()))
    mean = {c: np.mean([records[i]["rank_scores"][c] for records, _ in singles]) for c in record["rank_scores"]}
    voted.append(dict(record, prediction=vote, rank_prediction=max(mean, key=mean.get)))
  # The vote is not member 0's everywhere, and the mean score is not the members' rank majority.
  assert any(v["prediction"] != d for v, d in zip(voted, decodes[0]))
  assert any(v["rank_prediction"] != Counter(c).most_common(1)[0][0] for v, c in zip(voted, zip(*ranks))), (
    "no example where the mean score and the members' majority differ"
  )
  want = score_records(resolve_task(TASK), voted)
  assert metrics["ensemble/decode/accuracy"] == pytest.approx(want["decode/accuracy"])
  assert metrics["ensemble/rank/accuracy"] == pytest.approx(want["rank/accuracy"])
  # Per example: one batch of 8 x 3 rows gives each member's single-run decode, and the vote.
  setup, evaluator = _evaluator(members)
  assert setup.ensemble == (0, 1, 2)
  records = list(evaluator.predictions(setup.params, "validation"))
  assert [r["member_predictions"] for r in records] == [list(c) for c in zip(*decodes)]
  assert [r["member_rank_predictions"] for r in records] == [list(c) for c in zip(*ranks)]
  assert [r["prediction"] for r in records] == [v["prediction"] for v in voted]
  assert [r["rank_prediction"] for r in records] == [v["rank_prediction"] for v in voted]
  for i, record in enumerate(records):  # scores within float tolerance of the single runs'
    mean = [np.mean([s[0][i]["rank_scores"][c] for s in singles]) for c in record["rank_scores"]]
    np.testing.assert_allclose(list(record["rank_scores"].values()), mean, atol=1e-4)
    np.testing.assert_allclose(record["member_scores"], [s[0][i]["score"] for s in singles], atol=1e-4)
  written = [json.loads(line) for line in open(tmp_path / "out" / "metrics.jsonl")]
  assert (
    written[-1]["step"] == 0 and written[-1]["eval/ensemble/decode/accuracy"] == metrics["ensemble/decode/accuracy"]
  )
  # infer with the list writes the ensemble's predictions.
  path = infer(
    specs.ModelSpec(CONFIG, bundles={TASK: members}),
    specs.TaskSpec(TASK, LENGTHS),
    str(tmp_path / "out"),
    EVALUATION,
    progress=False,
  )
  assert path.endswith(f"inference/{TASK}-validation-ensemble.jsonl")
  assert [json.loads(line)["prediction"] for line in open(path)] == [v["prediction"] for v in voted]


def test_bad_ensembles_are_one_line(members, tmp_path):
  suffix = bundle_lib.write_bundle(
    str(tmp_path / "suffix.safetensors"),
    bundle_lib.PromptBundle(np.ones((2, CONFIG.emb_dim), np.float32), {}, "", placement="suffix"),
  )
  other = bundle_lib.write_bundle(
    str(tmp_path / "other.safetensors"),
    bundle_lib.PromptBundle(np.ones((2, CONFIG.emb_dim), np.float32), bundle_lib.architecture(CONFIG), "0123"),
  )
  cases = [
    (TASK, {TASK: [members[0], suffix]}, ValueError, "the prompt bundles mix placements (prefix, suffix)"),
    (TASK, {TASK: [members[0], other]}, Exception, f"member 1 of the ensemble of task {TASK} ({other})"),
    (TASK, {TASK: members[0], "rte": members}, DataError, "PROMPT_BUNDLES has an ensemble for task rte, which is"),
    ("ensemble_mix", {TASK: members, "ensemble_other": members[0]}, DataError, "evaluated on its task alone"),
  ]
  for name, given, error, message in cases:
    with pytest.raises(error) as info:
      evaluate(
        specs.ModelSpec(CONFIG, bundles=given), specs.TaskSpec(name, LENGTHS), str(tmp_path / "o"), progress=False
      )
    assert message in str(info.value) and "\n" not in str(info.value), str(info.value)
  with pytest.raises(ValueError, match=r"PROMPT_BUNDLES\['rte'\] is an empty list") as info:
    specs.ModelSpec(CONFIG, bundles={"rte": []})
  assert "\n" not in str(info.value)
  assert not (tmp_path / "o").exists()  # nothing written


@pytest.mark.slow
def test_eval_command_ensembles_gin_prompt_bundles(tmp_path, capsys):
  # quickstart.gin's random-init frozen model (seed 0), three prompts for it.
  config = get_config("tiny", vocab_size=256, emb_dim=128, head_dim=32, mlp_dim=256)
  paths = _write_prompts(str(tmp_path), config, (4, 4, 4))
  flags = [
    "eval",  # the name for `evaluate`
    "--gin_file=quickstart.gin",
    "--gin_file=runs/evaluate.gin",
    f"--gin.MODEL_DIR='{tmp_path / 'out'}'",
    f"--gin.PROMPT_BUNDLES={{'quickstart_sentiment': {paths!r}}}",
    "--gin.EVAL_BATCH_SIZE=50",
  ]
  assert cli.main(flags) == 0
  out, err = capsys.readouterr()
  assert out.startswith(
    "evaluated PROMPT_BUNDLES on validation: decode/ by greedy decoding; rank/ by rank classification"
  )
  for name in ("member_0", "member_1", "member_2", "ensemble"):
    assert f"  {name}/decode/accuracy: " in out and f"  {name}/rank/accuracy: " in out
  assert "\n  examples: 100\n" in out
  assert (
    "evaluating an ensemble of 3 prompts on quickstart_sentiment validation (50 examples x 3 prompts a batch)" in err
  )
  table = [line for line in err.splitlines() if line.startswith(("member_", "ensemble "))]
  assert [line.split()[0] for line in table] == ["member_0", "member_1", "member_2", "ensemble"]
  assert all(line.endswith(f"({path})") for line, path in zip(table, paths))
  rows = [json.loads(line) for line in open(tmp_path / "out" / "metrics.jsonl")]
  assert "eval/ensemble/rank/accuracy" in rows[-1] and "eval/member_2/decode/accuracy" in rows[-1]
