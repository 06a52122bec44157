"""`prompt-tuning tasks` (also `python -m prompt_tuning.tasks`): list registered tasks and mixtures.

  prompt-tuning tasks                  every task and mixture, one a line
  prompt-tuning tasks glue             only names containing 'glue' (case-insensitive)
  prompt-tuning tasks --json           a JSON list of {name, kind, splits, metrics[, tasks]}
  prompt-tuning tasks --module my.pkg  import my.pkg first (it registers more tasks)

Only task attributes are read (name, splits, metrics, a mixture's tasks): no
dataset is built and no vocabulary loaded, so this works without TensorFlow.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from typing import Any, Iterable

from prompt_tuning.errors import first_line


def _safe(fn, default=None):
  """fn() or `default` when reading the attribute fails (a listing shows what it can)."""
  try:
    return fn()
  except Exception:  # pylint: disable=broad-except
    return default


def _member_name(member: Any) -> str:
  """The name of a mixture member: a task, a task name, or a (task or name, rate) pair."""
  if isinstance(member, (tuple, list)) and member:
    member = member[0]
  return member if isinstance(member, str) else str(getattr(member, "name", member))


def _members(obj: Any) -> list[str] | None:
  """Member task names if `obj` is a mixture (has a `tasks` collection), else None."""
  tasks = getattr(obj, "tasks", None)
  if tasks is None or callable(tasks) or isinstance(tasks, str):
    return None
  items = list(tasks.keys()) if isinstance(tasks, dict) else list(tasks)
  return [_member_name(m) for m in items]


def _names(values: Any) -> list[str] | None:
  return None if values is None else [str(v) for v in values]


def describe(name: str, obj: Any) -> dict[str, Any]:
  """{name, kind: 'task' | 'mixture', splits, metrics (None when unreadable)[, tasks: member names]}."""
  members = _safe(lambda: _members(obj))
  entry = {
    "name": name,
    "kind": "task" if members is None else "mixture",
    "splits": _safe(lambda: _names(obj.splits)),
    "metrics": _safe(lambda: _names(obj.metrics)),
  }
  if members is not None:
    entry["tasks"] = members
  return entry


def collect(pattern: str | None = None, module: str | None = None) -> list[dict[str, Any]]:
  """Descriptions of every registered task and mixture whose name contains `pattern`, sorted by name."""
  from prompt_tuning import task_registry
  from prompt_tuning.data.task import get_task

  task_registry.load_builtins()  # first, as resolve_task does: `module` may build on them
  if module:
    importlib.import_module(module)
  found = {name: get_task(name) for name in task_registry.list_tasks()}
  needle = (pattern or "").lower()
  return [describe(name, found[name]) for name in sorted(found) if needle in name.lower()]


def _join(values: Iterable[str] | None) -> str:
  return "?" if values is None else (", ".join(values) or "-")


def format_lines(entries: list[dict[str, Any]]) -> list[str]:
  """One aligned line per entry: name, kind (with member count), splits, metrics."""
  kinds = [
    e["kind"] if e["kind"] == "task" else f"mixture ({len(e['tasks'])} task{'s' * (len(e['tasks']) != 1)})"
    for e in entries
  ]
  name_width = max((len(e["name"]) for e in entries), default=0)
  kind_width = max((len(k) for k in kinds), default=0)
  return [
    f"{e['name']:<{name_width}}  {kind:<{kind_width}}  splits: {_join(e['splits'])}  metrics: {_join(e['metrics'])}"
    for e, kind in zip(entries, kinds)
  ]


def parse(argv: list[str]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
    prog="prompt-tuning tasks", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument("pattern", nargs="?", default=None, help="only names containing this (case-insensitive)")
  parser.add_argument("--json", action="store_true", help="print a JSON list instead of lines")
  parser.add_argument("--module", default=None, help="a module to import first, registering more tasks")
  return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
  args = parse(sys.argv[1:] if argv is None else argv)
  try:
    entries = collect(args.pattern, args.module)
  except Exception as e:  # pylint: disable=broad-except  (an import error in a task module, say)
    print(f"prompt-tuning tasks: error: {first_line(e)}", file=sys.stderr)
    return 1
  if args.json:
    print(json.dumps(entries, indent=1))
    return 0
  if not entries:
    print(f"prompt-tuning tasks: no task or mixture name contains {args.pattern!r}", file=sys.stderr)
    return 0
  print("\n".join(format_lines(entries)))
  return 0


if __name__ == "__main__":
  sys.exit(main())
