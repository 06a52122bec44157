"""infer with PROMPT_BUNDLES: several trained prompts on one frozen model, one batch mixing tasks."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from prompt_tuning import param_tree
from prompt_tuning.checkpoints import bundle as bundle_lib
from prompt_tuning.checkpoints.structure import CheckpointError
from prompt_tuning.data.mixture import Mixture
from prompt_tuning.data.quickstart import data_path
from prompt_tuning.data.task import DataError, TextTask, register_task
from prompt_tuning.evaluation import Evaluator
from prompt_tuning.models.model import EncoderDecoderModel
from prompt_tuning.models.prompt import PromptConfig, PromptedTransformer
from prompt_tuning.models.t5 import get_config, network
from prompt_tuning.runs import specs
from prompt_tuning.runs.infer import infer
from prompt_tuning.task_registry import resolve_task

CONFIG = get_config("tiny", vocab_size=256)
LENGTHS = {"inputs": 24, "targets": 4}


@pytest.fixture(scope="module")
def tasks():
  """Two small tasks over the quick start's sentences, and their mixture, registered."""
  vocabulary = resolve_task("quickstart_sentiment").vocabulary
  rows = [json.loads(line) for line in open(data_path("validation.jsonl"))]
  made = []
  for name, template, start in (("bundle_a", "sentence: {sentence}", 0), ("bundle_b", "review: {sentence}", 4)):
    chosen = rows[start : start + 4]
    task = TextTask(name, vocabulary, {"validation": lambda c=chosen: c}, template, "label", ["negative", "positive"])
    made.append(register_task(task, overwrite=True))
  register_task(Mixture("bundle_ab", made), overwrite=True)
  return made


@pytest.fixture(scope="module")
def bundles(tasks, tmp_path_factory):
  """{task: path}: a bundle file for bundle_a (3 vectors), a PEFT adapter folder for bundle_b (2)."""
  root = tmp_path_factory.mktemp("bundles")
  fingerprint = param_tree.fingerprint(network.init_params(CONFIG, jax.random.PRNGKey(0)))  # random init, seed 0
  rng = np.random.RandomState(1)
  made = {}
  for name, length in (("bundle_a", 3), ("bundle_b", 2)):
    made[name] = bundle_lib.PromptBundle(
      rng.randn(length, CONFIG.emb_dim).astype(np.float32), bundle_lib.architecture(CONFIG), fingerprint, task=name
    )
  paths = {"bundle_a": bundle_lib.write_bundle(str(root / "a.safetensors"), made["bundle_a"])}
  paths["bundle_b"] = bundle_lib.export_peft(made["bundle_b"], str(root / "b_peft"))
  return paths, made


@pytest.mark.slow
def test_infer_mixes_tasks_in_one_batch_and_matches_a_task_alone(bundles, tmp_path):
  paths, made = bundles
  model = specs.ModelSpec(CONFIG, bundles=paths)
  path = infer(
    model,
    specs.TaskSpec("bundle_ab", LENGTHS),
    str(tmp_path / "out"),
    specs.EvaluationSpec(batch_size=8),
    progress=False,
  )
  assert path.endswith("inference/bundle_ab-validation-bundles.jsonl")
  records = [json.loads(line) for line in open(path)]
  assert len(records) == 8 and {"prediction", "score", "target"} <= set(records[0])
  # Task bundle_b alone, with its own 2-vector prompt: the same decodes and scores.
  alone = EncoderDecoderModel(PromptedTransformer(CONFIG, prompt_config=PromptConfig(2)))
  params = {**network.init_params(CONFIG, jax.random.PRNGKey(0)), "prompt": {"prompt": made["bundle_b"].prompt}}
  want = list(Evaluator(alone, resolve_task("bundle_b"), LENGTHS, 4).predictions(params, "validation"))
  assert [r["prediction"] for r in records[4:]] == [r["prediction"] for r in want]
  np.testing.assert_allclose([r["score"] for r in records[4:]], [r["score"] for r in want], atol=1e-4)


def test_bundles_that_do_not_fit_are_one_line(bundles, tmp_path):
  paths, made = bundles
  other = bundle_lib.write_bundle(
    str(tmp_path / "other.safetensors"),
    bundle_lib.PromptBundle(made["bundle_a"].prompt, made["bundle_a"].config, "0123"),
  )
  suffix = bundle_lib.write_bundle(
    str(tmp_path / "suffix.safetensors"), bundle_lib.PromptBundle(made["bundle_a"].prompt, {}, "", placement="suffix")
  )
  task = specs.TaskSpec("bundle_ab", LENGTHS)
  cases = [
    ({"bundle_a": paths["bundle_a"]}, DataError, "no prompt bundle for task bundle_b"),
    ({**paths, "bundle_a": other}, CheckpointError, "trained on frozen weights 0123"),
    ({**paths, "bundle_a": suffix}, ValueError, "the prompt bundles mix placements (prefix, suffix)"),
  ]
  for given, error, message in cases:
    with pytest.raises(error) as info:
      infer(specs.ModelSpec(CONFIG, bundles=given), task, str(tmp_path / "out"), progress=False)
    assert message in str(info.value) and "\n" not in str(info.value), str(info.value)
  with pytest.raises(ValueError, match="PROMPT_BUNDLES must map task names"):
    specs.ModelSpec(CONFIG, bundles={"bundle_a": 3})
