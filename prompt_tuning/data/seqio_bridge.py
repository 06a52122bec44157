"""Our tasks as seqio tasks: the data layer's door to seqio (and so to TensorFlow).

Nothing in the core imports this module; import it where seqio is wanted, e.g.
to feed a registered task to t5x or to seqio's own tools:

  from prompt_tuning.data import seqio_bridge
  seqio_bridge.register_all_with_seqio()          # every task (and mixture) we know
  ds = seqio.get_mixture_or_task("quickstart_sentiment").get_dataset(
      {"inputs": 32, "targets": 4}, split="validation", shuffle=False)

A bridged task reads its text through `task.examples(split)` and then runs the
standard seqio pipeline: tokenize -> CacheDatasetPlaceholder ->
append_eos_after_trim, with seqio's SentencePieceVocabulary over the same model
file and number of extra ids, so its token ids equal our own pipeline's
(prompt_tuning.data.features).

Metrics: the seqio metric_fn wraps `task.score`, building each record from the
target and prediction text alone ({'example': {'targets': t}, 'prediction': p}).
Metrics that read other example fields (all gold answers, question groups,
per-example candidates) are only exact through our own evaluator
(prompt_tuning.evaluation); through seqio they see the targets only.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

import seqio
import tensorflow as tf

from prompt_tuning.data import task as task_lib

DEFAULT_EXTRA_IDS = 100
TEXT_FEATURES = ("inputs", "targets")


def _text(value: Any) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def seqio_vocabulary(
  task: Any, vocabulary_path: str | None = None, extra_ids: int | None = None
) -> seqio.SentencePieceVocabulary:
  """seqio's vocabulary for `task`: its SentencePiece model and extra ids, unless overridden.

  With `vocabulary_path` the task's own vocabulary is not touched (nor loaded);
  extra_ids then defaults to T5's 100.
  """
  if vocabulary_path is None:
    vocabulary = task.vocabulary
    vocabulary_path = getattr(vocabulary, "path", None)
    if not vocabulary_path:
      raise ValueError(
        f"task {task.name}: its vocabulary {vocabulary!r} names no SentencePiece model file; pass vocabulary_path"
      )
    if extra_ids is None:
      extra_ids = getattr(vocabulary, "extra_ids", 0)
  return seqio.SentencePieceVocabulary(vocabulary_path, extra_ids=DEFAULT_EXTRA_IDS if extra_ids is None else extra_ids)


def _dataset_fn(task: Any):
  """A seqio dataset_fn: the text (inputs, targets) of `task.examples(split)`, in order, as tf.string."""
  signature = {k: tf.TensorSpec(shape=(), dtype=tf.string) for k in TEXT_FEATURES}

  def dataset_fn(split: str, shuffle_files: bool = False, seed: int | None = None) -> tf.data.Dataset:
    del shuffle_files, seed  # one ordered source; seqio shuffles examples afterwards if asked
    if split not in task.splits:
      raise ValueError(f"task {task.name} has no split {split!r}; splits: {', '.join(task.splits)}")

    def generate():
      for example in task.examples(split):
        yield {k: _text(example[k]) for k in TEXT_FEATURES}

    return tf.data.Dataset.from_generator(generate, output_signature=signature)

  return dataset_fn


def _metric_fn(task: Any):
  """seqio metric_fn(targets, predictions) -> task.score over text-only records."""

  def metric_fn(targets: Sequence[Any], predictions: Sequence[Any]) -> dict[str, float]:
    records = [{"example": {"targets": _text(t)}, "prediction": _text(p)} for t, p in zip(targets, predictions)]
    return task.score(records)

  metric_fn.__name__ = f"{task.name}_score"
  return metric_fn


def as_seqio_task(task: Any, vocabulary_path: str | None = None, *, extra_ids: int | None = None) -> seqio.Task:
  """Registers `task` (anything with the Task protocol) in seqio.TaskRegistry under its own name.

  A seqio task of that name registered earlier is replaced, so this is safe to
  call again (e.g. after the task was re-registered with other files).

  Args:
    task: one of our tasks.
    vocabulary_path: a SentencePiece model to use instead of the task's own
      (with `extra_ids`, default 100).

  Returns:
    The registered seqio.Task.
  """
  vocabulary = seqio_vocabulary(task, vocabulary_path, extra_ids)
  output_features = {k: seqio.Feature(vocabulary=vocabulary, add_eos=True, required=True) for k in TEXT_FEATURES}
  seqio.TaskRegistry.remove(task.name)
  return seqio.TaskRegistry.add(
    task.name,
    source=seqio.FunctionDataSource(_dataset_fn(task), splits=list(task.splits)),
    preprocessors=[
      seqio.preprocessors.tokenize,
      seqio.CacheDatasetPlaceholder(),
      seqio.preprocessors.append_eos_after_trim,
    ],
    output_features=output_features,
    metric_fns=[_metric_fn(task)],
  )


# ---------------------------------------------------------------- mixtures


def _examples_rate(task: Any, cap: int | None, split: str = "train"):
  """A seqio rate function: `task`'s number of `split` examples, at most `cap` (counted on first use)."""
  counted: list[int] = []

  def rate(_: Any) -> float:
    if not counted:
      counted.append(sum(1 for _ in task.examples(split)) if split in task.splits else 0)
    return float(counted[0] if cap is None else min(counted[0], cap))

  return rate


