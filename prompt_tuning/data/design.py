"""Prompt design (the paper's GPT-3-style baseline): a hand-written text template, with k
demonstrations from the training split, in front of each input of a frozen model.

`DesignedTask(task, template, shots, ...)` is `task` with each example's `inputs` rewritten as

  demonstration_1 SEP demonstration_2 SEP ... SEP query

  query            = template.format_map(example)              e.g. 'Review: {inputs} Sentiment:'
  demonstration_j  = template.format_map(demo_j) + ' ' + demo_j['targets']

where the template names fields of the task's examples ({inputs}: the task's own input text,
e.g. T5's 'rte sentence1: ... sentence2: ...'; other fields an example carries). Targets,
candidates and metrics stay the task's: the frozen model is scored by rank classification over
the task's candidates (and by decoding).

Demonstrations (GPT-3, Brown et al. 2020, section 2: "randomly drawing K examples from that
task's training set as conditioning" for each evaluated example): example i of the evaluated
split draws `shots` distinct examples of `demonstration_split` with
numpy.random.default_rng(SeedSequence([seed, i])), in that drawn order; never the example itself
when both splits are the same; of a mixture, only examples of the same task.

Length: when the designed input does not fit the inputs feature length (EOS included),
demonstrations are dropped first, the earliest (farthest from the query) first, until it fits or
none is left; a query too long alone is then cut by the pipeline as any input (the end cut, EOS
kept) and counted in the truncation report. `used(split)` tells how many demonstrations each
example kept.
"""

from __future__ import annotations

import string
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from prompt_tuning.data.task import DataError, Example, Task, TaskWrapper


def template_fields(template: str) -> list[str]:
  """The fields a template names; ValueError (one line) for a bad template or one naming the target."""
  if not isinstance(template, str) or not template.strip():
    raise ValueError(f"PROMPT_DESIGN_TEMPLATE must be a non-empty str.format template, got {template!r}")
  try:
    parsed = list(string.Formatter().parse(template))
  except ValueError as e:
    raise ValueError(f"PROMPT_DESIGN_TEMPLATE {template!r}: {e}") from None
  fields = [field for _, field, _, _ in parsed if field is not None]
  if any(field == "" or field.isdigit() for field in fields):
    raise ValueError(f"PROMPT_DESIGN_TEMPLATE {template!r}: use named fields like {{inputs}}, not positional ones")
  if "targets" in fields:
    raise ValueError(
      f"PROMPT_DESIGN_TEMPLATE {template!r} names {{targets}}, the answer; demonstrations get their targets after "
      f"the template, the evaluated example never"
    )
  return fields


class DesignedTask(TaskWrapper):
  """`task` with its inputs designed (see the module docstring); everything else is the task's
  (TaskWrapper).

  Args:
    task: any Task (a mixture too); other attributes (a mixture's `tasks`, a sentinel's
      `target_prefix`) pass through.
    template: str.format template over example fields (PROMPT_DESIGN_TEMPLATE).
    shots: demonstrations per example, k >= 0 (PROMPT_DESIGN_SHOTS).
    inputs_length: the inputs feature length the designed text must fit (EOS included).
    seed: the demonstration draws.
    separator: between demonstrations and before the query.
    demonstration_split: where demonstrations come from.
  """

  def __init__(
    self,
    task: Task,
    template: str,
    shots: int,
    inputs_length: int,
    *,
    seed: int = 0,
    separator: str = " ",
    demonstration_split: str = "train",
  ):
    self.fields = template_fields(template)
    super().__init__(task)
    self.template, self.shots, self.inputs_length = template, int(shots), int(inputs_length)
    self.seed, self.separator, self.demonstration_split = int(seed), separator, demonstration_split
    self._pool: dict[Any, list[tuple[int, Example]]] | None = None  # by task tag: (position, example)
    self._used: dict[str, list[int]] = {}

  def __repr__(self) -> str:
    return f"DesignedTask({self.base!r}, template={self.template!r}, shots={self.shots})"

  def used(self, split: str) -> list[int]:
    """How many demonstrations each example of `split` kept, in order (after `examples(split)` ran)."""
    return list(self._used.get(split, []))

  def query(self, example: Mapping[str, Any]) -> str:
    """The template filled with `example`'s fields (one line naming a missing field)."""
    try:
      return self.template.format_map(example)
    except KeyError as e:
      raise DataError(
        f"PROMPT_DESIGN_TEMPLATE {self.template!r} names field {e.args[0]!r}, which examples of task "
        f"{example.get('task', self.name)} lack (they have {', '.join(sorted(map(str, example)))})"
      ) from None

  def demonstration(self, example: Mapping[str, Any]) -> str:
    return f"{self.query(example)} {example['targets']}"

  def _demonstration_pool(self) -> dict[Any, list[tuple[int, Example]]]:
    if self._pool is None:
      pool: dict[Any, list[tuple[int, Example]]] = {}
      for position, example in enumerate(self.base.examples(self.demonstration_split)):
        pool.setdefault(example.get("task"), []).append((position, example))
      self._pool = pool
    return self._pool

  def draw(self, position: int, example: Mapping[str, Any], split: str) -> list[Example]:
    """The demonstrations drawn for the `position`-th example of `split` (see the module docstring)."""
    if not self.shots:
      return []
    candidates = self._demonstration_pool().get(example.get("task"), [])
    if split == self.demonstration_split:  # never the example itself
      candidates = [(p, ex) for p, ex in candidates if p != position]
    rng = np.random.default_rng(np.random.SeedSequence([self.seed, position]))
    picks = rng.choice(len(candidates), size=min(self.shots, len(candidates)), replace=False)
    return [candidates[int(i)][1] for i in picks]

  def design(self, demonstrations: Sequence[Mapping[str, Any]], example: Mapping[str, Any]) -> tuple[str, int]:
    """(the designed input, how many demonstrations it kept): the earliest dropped first until the
    text's tokens plus EOS fit `inputs_length`."""
    query = self.query(example)
    shown = [self.demonstration(d) for d in demonstrations]
    vocabulary = self.vocabulary
    while shown:
      text = self.separator.join([*shown, query])
      if len(vocabulary.encode(text)) + 1 <= self.inputs_length:
        return text, len(shown)
      shown = shown[1:]
    return query, 0

  def examples(self, split: str) -> Iterator[Example]:
    used = self._used[split] = []
    for position, example in enumerate(self.base.examples(split)):
      text, kept = self.design(self.draw(position, example, split), example)
      used.append(kept)
      yield dict(example, inputs=text)
