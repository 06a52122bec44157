"""The specs the entry points take, and the gin files that build them: each macro bound once,
each entry point with a handful of parameters, every gin name documented where its code is."""

from __future__ import annotations

import collections
import inspect
import os
import re

import pytest

from prompt_tuning.runs import evaluate, infer, specs, train

GIN_DIR = os.path.join(os.path.dirname(__file__), "..", "..", "gin")
README = os.path.join(os.path.dirname(__file__), "..", "..", "README.md")
ENTRY_POINTS = (train.train, evaluate.evaluate, infer.infer)


def _statements(path: str) -> list[str]:
  """The gin statements of a file, comments and continuation lines dropped."""
  lines = []
  for raw in open(path):
    line = raw.split("#", 1)[0].rstrip()
    if line and not line.startswith((" ", "\t")):
      lines.append(line)
  return lines


def _gin_files() -> list[str]:
  return sorted(os.path.join(d, f) for d, _, files in os.walk(GIN_DIR) for f in files if f.endswith(".gin"))


@pytest.mark.parametrize(
  "make, message",
  [
    (lambda: specs.PromptSpec(length=0), "PROMPT_LENGTH must be a positive integer, got 0"),
    (lambda: specs.PromptSpec(placement="before"), "PROMPT_PLACEMENT must be one of prefix, after_first, suffix"),
    (lambda: specs.ModelSpec(activation_dtype="bf16"), "ACTIVATION_DTYPE must be None or one of"),
    (lambda: specs.ModelSpec(param_dtype="int8"), "PARAM_DTYPE must be None or one of"),
    (lambda: specs.TaskSpec("t", {"inputs": 8}), "TASK_FEATURE_LENGTHS must map 'inputs' and 'targets'"),
    (lambda: specs.TaskSpec("", {"inputs": 8, "targets": 2}), "MIXTURE_OR_TASK_NAME must be a task name"),
    (lambda: specs.TrainSpec(batch_size=0), "BATCH_SIZE must be a positive integer, got 0"),
    (lambda: specs.TrainSpec(log_period=0), "TrainSpec.log_period must be a positive integer, got 0"),
    (
      lambda: specs.TrainSpec(skip_nonfinite_steps=-1),
      "TrainSpec.skip_nonfinite_steps must be an integer >= 0, got -1",
    ),
    (lambda: specs.EvaluationSpec(batch_size=-1), "EVAL_BATCH_SIZE must be a positive integer, got -1"),
  ],
)
def test_a_bad_spec_is_one_line_naming_the_macro(make, message):
  with pytest.raises(ValueError) as error:
    make()
  assert message in str(error.value) and "\n" not in str(error.value)


def test_specs_are_frozen_and_default_to_the_paper():
  model, training = specs.ModelSpec(), specs.TrainSpec()
  with pytest.raises(AttributeError):
    model.checkpoint = "elsewhere"
  assert (model.prompt.length, model.prompt.placement, model.trainable_params) == (100, "prefix", "prompt/prompt")
  assert (training.steps, training.batch_size, training.optimizer.__name__) == (30000, 32, "adafactor")


def test_entry_points_take_specs_not_loose_arguments():
  loose = {
    "prompt_length",
    "batch_size",
    "mixture_or_task_name",
    "initial_checkpoint_path",
    "num_partitions",
    "decode_method",
    "dtype",
    "train_steps",
  }
  for fn in ENTRY_POINTS:
    names = list(inspect.signature(fn).parameters)
    assert names[:3] == ["model", "task", "model_dir"], fn
    assert len(names) <= 9 and not loose & set(names), (fn.__name__, names)


