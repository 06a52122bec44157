"""The shared main of the gin-driven commands (train, evaluate, infer), t5x style.

  prompt-tuning train --gin_file=runs/prompt_finetune.gin --gin_file=models/t5_1_1/base.gin \
      --gin.MODEL_DIR="'/tmp/model'" --gin.MIXTURE_OR_TASK_NAME="'quickstart_sentiment'" ...

Gin binds at this entry point only: library functions are registered here
(dynamic registration), never decorated where they are defined.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import inspect
import logging as logging_std
import os
import re
import sys
import traceback
from typing import Any, Callable

from absl import logging

from prompt_tuning import gin_utils
from prompt_tuning.cli import compilation_cache, distributed
from prompt_tuning.errors import NotFoundError, RunError, first_line, os_error_line


def configurables() -> list[Callable[..., Any]]:
  """What gin files may name, each registered under its own module path: `prompt_tuning.train.optimizer.adafactor`
  is `@optimizer.adafactor` (or `@adafactor`: gin takes any unambiguous tail), so a name says where its code is."""
  from prompt_tuning import prompt_init
  from prompt_tuning.models.model import LossConfig
  from prompt_tuning.models.t5.config import random_init_config, t5_config
  from prompt_tuning.runs import evaluate, infer, specs, sweep, train
  from prompt_tuning.tasks import byod, lm
  from prompt_tuning.train import optimizer

  return [
    train.train,
    evaluate.evaluate,
    infer.infer,
    specs.ModelSpec,
    specs.PromptSpec,
    specs.TaskSpec,
    specs.TrainSpec,
    specs.EvaluationSpec,
    specs.MeshSpec,
    specs.PromptDesignSpec,
    *prompt_init.PROMPT_INITIALIZERS.values(),
    *optimizer.OPTIMIZERS.values(),
    *optimizer.SCHEDULES.values(),
    LossConfig,
    t5_config,
    random_init_config,
    *byod.CONFIGURABLES.values(),
    *lm.CONFIGURABLES.values(),
    sweep.sweep,  # an experiment file's sweep.* (prompt-tuning sweep), inert in the other commands
  ]


def register_all() -> dict[str, Callable[..., Any]]:
  """Registers `configurables()`; returns {'train' | 'evaluate' | 'infer': its gin wrapper}."""
  wrappers = {}
  for fn in configurables():
    wrappers.update(gin_utils.register_configurables({fn.__name__: fn}, module=fn.__module__))
  return {name: wrappers[name] for name in ("train", "evaluate", "infer")}


# The command's name on the command line (gin_runner runs the configurable of the same meaning).


class _FlagError(Exception):
  """A bad flag, reported in one line (argparse would print the usage too)."""


class _Parser(argparse.ArgumentParser):
  def error(self, message: str):
    raise _FlagError(message)


def _parser(cli_name: str, description: str | None) -> argparse.ArgumentParser:
  parser = _Parser(
    prog=f"prompt-tuning {cli_name}", description=description, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  return distributed.add_flags(gin_utils.add_gin_flags(parser))


@dataclasses.dataclass(frozen=True)
class CommandLine:
  """A gin-driven command's flags, parsed and checked (nothing is started)."""

  gin_files: list[str]
  bindings: list[str]
  search_paths: list[str]
  distributed: distributed.DistributedOptions


class CommandLineError(Exception):
  """A bad flag (exit status 2: nothing was started), in one line."""


def parse_command_line(argv: list[str], name: str, description: str | None = None) -> CommandLine:
  """The flags of `prompt-tuning NAME ARGV` (NAME: train | evaluate | infer); raises CommandLineError."""
  try:
    args, rest = _parser(name, description).parse_known_args(gin_utils.rewrite_gin_args(argv))
  except (_FlagError, gin_utils.GinConfigError) as e:
    raise CommandLineError(str(e)) from None
  if rest:
    raise CommandLineError(f"unknown flag(s) {' '.join(rest)}; see prompt-tuning {name} --help")
  if not args.gin_file and not args.gin_bindings:
    raise CommandLineError("pass at least one --gin_file (e.g. --gin_file=quickstart.gin)")
  options = distributed.options_from_args(args)
  problem = distributed.validate(options)
  if problem:
    raise CommandLineError(problem)
  return CommandLine(
    list(args.gin_file), list(args.gin_bindings), gin_utils.split_search_paths(args.gin_search_paths), options
  )


# What each command needs from the gin files, and the file that provides it.
_ENTRY_FILES = {
  "train": "quickstart.gin or runs/prompt_finetune.gin",
  "evaluate": "runs/evaluate.gin (with the gin files you trained with)",
  "infer": "runs/infer.gin (with the gin files you trained with)",
}


def parse_gin(command_line: CommandLine) -> dict[str, Callable[..., Any]]:
  """Registers the configurables and parses the gin files and bindings from a clean config.

  Returns {'train' | 'evaluate' | 'infer': the configured entry point}; raises GinConfigError.
  """
  import gin

  gin.clear_config()  # each command starts from a clean config (matters when called in-process)
  entry = register_all()
  gin_utils.parse_gin_flags(command_line.gin_files, command_line.bindings, command_line.search_paths)
  return entry


