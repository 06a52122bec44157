"""gin_utils: search paths, flag rewriting, one-line errors, REQUIRED macros, operative config."""

from __future__ import annotations

import os

import pytest

import gin
from prompt_tuning import gin_utils
from prompt_tuning.cli import gin_runner
from prompt_tuning.gin_utils import GinConfigError

_MODULE = "gin_utils_test"


def toy_train(model_dir=None, num_steps=10, learning_rate=0.1):
  """A toy configurable standing in for a training entry point."""
  return model_dir, num_steps, learning_rate


class ToyModel:
  """A toy configurable class."""

  def __init__(self, hidden_size=4, dropout=0.0):
    self.hidden_size, self.dropout = hidden_size, dropout


CONFIGURABLES = gin_utils.register_configurables({"toy_train": toy_train, "ToyModel": ToyModel}, _MODULE)
train = CONFIGURABLES["toy_train"]


@pytest.fixture(autouse=True)
def clean_gin():
  gin.clear_config()
  yield
  gin.clear_config()


def _write(path, text: str) -> str:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    f.write(text)
  return str(path)


@pytest.fixture
def search_dir(tmp_path):
  d = tmp_path / "configs"
  _write(d / "runs" / "base.gin", "toy_train.num_steps = 100\ntoy_train.learning_rate = 0.5\n")
  _write(d / "override.gin", "toy_train.num_steps = 200\n")
  _write(
    d / "required.gin",
    "MODEL_DIR = %gin.REQUIRED\nTASK = %gin.REQUIRED\nBATCH = 8\ntoy_train.model_dir = %MODEL_DIR\n"
    "ToyModel.hidden_size = %BATCH\nToyModel.dropout = %TASK\n",
  )
  return str(d)


# --- search path ---------------------------------------------------------


def test_bundled_dir_is_the_installed_gin_package():
  d = gin_utils.bundled_gin_dir()
  assert os.path.isfile(os.path.join(d, "quickstart.gin"))
  assert os.path.isfile(os.path.join(d, "runs", "common.gin"))


def test_file_found_through_user_search_path(search_dir):
  paths = gin_utils.parse_gin_flags(["runs/base.gin"], [], [search_dir])
  assert paths == [os.path.join(search_dir, "runs", "base.gin")]
  assert train() == (None, 100, 0.5)


def test_file_found_in_bundled_dir_without_search_paths(monkeypatch, tmp_path):
  bundled = tmp_path / "bundled"
  _write(bundled / "runs" / "bundled_only.gin", "toy_train.num_steps = 7\n")
  monkeypatch.setattr(gin_utils, "bundled_gin_dir", lambda: str(bundled))
  gin_utils.parse_gin_flags(["runs/bundled_only.gin"], [], [])
  assert train()[1] == 7


def test_user_search_path_wins_over_bundled_dir(monkeypatch, tmp_path, search_dir):
  bundled = tmp_path / "bundled"
  _write(bundled / "override.gin", "toy_train.num_steps = 1\n")
  monkeypatch.setattr(gin_utils, "bundled_gin_dir", lambda: str(bundled))
  gin_utils.parse_gin_flags(["override.gin"], [], [search_dir])
  assert train()[1] == 200


def test_later_files_then_bindings_win(search_dir):
  gin_utils.parse_gin_flags(["runs/base.gin", "override.gin"], ["toy_train.learning_rate = 0.01"], [search_dir])
  assert train() == (None, 200, 0.01)


def test_include_uses_search_path(search_dir):
  _write(os.path.join(search_dir, "top.gin"), "include 'runs/base.gin'\ntoy_train.model_dir = 'x'\n")
  gin_utils.parse_gin_flags(["top.gin"], [], [search_dir])
  assert train() == ("x", 100, 0.5)


def test_file_not_found_names_file_and_search_path(search_dir):
  with pytest.raises(GinConfigError) as e:
    gin_utils.parse_gin_flags(["runs/missing.gin"], [], [search_dir])
  msg = str(e.value)
  assert "runs/missing.gin" in msg and search_dir in msg and gin_utils.bundled_gin_dir() in msg
  assert "\n" not in msg


