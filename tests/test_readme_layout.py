"""README's "Where things live" table matches the tree: every path it names exists, and every
module and package of prompt_tuning/ (and each top-level folder) has a row."""

from __future__ import annotations

import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _rows() -> list[str]:
  readme = open(os.path.join(ROOT, "README.md")).read()
  table = readme.split("\n## Where things live\n", 1)[1].split("\n## ", 1)[0]
  return [line for line in table.splitlines() if line.startswith("| `")]


def _named_paths(row: str) -> list[str]:
  """Paths of a row's first cell: `a/b.py`, `c.py` (the second beside the first)."""
  names = re.findall(r"`([^`]+)`", row.split("|")[1])
  paths, folder = [], ""
  for name in names:
    if "/" in name.rstrip("/"):
      folder = os.path.dirname(name.rstrip("/"))
      paths.append(name)
    else:
      paths.append(os.path.join(folder, name) if folder else name)
  return paths


def test_every_path_in_the_table_exists():
  for row in _rows():
    for path in _named_paths(row):
      assert os.path.exists(os.path.join(ROOT, path)), f"README names {path}, which does not exist"


def test_every_module_and_package_has_a_row():
  rows = _rows()
  named = {os.path.normpath(p) for row in rows for p in _named_paths(row)}
  package = os.path.join(ROOT, "prompt_tuning")
  for entry in sorted(os.listdir(package)):
    path = os.path.join("prompt_tuning", entry)
    if entry.startswith(("_", ".")) or not (entry.endswith(".py") or os.path.isdir(os.path.join(ROOT, path))):
      continue
    if os.path.isdir(os.path.join(ROOT, path)) and not os.path.isfile(os.path.join(ROOT, path, "__init__.py")):
      continue  # not a package (e.g. an installed gin/ copy)
    covered = os.path.normpath(path) in named or any(n.startswith(os.path.normpath(path) + os.sep) for n in named)
    assert covered, f"README's 'Where things live' has no row for {path}"
  for folder in ("gin", "tasks", "tests", "notebooks"):
    assert any(n.split(os.sep)[0] == folder for n in named), folder