def _mixture_members(obj: Any) -> list[tuple[Any, Any]] | None:
  """[(task, rate)] of a mixture (an object with a `tasks` collection), or None for a task.

  Members may be tasks, task names, or (task or name, rate) pairs; a mapping is
  read as {task or name: rate}. Without rates, a mixture with a `cap` attribute
  (prompt_tuning.data.mixture.Mixture: examples-proportional, capped) gets seqio
  rate functions counting each task's train examples; any other gets 1.0.
  """
  tasks = getattr(obj, "tasks", None)
  if tasks is None or callable(tasks) or isinstance(tasks, str):
    return None
  items = list(tasks.items()) if isinstance(tasks, Mapping) else list(tasks)
  proportional = hasattr(obj, "cap")
  out = []
  for item in items:
    member, rate = item if isinstance(item, tuple) and len(item) == 2 else (item, None)
    member = task_lib.get_task(member) if isinstance(member, str) else member
    if rate is None:
      rate = _examples_rate(member, obj.cap) if proportional else 1.0
    out.append((member, rate if callable(rate) else float(rate)))
  return out


def as_seqio_mixture(
  mixture: Any, vocabulary_path: str | None = None, *, extra_ids: int | None = None
) -> seqio.Mixture:
  """Registers `mixture`'s member tasks and then the mixture (same rates) with seqio."""
  members = _mixture_members(mixture)
  if members is None:
    raise ValueError(f"{mixture!r} is not a mixture (it has no `tasks`)")
  for member, _ in members:
    register(member, vocabulary_path, extra_ids=extra_ids)
  seqio.MixtureRegistry.remove(mixture.name)
  return seqio.MixtureRegistry.add(mixture.name, [(member.name, rate) for member, rate in members])


def register(obj: Any, vocabulary_path: str | None = None, *, extra_ids: int | None = None):
  """as_seqio_mixture for a mixture, as_seqio_task for a task."""
  if _mixture_members(obj) is not None:
    return as_seqio_mixture(obj, vocabulary_path, extra_ids=extra_ids)
  return as_seqio_task(obj, vocabulary_path, extra_ids=extra_ids)


def register_all_with_seqio(names: Iterable[str] | None = None, vocabulary_path: str | None = None) -> list[str]:
  """Registers the named tasks and mixtures (None: every one registered so far) with seqio; returns the names.

  None covers the built-in tasks once their modules are imported (prompt_tuning.tasks,
  prompt_tuning.data.quickstart; prompt_tuning.task_registry.load_builtins() imports both).
  Each task's vocabulary is loaded (for its model path and extra ids) unless
  `vocabulary_path` is given.
  """
  names = task_lib.registered_names() if names is None else list(names)
  for name in names:
    register(task_lib.get_task(name), vocabulary_path)
  return names