# --- command line ----------------------------------------------------------


def test_rewrite_gin_args():
  argv = ["--gin.MODEL_DIR='/tmp/x'", "--gin.train/toy_train.num_steps", "5", "--other=1", "--", "--gin.X=1"]
  assert gin_utils.rewrite_gin_args(argv) == [
    "--gin_bindings=MODEL_DIR='/tmp/x'",
    "--gin_bindings=train/toy_train.num_steps=5",
    "--other=1",
    "--",
    "--gin.X=1",
  ]
  with pytest.raises(GinConfigError):
    gin_utils.rewrite_gin_args(["--gin.MODEL_DIR"])


def test_the_commands_parse_the_gin_flags():
  command_line = gin_runner.parse_command_line(
    [
      "--gin_file=a.gin",
      "--gin_file",
      "b.gin",
      "--gin.MODEL_DIR='/m'",
      "--gin_bindings=X = 1",
      "--gin_search_paths=/p1,/p2",
      "--gin_search_paths=/p3",
    ],
    "train",
  )
  assert command_line.gin_files == ["a.gin", "b.gin"]
  assert command_line.bindings == ["MODEL_DIR='/m'", "X = 1"]
  assert command_line.search_paths == ["/p1", "/p2", "/p3"]
  with pytest.raises(
    gin_runner.CommandLineError,
    match=r"^unknown flag\(s\) --checkpoint=/c pos; see prompt-tuning "
    r"train --help$",
  ):
    gin_runner.parse_command_line(["--gin_file=a.gin", "--checkpoint=/c", "pos"], "train")


def test_command_line_end_to_end(search_dir, tmp_path):
  command_line = gin_runner.parse_command_line(
    [
      "--gin_file=required.gin",
      f"--gin.MODEL_DIR='{tmp_path}'",
      "--gin.TASK='glue'",
      "--gin.toy_train.num_steps=3",
      f"--gin_search_paths={search_dir}",
    ],
    "train",
  )
  gin_utils.parse_gin_flags(command_line.gin_files, command_line.bindings, command_line.search_paths)
  assert train() == (str(tmp_path), 3, 0.1)
  assert gin.query_parameter("%TASK") == "glue"


# --- errors ------------------------------------------------------------------


def test_missing_required_macros_are_all_named(search_dir):
  with pytest.raises(GinConfigError) as e:
    gin_utils.parse_gin_flags(["required.gin"], [], [search_dir])
  msg = str(e.value)
  assert msg == (
    "missing required gin macros MODEL_DIR, TASK: pass --gin.MODEL_DIR=... --gin.TASK=... or set them in a gin file"
  )


def test_missing_single_required_macro(search_dir):
  with pytest.raises(
    GinConfigError,
    match=r"^missing required gin macro MODEL_DIR: pass "
    r"--gin.MODEL_DIR=\.\.\. or set it in a gin file$",
  ):
    gin_utils.parse_gin_flags(["required.gin"], ["TASK = 'glue'"], [search_dir])


def test_required_check_without_finalize(search_dir):
  gin_utils.parse_gin_flags(["required.gin"], [], [search_dir], finalize=False)
  gin.bind_parameter("TASK/macro.value", "glue")
  with pytest.raises(GinConfigError, match="macro MODEL_DIR:"):
    gin_utils.check_required_macros()
  gin.bind_parameter("MODEL_DIR/macro.value", "/m")
  gin_utils.check_required_macros()


def test_required_parameter_and_undefined_macro():
  with pytest.raises(GinConfigError, match=r"missing required gin parameter toy_train.model_dir"):
    gin_utils.parse_gin_flags([], ["toy_train.model_dir = %gin.REQUIRED"], [])
  gin.clear_config()
  with pytest.raises(GinConfigError, match=r"undefined gin macro OUT_DIR \(used by toy_train.model_dir\)"):
    gin_utils.parse_gin_flags([], ["toy_train.model_dir = %OUT_DIR"], [])


