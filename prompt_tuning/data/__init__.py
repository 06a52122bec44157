"""Data layer without TensorFlow: vocabulary, tasks, seqio-style features, batching, metrics.

Nothing here imports tensorflow or seqio; seqio-backed tasks live in their own
module behind the same `Task` protocol. Tasks register on importing their module
(`prompt_tuning.data.quickstart`, `prompt_tuning.tasks`); nothing here imports a task
module: `prompt_tuning.task_registry` loads the built-ins and resolves names.
"""

from __future__ import annotations

from prompt_tuning.data.features import BATCH_KEYS, TruncationCounter, make_batch, tokenize, trim_with_eos
from prompt_tuning.data.metrics import METRICS, accuracy, compute_metrics, exact_match, macro_f1
from prompt_tuning.data.pipeline import Batch, BatchIterator, epoch_permutation
from prompt_tuning.data.task import (
  DataError,
  Example,
  Task,
  TextTask,
  Vocabulary,
  get_task,
  read_records,
  register_task,
)
from prompt_tuning.data.vocab import SentencePieceVocabulary

__all__ = [
  "BATCH_KEYS",
  "Batch",
  "BatchIterator",
  "DataError",
  "Example",
  "METRICS",
  "SentencePieceVocabulary",
  "Task",
  "TextTask",
  "TruncationCounter",
  "Vocabulary",
  "accuracy",
  "compute_metrics",
  "epoch_permutation",
  "exact_match",
  "get_task",
  "macro_f1",
  "make_batch",
  "read_records",
  "register_task",
  "tokenize",
  "trim_with_eos",
]
