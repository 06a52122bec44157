"""Reading the model parameters out of a t5x checkpoint, without t5x.

Two on-disk layouts exist, both under a step directory `checkpoint_<step>`:

* legacy: `checkpoint_<step>/checkpoint` is a flax msgpack file holding the
  train state `{'optimizer': {'target': params, 'state': ...}, 'version': ...}`
  (or `{'target': ..., 'state': ...}`). Small arrays are inline numpy arrays;
  large ones are tensorstore spec dicts pointing at zarr arrays in sibling
  directories named like `target.encoder.layers_0.attention.query.kernel`.
* orbax: `checkpoint_<step>/state/` is an orbax PyTree checkpoint of the same
  train state.

Only the parameters (`target`) are returned. Optimizer state stored apart is
never opened: zarr arrays outside `target` are skipped, and the orbax path
restores `target` alone with a partial restore.

Paths may be local or `gs://` (via `etils.epath`; tensorstore reads gs:// with
its gcs driver). Every failure is a one-line `CheckpointError`.
"""

from __future__ import annotations

import copy
import os
import re
from typing import Any, Mapping

import numpy as np
from etils import epath
from flax import traverse_util

from prompt_tuning.checkpoints.structure import CheckpointError
from prompt_tuning.errors import first_line
from prompt_tuning.param_tree import flatten, unflatten

_STEP_DIR = re.compile(r"checkpoint_(\d+)")
_MSGPACK_FILE = "checkpoint"
_ORBAX_DIR = "state"
# kvstore drivers t5x has written; all are re-pointed at the checkpoint's actual location.
_KNOWN_KVSTORES = ("file", "gfile", "gcs")


def find_step_dir(path: str) -> epath.Path:
  """Resolves `path` to one `checkpoint_<step>` directory.

  Accepts the step directory itself, the msgpack file inside it, or a model
  directory holding `checkpoint_<int>` children (the highest step wins).
  """
  root = epath.Path(path)
  if not root.exists():
    raise CheckpointError(f"{path}: t5x checkpoint path does not exist")
  if root.is_file():
    if root.name == _MSGPACK_FILE:
      return root.parent
    raise CheckpointError(f"{path}: is a file, expected a t5x checkpoint_<step> directory")
  if (root / _MSGPACK_FILE).exists() or (root / _ORBAX_DIR).is_dir():
    return root
  steps = []
  for child in root.iterdir():
    match = _STEP_DIR.fullmatch(child.name)  # skips `checkpoint_<n>.tmp-<ts>` leftovers
    if match and child.is_dir():
      steps.append((int(match.group(1)), child))
  if not steps:
    if _STEP_DIR.fullmatch(root.name):
      raise CheckpointError(
        f"{path}: step directory has neither a '{_MSGPACK_FILE}' msgpack file nor an orbax '{_ORBAX_DIR}/' directory"
      )
    raise CheckpointError(f"{path}: no checkpoint_<step> directory found")
  step_dir = max(steps, key=lambda s: s[0])[1]
  if not ((step_dir / _MSGPACK_FILE).exists() or (step_dir / _ORBAX_DIR).is_dir()):
    raise CheckpointError(
      f"{step_dir}: latest step directory has neither a '{_MSGPACK_FILE}' msgpack file "
      f"nor an orbax '{_ORBAX_DIR}/' directory"
    )
  return step_dir


def _find_target(tree: Any, source: str) -> Mapping[str, Any]:
  """The params subtree of a t5x train state: `optimizer/target` or `target`."""
  if isinstance(tree, Mapping):
    optimizer = tree.get("optimizer")
    if isinstance(optimizer, Mapping) and isinstance(optimizer.get("target"), Mapping):
      return optimizer["target"]
    if isinstance(tree.get("target"), Mapping):
      return tree["target"]
    keys = sorted(map(str, tree))
  else:
    keys = [type(tree).__name__]
  raise CheckpointError(
    f"{source}: no 'optimizer/target' or 'target' parameters in the checkpoint (top-level keys: {keys})"
  )


# ----------------------------------------------------------------------------- legacy msgpack + zarr


def is_ts_spec(node: Any) -> bool:
  """A tensorstore spec leaf, e.g. {'driver': 'zarr', 'kvstore': ...}; params never have a 'driver' key."""
  return isinstance(node, Mapping) and isinstance(node.get("driver"), str)


