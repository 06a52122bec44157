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

Checkpoints read by `from_checkpoint`, by layout:
  native       <dir>/t5_config.json + <dir>/params/ (orbax); see checkpoints/native.py.
  t5x          checkpoint_<step>/ (msgpack + zarr, or orbax state/) or its parent;
               only the requested array is read, never the whole model.
  train state  the trainer's orbax CheckpointManager directory (the contract):
                 <dir>/<step>/state/   an orbax PyTree item, saved with
                   ocp.CheckpointManager(dir).save(step, args=ocp.args.Composite(
                       state=ocp.args.StandardSave({'params': trainable, 'step': step, ...})))
               where `params` is the trainable subtree, e.g. {'prompt': {'prompt': [p, d]}};
               other keys (step, optimizer state) are never read. The variable is looked
               up under `params/`; the latest step is used unless step= is given.
The default variable 'prompt/prompt' also matches 'encoder/prompt/prompt', where
the reference (t5x) prompt-tuning code stores its prompt.
"""

from __future__ import annotations

import io
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from etils import epath

from prompt_tuning.checkpoints import t5x
from prompt_tuning.checkpoints.structure import CheckpointError, flatten
from prompt_tuning.errors import first_line

Array = Any  # np.ndarray | jax.Array
InitFn = Callable[[jax.Array, tuple[int, ...]], Array]
Tokenize = Callable[[str], Sequence[int]]

DEFAULT_VARIABLE = "prompt/prompt"
_ALIASES = {DEFAULT_VARIABLE: ("encoder/prompt/prompt",)}  # reference prompt-tuning's t5x path
_STATE_ITEM = "state"  # train-state item name in the trainer's CheckpointManager
_PARAMS_KEY = "params"


def _check_shape(name: str, shape: Sequence[int], produced: Sequence[int], hint: str = "") -> None:
  """One ValueError when the requested prompt shape is not what `name` produces."""
  shape, produced = tuple(int(s) for s in shape), tuple(int(s) for s in produced)
  if len(shape) != 2 or shape != produced:
    raise ValueError(f"prompt initializer {name!r}: expected shape {shape} ([length, embed]) but it produces "
                     f"{produced}{'; ' + hint if hint else ''}")


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
    _check_shape("sampled_vocab", shape, _width(shape, table.shape[1]),
                 f"the embedding table is {tuple(np.shape(embedding))}")
    ids = jax.random.choice(rng, population, (shape[0],), replace=shape[0] > population)
    return table[ids]

  return init_fn


def class_labels(labels: Sequence[str], fallback: Callable[..., InitFn] | str = sampled_vocab, *,
                 embedding: Array | None = None, tokenize: Tokenize | None = None, **context) -> InitFn:
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
    if len(shape) == 2 and len(means) > shape[0]:
      raise ValueError(f"prompt initializer 'class_labels': {len(means)} labels do not fit a prompt of length "
                       f"{shape[0]}")
    _check_shape("class_labels", shape, _width(shape, means.shape[1]),
                 f"the embedding table is {tuple(np.shape(table))}")
    if len(means) == shape[0]:
      return jnp.asarray(means)
    return jnp.concatenate([jnp.asarray(means), jnp.asarray(rest(rng, (shape[0] - len(means), shape[1])))])

  return init_fn


def from_string(text: str, *, embedding: Array | None = None, tokenize: Tokenize | None = None,
                **_) -> InitFn:
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
    _check_shape("from_string", shape, _width(shape, rows.shape[1]),
                 f"the embedding table is {tuple(np.shape(table))}")
    if len(ids) > shape[0]:
      logging.warning("prompt initializer 'from_string': %d tokens of %r truncated to the prompt length %d",
                      len(ids), text, shape[0])
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
  """One [p, d] variable of a native, t5x or train-state checkpoint (see the module docstring).

  Args:
    path: the checkpoint directory (for t5x also a checkpoint_<step> dir; for
      train states also a <dir>/<step> dir).
    variable: the parameter path, e.g. 'prompt/prompt' or 'token_embedder/embedding'.
    step: t5x and train-state checkpoints: the step to read; the latest when None.
  """
  value = read_checkpoint_variable(path, variable, step)
  where = f"{path}:{variable}" + ("" if step is None else f"@{step}")
  return _from_array("from_checkpoint", np.asarray(value, np.float32), where)


def read_checkpoint_variable(path: str, variable: str = DEFAULT_VARIABLE, step: int | None = None) -> np.ndarray:
  """Reads one array of a checkpoint as numpy; CheckpointError (a ValueError) if it is not there."""
  root = epath.Path(path)
  if not path or not root.exists():
    raise CheckpointError(f"{path!r}: checkpoint path does not exist")
  candidates = (variable.strip("/"),) + _ALIASES.get(variable.strip("/"), ())
  if (root / "t5_config.json").exists():
    if step is not None:
      raise CheckpointError(f"{path}: a native checkpoint has no steps; drop step={step}")
    return _read_orbax(root / "params", (), candidates, variable, f"{path} (native)")
  if root.name.isdigit() and (root / _STATE_ITEM).is_dir():  # <dir>/<step> of a train state
    if step is not None and step != int(root.name):
      raise CheckpointError(f"{path}: is the directory of step {root.name}, not step={step}")
    return _read_train_state(root.parent, int(root.name), candidates, variable)
  if root.is_dir() and any(c.name.isdigit() and (c / _STATE_ITEM).is_dir() for c in root.iterdir()):
    return _read_train_state(root, step, candidates, variable)
  return _read_t5x(root, step, candidates, variable)


def _orbax_keys(item_dir: epath.Path) -> list[tuple[str, ...]]:
  """The key paths of an orbax PyTree item, from its metadata (no array is opened)."""
  from flax import traverse_util

  from prompt_tuning.checkpoints import t5x

  return [tuple(map(str, path)) for path in traverse_util.flatten_dict(t5x.orbax_structure(item_dir))]


def _pick(available: Mapping[str, Any], candidates: Sequence[str], variable: str, source: str) -> Any:
  """The first candidate path present in `available`, else one line listing a few that are."""
  for name in candidates:
    if name in available:
      return available[name]
  names = sorted(available, key=lambda n: ("prompt" not in n, n))
  shown = ", ".join(names[:5]) + (f", ... ({len(names)} in all)" if len(names) > 5 else "")
  raise CheckpointError(f"{source}: no variable {variable!r}; available: {shown or 'none'}")


def _partial_item(keys: tuple[str, ...]) -> tuple[dict, dict]:
  """A one-leaf tree for an orbax partial restore, and its numpy RestoreArgs."""
  import orbax.checkpoint as ocp

  item: Any = 0
  for key in reversed(keys):
    item = {key: item}
  return item, jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), item)


def _leaf(tree: Any, keys: tuple[str, ...]) -> np.ndarray:
  for key in keys:
    tree = tree[key]
  return np.asarray(tree)


def _read_orbax(item_dir: epath.Path, prefix: tuple[str, ...], candidates: Sequence[str], variable: str,
                source: str) -> np.ndarray:
  """One array of an orbax PyTree item; `prefix` keys (e.g. ('target',)) are not part of variable names."""
  import orbax.checkpoint as ocp

  if not item_dir.is_dir():
    raise CheckpointError(f"{source}: no {item_dir.name}/ directory; the checkpoint is incomplete")
  available = {"/".join(k[len(prefix):]): k for k in _orbax_keys(item_dir) if k[:len(prefix)] == prefix}
  keys = _pick(available, candidates, variable, source)
  item, restore_args = _partial_item(keys)
  checkpointer = ocp.PyTreeCheckpointer()
  try:
    restored = checkpointer.restore(item_dir, args=ocp.args.PyTreeRestore(item=item, restore_args=restore_args,
                                                                          partial_restore=True))
  except Exception as e:
    raise CheckpointError(f"{source}: cannot restore {'/'.join(keys)} ({first_line(e, typed=True)})") from None
  finally:
    checkpointer.close()
  return _leaf(restored, keys)


def _read_train_state(root: epath.Path, step: int | None, candidates: Sequence[str], variable: str) -> np.ndarray:
  """One array of `params` in the trainer's CheckpointManager directory (module docstring)."""
  import orbax.checkpoint as ocp

  manager = ocp.CheckpointManager(root, options=ocp.CheckpointManagerOptions(create=False))
  try:
    steps = manager.all_steps()
    step = manager.latest_step() if step is None else step
    source = f"{root} (train state, step {step})"
    if step not in steps:
      raise CheckpointError(f"{root}: no step {step} in the train-state checkpoint (steps: {sorted(steps)})")
    step_dir = next((c for c in root.iterdir() if c.name.isdigit() and int(c.name) == step), root / str(step))
    available = {"/".join(k[1:]): k for k in _orbax_keys(step_dir / _STATE_ITEM) if k[:1] == (_PARAMS_KEY,)}
    # 'params/prompt/prompt' spelled out also works.
    candidates = [n[len(_PARAMS_KEY) + 1:] if n.startswith(_PARAMS_KEY + "/") else n for n in candidates]
    keys = _pick(available, candidates, variable, source)
    item, restore_args = _partial_item(keys)
    try:
      restored = manager.restore(step, args=ocp.args.Composite(**{_STATE_ITEM: ocp.args.PyTreeRestore(
          item=item, restore_args=restore_args, partial_restore=True)}))
    except Exception as e:
      raise CheckpointError(f"{source}: cannot restore {'/'.join(keys)} ({first_line(e, typed=True)})") from None
    return _leaf(restored[_STATE_ITEM], keys)
  finally:
    manager.close()


