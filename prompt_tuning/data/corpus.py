"""Plain-text corpora as tasks for continued pre-training (LM adaptation, the paper's §3.2).

A `CorpusTask` reads documents (lines of .txt files, a field of .jsonl records, or a tfds dataset
such as `c4/en`), tokenizes them and turns each into one example with a self-supervised
objective (data/objectives.py: prefix LM, span corruption). The train split streams: documents
are never all in memory, so C4's 365M documents train as a 100-line file does.

The train stream, given N documents, a seed and a shuffle window W:

  stream[i] = window_perm(seed, epoch, w)[j - w*W] + w*W,   epoch = i // N, j = i % N, w = j // W

(each window of W consecutive documents is read in order and permuted; windows keep their order),
and example i is the objective applied to document stream[i] with randomness from (seed, i), so
every epoch splits a document anew. `position` = examples consumed: a `CorpusIterator` built with
`start_position=position` reopens the source at the window holding it and continues bit-exactly,
exactly as `BatchIterator`'s position does. Other splits (evaluation) are the first
`eval_examples` documents, each with the objective at a fixed seed, as text examples that also
carry their token ids (data/features.py keeps them).
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np

from prompt_tuning.data import features as features_lib
from prompt_tuning.data.objectives import Objective
from prompt_tuning.data.pipeline import Batch
from prompt_tuning.data.task import DataError, Example, Vocabulary, _read_text
from prompt_tuning.errors import NotFoundError

PREFIX_LM = Objective("prefix_lm")
EVAL_SEED = 0x5EED  # the objective's seed for evaluation splits: the same held-out examples every time


class DocumentSource:
  """Documents of one split, in a fixed order, readable from any index."""

  def __len__(self) -> int:
    raise NotImplementedError

  def read(self, start: int) -> Iterator[str]:
    """Documents start, start + 1, ... to the end."""
    raise NotImplementedError


class FileSource(DocumentSource):
  """Lines of .txt files or one field of .jsonl records (local or gs://), blank ones skipped.

  The texts are read once and kept (a few GB of text at most is what files are for; C4 goes
  through `TfdsSource`).
  """

  def __init__(self, paths: str | Sequence[str], field: str = "text"):
    self.paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    if not self.paths:
      raise DataError("a text corpus split needs at least one file")
    self.field = field
    self._docs: list[str] | None = None

  def _load(self) -> list[str]:
    if self._docs is None:
      docs = []
      for path in map(os.fspath, self.paths):
        ext = os.path.splitext(path)[1].lower()
        if ext not in (".txt", ".jsonl"):
          raise DataError(f"{path}: a text corpus reads .txt (one document a line) or .jsonl files, not {ext!r}")
        for line_no, line in enumerate(_read_text(path).split("\n"), 1):
          if not line.strip():
            continue
          if ext == ".txt":
            docs.append(line)
            continue
          try:
            record = json.loads(line)
          except json.JSONDecodeError as e:
            raise DataError(f"{path}:{line_no}: invalid JSON ({e.msg} at column {e.colno})") from None
          if not isinstance(record, dict) or self.field not in record:
            fields = ", ".join(map(str, record)) if isinstance(record, dict) else type(record).__name__
            raise DataError(f"{path}:{line_no}: no field {self.field!r} (record fields: {fields})")
          if str(record[self.field]).strip():
            docs.append(str(record[self.field]))
      if not docs:
        raise DataError(f"{', '.join(map(os.fspath, self.paths))}: no documents (every line is blank)")
      self._docs = docs
    return self._docs

  def __len__(self) -> int:
    return len(self._load())

  def read(self, start: int) -> Iterator[str]:
    docs = self._load()
    for i in range(start, len(docs)):
      yield docs[i]


class TfdsSource(DocumentSource):
  """The `field` of a tfds dataset's split (e.g. c4/en's 'text'), in the dataset's order.

  Reading from index `start` asks tfds for `split[start:]`, so a resumed run skips nothing
  by reading it.
  """

  def __init__(self, name: str, split: str, field: str = "text", data_dir: str | None = None):
    self.name, self.split, self.field, self.data_dir = name, split, field, data_dir
    self._size: int | None = None

  def __len__(self) -> int:
    if self._size is None:
      import tensorflow_datasets as tfds  # TensorFlow: only here

      builder = tfds.builder(self.name, data_dir=self.data_dir)
      self._size = int(builder.info.splits[self.split].num_examples)
    return self._size

  def read(self, start: int) -> Iterator[str]:
    from prompt_tuning.data.tfds_task import tfds_records

    for record in tfds_records(self.name, f"{self.split}[{start}:]", self.data_dir):
      yield str(record[self.field])


class CorpusTask:
  """A `Task` of self-supervised examples over documents.

  Args:
    name: registry name.
    vocabulary: a vocabulary object or a zero-argument callable giving it (looked up late, so
      VOCABULARY_PATH applies).
    splits: split name -> `DocumentSource`.
    objective: an `Objective` (prefix LM by default).
    eval_examples: documents read from a split other than train (None: all of them).
    shuffle_window: W, documents permuted together in the train stream.
    feature_lengths: {'inputs': n, 'targets': m}, for the evaluation examples (the train stream
      takes the run's); None: the first train iterator's.
  """

  metrics = ("accuracy",)  # exact match of a decoded continuation: a sanity number, not the point
  candidates = None

  def __init__(
    self,
    name: str,
    vocabulary: Vocabulary | Callable[[], Vocabulary],
    splits: Mapping[str, DocumentSource],
    objective: Objective = PREFIX_LM,
    eval_examples: int | None = 1000,
    shuffle_window: int = 10_000,
    feature_lengths: Mapping[str, int] | None = None,
  ):
    if shuffle_window < 1 or (eval_examples is not None and eval_examples < 1):
      raise ValueError(f"shuffle_window and eval_examples must be >= 1, got {shuffle_window}, {eval_examples}")
    self.name, self._vocabulary, self._sources = name, vocabulary, dict(splits)
    self.objective, self.eval_examples, self.shuffle_window = objective, eval_examples, int(shuffle_window)
    self.feature_lengths = None if feature_lengths is None else features_lib.check_feature_lengths(feature_lengths)

  def __repr__(self) -> str:
    return f"CorpusTask({self.name!r}, {self.objective.name}, splits={self.splits})"

  @property
  def vocabulary(self) -> Vocabulary:
    return self._vocabulary() if callable(self._vocabulary) else self._vocabulary

  @property
  def splits(self) -> list[str]:
    return list(self._sources)

  def source(self, split: str) -> DocumentSource:
    if split not in self._sources:
      raise NotFoundError(f"task {self.name} has no split {split!r}; splits: {', '.join(self.splits)}")
    return self._sources[split]

  def segment_length(self, feature_lengths: Mapping[str, int]) -> int:
    """Raw tokens per example; one line if the lengths or the vocabulary's sentinels do not fit."""
    lengths = features_lib.check_feature_lengths(feature_lengths)
    self.objective.check_vocabulary(lengths, getattr(self.vocabulary, "extra_ids", None))
    return self.objective.segment_length(lengths)

  def make_example(self, tokens: Sequence[int], seed: Sequence[int], segment_length: int) -> Example:
    """One document's tokens -> {'inputs_ids', 'targets_ids'} (no EOS) by the objective, randomness
    from `seed`."""
    rng = np.random.default_rng(np.random.SeedSequence(list(seed)))
    inputs, targets = self.objective(tokens, rng, segment_length, self.vocabulary.vocab_size)
    return {"inputs_ids": inputs, "targets_ids": targets}

  def examples(self, split: str, feature_lengths: Mapping[str, int] | None = None) -> Iterator[Example]:
    """Held-out examples: the first `eval_examples` documents of `split`, each with the objective at
    a fixed seed; text (decoded) plus the ids, which data/features.py uses as they are."""
    lengths = feature_lengths or self.feature_lengths
    if lengths is None:
      raise ValueError(f"task {self.name}: its examples depend on the feature lengths; pass feature_lengths")
    vocab, segment = self.vocabulary, self.segment_length(lengths)
    for i, text in enumerate(self.source(split).read(0)):
      if self.eval_examples is not None and i >= self.eval_examples:
        return
      ex = self.make_example(vocab.encode(text), (EVAL_SEED, i), segment)
      yield {"inputs": vocab.decode(ex["inputs_ids"]), "targets": vocab.decode(ex["targets_ids"]), "idx": i, **ex}

  def score(self, records: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    from prompt_tuning.data.metrics import compute_metrics

    return compute_metrics(self.metrics, [r["example"]["targets"] for r in records], [r["prediction"] for r in records])

  def batch_iterator(
    self, split: str, feature_lengths: Mapping[str, int], batch_size: int, **kwargs
  ) -> "CorpusIterator":
    """The train stream (see the module docstring); kwargs as `BatchIterator`'s."""
    return CorpusIterator(self, split, feature_lengths, batch_size, **kwargs)


class CorpusIterator:
  """`BatchIterator`'s interface over a streamed `CorpusTask` split (module docstring: the order).

  Args: as `BatchIterator`'s; `repeat` must be True, `task_ids` None (a corpus is one task) and
  `length_buckets` None (each process makes only its own rows, so it cannot see the batch's longest).
  """

  def __init__(
    self,
    task: CorpusTask,
    split: str,
    feature_lengths: Mapping[str, int],
    batch_size: int,
    *,
    shuffle: bool,
    seed: int,
    repeat: bool = True,
    drop_remainder: bool = True,
    start_position: int = 0,
    process_index: int = 0,
    process_count: int = 1,
    counter: features_lib.TruncationCounter | None = None,
    task_ids: Mapping[str, int] | None = None,
    length_buckets: Any = None,
    packing: Any = None,
  ):
    del drop_remainder  # the stream never ends
    if not repeat or task_ids is not None:
      raise ValueError(f"task {task.name}: a text corpus streams for training only (repeat, one task)")
    if length_buckets is not None:
      raise ValueError(f"task {task.name}: LENGTH_BUCKETS does not apply to a streamed text corpus; leave it None")
    if packing is not None:
      raise ValueError(f"task {task.name}: PACKING does not apply to a streamed text corpus; leave it False")
    if batch_size < 1 or batch_size % process_count or not 0 <= process_index < process_count:
      raise ValueError(f"batch_size {batch_size} must be >= 1 and divisible by process_count {process_count}")
    if seed < 0 or start_position < 0:
      raise ValueError(f"seed and start_position must be >= 0, got {seed}, {start_position}")
    self.task, self.split = task, split
    self.feature_lengths = features_lib.check_feature_lengths(feature_lengths)
    task.feature_lengths = task.feature_lengths or dict(self.feature_lengths)
    self.segment_length = task.segment_length(self.feature_lengths)  # a bad length fails here, in one line
    if task.objective.name == "prefix_lm" and self.feature_lengths["targets"] < self.feature_lengths["inputs"]:
      logging.warning(
        "task %s: prefix-LM continuations run to %d tokens; targets length %d cuts the longer ones",
        task.name,
        self.segment_length - 1,
        self.feature_lengths["targets"] - 1,
      )
    self.batch_size, self.shuffle, self.seed = batch_size, shuffle, int(seed)
    self.local_batch_size = batch_size // process_count
    self.process_index = process_index
    self.truncation = counter if counter is not None else features_lib.TruncationCounter()
    self._source = task.source(split)
    self.num_examples = len(self._source)  # documents per epoch
    self._position = int(start_position)
    self._window: tuple[int, int] | None = None  # (epoch, window index) of _docs
    self._docs: list[str] = []
    self._reader: Iterator[str] | None = None
    self._reader_at = 0  # the index of the document _reader yields next

  @property
  def position(self) -> int:
    return self._position

  num_batches = None  # endless

  def task_counts(self) -> dict[str, int]:
    return {}

  def _window_docs(self, epoch: int, window: int) -> list[str]:
    """The documents of `window` in stream order (permuted from (seed, epoch, window) when shuffling)."""
    if self._window != (epoch, window):
      start = window * self.task.shuffle_window
      size = min(self.task.shuffle_window, self.num_examples - start)
      if self._reader is None or self._reader_at != start:  # resuming, or a new epoch: reopen there
        self._reader, self._reader_at = self._source.read(start), start
      docs = [next(self._reader) for _ in range(size)]
      self._reader_at += size
      if self.shuffle:
        order = np.random.default_rng(np.random.SeedSequence([self.seed, epoch, window])).permutation(size)
        docs = [docs[k] for k in order]
      self._window, self._docs = (epoch, window), docs
    return self._docs

  def document(self, i: int) -> str:
    """The text of stream example i."""
    epoch, j = divmod(i, self.num_examples)
    window, k = divmod(j, self.task.shuffle_window)
    return self._window_docs(epoch, window)[k]

  def __iter__(self) -> CorpusIterator:
    return self

  def __next__(self) -> Batch:
    lo = self._position + self.process_index * self.local_batch_size
    indices = range(lo, lo + self.local_batch_size)
    vocab = self.task.vocabulary
    texts = [self.document(i) for i in indices]
    encode_batch = getattr(vocab, "encode_batch", None)  # one SentencePiece call for the batch
    tokens = encode_batch(texts) if encode_batch else [vocab.encode(t) for t in texts]
    rows = [
      {"inputs": "", "targets": "", "idx": i, **self.task.make_example(ids, (self.seed, i), self.segment_length)}
      for i, ids in zip(indices, tokens)
    ]
    self._position += self.batch_size
    encoded = features_lib.tokenize(
      rows, self.task.vocabulary, self.feature_lengths, split=self.split, counter=self.truncation
    )
    arrays = features_lib.make_batch(encoded, self.feature_lengths, self.local_batch_size)
    arrays["mask"] = np.ones(self.local_batch_size, np.int32)
    text = {
      "inputs": [""] * len(rows),
      "targets": [""] * len(rows),
      "idx": [r["idx"] for r in rows],
      "examples": [{"idx": r["idx"]} for r in rows],
    }
    return Batch(arrays, text)
