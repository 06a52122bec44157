"""The shared main of the gin-driven commands (train, eval, infer), t5x style.

  prompt-tuning train --gin_file=runs/prompt_finetune.gin --gin_file=models/t5_1_1/base.gin \
      --gin.MODEL_DIR="'/tmp/model'" --gin.MIXTURE_OR_TASK_NAME="'quickstart_sentiment'" ...

Gin binds at this entry point only: library functions are registered here
(dynamic registration), never decorated where they are defined.
"""

from __future__ import annotations

import sys
from typing import Any, Callable

from absl import logging

from prompt_tuning import gin_utils

# Names usable in gin files, e.g. `train.prompt_init = @prompt_init.sampled_vocab`.
def register_all() -> dict[str, Callable[..., Any]]:
  from prompt_tuning import prompt_init
  from prompt_tuning.models.model import LossConfig
  from prompt_tuning.models.t5.config import t5_config
  from prompt_tuning.train import inference, loop, optimizer

  entry = gin_utils.register_configurables(
      {"train": loop.train, "evaluate": inference.evaluate, "infer": inference.infer}, module="prompt_tuning")
  gin_utils.register_configurables(prompt_init.PROMPT_INITIALIZERS, module="prompt_init")
  gin_utils.register_configurables(optimizer.OPTIMIZERS, module="optimizers")
  gin_utils.register_configurables(optimizer.SCHEDULES, module="schedules")
  gin_utils.register_configurables({"LossConfig": LossConfig, "t5_config": t5_config}, module="models")
  from prompt_tuning.tasks import byod

  gin_utils.register_configurables(byod.CONFIGURABLES, module=byod.GIN_MODULE)
  return entry


def run(argv: list[str], command: str, describe: Callable[[Any], None]) -> int:
  """Parses gin flags, runs the registered `command` ('train' | 'evaluate' | 'infer'), reports."""
  gin_files, bindings, search_paths, rest = gin_utils.parse_command_line(argv, description=__doc__)
  if rest:
    print(f"prompt-tuning: unknown flag(s) {' '.join(rest)}; gin flags are --gin_file, --gin.NAME=VALUE, "
          f"--gin_bindings, --gin_search_paths", file=sys.stderr)
    return 2
  if not gin_files and not bindings:
    print("prompt-tuning: pass at least one --gin_file (e.g. --gin_file=quickstart.gin)", file=sys.stderr)
    return 2
  logging.set_verbosity(logging.WARNING)
  from prompt_tuning.checkpoints.structure import CheckpointError
  from prompt_tuning.data.task import DataError

  try:
    import gin

    gin.clear_config()  # each command starts from a clean config (matters when called in-process)
    fn = register_all()[command]
    gin_utils.parse_gin_flags(gin_files, bindings, search_paths)
    result = fn()
  except (gin_utils.GinConfigError, CheckpointError, DataError, ValueError, FileNotFoundError) as e:
    message = e.args[0] if isinstance(e, KeyError) and e.args else str(e)  # KeyError's str() adds quotes
    lines = str(message).strip().splitlines()
    print(f"prompt-tuning {command}: error: {lines[0] if lines else type(e).__name__}", file=sys.stderr)
    return 1
  describe(result)
  return 0


def macro(name: str, default: Any = None) -> Any:
  """The value of a gin macro after parsing (default when unbound)."""
  import gin

  try:
    return gin.query_parameter(f"%{name}")
  except ValueError:
    return default
