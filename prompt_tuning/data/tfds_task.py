"""Tasks over TensorFlow Datasets, formatted and scored in Python.

The raw records come from `tfds.load` (this module is the data layer's only
door to tensorflow_datasets, imported on first use); formatting them into
text-to-text examples and scoring predictions are plain Python functions, so
they are easy to pin with hand-written examples and need no TensorFlow graph.
`tfds.testing.mock_data` works unchanged for tests.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np

from prompt_tuning.data.task import Example, Vocabulary
from prompt_tuning.data.vocab import default_vocabulary
from prompt_tuning.errors import NotFoundError

FormatFn = Callable[[Mapping[str, Any]], "Example | Iterable[Example] | None"]
ScoreFn = Callable[[Sequence[Mapping[str, Any]]], dict]


def to_python(value: Any) -> Any:
  """numpy/bytes from tfds.as_numpy -> str, int, float, list and dict."""
  if isinstance(value, bytes):
    return value.decode("utf-8")
  if isinstance(value, np.ndarray):
    return [to_python(v) for v in value.tolist()] if value.dtype.kind in "OSU" else to_python(value.tolist())
  if isinstance(value, np.generic):
    return value.item()
  if isinstance(value, Mapping):
    return {k: to_python(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [to_python(v) for v in value]
  return value


def tfds_records(name: str, split: str, data_dir: str | None = None) -> Iterator[dict[str, Any]]:
  """The records of a tfds split, in the dataset's order, as Python values."""
  import tensorflow_datasets as tfds  # TensorFlow: only here

  dataset = tfds.load(name, split=split, data_dir=data_dir, shuffle_files=False)
  for record in tfds.as_numpy(dataset):
    yield to_python(record)


class TfdsTask:
  """A `Task` whose examples come from a tfds dataset through a Python formatter.

  Args:
    name: registry name, e.g. 'super_glue_rte_v102'.
    tfds_name: e.g. 'super_glue/rte:1.0.2'.
    splits: our split name -> tfds split ('train', 'validation', 'test', 'train[:90%]').
    format_fn: raw record -> one example, several (MultiRC: one per answer), or None to skip.
      An example has inputs, targets, idx, and may add candidates and fields its score_fn reads.
    score_fn: evaluated records ({'example', 'prediction'}) -> {metric: value}.
    candidates: rank-classification labels shared by all examples (None: per example, or none).
    vocabulary: None uses `vocab.default_vocabulary()` (T5's unless VOCABULARY_PATH says otherwise).
    metric_names: what score_fn reports, for listings.
  """

  def __init__(
    self,
    name: str,
    tfds_name: str,
    splits: Mapping[str, str],
    format_fn: FormatFn,
    score_fn: ScoreFn,
    *,
    candidates: Sequence[str] | None = None,
    vocabulary: Vocabulary | None = None,
    data_dir: str | None = None,
    metric_names: Sequence[str] = (),
  ):
    self.name, self.tfds_name = name, tfds_name
    self._splits = dict(splits)
    self.format_fn, self.score_fn = format_fn, score_fn
    self.candidates = None if candidates is None else list(candidates)
    self._vocabulary = vocabulary
    self.data_dir = data_dir
    self.metrics = tuple(metric_names)

  def __repr__(self) -> str:
    return f"TfdsTask({self.name!r}, {self.tfds_name!r})"

  @property
  def vocabulary(self) -> Vocabulary:
    return self._vocabulary if self._vocabulary is not None else default_vocabulary()

  @property
  def splits(self) -> list[str]:
    return list(self._splits)

  def examples(self, split: str) -> Iterator[Example]:
    if split not in self._splits:
      raise NotFoundError(f"task {self.name} has no split {split!r}; splits: {', '.join(self._splits)}")
    for record in tfds_records(self.tfds_name, self._splits[split], self.data_dir):
      formatted = self.format_fn(record)
      if formatted is None:
        continue
      yield from ([formatted] if isinstance(formatted, Mapping) else formatted)

  def score(self, records: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    return self.score_fn(records)