def test_a_macro_nothing_uses_is_an_error_naming_the_closest_used_one():
  """gin lets a binding define a new macro: a misspelt one would be set and silently ignored."""
  bindings = ["STEPS = 3", "toy_train.num_steps = %STEPS"]
  with pytest.raises(GinConfigError, match=r"^gin macro STEP is set but nothing uses it \(did you mean STEPS\?\)$"):
    gin_utils.parse_gin_flags([], [*bindings, "STEP = 2"], [])
  gin.clear_config()
  with pytest.raises(GinConfigError, match=r"^gin macro ZZZ is set but nothing uses it$"):
    gin_utils.parse_gin_flags([], [*bindings, "ZZZ = 2"], [])
  gin.clear_config()
  # A macro used only by another macro, or inside a container, is used.
  gin_utils.parse_gin_flags([], ["RATE = 0.5", "SCALED = [%RATE]", "toy_train.learning_rate = %SCALED"], [])
  assert gin_utils.unused_macros() == {}


def test_unknown_configurable_names_binding_and_closest_match():
  with pytest.raises(GinConfigError) as e:
    gin_utils.parse_gin_flags([], ["toy_trian.num_steps = 3"], [])
  msg = str(e.value)
  assert "toy_trian.num_steps = 3" in msg and "did you mean 'toy_train'" in msg and "\n" not in msg


def test_unknown_parameter_names_binding_and_closest_match():
  with pytest.raises(GinConfigError) as e:
    gin_utils.parse_gin_flags([], ["ToyModel.hiden_size = 3"], [])
  msg = str(e.value)
  assert "ToyModel.hiden_size = 3" in msg and "no parameter 'hiden_size'" in msg
  assert "did you mean 'hidden_size'" in msg


def test_typo_in_file_names_file_and_line(search_dir):
  path = _write(os.path.join(search_dir, "typo.gin"), "toy_train.num_steps = 1\ntoy_train.num_step = 2\n")
  with pytest.raises(GinConfigError, match=rf"{path}:2: .*no parameter 'num_step'.*'num_steps'"):
    gin_utils.parse_gin_flags(["typo.gin"], [], [search_dir])


def test_malformed_and_unquoted_bindings():
  with pytest.raises(GinConfigError, match=r"malformed binding"):
    gin_utils.parse_gin_flags([], ["toy_train.num_steps == 3"], [])
  gin.clear_config()
  with pytest.raises(GinConfigError) as e:
    gin_utils.parse_gin_flags([], ["MODEL_DIR=/tmp/x"], [])
  assert "string values need quotes" in str(e.value)
  assert "--gin.MODEL_DIR=\"'/tmp/x'\"" in str(e.value)


def test_parse_twice_without_clearing_is_a_clear_error():
  gin_utils.parse_gin_flags([], ["toy_train.num_steps = 3"], [])
  with pytest.raises(GinConfigError, match="already finalized"):
    gin_utils.parse_gin_flags([], ["toy_train.num_steps = 4"], [])


# --- registration and operative config ----------------------------------------


def test_register_configurables_is_idempotent():
  again = gin_utils.register_configurables({"toy_train": toy_train, "ToyModel": ToyModel}, _MODULE)
  assert again["toy_train"] is train and again["ToyModel"] is CONFIGURABLES["ToyModel"]
  gin_utils.parse_gin_flags([], ["ToyModel.hidden_size = 16"], [])
  # Still fine once the config is locked (gin itself would raise RuntimeError).
  gin_utils.register_configurables({"toy_train": toy_train}, _MODULE)
  assert CONFIGURABLES["ToyModel"]().hidden_size == 16
  with pytest.raises(GinConfigError, match="already registered"):
    gin_utils.register_configurables({"toy_train": lambda: None}, _MODULE)


def test_operative_config_saved(tmp_path):
  gin_utils.parse_gin_flags([], ["toy_train.num_steps = 42", "MODEL_DIR = 'm'", "toy_train.model_dir = %MODEL_DIR"], [])
  train()
  path = gin_utils.save_operative_config(str(tmp_path / "model"))
  assert path == str(tmp_path / "model" / "config.gin")
  text = open(path).read()
  assert "toy_train.num_steps = 42" in text
