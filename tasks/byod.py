"""Bring your own data: a task from JSONL/TSV/CSV files, configured in gin alone.

`text_task` builds a `TextTask`, registers it and returns its name, so a gin
file can put it where a task name goes (see gin/tasks/byod.gin):

  MIXTURE_OR_TASK_NAME = @byod.text_task()
  byod.text_task.name = 'my_task'
  byod.text_task.train_path = '/data/train.jsonl'
  byod.text_task.validation_path = '/data/validation.jsonl'
  byod.text_task.input_template = 'review: {text}'
  byod.text_task.target_field = 'label'
  byod.text_task.labels = ['negative', 'positive']

gin calls it once per use of the macro (train, then eval or infer), so it is
idempotent: the same arguments give the same registered task. Everything that
can be checked before training is checked at once, each with a one-line error:
files exist and are readable, metrics are known, and the template and target
fields are in the first record of each labelled file.

The function is registered with gin at the entry point (prompt_tuning.cli.gin_runner),
as every library function is, under the module name `byod`.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

from prompt_tuning.data import metrics as metrics_lib
from prompt_tuning.data import task as task_lib
from prompt_tuning.data.task import DataError, TextTask
from prompt_tuning.data.vocab import default_vocabulary


class ByodTask(TextTask):
  """A `TextTask` built by `text_task`; remembers its arguments (`spec`).

  Without a vocabulary path it uses the default vocabulary at the time of use,
  so VOCABULARY_PATH (set by the entry point after gin built the task) applies.
  """

  def __init__(self, spec: dict[str, Any], **kwargs):
    super().__init__(**kwargs)
    self.spec = spec

  def __repr__(self) -> str:
    return f"ByodTask({self.name!r}, splits={self.splits})"

  @property
  def vocabulary(self):
    if self._vocabulary is None:
      return default_vocabulary()
    return super().vocabulary


# ---------------------------------------------------------------- validation


def _norm_path(path: Any, arg: str) -> str:
  """A path argument as a string (local paths made absolute, so spellings compare equal)."""
  if not isinstance(path, (str, os.PathLike)) or not os.fspath(path):
    raise ValueError(f"byod.text_task: {arg} must be a file path, got {path!r}")
  path = os.fspath(path)
  return path if "://" in path else os.path.abspath(os.path.expanduser(path))


def _exists(path: str) -> bool:
  if "://" in path:
    from etils import epath  # gs:// and other remote filesystems

    return epath.Path(path).is_file()
  return os.path.isfile(path)


def _check_file(path: str, arg: str, data: bool = True) -> None:
  if not _exists(path):
    raise DataError(f"byod.text_task: {arg} file not found: {path}")
  ext = os.path.splitext(path)[1].lower()
  if data and ext not in task_lib.READERS:
    raise DataError(
      f"byod.text_task: {arg} {path} has unknown file type {ext or '(none)'!r}; readable: {', '.join(task_lib.READERS)}"
    )


def _metric_names(metric: str | Sequence[str]) -> tuple[str, ...]:
  names = (metric,) if isinstance(metric, str) else tuple(metric)
  if not names:
    raise ValueError("byod.text_task: metric must name at least one metric")
  for name in names:
    if name not in metrics_lib.METRICS:
      raise ValueError(f"byod.text_task: unknown metric {name!r}; known: {', '.join(sorted(metrics_lib.METRICS))}")
  return names


def _label_tuple(labels: Sequence[str] | None) -> tuple[str, ...] | None:
  if labels is None:
    return None
  if isinstance(labels, (str, bytes)) or not isinstance(labels, Sequence) or not labels:
    raise ValueError(f"byod.text_task: labels must be a non-empty list of strings (or None), got {labels!r}")
  return tuple(str(x) for x in labels)


def _check_first_record(
  path: str, input_fields: Sequence[str], target_field: str, labels: Sequence[str] | None
) -> None:
  """The template (and target) fields are in the first record of `path`, and its target is a label."""
  first = next(iter(task_lib.read_records(path)), None)
  if first is None:
    raise DataError(f"byod.text_task: {path} has no records")
  line_no, record = first
  fields = ", ".join(map(str, record)) or "(none)"
  for field in input_fields:
    if field not in record:
      raise DataError(
        f"byod.text_task: input_template field {field!r} is not in the first record of {path} "
        f"(line {line_no}; fields: {fields})"
      )
  if target_field not in record:
    raise DataError(
      f"byod.text_task: target_field {target_field!r} is not in the first record of {path} "
      f"(line {line_no}; fields: {fields})"
    )
  try:
    task_lib.label_string(record[target_field], labels)
  except ValueError as e:
    raise DataError(f"byod.text_task: {path}:{line_no}: {e}") from None


def _differences(old: dict[str, Any], new: dict[str, Any]) -> str:
  return ", ".join(f"{k}={new[k]!r} (registered: {old.get(k)!r})" for k in new if old.get(k) != new[k])


def _registered(name: str):
  try:
    return task_lib.get_task(name)
  except KeyError:
    return None


# ---------------------------------------------------------------- the configurable


def text_task(
  name: str,
  train_path: str,
  validation_path: str,
  input_template: str,
  target_field: str,
  labels: Sequence[str] | None = None,
  metric: str | Sequence[str] = "accuracy",
  vocabulary_path: str | None = None,
  test_path: str | None = None,
) -> str:
  """Registers a text task over your files and returns its name (for MIXTURE_OR_TASK_NAME).

  Args:
    name: the task's registry name.
    train_path / validation_path / test_path: .jsonl, .tsv or .csv files (local
      or gs://; TSV/CSV with a header row), all with the target field; test_path
      is optional.
    input_template: str.format template over record fields, e.g. 'question: {q} context: {c}'.
    target_field: the record field holding the target text or label index.
    labels: class label strings (integer targets index into them); also the
      rank-classification candidates. None for free-text targets.
    metric: one name or a list from `prompt_tuning.data.metrics.METRICS`.
    vocabulary_path: SentencePiece model (100 extra ids); None: the default
      vocabulary (VOCABULARY_PATH, else T5's), looked up when first used.

  Returns:
    `name`, registered. Calling again with the same arguments is a no-op.

  Raises:
    DataError / ValueError: one line naming the bad argument, file or field.
  """
  if not isinstance(name, str) or not name.strip():
    raise ValueError(f"byod.text_task: name must be a non-empty string, got {name!r}")
  for arg, value in (("input_template", input_template), ("target_field", target_field)):
    if not isinstance(value, str) or not value:
      raise ValueError(f"byod.text_task: {arg} must be a non-empty string, got {value!r}")
  splits = {"train": _norm_path(train_path, "train_path"), "validation": _norm_path(validation_path, "validation_path")}
  if test_path is not None:
    splits["test"] = _norm_path(test_path, "test_path")
  spec = {
    "train_path": splits["train"],
    "validation_path": splits["validation"],
    "test_path": splits.get("test"),
    "input_template": input_template,
    "target_field": target_field,
    "labels": _label_tuple(labels),
    "metric": _metric_names(metric),
    "vocabulary_path": None if vocabulary_path is None else _norm_path(vocabulary_path, "vocabulary_path"),
  }

  existing = _registered(name)
  if existing is not None:
    old = getattr(existing, "spec", None)
    if not isinstance(existing, TextTask) or old is None:
      raise ValueError(f"byod.text_task: task name {name!r} is already taken by {existing!r}; choose another name")
    if old != spec:
      raise ValueError(
        f"byod.text_task: task {name!r} is already registered with other arguments: "
        f"{_differences(old, spec)}; choose another name"
      )
    return name

  for split, path in splits.items():
    _check_file(path, f"{split}_path")
  if spec["vocabulary_path"] is not None:
    _check_file(spec["vocabulary_path"], "vocabulary_path", data=False)
  try:  # TextTask checks the template (named fields only) and the labels (no duplicates)
    task = ByodTask(
      spec,
      name=name,
      vocabulary=spec["vocabulary_path"],
      splits=splits,
      input_template=input_template,
      target_field=target_field,
      labels=spec["labels"],
      metrics=spec["metric"],
    )
  except ValueError as e:
    raise ValueError(f"byod.text_task: {e}") from None
  for path in splits.values():
    _check_first_record(path, task.input_fields, target_field, spec["labels"])
  task_lib.register_task(task)
  return name


# What the entry point registers with gin (as prompt_tuning.tasks.byod.text_task: `byod.text_task` in gin).
CONFIGURABLES = {"text_task": text_task}
