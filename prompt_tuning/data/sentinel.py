"""The paper's "span corruption + sentinel" setting: every target starts with `<extra_id_0>`.

A T5 pre-trained by span corruption only ever produced targets that begin with a sentinel
(`<extra_id_0> span <extra_id_1> ...`). Lester et al. (2021, section 3.2) prefix every downstream
target with `<extra_id_0>` so that the targets look like pre-training targets, and strip it again
before scoring. The reference code does it as a token preprocessor (after tokenizing, before
seqio's append_eos_after_trim: the sentinel counts against the targets length) and a
postprocessor that removes a leading `<extra_id_0>`; we do the same:

  * `TargetSentinel(task)` is the task with `target_prefix` = (id of `<extra_id_0>`,): the
    data pipeline (features.tokenize) puts it before each target's ids, before trimming; the
    Evaluator puts it before each rank-classification candidate too, so the scored sequences are
    the ones training saw;
  * the Evaluator drops a leading `target_prefix` from decoded tokens before they become the
    prediction string, so the task's metrics (and the JSONL predictions) never see the sentinel.

The example text (inputs, targets) is left as it is: the sentinel exists in token space only.
gin: TARGET_SENTINEL = True (TaskSpec.target_sentinel), for any task or mixture.
"""

from __future__ import annotations

from typing import Any, Sequence

from prompt_tuning.data.task import DataError, Task, TaskWrapper, Vocabulary


def target_prefix(task: Any) -> tuple[int, ...]:
  """The token ids `task` puts before every target (TargetSentinel's `<extra_id_0>`); () for plain tasks.

  An optional attribute, outside the Task protocol, so every existing task stays a Task."""
  return tuple(int(i) for i in getattr(task, "target_prefix", ()))


def strip_target_prefix(ids: Sequence[int], prefix: Sequence[int]) -> list[int]:
  """`ids` without a leading `prefix` (when it is there: a model may decode something else first)."""
  ids, prefix = [int(i) for i in ids], [int(i) for i in prefix]
  if prefix and ids[: len(prefix)] == prefix:
    return ids[len(prefix) :]
  return ids


def sentinel_id(vocabulary: Vocabulary, task_name: str, k: int = 0) -> int:
  """The id of `<extra_id_k>` in `vocabulary` (T5/seqio: vocab_size - 1 - k); one line if it has none."""
  extra_ids = getattr(vocabulary, "extra_ids", None)
  if not extra_ids or k >= extra_ids:
    raise DataError(
      f"TARGET_SENTINEL needs the sentinel <extra_id_{k}>, but the vocabulary of task {task_name} "
      f"({vocabulary!r}) has {extra_ids or 0} extra ids"
    )
  return int(vocabulary.vocab_size) - 1 - k


class TargetSentinel(TaskWrapper):
  """`task` with `<extra_id_0>` before every target (see the module docstring); everything else is
  the task's own (TaskWrapper)."""

  def __init__(self, task: Task):
    if target_prefix(task):
      raise ValueError(f"task {task.name} already has a target prefix {target_prefix(task)}")
    super().__init__(task)
    self.target_prefix = (sentinel_id(task.vocabulary, task.name),)

  def __repr__(self) -> str:
    return f"TargetSentinel({self.base!r})"
