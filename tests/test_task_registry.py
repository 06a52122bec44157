"""The task registry's loader: built-ins, MIXTURE_OR_TASK_MODULE, VOCABULARY_PATH, one-line errors."""

from __future__ import annotations

import pytest

from prompt_tuning import task_registry
from prompt_tuning.data import task as task_lib
from prompt_tuning.data import vocab as vocab_lib
from prompt_tuning.data.quickstart import data_path

USER_MODULE = """
from prompt_tuning.data.mixture import Mixture
from prompt_tuning.data.task import get_task, register_task

# A user's module may build on the built-in tasks: they are loaded before it is imported.
register_task(Mixture("registry_test_mixture", [get_task("quickstart_sentiment"), get_task("super_glue_rte_v102")]),
              overwrite=True)
"""


def test_lists_and_resolves_the_built_in_tasks():
  names = task_registry.list_tasks()
  assert {
    "quickstart_sentiment",
    "super_glue_rte_v102",
    "glue_mrpc_v002",
    "mrqa_squad_v100",
    "super_glue_v102_proportional",
  } <= set(names)
  assert names == sorted(names) == task_lib.registered_names()
  assert task_registry.resolve_task("super_glue_rte_v102") is task_lib.get_task("super_glue_rte_v102")


def test_imports_the_task_module_after_the_built_ins(tmp_path, monkeypatch):
  (tmp_path / "registry_test_tasks.py").write_text(USER_MODULE)
  monkeypatch.syspath_prepend(str(tmp_path))
  mixture = task_registry.resolve_task("registry_test_mixture", "registry_test_tasks")
  assert [t.name for t in mixture.tasks] == ["quickstart_sentiment", "super_glue_rte_v102"]


def test_sets_the_default_vocabulary():
  try:
    task_registry.resolve_task("quickstart_sentiment", vocabulary_path=data_path("sentencepiece.model"))
    assert vocab_lib.default_vocabulary().path == data_path("sentencepiece.model")
  finally:
    vocab_lib.set_default_vocabulary(vocab_lib.T5_VOCABULARY_PATH)


def test_errors_are_one_line():
  with pytest.raises(
    task_lib.DataError,
    match=r"^MIXTURE_OR_TASK_MODULE 'no_such_registry_module' cannot be "
    r"imported: No module named 'no_such_registry_module'$",
  ):
    task_registry.resolve_task("quickstart_sentiment", "no_such_registry_module")
  with pytest.raises(KeyError) as e:
    task_registry.resolve_task("no_such_task_anywhere")
  message = str(e.value)
  assert message.startswith("unknown task 'no_such_task_anywhere'; `prompt-tuning tasks` lists the ")
  # The built-ins were loaded before the lookup: a near miss of one is named.
  with pytest.raises(KeyError, match=r"^unknown task 'super_glue_rte_v12' \(did you mean 'super_glue_rte_v102'\?\)"):
    task_registry.resolve_task("super_glue_rte_v12")
