"""The notebooks in notebooks/ run from top to bottom on a fresh kernel of this environment."""

from __future__ import annotations

import pathlib

import pytest

NOTEBOOKS = sorted((pathlib.Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))


def test_there_are_notebooks():
  assert NOTEBOOKS, "notebooks/ holds no .ipynb"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path, tmp_path):
  import nbclient  # the test extra installs them and ipykernel: a missing one fails, never skips
  import nbformat

  notebook = nbformat.read(path, as_version=4)
  client = nbclient.NotebookClient(
    notebook, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
  )
  try:
    client.execute()
  except nbclient.exceptions.CellExecutionError as e:
    pytest.fail(f"{path.name}: {str(e).strip().splitlines()[-1]}")
  errors = [o for cell in notebook.cells for o in cell.get("outputs", []) if o.get("output_type") == "error"]
  assert not errors
