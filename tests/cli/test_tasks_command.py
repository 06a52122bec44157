"""`prompt-tuning tasks` / `python -m prompt_tuning.tasks`: the task and mixture listing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

from prompt_tuning.cli import main as cli
from prompt_tuning.cli import tasks as tasks_command

# A module registering a mixture-like object (anything with `tasks`), for --module.
MIXTURE_MODULE = """
from prompt_tuning.data.task import get_task, register_task

class FakeMixture:
  name = "listing_test_mixture"
  splits = ["train", "validation"]
  metrics = ("accuracy",)

  @property
  def tasks(self):
    return [(get_task("quickstart_sentiment"), 1.0), ("listing_test_other", 2.0)]

  def examples(self, split):
    raise AssertionError("a listing must not read data")

register_task(FakeMixture(), overwrite=True)

from prompt_tuning.data.mixture import Mixture

register_task(Mixture("listing_test_real_mixture", [get_task("quickstart_sentiment")]), overwrite=True)
"""


def _lines(out: str) -> list[str]:
  return [line for line in out.splitlines() if line.strip()]


def test_lists_the_quickstart_task_with_splits_and_metrics(capsys):
  assert cli.main(["tasks"]) == 0
  lines = _lines(capsys.readouterr().out)
  line = next(line for line in lines if line.startswith("quickstart_sentiment "))
  assert line.split()[1] == "task"
  assert "splits: train, validation" in line and line.endswith("metrics: accuracy")
  assert len({line.index("splits:") for line in lines}) == 1  # aligned columns


def test_filter_keeps_matching_names_only(capsys):
  assert cli.main(["tasks", "QUICKSTART"]) == 0  # case-insensitive substring
  lines = _lines(capsys.readouterr().out)
  assert [line.split()[0] for line in lines] == ["quickstart_sentiment"]
  assert cli.main(["tasks", "no_such_task_anywhere"]) == 0
  captured = capsys.readouterr()
  assert captured.out == "" and "no task or mixture name contains 'no_such_task_anywhere'" in captured.err


def test_json_output_parses(capsys):
  assert tasks_command.main(["--json", "quickstart"]) == 0
  entries = json.loads(capsys.readouterr().out)
  assert entries == [
    {"name": "quickstart_sentiment", "kind": "task", "splits": ["train", "validation"], "metrics": ["accuracy"]}
  ]


def test_runs_without_tensorflow_and_lists_mixtures(tmp_path):
  (tmp_path / "listing_test_tasks.py").write_text(MIXTURE_MODULE)
  script = textwrap.dedent("""
      import runpy, sys
      for name in ("tensorflow", "seqio", "tensorflow_datasets"):
        sys.modules[name] = None  # any import of these now raises ImportError
      sys.argv = ["prompt_tuning.tasks", *sys.argv[1:]]
      runpy.run_module("prompt_tuning.tasks", run_name="__main__")
  """)
  env = dict(os.environ, PYTHONPATH=str(tmp_path))

  def run(*args):
    result = subprocess.run(
      [sys.executable, "-c", script, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout

  lines = _lines(run())
  assert any(line.startswith("quickstart_sentiment ") for line in lines)
  mixture_line = _lines(run("--module", "listing_test_tasks", "listing_test_mixture"))
  assert len(mixture_line) == 1
  assert mixture_line[0].startswith("listing_test_mixture  mixture (2 tasks)  splits: train, validation")
  real = _lines(run("--module", "listing_test_tasks", "listing_test_real"))
  assert real == [
    "listing_test_real_mixture  mixture (1 task)  splits: train, validation  "
    "metrics: quickstart_sentiment/accuracy, average"
  ]
  entries = json.loads(run("--module", "listing_test_tasks", "--json"))
  mixture = next(e for e in entries if e["name"] == "listing_test_mixture")
  assert mixture["kind"] == "mixture" and mixture["tasks"] == ["quickstart_sentiment", "listing_test_other"]
  assert any(e["name"] == "quickstart_sentiment" and e["kind"] == "task" for e in entries)


def test_unimportable_module_is_a_one_line_error(capsys):
  assert tasks_command.main(["--module", "no_such_module_for_listing"]) == 1
  err = capsys.readouterr().err.strip()
  assert err.count("\n") == 0 and err.startswith("prompt-tuning tasks: error: No module named")
