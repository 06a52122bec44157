"""Checksums of train checkpoints: written at save time, verified on restore.

orbax keeps no checksum of array data: bytes flipped in a checkpoint's data files
restore silently as other values (near 3e38 for 0x7f bytes). So each save records
a manifest, `MODEL_DIR/checksums/step_<n>.json`, with the SHA-256 of every leaf of
the saved tree (its dtype, shape and bytes) and the data position, and a restore
compares the restored tree with it. Hashing the restored values rather than the
files orbax wrote keeps this independent of orbax's file layout, costs no extra
read, and verifies exactly what training continues from.

The manifest is written (atomically) BEFORE orbax saves the step: a checkpoint
that orbax committed always has one. A kill mid-save leaves an uncommitted orbax
directory (which orbax never lists) and at worst a manifest without its
checkpoint, which the next save of that step replaces. A committed checkpoint
without a manifest was therefore written by an earlier version of this package:
it restores unverified, saying so in one line (see `TrainCheckpointer.restore`).

The prompt .npy of a step is the checkpoint's `params/prompt/prompt` as float32;
its checksum is that leaf's, so `prompt_file_problem` can tell a good file from a
truncated, missing or altered one.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Mapping

import numpy as np
from etils import epath

from prompt_tuning import atomic
from prompt_tuning.checkpoints.structure import CheckpointError
from prompt_tuning.errors import first_line

CHECKSUMS_DIR = "checksums"
FORMAT = 1
PROMPT_LEAF = "params/prompt/prompt"


def _key_name(key: Any) -> str:
  for attribute in ("key", "name", "idx"):  # DictKey, GetAttrKey (namedtuples, dataclasses), SequenceKey
    if hasattr(key, attribute):
      return str(getattr(key, attribute))
  return str(key)


def leaves(tree: Any) -> dict[str, Any]:
  """{'params/prompt/prompt': leaf, 'opt_state/0/v_row': leaf, ...}: every array leaf of `tree` by its path."""
  import jax

  flat, _ = jax.tree_util.tree_flatten_with_path(tree)
  return {"/".join(_key_name(k) for k in path): leaf for path, leaf in flat}


def leaf_checksum(value: Any) -> dict[str, Any]:
  """{'sha256', 'shape', 'dtype'} of an array (jax or numpy): what a manifest records per leaf."""
  array = np.asarray(value)
  digest = hashlib.sha256(f"{array.dtype.name}{array.shape}".encode())
  digest.update(array.tobytes())  # C order whatever the layout (np.ascontiguousarray would make 0-d 1-d)
  return {"sha256": digest.hexdigest(), "shape": list(array.shape), "dtype": array.dtype.name}


def manifest_path(model_dir: epath.Path, step: int) -> epath.Path:
  return model_dir / CHECKSUMS_DIR / f"step_{step}.json"


def write_manifest(model_dir: epath.Path, step: int, tree: Any, position: int) -> None:
  """Records the checksums of train-state `tree` (host arrays) saved as `step` (process 0 only)."""
  record = {
    "format": FORMAT,
    "step": int(step),
    "position": int(position),
    "leaves": {path: leaf_checksum(value) for path, value in leaves(tree).items()},
  }
  atomic.write_text(manifest_path(model_dir, step), json.dumps(record, indent=1, sort_keys=True))


def read_manifest(model_dir: epath.Path, step: int) -> dict[str, Any] | None:
  """The manifest of `step`; None when there is none (a checkpoint of an earlier version).

  Raises:
    CheckpointError: the manifest exists but is not one (then the checkpoint cannot be trusted).
  """
  path = manifest_path(model_dir, step)
  if not path.exists():
    return None
  try:
    record = json.loads(path.read_text())
    if record.get("format") != FORMAT or not isinstance(record.get("leaves"), dict):
      raise ValueError(f"format {record.get('format')!r}, expected {FORMAT}")
    return record
  except (ValueError, AttributeError, UnicodeDecodeError, OSError) as e:
    raise CheckpointError(f"its checksum manifest {path} is unreadable ({first_line(e, typed=True)})") from None


def remove_manifest(model_dir: epath.Path, step: int) -> None:
  path = manifest_path(model_dir, step)
  if path.exists():
    path.unlink()


def structure_mismatch(manifest: Mapping[str, Any], abstract: Any, within: str = "") -> str | None:
  """Why `abstract` (the tree a restore expects) is not the tree the manifest recorded, or None.

  A mismatch is a different model, prompt length or optimizer, not corruption: every
  checkpoint of the directory would fail alike, so the caller refuses at once.

  Args:
    within: only the recorded leaves under this path prefix count (e.g. 'params/' for a
      restore of the parameters alone, whose `abstract` is {'params': ...}).
  """
  recorded = {p: v for p, v in manifest["leaves"].items() if p.startswith(within)}
  expected = {p: tuple(getattr(v, "shape", np.shape(v))) for p, v in leaves(abstract).items()}
  for path, shape in sorted(expected.items()):
    if path not in recorded:
      return f"this run has {path} {shape}, the checkpoint does not"
    if tuple(recorded[path]["shape"]) != shape:
      return f"the checkpoint has {path} {tuple(recorded[path]['shape'])}, this run {shape}"
  extra = sorted(set(recorded) - set(expected))
  if extra:
    return f"the checkpoint has {extra[0]} {tuple(recorded[extra[0]]['shape'])}, this run does not"
  return None


def verify(manifest: Mapping[str, Any], restored: Any, position: int | None = None) -> str | None:
  """What in `restored` differs from the manifest's checksums (the first leaf), or None when all match.

  `restored` may hold a subset of the recorded leaves (a restore of the parameters alone).
  """
  if position is not None and int(position) != int(manifest.get("position", -1)):
    return f"data position {position} differs from the recorded {manifest.get('position')}"
  for path, value in sorted(leaves(restored).items()):
    recorded = manifest["leaves"].get(path)
    if recorded is None:
      return f"{path} has no recorded checksum"
    if leaf_checksum(value)["sha256"] != recorded["sha256"]:
      return f"{path} differs from its checksum (corrupt data)"
  return None


def prompt_file_problem(path: epath.Path, expected: Mapping[str, Any] | None, shape: tuple[int, ...]) -> str | None:
  """Why the prompt .npy at `path` cannot be trusted ('missing', 'unreadable: ...', ...), or None.

  Args:
    expected: the manifest's record of the prompt leaf; None for a checkpoint without one
      (then a file that loads with the right shape passes).
    shape: the prompt's shape in the checkpoint.
  """
  if not path.exists():
    return "missing"
  try:
    with path.open("rb") as f:
      value = np.load(f, allow_pickle=False)
  except Exception as e:  # truncated or garbled: numpy raises ValueError, EOFError, OSError ...
    return f"unreadable ({first_line(e, typed=True)})"
  if tuple(value.shape) != tuple(shape):
    return f"shape {tuple(value.shape)}, the checkpoint's prompt is {tuple(shape)}"
  if expected is not None and leaf_checksum(value.astype(np.float32))["sha256"] != expected["sha256"]:
    return "its values differ from the checkpoint's prompt"
  return None
