"""Experiment grids (prompt_tuning/runs/sweep.py, cli/sweep.py): expansion, names, sweep.json and
the shipped experiments, without training anything."""

from __future__ import annotations

import json
import os
import shlex

import pytest

from prompt_tuning import gin_utils
from prompt_tuning.cli import gin_runner
from prompt_tuning.cli import sweep as sweep_cli
from prompt_tuning.errors import RunError
from prompt_tuning.runs import sweep as sweep_lib
from support import sweeps


def _expand(axes, root="/r", **kwargs):
  config = sweep_lib.SweepConfig(
    axes=axes, name=kwargs.pop("name", None), seeds=kwargs.pop("seeds", None), bindings=kwargs.pop("bindings", ())
  )
  return sweep_lib.expand(config, "exp", root, base_files=["exp.gin"], **kwargs)


def test_the_product_of_the_axes_in_order_with_readable_names():
  runs = _expand(
    {
      "PROMPT_LENGTH": [1, 20],
      "model": ["models/t5_1_1/small.gin", "models/t5_1_1/base.gin"],
      "method": {"prompt": "TRAINABLE_PARAMS = 'prompt/prompt'", "model": ["x/tune.gin", "TRAINABLE_PARAMS='.*'"]},
    },
    seeds=[0, 1],
  )
  assert len(runs) == 16
  assert runs[0].name == "prompt_length=1,model=small,method=prompt,seed=0"
  assert runs[1].name == "prompt_length=1,model=small,method=prompt,seed=1"  # the last axis varies fastest
  assert runs[-1].name == "prompt_length=20,model=base,method=model,seed=1"
  assert runs[-1].model_dir == "/r/prompt_length=20,model=base,method=model,seed=1"
  assert runs[-1].axes == {"PROMPT_LENGTH": 20, "model": "base", "method": "model", "seed": 1}
  assert runs[-1].gin_files == ("exp.gin", "models/t5_1_1/base.gin", "x/tune.gin")
  assert runs[-1].bindings == (
    "PROMPT_LENGTH = 20",
    "TRAINABLE_PARAMS = '.*'",
    "TrainSpec.seed = 1",
    "MODEL_DIR = '/r/prompt_length=20,model=base,method=model,seed=1'",
  )
  assert len({r.model_dir for r in runs}) == 16


def test_settings_name_other_axes_and_shared_bindings_follow_them():
  runs = _expand(
    {
      "model": ["models/t5_1_1/small.gin", "models/t5_1_1/xl.gin"],
      "pretraining": {
        "lm": "INITIAL_CHECKPOINT_PATH = 'gs://b/lm100k_{model}/c'",
        "sc": "INITIAL_CHECKPOINT_PATH = 'gs://b/{model}/c'",
      },
    },
    bindings=["VOCAB = '{pretraining}-{model}'", "TASK_FEATURE_LENGTHS = {'inputs': 8}"],
    extra_bindings=["TRAIN_STEPS=2"],
  )
  assert runs[3].bindings == (
    "INITIAL_CHECKPOINT_PATH = 'gs://b/xl/c'",
    "VOCAB = 'sc-xl'",
    "TASK_FEATURE_LENGTHS = {'inputs': 8}",  # braces that name no axis are left alone
    "TRAIN_STEPS = 2",
    "MODEL_DIR = '/r/model=xl,pretraining=sc'",
  )


def test_labels_of_values_that_are_not_scalars_and_unsafe_characters():
  runs = _expand({"TASK_FEATURE_LENGTHS": [{"inputs": 8}], "MIXTURE_OR_TASK_NAME": ["a/b c"], "LR": [1e-05, None]})
  assert runs[0].axes == {"TASK_FEATURE_LENGTHS": "{'inputs': 8}", "MIXTURE_OR_TASK_NAME": "a/b c", "LR": 1e-05}
  assert runs[0].name == "task_feature_lengths=__inputs___8_,mixture_or_task_name=a_b_c,lr=1e-05"
  assert runs[1].axes["LR"] is None and runs[1].bindings[2] == "LR = None"
  assert runs[0].bindings[0] == "TASK_FEATURE_LENGTHS = {'inputs': 8}"


@pytest.mark.parametrize(
  "axes, kwargs, message",
  [
    (None, {}, "binds no sweep.axes"),
    ({}, {}, "non-empty dict"),
    ({"A": []}, {}, "is empty"),
    ({"A": 3}, {}, "must be a list of values or a {label: setting} dict"),
    ({"m": {"x": 3}}, {}, "must be a gin file, a binding"),
    ({"m": {"x": "just words"}}, {}, "neither a gin file"),
    ({"m": ["a/base.gin", "b/base.gin"]}, {}, "two values named 'base'"),
    ({"A": [1], "a": [2]}, {}, "two axes named 'a'"),
    ({"seed": [1]}, {"seeds": [0]}, "has one already"),
    ({"A": [1]}, {"seeds": "0"}, "sweep.seeds must be a non-empty list"),
    ({"A": [1, 2]}, {"extra_bindings": ["A=3"]}, "--gin.A sets a key that an axis of the sweep sets"),
    ({"A": [1]}, {"extra_bindings": ["MODEL_DIR='/x'"]}, "pass --root instead"),
    ({"A": [1]}, {"bindings": "A = 1"}, "sweep.bindings must be a list"),
  ],
)
def test_malformed_grids_stop_with_one_line(axes, kwargs, message):
  with pytest.raises(RunError, match=None) as error:
    _expand(axes, **kwargs)
  assert message in str(error.value) and "\n" not in str(error.value)