def test_no_gin_file_binds_a_name_twice_and_common_uses_each_macro_once():
  for path in _gin_files():
    bound = collections.Counter(
      line.split("=", 1)[0].strip()
      for line in _statements(path)
      if "=" in line and not line.startswith(("include", "import", "from"))
    )
    assert not [name for name, count in bound.items() if count > 1], path
  # common.gin hands each macro to one spec field (train, evaluate and infer no longer repeat them) ...
  common = _statements(os.path.join(GIN_DIR, "runs", "common.gin"))
  parameters = [line for line in common if re.match(r"^[\w.]+\.\w+ =", line)]
  uses = collections.Counter(m for line in parameters for m in re.findall(r"%([A-Z_]+)\b", line))
  assert {m for m, n in uses.items() if n > 1} == set(), uses
  defined = {line.split(" =")[0] for line in common if re.match(r"^[A-Z_]+ =", line)}
  assert defined - set(uses) == {"MODEL_DIR"}  # every other macro reaches a spec; MODEL_DIR the entry points
  # ... and each entry point's file hands it the specs, once.
  for name, entry in (
    ("prompt_finetune.gin", train.train),
    ("evaluate.gin", evaluate.evaluate),
    ("infer.gin", infer.infer),
  ):
    text = "\n".join(_statements(os.path.join(GIN_DIR, "runs", name)))
    specs_taken = [
      p
      for p in inspect.signature(entry).parameters
      if p in ("model", "task", "model_dir", "training", "evaluation", "mesh")
    ]
    assert re.findall(rf"^{entry.__name__}\.(\w+) =", text, re.M)[: len(specs_taken)] == specs_taken, name


def test_readme_names_every_gin_configurable_with_its_code():
  from prompt_tuning.cli import gin_runner

  readme = open(README).read()
  table = readme.split("\n### Gin names\n", 1)[1].split("\n### ", 1)[0]
  rows = {row.split("|")[1].strip(" `"): row for row in table.splitlines() if row.startswith("| `")}
  for fn in gin_runner.configurables():
    row = rows.get(fn.__module__)
    assert row is not None, f"README's gin names table lacks {fn.__module__}"
    assert f"`{fn.__name__}`" in row, (fn.__module__, fn.__name__)
    path = inspect.getsourcefile(inspect.unwrap(fn))
    assert row.rstrip(" |").endswith("`") and os.path.basename(path) in row, (row, path)


def test_shipped_files_parse_with_names_as_the_readme_gives_them(tmp_path):
  """Every shipped file parses (a renamed configurable or spec field would not)."""
  import gin
  from prompt_tuning import gin_utils
  from prompt_tuning.cli import gin_runner

  try:
    for path in _gin_files():
      gin.clear_config()
      gin_runner.register_all()
      gin_utils.parse_gin_flags([path], [], finalize=False)
  finally:
    gin.clear_config()


@pytest.mark.parametrize("command_file", ["", "runs/evaluate.gin", "runs/infer.gin"])
def test_every_macro_a_shipped_file_sets_is_used(command_file):
  """Each shipped file on top of a training config, for train, evaluate and infer: none sets a macro
  that nothing uses (that is an error, to catch misspelt macros), e.g. an evaluate-only one."""
  import gin
  from prompt_tuning import gin_utils
  from prompt_tuning.cli import gin_runner

  base = ["runs/model_finetune.gin", "quickstart.gin"]
  try:
    for path in _gin_files():
      gin.clear_config()
      gin_runner.register_all()
      files = [*base, os.path.relpath(path, GIN_DIR), *([command_file] if command_file else [])]
      gin_utils.parse_gin_flags(files, [], finalize=False)
      assert gin_utils.unused_macros() == {}, files
  finally:
    gin.clear_config()


def test_include_survives_a_namespace_package_named_like_the_folder(tmp_path, monkeypatch):
  """gin looks `include 'runs/common.gin'` up as package `runs` too; a `runs/` folder on sys.path
  (a namespace package) made that raise instead of trying the next search path."""
  import gin
  from prompt_tuning import gin_utils
  from prompt_tuning.cli import gin_runner

  (tmp_path / "runs").mkdir()
  monkeypatch.syspath_prepend(str(tmp_path))
  try:
    gin.clear_config()
    gin_runner.register_all()
    gin_utils.parse_gin_flags(["quickstart.gin"], ["MODEL_DIR = '/tmp/x'"])
  finally:
    gin.clear_config()