def resolve_ts_spec(spec: Mapping[str, Any], step_dir: str) -> dict[str, Any]:
  """Points a tensorstore spec as t5x stored it at the array's real location.

  t5x stores a relative array name (`target.encoder.layers_0...`) either as
  `kvstore.path` or, in the older tensorstore form, as a top-level `path`
  beside a `{'driver': 'gcs', 'bucket': 't5x-dummy-bucket'}` kvstore. The
  name is re-anchored at `step_dir`, whatever driver was recorded, so that
  checkpoints copied between GCS and local disk still read.

  Args:
    spec: the tensorstore spec dict from the msgpack file.
    step_dir: `gs://bucket/dir/checkpoint_N` or a local `checkpoint_N` path.

  Returns:
    A new spec: gcs kvstore `{bucket, path: dir/checkpoint_N/<name>}` for gs://,
    else file kvstore `{path: <step_dir>/<name>}`; no top-level `path`.
  """
  spec = copy.deepcopy(dict(spec))
  kvstore = spec.get("kvstore")
  if not isinstance(kvstore, Mapping):
    raise CheckpointError(f"{step_dir}: tensorstore spec without a kvstore: {spec}")
  driver = kvstore.get("driver")
  if driver not in _KNOWN_KVSTORES:
    raise CheckpointError(
      f"{step_dir}: unknown tensorstore kvstore driver {driver!r} (expected one of {', '.join(_KNOWN_KVSTORES)})"
    )
  name = kvstore.get("path") or spec.pop("path", None)
  spec.pop("path", None)
  if not name:
    raise CheckpointError(f"{step_dir}: tensorstore spec names no array path: {spec}")
  # Absolute names (a checkpoint written elsewhere) keep only their array directory.
  name = str(name).rstrip("/")
  if name.startswith("/") or "://" in name:
    name = name.rsplit("/", 1)[-1]
  step_dir = str(step_dir).rstrip("/")
  if step_dir.startswith("gs://"):
    bucket, _, prefix = step_dir[len("gs://") :].partition("/")
    spec["kvstore"] = {"driver": "gcs", "bucket": bucket, "path": f"{prefix}/{name}" if prefix else name}
  elif "://" in step_dir:
    raise CheckpointError(f"{step_dir}: cannot read zarr arrays from this filesystem (only local and gs://)")
  else:
    spec["kvstore"] = {"driver": "file", "path": os.path.join(step_dir, name)}
  return spec


def _read_zarr_arrays(specs: Mapping[str, dict[str, Any]], step_dir: str) -> dict[str, np.ndarray]:
  """Reads {param path: resolved spec} concurrently; bfloat16 stays ml_dtypes.bfloat16."""
  import tensorstore as ts  # deferred: only the legacy layout needs it directly

  def fail(param: str, err: BaseException) -> CheckpointError:
    where = str(specs[param]["kvstore"].get("path", "")).rsplit("/", 1)[-1]
    return CheckpointError(f"{step_dir}: cannot read parameter {param} from zarr array {where}: {first_line(err)}")

  opened = {}
  for param, spec in specs.items():
    try:
      opened[param] = ts.open(spec, open=True)
    except Exception as err:  # bad spec JSON fails eagerly
      raise fail(param, err) from err
  reads = {}
  for param, future in opened.items():
    try:
      reads[param] = future.result().read()
    except Exception as err:
      raise fail(param, err) from err
  arrays = {}
  for param, future in reads.items():
    try:
      arrays[param] = np.asarray(future.result())
    except Exception as err:
      raise fail(param, err) from err
  return arrays


def _load_legacy(step_dir: epath.Path) -> dict[str, Any]:
  """Params of a msgpack `checkpoint` file with inline and zarr leaves."""
  from flax import serialization  # deferred: pulls in jax

  msgpack_path = step_dir / _MSGPACK_FILE
  try:
    state = serialization.msgpack_restore(msgpack_path.read_bytes())
  except Exception as err:  # truncated/corrupt: msgpack raises ValueError and friends
    raise CheckpointError(f"{msgpack_path}: unreadable t5x msgpack checkpoint: {first_line(err)}") from err
  target = _find_target(state, str(msgpack_path))

  inline, specs = {}, {}
  for path, value in flatten(target, is_leaf=is_ts_spec).items():
    if is_ts_spec(value):
      specs[path] = resolve_ts_spec(value, str(step_dir))
    elif value is not None:  # t5x writes None for params it did not save
      inline[path] = np.asarray(value)
  inline.update(_read_zarr_arrays(specs, str(step_dir)))
  if not inline:
    raise CheckpointError(f"{msgpack_path}: the checkpoint's target holds no parameters")
  return unflatten(inline)