def check_entry_point(command: str) -> None:
  """Raises GinConfigError unless the gin files bind every argument `command` needs (an empty
  file, or evaluate without runs/evaluate.gin, would otherwise fail inside gin with a TypeError)."""
  import gin
  from prompt_tuning.runs import evaluate, infer, train

  fn = {"train": train.train, "evaluate": evaluate.evaluate, "infer": infer.infer}[command]
  unbound = []
  for name, parameter in inspect.signature(fn).parameters.items():
    if parameter.default is inspect.Parameter.empty:
      try:
        gin.query_parameter(f"{command}.{name}")
      except ValueError:
        unbound.append(f"{command}.{name}")
  if unbound:
    raise gin_utils.GinConfigError(
      f"the gin files do not configure {command} ({', '.join(unbound)} unset): add {_ENTRY_FILES[command]}"
    )


def _traceback_wanted() -> bool:
  return os.environ.get("PROMPT_TUNING_TRACEBACK", "").lower() not in ("", "0", "false", "no")


def _inside(path: str, directory: str) -> bool:
  if not directory:
    return False
  if "://" in directory:
    return path.startswith(directory.rstrip("/") + "/") or path == directory
  path, directory = os.path.abspath(path), os.path.abspath(directory)
  return path == directory or path.startswith(directory.rstrip(os.sep) + os.sep)


# tensorstore (under orbax) reports an OS error as text: 'Error writing local file "/d/x": ... No space
# left on device [os_error_code='28']'.
_OS_ERROR_CODE_RE = re.compile(r"\[os_error_code='(\d+)'\]")
_QUOTED_PATH_RE = re.compile(r'"(/[^"]+|[a-z0-9]+://[^"]+)"')
_WRITE_ERRNOS = (errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EFBIG)


def unwrap_gin(error: BaseException) -> BaseException:
  """The exception gin re-raised: a configurable's exception comes out as a proxy of its class with
  gin's context added to str(), whose OSError fields (errno, filename) are empty; the original is
  held by the proxy's __str__."""
  for cell in getattr(type(error).__str__, "__closure__", None) or ():
    original = cell.cell_contents
    if isinstance(original, BaseException) and isinstance(error, type(original)):
      return original
  return error


def os_error_of(error: BaseException) -> OSError | None:
  """`error` itself when an OSError, the OS error a tensorstore/orbax message carries, or None."""
  error = unwrap_gin(error)
  if isinstance(error, OSError):
    return error
  text = str(error)
  code = _OS_ERROR_CODE_RE.search(text)
  if not code:
    return None
  path = _QUOTED_PATH_RE.search(text)
  number = int(code.group(1))
  return OSError(number, os.strerror(number), path.group(1) if path else None)


def _inside(path: str, directory: str) -> bool:
  if "://" in directory:
    return path == directory or path.startswith(directory.rstrip("/") + "/")
  path, directory = os.path.abspath(path), os.path.abspath(directory)
  return path == directory or path.startswith(directory.rstrip(os.sep) + os.sep)


def storage_error_line(error: OSError, model_dir: str | None, context: str = "") -> str:
  """One line for an OSError that no phase of the run described: MODEL_DIR's, or the path's."""
  if error.filename and model_dir and _inside(os.fspath(error.filename), model_dir):
    lower = context.lower()
    if error.errno in _WRITE_ERRNOS or "writ" in lower:
      verb = "write"
    elif error.errno == errno.ENOENT or "read" in lower:
      verb = "read"
    else:
      verb = "use"
    return f"cannot {verb} MODEL_DIR {model_dir}: {os_error_line(error)}"
  return os_error_line(error)


class _OrbaxThreadErrors(logging_std.Filter):
  """Drops orbax's log of an exception in its writer thread (a traceback on stderr): orbax raises
  the same exception in the calling thread, which reports it in one line."""

  def filter(self, record: logging_std.LogRecord) -> bool:
    return "_SignalingThread.run() raised an exception" not in str(record.msg)


def report(error: Exception, model_dir: str | None) -> tuple[str, bool]:
  """(the one error line for `error`, whether it is a bug whose traceback should be shown).

  By what the user did: a gin, checkpoint, data or run problem (our one-line errors, each naming
  what was being done), storage (an OSError, or one that orbax/tensorstore carries in its text:
  MODEL_DIR or the path named), a bad value (ValueError). Anything else is a bug in this package.
  """
  from prompt_tuning.checkpoints.structure import CheckpointError
  from prompt_tuning.data.task import DataError

  if isinstance(error, (gin_utils.GinConfigError, CheckpointError, DataError, RunError, NotFoundError)):
    return str(error).strip() or type(error).__name__, False
  storage = os_error_of(error)
  if storage is not None:
    return storage_error_line(storage, model_dir if isinstance(model_dir, str) else None, str(error)), False
  if isinstance(error, ValueError):  # the specs' checks and other bad values
    return str(error).strip() or type(error).__name__, False
  return (
    f"internal error ({first_line(error, typed=True)}): a bug in prompt-tuning, not in your input; "
    "please report it with the traceback above"
  ), True


