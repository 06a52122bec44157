"""The entry points' way to tasks: load the built-in task modules, then look up a name.

The registry itself (prompt_tuning.data.task: register_task, get_task) knows no
task module; task modules import it and register themselves. This module is the
one place outside the CLI that imports them, so the core never depends on a
benchmark and `data` and `tasks` import each other in one direction only
(tests/test_import_layers.py checks it).
"""

from __future__ import annotations

import importlib

from prompt_tuning.data import task as task_lib

# Imported before every lookup: the shipped quickstart task and the benchmark tasks (tasks/).
BUILTIN_MODULES = ("prompt_tuning.data.quickstart", "prompt_tuning.tasks")


def load_builtins() -> None:
  """Imports the built-in task modules (each registers its tasks once, on first import)."""
  for module in BUILTIN_MODULES:
    importlib.import_module(module)


def resolve_task(name: str, module: str | None = None, vocabulary_path: str | None = None) -> task_lib.Task:
  """The task or mixture `name`, after importing the built-ins and `module`.

  Args:
    name: a registered task or mixture (MIXTURE_OR_TASK_NAME).
    module: a module that registers more tasks (t5x's MIXTURE_OR_TASK_MODULE), or None.
    vocabulary_path: the SentencePiece model tasks default to (VOCABULARY_PATH), or None.

  Raises DataError when `module` cannot be imported, KeyError for an unknown name
  (both one line).
  """
  from prompt_tuning.data.vocab import set_default_vocabulary

  if vocabulary_path:
    set_default_vocabulary(vocabulary_path)
  load_builtins()
  if module:
    try:
      importlib.import_module(module)
    except ImportError as e:
      raise task_lib.DataError(f"MIXTURE_OR_TASK_MODULE {module!r} cannot be imported: {e}") from None
  return task_lib.get_task(name)


def list_tasks() -> list[str]:
  """Every registered task and mixture name, built-ins included, sorted."""
  load_builtins()
  return task_lib.registered_names()
