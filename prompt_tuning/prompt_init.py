"""Prompt initializers: factories that turn runtime context into `init_fn(rng, shape)`.

Protocol. An initializer is a *factory*, a plain function with keyword
defaults (gin-configurable). The trainer calls it with runtime context as
keywords and gets back `init_fn(rng, (p, d)) -> array [p, d]`:

  init_fn = factory(embedding=<[vocab, d] table>, tokenize=<str -> list[int]>)

Context keys a factory does not use are ignored. `tokenize` must not append
EOS: the ids it returns are averaged or embedded as they are. Files and
tokenizations are read when the factory is called, so errors surface before
training starts; `init_fn` itself may run under jit with a traced rng. Every
`init_fn` checks the requested shape against what it produces and raises one
ValueError naming the initializer and both shapes.

`from_checkpoint` reads one variable of a native, t5x or train-state checkpoint
through checkpoints/variables.py (its docstring lists the layouts).
"""

from __future__ import annotations

import io
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from etils import epath

from prompt_tuning.checkpoints.variables import DEFAULT_VARIABLE, read_checkpoint_variable

Array = Any  # np.ndarray | jax.Array
InitFn = Callable[[jax.Array, tuple[int, ...]], Array]
Tokenize = Callable[[str], Sequence[int]]


def _check_shape(name: str, shape: Sequence[int], produced: Sequence[int], hint: str = "") -> None:
  """One ValueError when the requested prompt shape is not what `name` produces."""
  shape, produced = tuple(int(s) for s in shape), tuple(int(s) for s in produced)
  if len(shape) != 2 or shape != produced:
    raise ValueError(
      f"prompt initializer {name!r}: expected shape {shape} ([length, embed]) but it produces "
      f"{produced}{'; ' + hint if hint else ''}"
    )


def _width(shape: Sequence[int], d: int) -> tuple[int, int]:
  """What an initializer of embed width d produces for a requested shape: [length, d]."""
  return (int(shape[0]) if len(shape) else 0, int(d))


def _need(name: str, key: str, value: Any) -> Any:
  if value is None:
    raise ValueError(f"prompt initializer {name!r} needs {key}= in its context (the trainer passes it)")
  return value


def _rows(embedding: Array, ids: Sequence[int]) -> np.ndarray:
  """Rows of the embedding table as float32 numpy [len(ids), d]."""
  return np.asarray(embedding[np.asarray(ids, np.int32)], np.float32)


# ----------------------------------------------------------------------------- from the vocabulary