def run(argv: list[str], command: str, describe: Callable[[Any], None], description: str | None = None) -> int:
  """Parses gin and multi-host flags, runs the registered `command` ('train' | 'evaluate' | 'infer'), reports.

  `description` heads --help (the command module's docstring).

  Failures are reported by what the user did, in one line: a gin problem (GinConfigError), a
  checkpoint, data or storage problem of a phase of the run (CheckpointError, DataError, RunError,
  an OSError naming a path), a bad value (ValueError). Anything else is a bug in this package: its
  traceback is printed, then the line. PROMPT_TUNING_TRACEBACK=1 prints the traceback of every
  failure (where the one line came from).

  Returns the exit status: 0, 1 (the run failed), 2 (bad flags; nothing was started), 130 (Ctrl-C), or
  128 + the signal's number when training saved a checkpoint and stopped on a signal (143: SIGTERM).
  """
  try:
    return _run(argv, command, describe, description)
  except KeyboardInterrupt as e:  # Ctrl-C, or training's runs.preemption.Preempted (saved, then stopped)
    print(f"prompt-tuning {command}: {first_line(e) if str(e) else 'interrupted (Ctrl-C)'}", file=sys.stderr)
    return getattr(e, "exit_status", 130)


def _run(argv: list[str], command: str, describe: Callable[[Any], None], description: str | None) -> int:
  name = command
  show_traceback = _traceback_wanted()

  def fail(message: str, status: int, error: BaseException | None = None) -> int:
    if error is not None and show_traceback:
      traceback.print_exception(error)
    print(f"prompt-tuning {name}: error: {first_line(message) or message}", file=sys.stderr)
    return status

  try:
    command_line = parse_command_line(argv, name, description)
  except CommandLineError as e:
    return fail(str(e), 2)
  logging.set_verbosity(logging.WARNING)
  compilation_cache.enable()  # before anything compiles
  try:
    distributed.initialize(command_line.distributed)  # before anything touches a JAX backend
  except Exception as e:  # jax raises RuntimeError/ValueError/XlaRuntimeError with long messages
    return fail(f"jax.distributed.initialize failed: {str(e).strip() or type(e).__name__}", 1, e)

  model_dir = None
  quiet = None if show_traceback else _OrbaxThreadErrors()
  if quiet:
    logging_std.getLogger("absl").addFilter(quiet)
  try:
    fn = parse_gin(command_line)[command]
    check_entry_point(command)
    model_dir = macro("MODEL_DIR")
    result = fn()
    describe(result)
  except Exception as e:
    line, bug = report(e, model_dir)
    if bug and not show_traceback:
      traceback.print_exception(e)
    return fail(line, 1, e)
  finally:
    if quiet:
      logging_std.getLogger("absl").removeFilter(quiet)
  return 0


def binding(name: str, default: Any = None) -> Any:
  """The value bound to `name` ('EvaluationSpec.decode_method'), through macros; `default` when unbound."""
  import gin

  try:
    value = gin.query_parameter(name)
  except ValueError:
    return default
  while isinstance(value, gin.config.ConfigurableReference) and str(value).startswith("%"):
    value = gin.query_parameter(str(value))  # a macro: its value
  return value


def describe_evaluation(metrics: dict[str, Any]) -> str:
  """'on validation: decode/ by greedy decoding; rank/ by rank classification', from the EvaluationSpec
  bindings and the metrics the run returned, to head the metric lines."""
  from prompt_tuning.evaluation import describe_decoding
  from prompt_tuning.runs.specs import EvaluationSpec

  decoding = describe_decoding(
    binding("EvaluationSpec.decode_method", EvaluationSpec.decode_method),
    binding("EvaluationSpec.decode_options", EvaluationSpec.decode_options),
  )
  # An ensemble's metrics are 'member_<m>/rank/...' and 'ensemble/rank/...'.
  ranked = (
    "; rank/ by rank classification" if any(name.startswith("rank/") or "/rank/" in name for name in metrics) else ""
  )
  return f"on {binding('EvaluationSpec.split', EvaluationSpec.split)}: decode/ by {decoding}{ranked}"


def metric_lines(metrics: dict[str, Any], prefix: str = "") -> list[str]:
  """'  <prefix>name: value' per metric, sorted: counts (ints) as integers, scores to 4 decimals."""
  lines = []
  for name, value in sorted(metrics.items()):
    shown = str(value) if isinstance(value, int) else f"{value:.4f}"
    lines.append(f"  {prefix}{name}: {shown}")
  return lines


def macro(name: str, default: Any = None) -> Any:
  """The value of a gin macro after parsing (default when unbound)."""
  import gin

  try:
    return gin.query_parameter(f"%{name}")
  except ValueError:
    return default
