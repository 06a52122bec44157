"""first_line: the one-line form of a library's exception."""

from __future__ import annotations

import subprocess
import sys

import pytest

from prompt_tuning.errors import first_line


@pytest.mark.parametrize(
  "given, plain, typed",
  [
    (
      ValueError("\n  \n  bad shape (3, 4)  \nIn call to configurable 'train'\n"),
      "bad shape (3, 4)",
      "ValueError: bad shape (3, 4)",
    ),
    (RuntimeError(), "RuntimeError", "RuntimeError"),  # no message: the type name, never ''
    (RuntimeError(" \n "), "RuntimeError", "RuntimeError"),
    (KeyError("gone"), "'gone'", "KeyError: 'gone'"),  # str() of a KeyError: its repr
    ("  first  \nsecond", "first", "first"),  # a text has no type to name
    ("\n \n", "", ""),
    (
      OSError('NOT_FOUND: no such file [tensorstore_spec={"driver": "zarr", "kvstore": {}}]\nmore'),
      "NOT_FOUND: no such file",
      "OSError: NOT_FOUND: no such file",
    ),
  ],
)
def test_first_line(given, plain, typed):
  assert first_line(given) == plain
  assert first_line(given, typed=True) == typed


def test_imports_nothing_else_of_the_package():
  script = "import sys, prompt_tuning.errors; print(sorted(m for m in sys.modules if m.startswith('prompt_tuning')))"
  out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
  assert out.strip() == "['prompt_tuning', 'prompt_tuning.errors']"
