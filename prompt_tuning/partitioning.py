"""Device meshes and the one table mapping logical axis names to mesh axes.

Every parameter and key activation in `prompt_tuning.models` is named with
the logical axes below; `LOGICAL_AXIS_RULES` maps them onto a Mesh with a
'data' axis (batch) and a 'model' axis (tensor parallelism), following t5x's
defaults. A single device is a 1x1 mesh and runs the same code.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"
MODEL_AXIS = "model"

# logical axis -> mesh axis (None = replicated). The vocabulary of axis names.
LOGICAL_AXIS_RULES: tuple[tuple[str, str | None], ...] = (
  ("batch", DATA_AXIS),
  ("vocab", MODEL_AXIS),
  ("embed", None),
  ("mlp", MODEL_AXIS),
  ("heads", MODEL_AXIS),
  ("kv", None),
  ("joined_kv", MODEL_AXIS),
  ("relpos_buckets", None),
  ("length", None),
  ("prompt", None),  # soft-prompt rows: always replicated
  ("tasks", None),  # rows of a multi-task prompt table
)
AXIS_NAMES = frozenset(name for name, _ in LOGICAL_AXIS_RULES)


def model_axis_size(num_partitions: int, mesh_shape: Sequence[int] | None, device_count: int) -> int:
  """The 'model' axis size from NUM_PARTITIONS or an explicit MESH_SHAPE (data, model).

  One MESH_SHAPE entry may be -1 (whatever the device count leaves); the shape
  must cover every device, and NUM_PARTITIONS, if not 1, must agree with it.
  """
  if mesh_shape is None:
    return num_partitions
  shape = tuple(mesh_shape)
  if len(shape) != 2 or any(not isinstance(n, int) or (n < 1 and n != -1) for n in shape) or shape.count(-1) > 1:
    raise ValueError(f"MESH_SHAPE={shape} must be (data, model): positive ints, at most one -1")
  known = abs(int(np.prod(shape)))
  if -1 in shape:
    if device_count % known:
      raise ValueError(f"MESH_SHAPE={shape}: {known} does not divide the {device_count} devices")
    shape = tuple(device_count // known if n == -1 else n for n in shape)
  if shape[0] * shape[1] != device_count:
    raise ValueError(f"MESH_SHAPE={tuple(mesh_shape)} needs {shape[0] * shape[1]} devices; there are {device_count}")
  if num_partitions not in (1, shape[1]):
    raise ValueError(f"NUM_PARTITIONS={num_partitions} disagrees with MESH_SHAPE={tuple(mesh_shape)}")
  return shape[1]


def make_mesh(
  num_partitions: int = 1, devices: Sequence[jax.Device] | None = None, mesh_shape: Sequence[int] | None = None
) -> Mesh:
  """A ('data', 'model') mesh: num_partitions devices per model replica.

  Args:
    num_partitions: size of the 'model' axis; must divide the device count. A
      model replica may span hosts (see `data_shard`).
    devices: defaults to all devices (every host's, in multi-host runs), host
      by host, so each process's devices hold one contiguous block of the rows
      of a [B, ...] batch split over 'data' -- the rows it feeds (`data_shard`).
    mesh_shape: (data, model) instead of num_partitions, e.g. (-1, 8); see
      `model_axis_size`.
  """
  if devices is None:
    devices = sorted(jax.devices(), key=lambda d: d.process_index)  # stable: keeps each host's order
  devices = list(devices)
  num_partitions = model_axis_size(num_partitions, mesh_shape, len(devices))
  if num_partitions < 1 or len(devices) % num_partitions:
    raise ValueError(f"NUM_PARTITIONS={num_partitions} must be >= 1 and divide the {len(devices)} devices")
  grid = np.asarray(devices).reshape(len(devices) // num_partitions, num_partitions)
  return Mesh(grid, (DATA_AXIS, MODEL_AXIS))


def data_shard(mesh: Mesh, process_index: int | None = None) -> tuple[int, int]:
  """(shard index, shard count): which rows of each global batch this process feeds.

  Each process feeds the rows of the 'data' indices its devices sit on:
  rows [index * B / count, (index + 1) * B / count). Processes whose devices
  share a model replica (a replica spanning hosts) feed the same rows. One
  process on one host is (0, 1).
  """
  me = jax.process_index() if process_index is None else process_index
  spans: dict[int, tuple[int, int]] = {}
  for row, replica in enumerate(mesh.devices.reshape(mesh.shape[DATA_AXIS], -1)):
    for device in replica:
      lo, hi = spans.get(device.process_index, (row, row + 1))
      spans[device.process_index] = (min(lo, row), max(hi, row + 1))
  distinct = sorted(set(spans.values()))
  widths = {hi - lo for lo, hi in distinct}
  overlapping = any(a[1] > b[0] for a, b in zip(distinct, distinct[1:]))
  if len(widths) > 1 or overlapping:
    raise ValueError(
      f"the mesh's model replicas straddle hosts unevenly (data rows per host: {distinct}); "
      f"choose NUM_PARTITIONS to divide each host's devices, or a multiple of them"
    )
  return distinct.index(spans[me]), len(distinct)


def logical_to_sharding(
  logical_axes: Any, mesh: Mesh, rules: Sequence[tuple[str, str | None]] = LOGICAL_AXIS_RULES
) -> Any:
  """Maps a tree of logical-axis tuples (e.g. ('embed', 'mlp')) to NamedShardings on `mesh`."""

  def to_sharding(names: tuple[str, ...]) -> NamedSharding:
    unknown = [n for n in names if n is not None and n not in {r for r, _ in rules}]
    if unknown:
      raise ValueError(f"logical axis {unknown[0]!r} has no rule in LOGICAL_AXIS_RULES")
    return NamedSharding(mesh, nn.logical_to_mesh_axes(names, rules))

  return jax.tree.map(to_sharding, logical_axes, is_leaf=lambda x: isinstance(x, tuple))


def data_sharding(mesh: Mesh) -> NamedSharding:
  """Batches [batch, ...] split over the 'data' axis."""
  return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def to_global_batch(local_rows: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """This process's rows of each feature (its data shard, [rows, ...]) -> one global array per
  feature, [rows * data shards, ...], split over the mesh's 'data' axis.

  Processes of one model replica hold the same shard (data_shard); each places only its own rows.
  """
  sharding = data_sharding(mesh)
  _, shards = data_shard(mesh)
  return {
    name: jax.make_array_from_process_local_data(sharding, rows, (shards * len(rows), *rows.shape[1:]))
    for name, rows in local_rows.items()
  }


def to_host(tree: Any) -> Any:
  """Arrays -> host numpy with the whole value, on every process.

  Arrays split across hosts are gathered (a collective: every process must
  call this with the same tree); others are fetched where they are.
  """

  def fetch(x: Any) -> Any:
    if isinstance(x, jax.Array) and not (x.is_fully_addressable or x.is_fully_replicated):
      from jax.experimental import multihost_utils

      return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return jax.device_get(x)

  return jax.tree.map(fetch, tree)
