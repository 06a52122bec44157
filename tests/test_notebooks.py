"""The notebooks in notebooks/ run from top to bottom on a fresh kernel of this environment.

Each notebook gets a test class of its own (`TestNotebook_<stem>`, generated below), so that
pytest-xdist's `--dist=loadscope`, which keeps the tests of one class (else of one module) on one
worker, can run the notebooks on different workers. `-k <stem>` runs one.
"""

from __future__ import annotations

import pathlib

import pytest

from support import processes

NOTEBOOKS = sorted((pathlib.Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))


def test_there_are_notebooks():
  assert NOTEBOOKS, "notebooks/ holds no .ipynb"


def run_notebook(path: pathlib.Path, cwd: pathlib.Path) -> None:
  """Executes the notebook at `path` on a fresh python3 kernel started in `cwd`; fails on any error."""
  import nbclient  # the test extra installs them and ipykernel: a missing one fails, never skips
  import nbformat

  notebook = nbformat.read(path, as_version=4)
  client = nbclient.NotebookClient(
    notebook, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}
  )
  try:
    client.execute()
  except nbclient.exceptions.CellExecutionError as e:
    pytest.fail(f"{path.name}: {str(e).strip().splitlines()[-1]}")
  errors = [o for cell in notebook.cells for o in cell.get("outputs", []) if o.get("output_type") == "error"]
  assert not errors


# Notebooks that spend their time running programs (training in the kernel) rather than compiling
# them: their kernel gets XLA's default optimization back (tests/conftest.py sets -O0 for the suite),
# which takes many_tasks_one_model from 167 s to 101 s alone on 2 cores.
RUN_BOUND = frozenset({"many_tasks_one_model"})


class _NotebookTest:
  """One notebook's test; subclassed per notebook below (pytest collects only the Test* subclasses)."""

  path: pathlib.Path

  @pytest.mark.slow
  def test_runs_top_to_bottom(self, tmp_path, monkeypatch):
    if self.path.stem in RUN_BOUND:
      monkeypatch.setenv("XLA_FLAGS", processes.xla_flags(optimized=True))
    run_notebook(self.path, tmp_path)


for _path in NOTEBOOKS:
  _name = f"TestNotebook_{_path.stem}"
  globals()[_name] = type(_name, (_NotebookTest,), {"path": _path, "__doc__": f"notebooks/{_path.name}"})
