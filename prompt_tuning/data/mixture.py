"""Mixtures: several tasks behind one `Task`, mixed in proportion to their sizes.

The train split is examples-proportional mixing with a cap (T5's
`rate_num_examples` with `maximum`), made exact rather than sampled: each
"epoch" of the mixture holds min(n_i, cap) examples of task i (all of them
without a cap), so over training every task appears in proportion to its
capped size. A task with more than `cap` examples contributes a fixed subset,
drawn deterministically from (seed, task name) and kept in the task's order;
`BatchIterator` shuffles the whole mixture per epoch. (It reads a split once,
so the subset is the same every epoch.)

Other splits are the concatenation of the tasks' splits. Every example is
tagged with its task's name (`task`) and, when the task shares one list of
candidates, gets it as per-example `candidates`, so rank classification works
across tasks with different labels. `score` hands each task its own records.
"""

from __future__ import annotations

import zlib
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from prompt_tuning.data.task import Example, Task, Vocabulary
from prompt_tuning.errors import NotFoundError

TRAIN_SPLIT = "train"


def _vocabulary_key(vocabulary: Any) -> Any:
  """What makes two vocabularies the same: the SentencePiece file and sentinel count, else identity."""
  path = getattr(vocabulary, "path", None)
  if path is None:
    return ("object", id(vocabulary))
  return (type(vocabulary).__name__, str(path), getattr(vocabulary, "extra_ids", None))


class Mixture:
  """A `Task` made of `tasks`.

  Args:
    name: registry name.
    tasks: the sub-tasks (distinct names; not mixtures themselves), sharing one vocabulary.
    cap: at most this many train examples per task and epoch (None: no cap).
    seed: picks the subset of a task larger than `cap`.
  """

  def __init__(self, name: str, tasks: Sequence[Task], cap: int | None = None, seed: int = 0):
    if not tasks:
      raise ValueError(f"mixture {name}: no tasks")
    names = [t.name for t in tasks]
    if len(set(names)) != len(names):
      raise ValueError(f"mixture {name}: duplicate tasks in {names}")
    for t in tasks:
      if isinstance(t, Mixture):
        raise TypeError(f"mixture {name}: {t.name} is a mixture; list its tasks instead")
    if cap is not None and cap < 1:
      raise ValueError(f"mixture {name}: cap must be >= 1 or None, got {cap}")
    self.name = name
    self.tasks = list(tasks)
    self.cap, self.seed = cap, int(seed)
    self._by_name = {t.name: t for t in self.tasks}

  def __repr__(self) -> str:
    return f"Mixture({self.name!r}, {[t.name for t in self.tasks]}, cap={self.cap})"

  @property
  def vocabulary(self) -> Vocabulary:
    """The first task's vocabulary; all tasks must share it (same object or same model file)."""
    first = self.tasks[0].vocabulary
    key = _vocabulary_key(first)
    for task in self.tasks[1:]:
      other = task.vocabulary
      if other is not first and _vocabulary_key(other) != key:
        raise ValueError(
          f"mixture {self.name}: task {task.name} uses vocabulary {other!r}, but "
          f"{self.tasks[0].name} uses {first!r}; a mixture needs one vocabulary"
        )
    return first

  @property
  def splits(self) -> list[str]:
    """Every split of any task (a split holds the tasks that have it)."""
    out: list[str] = []
    for task in self.tasks:
      out += [s for s in task.splits if s not in out]
    return out

  @property
  def metrics(self) -> Sequence[str]:
    return tuple(f"{t.name}/{m}" for t in self.tasks for m in t.metrics) + ("average",)

  @property
  def candidates(self) -> list[str] | None:
    return None  # per example: each carries its task's candidates

  def _tag(self, task: Task, example: Example) -> Example:
    out = dict(example, task=task.name)
    if not out.get("candidates") and task.candidates:
      out["candidates"] = list(task.candidates)
    return out

  def subsample(self, task: Task, examples: list[Example]) -> list[Example]:
    """At most `cap` of `examples`, a fixed subset from (seed, task name), in their order."""
    if self.cap is None or len(examples) <= self.cap:
      return examples
    rng = np.random.default_rng(np.random.SeedSequence([self.seed, zlib.crc32(task.name.encode())]))
    keep = np.sort(rng.choice(len(examples), size=self.cap, replace=False))
    return [examples[i] for i in keep]

  def examples(self, split: str) -> Iterator[Example]:
    tasks = [t for t in self.tasks if split in t.splits]
    if not tasks:
      raise NotFoundError(f"mixture {self.name} has no split {split!r}; splits: {', '.join(self.splits)}")
    for task in tasks:
      if split == TRAIN_SPLIT:
        chosen = self.subsample(task, list(task.examples(split)))
      else:
        chosen = task.examples(split)
      for example in chosen:
        yield self._tag(task, example)

  def score(self, records: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """{'<task>/<metric>': value} for every task with records, plus 'average': the mean of
    each such task's primary metric (its first listed metric, else its first result)."""
    grouped: dict[str, list] = {}
    for r in records:
      task_name = r["example"].get("task")
      if task_name not in self._by_name:
        raise ValueError(
          f"mixture {self.name}: a record's example has task {task_name!r}, not one of {list(self._by_name)}"
        )
      grouped.setdefault(task_name, []).append(r)
    if not grouped:
      raise ValueError("no examples to score")
    out: dict[str, float] = {}
    primaries = []
    for task in self.tasks:
      if task.name not in grouped:
        continue
      scores = task.score(grouped[task.name])
      out.update({f"{task.name}/{k}": v for k, v in scores.items()})
      primary = next((m for m in task.metrics if m in scores), next(iter(scores), None))
      if primary is not None:
        primaries.append(scores[primary])
    if primaries:
      out["average"] = float(np.mean(primaries))
    return out
