"""Import layering, read from the source with `ast` (nothing is imported).

The task modules (tasks/, installed as prompt_tuning.tasks) import the registry in
prompt_tuning.data; nothing in the package imports them back except the task
registry's loader (prompt_tuning/task_registry.py) and the CLI; the server
(prompt_tuning/serving) imports none of the entry points. Imports inside functions count,
as do module names handed to importlib as strings.
"""

from __future__ import annotations

import ast
import os

import pytest

import prompt_tuning

PACKAGE_DIR = os.path.dirname(os.path.abspath(prompt_tuning.__file__))
TASKS = "prompt_tuning.tasks"
# May import the task modules: the loader, and the commands that list or configure tasks.
ALLOWED = ("prompt_tuning.task_registry", "prompt_tuning.cli")
# The data layer must not reach the task modules through these either (they import them).
DATA_FORBIDDEN = (TASKS, *ALLOWED)


def _within(name: str, prefixes: tuple[str, ...]) -> bool:
  return any(name == p or name.startswith(p + ".") for p in prefixes)


def imported_modules(source: str, module: str, is_package: bool = False) -> set[str]:
  """Every module `source` (the code of `module`) imports, at any depth, with relative imports resolved.

  `from A import b` counts as A and A.b (b may be a submodule); a string constant that
  is a prompt_tuning module name counts too (importlib.import_module("...")).
  """
  package = module if is_package else module.rpartition(".")[0]
  found = set()
  for node in ast.walk(ast.parse(source)):
    if isinstance(node, ast.Import):
      found.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        parts = package.split(".")
        parent = ".".join(parts[: len(parts) - node.level + 1])
        base = f"{parent}.{base}" if base else parent
      found.add(base)
      found.update(f"{base}.{alias.name}" for alias in node.names)
    elif isinstance(node, ast.Constant) and isinstance(node.value, str):
      if node.value.startswith("prompt_tuning.") and node.value.replace(".", "").replace("_", "").isalnum():
        found.add(node.value)
  return found


def package_modules() -> dict[str, tuple[str, bool]]:
  """{dotted name: (path, is_package)} of every module under prompt_tuning/, except prompt_tuning/tasks."""
  modules = {}
  for dirpath, dirnames, filenames in os.walk(PACKAGE_DIR):
    dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
    relative = os.path.relpath(dirpath, os.path.dirname(PACKAGE_DIR)).replace(os.sep, ".")
    if _within(relative, (TASKS,)):  # an installed copy of tasks/: the modules under test's subject
      continue
    for filename in filenames:
      if filename.endswith(".py"):
        is_package = filename == "__init__.py"
        name = relative if is_package else f"{relative}.{filename[:-3]}"
        modules[name] = (os.path.join(dirpath, filename), is_package)
  return modules


def _offenders(prefix: str, forbidden: tuple[str, ...], allowed: tuple[str, ...] = ()) -> dict[str, list[str]]:
  out = {}
  for name, (path, is_package) in package_modules().items():
    if not _within(name, (prefix,)) or _within(name, allowed):
      continue
    with open(path, encoding="utf-8") as f:
      bad = sorted(m for m in imported_modules(f.read(), name, is_package) if _within(m, forbidden))
    if bad:
      out[name] = bad
  return out


def test_only_the_loader_and_the_cli_import_the_task_modules():
  modules = package_modules()
  assert "prompt_tuning.data.task" in modules and "prompt_tuning.task_registry" in modules  # the walk sees them
  assert _offenders("prompt_tuning", (TASKS,), ALLOWED) == {}


def test_the_data_layer_never_reaches_the_task_modules():
  assert _offenders("prompt_tuning.data", DATA_FORBIDDEN) == {}


@pytest.mark.parametrize(
  "source, module, is_package",
  [
    ("import prompt_tuning.tasks.glue", "prompt_tuning.x", False),
    ("from prompt_tuning import tasks", "prompt_tuning.x", False),
    ("def f():\n  from ..tasks import super_glue", "prompt_tuning.data.task", False),
    ("from . import tasks", "prompt_tuning", True),
    ("import importlib\nM = ('prompt_tuning.tasks',)\nimportlib.import_module(M[0])", "prompt_tuning.data.x", False),
  ],
)
def test_the_check_sees_every_form_of_import(source, module, is_package):
  assert any(_within(m, (TASKS,)) for m in imported_modules(source, module, is_package))


def test_the_check_ignores_mentions_in_text():
  source = '"""Tasks register on importing prompt_tuning.tasks."""\nimport prompt_tuning.task_registry\n'
  assert not any(_within(m, (TASKS,)) for m in imported_modules(source, "prompt_tuning.x"))


# The server (prompt_tuning/serving) runs the model, checkpoints and decoding, below the entry points:
# it imports no command, no trainer, no run setup (gin specs), and no task modules.
SERVING_FORBIDDEN = ("prompt_tuning.cli", "prompt_tuning.train", "prompt_tuning.runs", *DATA_FORBIDDEN)


def test_the_server_sits_below_the_entry_points():
  assert "prompt_tuning.serving.app" in package_modules()
  assert _offenders("prompt_tuning.serving", SERVING_FORBIDDEN) == {}