# ----------------------------------------------------------------------------- orbax


def orbax_structure(state_dir: epath.Path) -> Any:
  """Nested dict of the saved tree's keys, leaves 0; the state's arrays are not opened.

  Reads orbax's `_METADATA` JSON (`{"tree_metadata": {"('target', 'a')":
  {"key_metadata": [{"key": "target"}, {"key": "a"}], ...}}}`); checkpoints
  without it (older orbax) fall back to the handler's metadata, which opens
  every array.
  """
  import json

  import orbax.checkpoint as ocp

  try:
    entries = json.loads((state_dir / "_METADATA").read_text())["tree_metadata"]
    return traverse_util.unflatten_dict(
      {tuple(str(k["key"]) for k in entry["key_metadata"]): 0 for entry in entries.values()}
    )
  except Exception:  # absent or another format: ask orbax
    pass
  handler = ocp.PyTreeCheckpointHandler()
  try:
    metadata = handler.metadata(state_dir)
  except Exception as err:
    raise CheckpointError(f"{state_dir}: unreadable orbax checkpoint metadata: {first_line(err)}") from err
  finally:
    handler.close()
  return getattr(metadata, "tree", metadata)  # TreeMetadata -> nested dict


def restore_numpy(item_dir: epath.Path, item: Any) -> Any:
  """An orbax PyTree item's leaves named by `item` (a tree of placeholders), as host numpy.

  A partial restore reads only those arrays; numpy needs no device mesh, whatever sharding
  the arrays were saved with. Raises orbax's own errors (callers say which checkpoint).
  """
  import jax
  import orbax.checkpoint as ocp

  restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), item)
  checkpointer = ocp.PyTreeCheckpointer()
  try:
    return checkpointer.restore(
      item_dir, args=ocp.args.PyTreeRestore(item=item, restore_args=restore_args, partial_restore=True)
    )
  finally:
    checkpointer.close()


def _load_orbax(state_dir: epath.Path) -> dict[str, Any]:
  """Params of an orbax PyTree checkpoint, restored as host numpy arrays."""
  structure = orbax_structure(state_dir)
  target = _find_target(structure, str(state_dir))
  # Same nesting as on disk, pruned to the params: a partial restore reads only them.
  under_optimizer = isinstance(structure.get("optimizer"), Mapping) and structure["optimizer"].get("target") is target
  item = {"optimizer": {"target": target}} if under_optimizer else {"target": target}
  try:
    restored = restore_numpy(state_dir, item)
  except Exception as err:
    raise CheckpointError(f"{state_dir}: cannot restore orbax checkpoint parameters: {first_line(err)}") from err
  params = flatten(_find_target(restored, str(state_dir)))
  return unflatten({path: np.asarray(value) for path, value in params.items()})


# ----------------------------------------------------------------------------- entry point


def load_t5x_params(path: str) -> dict[str, Any]:
  """Loads the model parameters of a t5x checkpoint.

  Args:
    path: a `checkpoint_<step>` directory (local or gs://), its msgpack file,
      or a model directory whose highest `checkpoint_<step>` is taken.

  Returns:
    The t5x `target` tree as a nested dict of numpy arrays, e.g.
    `{'token_embedder': {'embedding': [vocab, d_model]}, 'encoder':
    {'layers_0': {'attention': {'query': {'kernel': [d_model, heads * d_kv]}}}}}`.
    Arrays keep their stored dtype (bfloat16 as `ml_dtypes.bfloat16`).

  Raises:
    CheckpointError: one line naming the path, parameter or setting at fault.
  """
  step_dir = find_step_dir(str(path))
  if (step_dir / _ORBAX_DIR).is_dir():
    return _load_orbax(step_dir / _ORBAX_DIR)
  return _load_legacy(step_dir)
