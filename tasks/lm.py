"""Text corpora for LM adaptation and span-corruption pre-training, configured in gin alone.

`text_corpus_task` (files) and `tfds_corpus_task` (C4 and other tfds text datasets) build a
`CorpusTask` (prompt_tuning/data/corpus.py), register it and return its name, so a gin file puts
it where a task name goes (gin/tasks/text_corpus.gin, gin/tasks/c4.gin):

  MIXTURE_OR_TASK_NAME = @lm.text_corpus_task()
  lm.text_corpus_task.name = 'my_corpus'
  lm.text_corpus_task.train_path = '/data/train.jsonl'      # or a list of files; .txt or .jsonl
  lm.text_corpus_task.validation_path = '/data/held_out.txt'
  lm.text_corpus_task.field = 'text'                        # the .jsonl field holding a document
  lm.text_corpus_task.objective = 'prefix_lm'               # or 'span_corruption'

gin calls it once per use of the macro, so it is idempotent: the same arguments give the same
registered task; other arguments under a taken name are one line. Files are checked at once.
Registered with gin at the entry point (prompt_tuning.cli.gin_runner) under the module name `lm`.
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

from prompt_tuning.data import task as task_lib
from prompt_tuning.data.corpus import CorpusTask, FileSource, TfdsSource
from prompt_tuning.data.objectives import Objective
from prompt_tuning.data.task import DataError
from prompt_tuning.data.vocab import SentencePieceVocabulary, default_vocabulary


class _Vocabulary:
  """The task's vocabulary, loaded on first use: a SentencePiece file, else the default (VOCABULARY_PATH)."""

  def __init__(self, path: str | None, extra_ids: int):
    self.path, self.extra_ids, self._loaded = path, extra_ids, None

  def __call__(self):
    if self.path is None:
      return default_vocabulary()
    if self._loaded is None:
      self._loaded = SentencePieceVocabulary(self.path, self.extra_ids)
    return self._loaded


def _paths(value: str | Sequence[str], arg: str, caller: str) -> tuple[str, ...]:
  values = [value] if isinstance(value, (str, os.PathLike)) else list(value or [])
  if not values:
    raise ValueError(f"{caller}: {arg} must name at least one .txt or .jsonl file")
  out = []
  for path in map(os.fspath, values):
    path = path if "://" in path else os.path.abspath(os.path.expanduser(path))
    ext = os.path.splitext(path)[1].lower()
    if ext not in (".txt", ".jsonl"):
      raise DataError(f"{caller}: {arg} {path}: a text corpus reads .txt (one document a line) or .jsonl files")
    if "://" in path:
      from etils import epath

      found = epath.Path(path).is_file()
    else:
      found = os.path.isfile(path)
    if not found:
      raise DataError(f"{caller}: {arg} file not found: {path}")
    out.append(path)
  return tuple(out)


def _register(caller: str, spec: dict[str, Any], build) -> str:
  name = spec["name"]
  try:
    existing = task_lib.get_task(name)
  except KeyError:
    existing = None
  if existing is not None:
    old = getattr(existing, "spec", None)
    if not isinstance(existing, CorpusTask) or old is None:
      raise ValueError(f"{caller}: task name {name!r} is already taken by {existing!r}; choose another name")
    if old != spec:
      diff = ", ".join(f"{k}={spec[k]!r} (registered: {old.get(k)!r})" for k in spec if old.get(k) != spec[k])
      raise ValueError(
        f"{caller}: task {name!r} is already registered with other arguments: {diff}; choose another name"
      )
    return name
  task = build()
  task.spec = spec
  task_lib.register_task(task)
  return name


def _objective(caller: str, objective: str, noise_density: float, mean_noise_span_length: float) -> Objective:
  try:
    return Objective(objective, noise_density, mean_noise_span_length)
  except ValueError as e:
    raise ValueError(f"{caller}: {e}") from None


def _lengths(feature_lengths: Mapping[str, int] | None) -> tuple | None:
  return None if feature_lengths is None else tuple(sorted((k, int(v)) for k, v in dict(feature_lengths).items()))