def test_the_command_is_the_run_and_the_record_has_exactly_the_documented_keys(tmp_path):
  (run,) = _expand(
    {"MIXTURE_OR_TASK_NAME": ["it's"]}, root=str(tmp_path / "root dir"), extra_bindings=["X='a b'"], search_paths=["/s"]
  )
  words = shlex.split(run.command())
  assert words[:2] == ["prompt-tuning", "train"]
  parsed = gin_runner.parse_command_line(words[2:], "train")
  assert parsed.gin_files == list(run.gin_files) and parsed.search_paths == ["/s"]
  assert [sweep_lib.normalize_binding(b) for b in parsed.bindings] == list(run.bindings)
  assert "--gin.X=\"'a b'\"" in run.command()  # quoted as the README writes them
  path = sweep_lib.write_record(run)
  record = json.load(open(path))
  assert tuple(record) == sweep_lib.SWEEP_KEYS
  assert record == {
    "experiment": "exp",
    "axes": {"MIXTURE_OR_TASK_NAME": "it's"},
    "gin_files": ["exp.gin"],
    "bindings": list(run.bindings),
    "command": run.command(),
  }
  assert sweep_lib.read_record(run.model_dir) == record
  assert sweep_lib.read_record(str(tmp_path)) is None
  with open(path, "w") as f:
    json.dump({"axes": {}}, f)
  with pytest.raises(RunError, match="is not a sweep record"):
    sweep_lib.read_record(run.model_dir)


def _args(experiment, root, *flags):
  parser = sweep_cli._parser()
  return parser.parse_args(gin_utils.rewrite_gin_args([experiment, "--root", str(root), *flags]))


def test_a_tiny_experiment_loads_with_overrides_and_selections(tmp_path):
  experiment = sweeps.write_tiny_experiment(tmp_path)
  checked = sweep_cli.load_runs(_args(experiment, tmp_path / "g", "--gin.TRAIN_STEPS=3"))
  assert [run.name for run, _ in checked] == sweeps.TINY_RUNS
  assert {steps for _, steps in checked} == {3}  # each run's own parsed TrainSpec.steps
  run = checked[0][0]
  assert run.gin_files == (experiment,) and run.bindings[-2:] == ("TRAIN_STEPS = 3", f"MODEL_DIR = '{run.model_dir}'")
  # sweep.* flags reshape the grid and stay out of the runs' commands.
  checked = sweep_cli.load_runs(
    _args(experiment, tmp_path / "g", "--gin.sweep.axes={'PROMPT_LENGTH': [3]}", "--gin.sweep.seeds=[4, 5]")
  )
  assert [run.name for run, _ in checked] == ["prompt_length=3,seed=4", "prompt_length=3,seed=5"]
  assert not any(b.startswith("sweep") for run, _ in checked for b in run.bindings)
  checked = sweep_cli.load_runs(
    _args(experiment, tmp_path / "g", "--select", "MODEL=d64", "--select", "method=model_tuning")
  )
  assert [run.name for run, _ in checked] == [sweeps.TINY_RUNS[1], sweeps.TINY_RUNS[3]]
  with pytest.raises(RunError, match=r"axis model has no label 'd32' \(its labels: d64, d128\)"):
    sweep_cli.load_runs(_args(experiment, tmp_path / "g", "--select", "model=d32"))
  # A run whose config does not parse is named before anything runs.
  with pytest.raises(RunError, match=r"run model=d64,prompt_length=2,method=prompt_tuning: .*TRAIN_STEP"):
    sweep_cli.load_runs(_args(experiment, tmp_path / "g", "--gin.TRAIN_STEP=3"))
  assert not os.path.exists(tmp_path / "g")  # loading writes nothing


# Every shipped experiment, and how many runs it has.
SHIPPED = {
  "superglue.gin": 5 * 8,
  "fig1_scale.gin": 5 * 2 * 8 * 3,
  "fig1_multitask_model_tuning.gin": 5 * 3,
  "fig3a_prompt_length.gin": 5 * 5 * 8,
  "fig3b_prompt_init.gin": 5 * 3 * 8,
  "fig3c_pretraining.gin": 5 * 3 * 8,
  "fig3d_lm_adaptation_steps.gin": 5 * 2 * 8,
  "table1_mrqa.gin": 2 * 3,
  "table2_qqp_mrpc.gin": 2 * 2 * 3,
}


def test_every_shipped_experiment_is_listed_here():
  folder = os.path.join(gin_utils.bundled_gin_dir(), "experiments")
  helpers = {"model_tuning.gin"}  # a method axis' value
  assert set(os.listdir(folder)) - helpers == set(SHIPPED)


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_a_shipped_experiment_expands_into_its_runs_with_valid_gin(name, tmp_path):
  checked = sweep_cli.load_runs(_args(f"experiments/{name}", tmp_path))  # parses every run's gin
  assert len(checked) == SHIPPED[name]
  assert {steps for _, steps in checked} == {30000}
  for run, _ in checked:
    assert run.gin_files[0] == f"experiments/{name}"  # by its bundled name: the command works anywhere
    checkpoint = [b for b in run.bindings if b.startswith("INITIAL_CHECKPOINT_PATH")]
    assert all("{" not in b for b in run.bindings)
    if "model" in run.axes:  # the checkpoint follows the model size
      assert len(checkpoint) == 1 and f"t5_1_1_{run.axes['model']}" in checkpoint[0].replace("lm100k_", "")
  first = checked[0][0]
  assert first.command().startswith(f"prompt-tuning train --gin_file=experiments/{name}")