def random_uniform(scale: float = 0.5, *, embedding: Array | None = None, **_) -> InitFn:
  """U[-scale, scale] (Lester et al.'s random init). With an embedding table, its width is checked."""

  def init_fn(rng: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    shape = tuple(shape)
    produced = shape if embedding is None else _width(shape, np.shape(embedding)[1])
    _check_shape("random_uniform", shape, produced)
    return jax.random.uniform(rng, shape, jnp.float32, -scale, scale)

  return init_fn


def sampled_vocab(num_ids: int = 5000, *, embedding: Array | None = None, **_) -> InitFn:
  """Rows sampled from the embeddings of the first `num_ids` ids (the most frequent in
  sentencepiece vocabularies); without replacement unless the prompt is longer than that."""
  table = _need("sampled_vocab", "embedding", embedding)
  population = max(1, min(int(num_ids), np.shape(table)[0]))
  table = jnp.asarray(np.asarray(table[:population], np.float32))

  def init_fn(rng: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    _check_shape(
      "sampled_vocab", shape, _width(shape, table.shape[1]), f"the embedding table is {tuple(np.shape(embedding))}"
    )
    ids = jax.random.choice(rng, population, (shape[0],), replace=shape[0] > population)
    return table[ids]

  return init_fn


def class_labels(
  labels: Sequence[str],
  fallback: Callable[..., InitFn] | str = sampled_vocab,
  *,
  embedding: Array | None = None,
  tokenize: Tokenize | None = None,
  **context,
) -> InitFn:
  """Row i = the mean embedding of label i's sub-tokens; the remaining rows from `fallback`.

  Args:
    labels: the class names (verbalizers), e.g. ['positive', 'negative'].
    fallback: a factory (or its name in PROMPT_INITIALIZERS) for rows past
      the labels; it gets the same context.
  """
  table = _need("class_labels", "embedding", embedding)
  tokenize = _need("class_labels", "tokenize", tokenize)
  if isinstance(labels, str):
    raise ValueError(f"prompt initializer 'class_labels': labels must be a list of strings, got {labels!r}")
  means = []
  for label in labels:
    ids = list(tokenize(label))
    if not ids:
      raise ValueError(f"prompt initializer 'class_labels': label {label!r} tokenizes to no ids")
    means.append(_rows(table, ids).mean(axis=0))
  means = np.stack(means) if means else np.zeros((0, np.shape(table)[1]), np.float32)
  fallback = PROMPT_INITIALIZERS[fallback] if isinstance(fallback, str) else fallback
  rest = fallback(embedding=embedding, tokenize=tokenize, **context)

  def init_fn(rng: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    _check_shape(
      "class_labels", shape, _width(shape, means.shape[1]), f"the embedding table is {tuple(np.shape(table))}"
    )
    if len(means) >= shape[0]:
      # As the reference (prompts.from_embedded_list): a prompt shorter than the label list starts
      # from the first labels (Figure 3(a)'s 1-token prompts on 2-label tasks), with a warning.
      if len(means) > shape[0]:
        logging.warning(
          "prompt initializer 'class_labels': a prompt of length %d holds the first %d of %d labels; %s skipped",
          shape[0],
          shape[0],
          len(means),
          list(labels[shape[0] :]),
        )
      return jnp.asarray(means[: shape[0]])
    return jnp.concatenate([jnp.asarray(means), jnp.asarray(rest(rng, (shape[0] - len(means), shape[1])))])

  return init_fn


def from_string(text: str, *, embedding: Array | None = None, tokenize: Tokenize | None = None, **_) -> InitFn:
  """The embeddings of `text`'s tokens.

  A text shorter than the prompt is repeated (its ids tiled: t0 t1 t2 t0 t1 ...)
  so every row starts from a real token embedding; a longer one is truncated,
  with a warning.
  """
  table = _need("from_string", "embedding", embedding)
  ids = list(_need("from_string", "tokenize", tokenize)(text))
  if not ids:
    raise ValueError(f"prompt initializer 'from_string': text {text!r} tokenizes to no ids")
  rows = _rows(table, ids)

  def init_fn(rng: jax.Array, shape: tuple[int, ...]) -> np.ndarray:
    del rng
    _check_shape("from_string", shape, _width(shape, rows.shape[1]), f"the embedding table is {tuple(np.shape(table))}")
    if len(ids) > shape[0]:
      logging.warning(
        "prompt initializer 'from_string': %d tokens of %r truncated to the prompt length %d", len(ids), text, shape[0]
      )
    return rows[np.arange(shape[0]) % len(ids)]

  return init_fn


# ----------------------------------------------------------------------------- from files


def _from_array(name: str, value: np.ndarray, source: str) -> InitFn:
  def init_fn(rng: jax.Array, shape: tuple[int, ...]) -> np.ndarray:
    del rng
    _check_shape(name, shape, value.shape, f"read from {source}")
    return value

  return init_fn


def from_npy(path: str, **_) -> InitFn:
  """A [p, d] array saved with np.save (local or gs:// path)."""
  file = epath.Path(path)
  if not path or not file.exists():
    raise ValueError(f"prompt initializer 'from_npy': {path!r} does not exist")
  try:
    value = np.load(io.BytesIO(file.read_bytes()), allow_pickle=False)
  except ValueError as e:
    raise ValueError(f"prompt initializer 'from_npy': {path} is not a .npy array ({e})") from None
  return _from_array("from_npy", np.asarray(value, np.float32), path)


def from_checkpoint(path: str, variable: str = DEFAULT_VARIABLE, step: int | None = None, **_) -> InitFn:
  """One [p, d] variable of a native, t5x or train-state checkpoint (checkpoints/variables.py).

  Args:
    path: the checkpoint directory (for t5x also a checkpoint_<step> dir; for
      train states also a <dir>/<step> dir).
    variable: the parameter path, e.g. 'prompt/prompt' or 'token_embedder/embedding'.
    step: t5x and train-state checkpoints: the step to read; the latest when None.
  """
  value = read_checkpoint_variable(path, variable, step)
  where = f"{path}:{variable}" + ("" if step is None else f"@{step}")
  return _from_array("from_checkpoint", np.asarray(value, np.float32), where)


PROMPT_INITIALIZERS: dict[str, Callable[..., InitFn]] = {
  "random_uniform": random_uniform,
  "sampled_vocab": sampled_vocab,
  "class_labels": class_labels,
  "from_string": from_string,
  "from_npy": from_npy,
  "from_checkpoint": from_checkpoint,
}