def _register_corpus(
  caller: str,
  source_spec: dict[str, Any],
  sources: Mapping[str, Any],
  *,
  objective: Objective,
  feature_lengths: Mapping[str, int] | None,
  vocabulary_path: str | None,
  extra_ids: int,
  eval_examples: int | None,
  shuffle_window: int,
) -> str:
  """Registers (or finds, for the same arguments) the CorpusTask of both factories: `source_spec`
  (name and where the documents come from) plus the shared settings make its spec."""
  name = source_spec["name"]
  spec = dict(
    source_spec,
    objective=objective,
    feature_lengths=_lengths(feature_lengths),
    vocabulary_path=vocabulary_path,
    extra_ids=extra_ids,
    eval_examples=eval_examples,
    shuffle_window=shuffle_window,
  )
  return _register(
    caller,
    spec,
    lambda: CorpusTask(
      name,
      _Vocabulary(vocabulary_path, extra_ids),
      dict(sources),
      objective,
      eval_examples=eval_examples,
      shuffle_window=shuffle_window,
      feature_lengths=feature_lengths,
    ),
  )


def text_corpus_task(
  name: str,
  train_path: str | Sequence[str],
  validation_path: str | Sequence[str],
  field: str = "text",
  objective: str = "prefix_lm",
  feature_lengths: Mapping[str, int] | None = None,
  vocabulary_path: str | None = None,
  extra_ids: int = 100,
  eval_examples: int | None = 1000,
  shuffle_window: int = 10_000,
  noise_density: float = 0.15,
  mean_noise_span_length: float = 3.0,
) -> str:
  """Registers a self-supervised task over text files and returns its name (for MIXTURE_OR_TASK_NAME).

  Args:
    name: the task's registry name.
    train_path / validation_path: a .txt file (one document a line) or .jsonl file (one record a
      line, the document in `field`), or a list of them; local or gs://.
    objective: 'prefix_lm' (LM adaptation) or 'span_corruption' (T5's pre-training).
    feature_lengths: TASK_FEATURE_LENGTHS, which the held-out examples depend on.
    vocabulary_path / extra_ids: a SentencePiece model and its sentinel count; None: the default
      vocabulary (VOCABULARY_PATH, else T5's).
    eval_examples: held-out documents evaluated (the first ones of validation_path).
    shuffle_window: documents shuffled together in the train stream.
    noise_density / mean_noise_span_length: span corruption's (T5: 0.15, 3).
  """
  caller = "lm.text_corpus_task"
  if not isinstance(name, str) or not name.strip():
    raise ValueError(f"{caller}: name must be a non-empty string, got {name!r}")
  splits = {
    "train": _paths(train_path, "train_path", caller),
    "validation": _paths(validation_path, "validation_path", caller),
  }
  sources = {split: FileSource(paths, field) for split, paths in splits.items()}
  return _register_corpus(
    caller,
    {"name": name, "splits": splits, "field": field},
    sources,
    objective=_objective(caller, objective, noise_density, mean_noise_span_length),
    feature_lengths=feature_lengths,
    vocabulary_path=vocabulary_path,
    extra_ids=extra_ids,
    eval_examples=eval_examples,
    shuffle_window=shuffle_window,
  )


def tfds_corpus_task(
  name: str = "c4_en",
  tfds_name: str = "c4/en:3.0.1",
  field: str = "text",
  train_split: str = "train",
  validation_split: str = "validation",
  data_dir: str | None = None,
  objective: str = "prefix_lm",
  feature_lengths: Mapping[str, int] | None = None,
  vocabulary_path: str | None = None,
  extra_ids: int = 100,
  eval_examples: int | None = 1000,
  shuffle_window: int = 10_000,
  noise_density: float = 0.15,
  mean_noise_span_length: float = 3.0,
) -> str:
  """Registers a self-supervised task over a tfds text dataset (default C4, T5's pre-training
  corpus, which you prepare with `tfds build c4/en` or find at TFDS_DATA_DIR) and returns its name.

  Args: as `text_corpus_task`'s, with the tfds dataset, its text field and splits in place of files.
  """
  caller = "lm.tfds_corpus_task"
  sources = {
    "train": TfdsSource(tfds_name, train_split, field, data_dir),
    "validation": TfdsSource(tfds_name, validation_split, field, data_dir),
  }
  return _register_corpus(
    caller,
    {
      "name": name,
      "tfds_name": tfds_name,
      "field": field,
      "splits": (train_split, validation_split),
      "data_dir": data_dir,
    },
    sources,
    objective=_objective(caller, objective, noise_density, mean_noise_span_length),
    feature_lengths=feature_lengths,
    vocabulary_path=vocabulary_path,
    extra_ids=extra_ids,
    eval_examples=eval_examples,
    shuffle_window=shuffle_window,
  )


# What the entry point registers with gin (as prompt_tuning.tasks.lm.*: `lm.text_corpus_task` in gin).
CONFIGURABLES = {"text_corpus_task": text_corpus_task, "tfds_corpus_task": tfds_corpus_task}
