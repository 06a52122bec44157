"""Reading one variable (e.g. a prompt) out of a checkpoint, for prompt initialization.

Only the requested array is read, never the whole model. Layouts:
  native       <dir>/t5_config.json + <dir>/params/ (orbax); see native.py.
  t5x          checkpoint_<step>/ (msgpack + zarr, or orbax state/) or its parent; see t5x.py.
  train state  the trainer's orbax CheckpointManager directory (the contract, train_state.py):
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

from typing import Any, Mapping, Sequence

import jax
import numpy as np
from etils import epath

from prompt_tuning.checkpoints import t5x
from prompt_tuning.checkpoints.structure import CheckpointError
from prompt_tuning.checkpoints.train_state import PARAMS_KEY, STATE_ITEM
from prompt_tuning.errors import first_line
from prompt_tuning.param_tree import flatten

DEFAULT_VARIABLE = "prompt/prompt"
_ALIASES = {DEFAULT_VARIABLE: ("encoder/prompt/prompt",)}  # reference prompt-tuning's t5x path


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
  if root.name.isdigit() and (root / STATE_ITEM).is_dir():  # <dir>/<step> of a train state
    if step is not None and step != int(root.name):
      raise CheckpointError(f"{path}: is the directory of step {root.name}, not step={step}")
    return _read_train_state(root.parent, int(root.name), candidates, variable)
  if root.is_dir() and any(c.name.isdigit() and (c / STATE_ITEM).is_dir() for c in root.iterdir()):
    return _read_train_state(root, step, candidates, variable)
  return _read_t5x(root, step, candidates, variable)


def _orbax_keys(item_dir: epath.Path) -> list[tuple[str, ...]]:
  """The key paths of an orbax PyTree item, from its metadata (no array is opened)."""
  from flax import traverse_util

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


def _read_orbax(
  item_dir: epath.Path, prefix: tuple[str, ...], candidates: Sequence[str], variable: str, source: str
) -> np.ndarray:
  """One array of an orbax PyTree item; `prefix` keys (e.g. ('target',)) are not part of variable names."""
  if not item_dir.is_dir():
    raise CheckpointError(f"{source}: no {item_dir.name}/ directory; the checkpoint is incomplete")
  available = {"/".join(k[len(prefix) :]): k for k in _orbax_keys(item_dir) if k[: len(prefix)] == prefix}
  keys = _pick(available, candidates, variable, source)
  item, _ = _partial_item(keys)
  try:
    restored = t5x.restore_numpy(item_dir, item)
  except Exception as e:
    raise CheckpointError(f"{source}: cannot restore {'/'.join(keys)} ({first_line(e, typed=True)})") from None
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
    available = {"/".join(k[1:]): k for k in _orbax_keys(step_dir / STATE_ITEM) if k[:1] == (PARAMS_KEY,)}
    # 'params/prompt/prompt' spelled out also works.
    candidates = [n[len(PARAMS_KEY) + 1 :] if n.startswith(PARAMS_KEY + "/") else n for n in candidates]
    keys = _pick(available, candidates, variable, source)
    item, restore_args = _partial_item(keys)
    try:
      restored = manager.restore(
        step,
        args=ocp.args.Composite(
          **{STATE_ITEM: ocp.args.PyTreeRestore(item=item, restore_args=restore_args, partial_restore=True)}
        ),
      )
    except Exception as e:
      raise CheckpointError(f"{source}: cannot restore {'/'.join(keys)} ({first_line(e, typed=True)})") from None
    return _leaf(restored[STATE_ITEM], keys)
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
    raise CheckpointError(
      f"{source}: cannot read {variable!r} from its zarr array ({first_line(e, typed=True)})"
    ) from None
