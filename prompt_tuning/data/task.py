"""Tasks: named sources of text examples, plus a registry.

A task yields text `Example`s per split; tokenization, truncation and batching
happen later (features.py, pipeline.py). The trainer sees a task only through
the `Task` protocol, so a seqio-backed task (a separate module, the only one
that imports seqio) can stand in for `TextTask`.

Example: {"inputs": str, "targets": str, "idx": any} (idx: the record's own
"idx" field if it has one, else its 0-based position in the split).
"""

from __future__ import annotations

import csv
import difflib
import io
import json
import os
import string
from typing import Any, Callable, Iterable, Iterator, Mapping, Protocol, Sequence, Union, runtime_checkable

from prompt_tuning.data import metrics as metrics_lib
from prompt_tuning.data.vocab import SentencePieceVocabulary, read_bytes
from prompt_tuning.errors import NotFoundError

Example = dict[str, Any]
SplitSource = Union[str, os.PathLike, Callable[[], Iterable[Mapping[str, Any]]]]
READERS = (".jsonl", ".tsv", ".csv")


class DataError(ValueError):
  """A malformed record or file; the message is one line naming the file and line."""


@runtime_checkable
class Vocabulary(Protocol):
  vocab_size: int
  eos_id: int
  pad_id: int

  def encode(self, text: str) -> list[int]: ...

  def decode(self, ids: Iterable[int]) -> str: ...