def _read_t5x(root: epath.Path, step: int | None, candidates: Sequence[str], variable: str) -> np.ndarray:
  """One array of a t5x checkpoint's `target`, reading nothing else of size."""
  is_step_dir = (root / "checkpoint").exists() or (root / "state").is_dir()
  if step is not None:
    if is_step_dir and root.name != f"checkpoint_{step}":
      raise CheckpointError(f"{root}: is a single step directory, not checkpoint_{step}")
    root = root if is_step_dir else root / f"checkpoint_{step}"
  step_dir = t5x.find_step_dir(str(root))
  source = f"{step_dir} (t5x)"
  if (step_dir / "state").is_dir():
    keys = _orbax_keys(step_dir / "state")
    prefix = ("optimizer", "target") if any(k[:2] == ("optimizer", "target") for k in keys) else ("target",)
    return _read_orbax(step_dir / "state", prefix, candidates, variable, source)
  from flax import serialization

  try:
    state = serialization.msgpack_restore((step_dir / "checkpoint").read_bytes())
  except Exception as e:
    raise CheckpointError(f"{step_dir}/checkpoint: unreadable t5x msgpack ({first_line(e, typed=True)})") from None
  target = state.get("optimizer", {}).get("target") if isinstance(state.get("optimizer"), Mapping) else None
  target = target if target is not None else state.get("target")
  if not isinstance(target, Mapping):
    raise CheckpointError(f"{source}: no 'optimizer/target' or 'target' in the checkpoint")
  # An inline array, or a tensorstore spec of a zarr array; t5x writes None for params it did not save.
  leaves = {name: value for name, value in flatten(target, is_leaf=t5x.is_ts_spec).items() if value is not None}
  value = _pick(leaves, candidates, variable, source)
  if not isinstance(value, Mapping):
    return np.asarray(value)
  import tensorstore as ts

  try:
    return np.asarray(ts.open(t5x.resolve_ts_spec(value, str(step_dir)), open=True).result().read().result())
  except Exception as e:
    raise CheckpointError(f"{source}: cannot read {variable!r} from its zarr array "
                          f"({first_line(e, typed=True)})") from None


PROMPT_INITIALIZERS: dict[str, Callable[..., InitFn]] = {
    "random_uniform": random_uniform,
    "sampled_vocab": sampled_vocab,
    "class_labels": class_labels,
    "from_string": from_string,
    "from_npy": from_npy,
    "from_checkpoint": from_checkpoint,
}