@runtime_checkable
class Task(Protocol):
  """What the trainer consumes."""

  name: str

  @property
  def vocabulary(self) -> Vocabulary: ...

  @property
  def splits(self) -> list[str]: ...

  @property
  def metrics(self) -> Sequence[str]:
    """Names in `metrics.METRICS`, computed on decoded predictions vs. `targets`."""

  @property
  def candidates(self) -> list[str] | None:
    """Label strings for rank classification / class-label prompt init, or None."""

  def examples(self, split: str) -> Iterator[Example]:
    """Text examples of `split`, in a fixed order. Besides inputs/targets/idx an example may
    carry task-specific fields (e.g. all gold `answers`, a question `group`) and its own
    rank-classification `candidates` (list[str]), which then replace the task's."""

  def score(self, records: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Task metrics of evaluated records, each {'example': Example, 'prediction': str}."""


# ---------------------------------------------------------------- file readers


def _read_text(path: str) -> str:
  data = read_bytes(path)
  try:
    return data.decode("utf-8-sig")  # -sig: tolerate a byte-order mark
  except UnicodeDecodeError as e:
    line = data.count(b"\n", 0, e.start) + 1
    column = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
    raise DataError(
      f"{path}:{line}: not UTF-8 text (byte 0x{data[e.start]:02x} at column {column}); save the file as UTF-8"
    ) from None


def read_records(path: str) -> Iterator[tuple[int, dict[str, Any]]]:
  """(line number, record) for each record of a .jsonl, .tsv or .csv file.

  TSV and CSV files need a header row. TSV fields are taken verbatim (no quote
  processing, as GLUE's files need); CSV follows the usual quoting rules.
  """
  path = os.fspath(path)
  ext = os.path.splitext(path)[1].lower()
  if ext not in READERS:
    raise DataError(f"{path}: unknown file type {ext!r}; readable: {', '.join(READERS)}")
  text = _read_text(path)
  if ext == ".jsonl":
    for line_no, line in enumerate(text.split("\n"), 1):
      if not line.strip():
        continue
      try:
        record = json.loads(line)
      except json.JSONDecodeError as e:
        raise DataError(f"{path}:{line_no}: invalid JSON ({e.msg} at column {e.colno})") from None
      if not isinstance(record, dict):
        raise DataError(f"{path}:{line_no}: expected a JSON object, got {type(record).__name__}")
      yield line_no, record
    return
  if ext == ".tsv":
    reader = csv.reader(io.StringIO(text, newline=""), delimiter="\t", quoting=csv.QUOTE_NONE)
  else:
    reader = csv.reader(io.StringIO(text, newline=""))
  header = next(reader, None)
  if header is None:
    return
  for row in reader:
    if not row or row == [""]:
      continue
    if len(row) != len(header):
      raise DataError(f"{path}:{reader.line_num}: {len(row)} columns, but the header has {len(header)}")
    yield reader.line_num, dict(zip(header, row))


# ---------------------------------------------------------------- TextTask


def _template_fields(template: str) -> list[str]:
  fields = []
  for _, field, _, _ in string.Formatter().parse(template):
    if field is None:
      continue
    if field == "" or field.isdigit():
      raise ValueError(f"input_template {template!r}: use named fields like {{premise}}, not {{{field}}}")
    fields.append(field)
  return fields


def label_string(value: Any, labels: Sequence[str] | None) -> str:
  """The target string: a label index (int, or digits in a TSV/CSV cell) -> labels[index].

  Strings already in `labels` pass through; without labels, any value is str()-ed.
  Raises ValueError (no location; the caller adds it).
  """
  if labels is None:
    return value if isinstance(value, str) else str(value)
  if isinstance(value, str):
    if value in labels:
      return value
    try:
      value = int(value.strip())
    except ValueError:
      raise ValueError(f"target {value!r} is not one of the labels {list(labels)}") from None
  elif isinstance(value, float) and value.is_integer():
    value = int(value)
  if not isinstance(value, int):  # bool is an int: False/True -> labels[0]/labels[1]
    raise ValueError(f"target {value!r} is neither a label string nor a label index")
  if not 0 <= value < len(labels):
    raise ValueError(f"label index {value} out of range for {len(labels)} labels {list(labels)}")
  return labels[value]


class TaskWrapper:
  """A Task that is `base` with something changed (data/sentinel.py, data/design.py): subclasses
  override what they change; the name (so run records, bundles and leaderboard files keep it),
  vocabulary, splits, examples, candidates, metrics and scoring are the base's, and any other
  attribute (a mixture's `tasks`, another wrapper's `target_prefix`) passes through to it."""

  def __init__(self, base: Task):
    self.base, self.name = base, base.name

  def __getattr__(self, name: str) -> Any:  # only for what is not defined here
    if name == "base":  # not set yet (unpickling): no recursion
      raise AttributeError(name)
    return getattr(self.base, name)

  @property
  def vocabulary(self) -> Vocabulary:
    return self.base.vocabulary

  @property
  def splits(self) -> list[str]:
    return self.base.splits

  @property
  def metrics(self) -> Sequence[str]:
    return self.base.metrics

  @property
  def candidates(self) -> list[str] | None:
    return self.base.candidates

  def examples(self, split: str) -> Iterator[Example]:
    return self.base.examples(split)

  def score(self, records: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    return self.base.score(records)


class TextTask:
  """A task over JSONL/TSV/CSV files or Python callables, with no TensorFlow.

  Args:
    name: registry name.
    vocabulary: a vocabulary object, or a SentencePiece model path (loaded on
      first use, with 100 extra ids).
    splits: split name -> file path (.jsonl/.tsv/.csv, local or gs://) or a
      zero-argument callable returning an iterable of record dicts.
    input_template: str.format template over record fields, e.g.
      "premise: {premise} hypothesis: {hypothesis}".
    target_field: the record field holding the target.
    labels: class label strings; integer targets index into them. Also the
      rank-classification candidates (`candidates`).
    metrics: names from `metrics.METRICS`.
  """

  def __init__(
    self,
    name: str,
    vocabulary: Vocabulary | str,
    splits: Mapping[str, SplitSource],
    input_template: str,
    target_field: str,
    labels: Sequence[str] | None = None,
    metrics: Sequence[str] = ("accuracy",),
  ):
    self.name = name
    self._vocabulary = vocabulary
    self._sources = dict(splits)
    self.input_template = input_template
    self.input_fields = _template_fields(input_template)
    self.target_field = target_field
    self.labels = None if labels is None else [str(x) for x in labels]
    if self.labels is not None and len(set(self.labels)) != len(self.labels):
      raise ValueError(f"task {name}: duplicate labels {self.labels}")
    for m in metrics:
      metrics_lib.get_metric(m)
    self._metrics = tuple(metrics)

  def __repr__(self) -> str:
    return f"TextTask({self.name!r}, splits={self.splits})"

  @property
  def vocabulary(self) -> Vocabulary:
    if isinstance(self._vocabulary, (str, os.PathLike)):
      self._vocabulary = SentencePieceVocabulary(os.fspath(self._vocabulary))
    return self._vocabulary

  @property
  def splits(self) -> list[str]:
    return list(self._sources)

  @property
  def metrics(self) -> Sequence[str]:
    return self._metrics

  @property
  def candidates(self) -> list[str] | None:
    return None if self.labels is None else list(self.labels)

  def score(self, records: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    return metrics_lib.compute_metrics(
      self._metrics, [r["example"]["targets"] for r in records], [r["prediction"] for r in records]
    )

  def _records(self, split: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """(location for errors, record) pairs."""
    if split not in self._sources:
      raise NotFoundError(f"task {self.name} has no split {split!r}; splits: {', '.join(self.splits)}")
    source = self._sources[split]
    if callable(source):
      for i, record in enumerate(source(), 1):
        yield f"task {self.name} split {split} record {i}", record
    else:
      for line_no, record in read_records(source):
        yield f"{os.fspath(source)}:{line_no}", record

  def examples(self, split: str) -> Iterator[Example]:
    for i, (where, record) in enumerate(self._records(split)):
      try:
        inputs = self.input_template.format_map(record)
      except KeyError as e:
        raise DataError(
          f"{where}: input_template field {e.args[0]!r} missing "
          f"(task {self.name}; record fields: {', '.join(map(str, record))})"
        ) from None
      if self.target_field not in record:
        raise DataError(
          f"{where}: target_field {self.target_field!r} missing "
          f"(task {self.name}; record fields: {', '.join(map(str, record))})"
        )
      try:
        targets = label_string(record[self.target_field], self.labels)
      except ValueError as e:
        raise DataError(f"{where}: {e} (task {self.name})") from None
      yield {"inputs": inputs, "targets": targets, "idx": record.get("idx", i)}


# ---------------------------------------------------------------- registry
# Task modules register themselves here on import; this module never imports them
# (prompt_tuning.task_registry loads the built-in ones for the entry points).

_TASKS: dict[str, Task] = {}
# (records [{'example', 'prediction'}] of one task, directory) -> the file written
LeaderboardWriter = Callable[[Sequence[Mapping[str, Any]], str], str]
_LEADERBOARDS: dict[str, LeaderboardWriter] = {}


def register_task(task: Task, *, overwrite: bool = False) -> Task:
  """Adds `task` under `task.name`; re-registering a name needs overwrite=True (same object: no-op)."""
  existing = _TASKS.get(task.name)
  if existing is not None and existing is not task and not overwrite:
    raise ValueError(f"task {task.name!r} is already registered; pass overwrite=True to replace it")
  _TASKS[task.name] = task
  return task


def get_task(name: str) -> Task:
  """The task registered as `name` (only what has been imported: see prompt_tuning.task_registry)."""
  if name not in _TASKS:
    close = difflib.get_close_matches(str(name), list(_TASKS), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise NotFoundError(
      f"unknown task {name!r}{hint}; `prompt-tuning tasks` lists the {len(_TASKS)} known tasks and mixtures"
    )
  return _TASKS[name]


def registered_names() -> list[str]:
  """The names registered so far, sorted (built-in tasks only once their modules are imported)."""
  return sorted(_TASKS)


def register_leaderboard(task_name: str, writer: LeaderboardWriter) -> LeaderboardWriter:
  """Makes `writer(records, directory) -> path` write the leaderboard submission file of `task_name`.

  A benchmark's task module calls this at import (tasks/super_glue.py), so inference
  can export submissions without knowing the benchmark. Re-registering replaces.
  """
  _LEADERBOARDS[task_name] = writer
  return writer


def get_leaderboard(task_name: str) -> LeaderboardWriter | None:
  """The leaderboard writer registered for `task_name`, or None."""
  return _LEADERBOARDS.get(task_name)
