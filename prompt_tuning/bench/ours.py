"""Our side of the benchmark: the trainer's compiled prompt-only step on random weights.

Everything goes through the trainer's own pieces (PromptedTransformer,
EncoderDecoderModel/LossConfig, split_trainable with PROMPT_ONLY, adafactor(),
make_train_step + compile_train_step on a ('data', 'model') mesh), so the
number measured is the one `prompt-tuning train` runs. Only the data differs:
a fixed synthetic batch instead of a seqio pipeline.

The frozen weights are created directly on the devices, already in the target
dtype and sharded by the logical-axis rules (a small jit with out_shardings per
distinct parameter shape), so even T5-XXL never exists in host memory.
"""

from __future__ import annotations

import functools
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from prompt_tuning import param_tree, partitioning
from prompt_tuning.bench import BenchConfig, RunResult, flops, is_out_of_memory, log, log_row
from prompt_tuning.bench.profile import Profiler
from prompt_tuning.errors import first_line
from prompt_tuning.models.model import EncoderDecoderModel, LossConfig
from prompt_tuning.models.prompt import PromptConfig, PromptedTransformer
from prompt_tuning.models.t5 import network
from prompt_tuning.param_tree import flatten, unflatten
from prompt_tuning.train import optimizer as optimizer_lib
from prompt_tuning.train import step as step_lib
from prompt_tuning.train.state import TrainState

Batch = dict[str, jax.Array]


@functools.cache
def _leaf_maker(shape: tuple[int, ...], dtype: np.dtype, kind: str, sharding: NamedSharding) -> Any:
  """A jitted key -> array of one parameter, made on its devices. Cached per (shape, dtype, kind,
  sharding): a T5 has only a dozen distinct ones, so a few tiny compiles cover hundreds of leaves."""

  def make(key: jax.Array) -> jax.Array:
    if kind == "ones":
      return jnp.ones(shape, dtype)
    # Variance-matched uniform: std 0.5/sqrt(3) for the prompt (the trainer's U[-0.5, 0.5]), 1 for the
    # embedding, fan_in**-0.5 for kernels [in, out] and relative-position tables.
    std = {"prompt": 0.5 / 3**0.5, "embedding": 1.0}.get(kind, shape[0] ** -0.5)
    bound = std * 3**0.5
    return jax.random.uniform(key, shape, jnp.float32, -bound, bound).astype(dtype)

  return jax.jit(make, out_shardings=sharding)


def _kind(path: str) -> str:
  if path == "prompt/prompt":
    return "prompt"
  if path == "token_embedder/embedding":
    return "embedding"
  return "ones" if path.endswith("/scale") else "dense"


def init_on_device(module: PromptedTransformer, mesh: Mesh, seed: int) -> tuple[Any, Any, Any]:
  """Random (trainable, frozen, frozen_shardings), created on the mesh leaf by leaf.

  trainable = {'prompt': {'prompt': float32 [p, d]}}, replicated; frozen = the T5
  weights in the config's param_dtype, sharded by LOGICAL_AXIS_RULES. Values
  are variance-matched uniforms, not the trainer's t5x initializers (speed does
  not depend on them): jitting module.init for T5-XL compiles for minutes.
  """
  shapes = flatten(network.abstract_module_params(module))
  axes = flatten(network.module_logical_axes(module))
  shardings = flatten(partitioning.logical_to_sharding(unflatten(axes), mesh))
  key = jax.random.PRNGKey(seed)
  params = {}
  for i, (path, shape) in enumerate(sorted(shapes.items())):
    make = _leaf_maker(tuple(shape.shape), np.dtype(shape.dtype), _kind(path), shardings[path])
    params[path] = make(jax.random.fold_in(key, i))
  trainable, frozen = param_tree.split_trainable(unflatten(params), param_tree.PROMPT_ONLY)
  _, frozen_shardings = param_tree.split_trainable(unflatten(shardings), param_tree.PROMPT_ONLY)
  return trainable, frozen, frozen_shardings


def synthetic_batch(cfg: BenchConfig, vocab_size: int, mesh: Mesh) -> Batch:
  """A fixed batch, split over the mesh's data axis.

  encoder_input_tokens int32 [batch, input_length - prompt_length] and
  decoder_target_tokens [batch, target_length], uniform in [2, vocab) (no
  padding, no EOS); decoder_input_tokens = targets shifted right with 0;
  decoder_loss_weights float32 ones.
  """
  data_size = mesh.shape[partitioning.DATA_AXIS]
  if cfg.batch % data_size:
    raise ValueError(
      f"--batch={cfg.batch} must be divisible by the data axis size {data_size} (devices / --num_partitions)"
    )
  rng = np.random.default_rng(cfg.seed)
  inputs = rng.integers(2, vocab_size, (cfg.batch, cfg.token_length), dtype=np.int32)
  targets = rng.integers(2, vocab_size, (cfg.batch, cfg.target_length), dtype=np.int32)
  arrays = {
    "encoder_input_tokens": inputs,
    "decoder_input_tokens": np.concatenate([np.zeros_like(targets[:, :1]), targets[:, :-1]], axis=1),
    "decoder_target_tokens": targets,
    "decoder_loss_weights": np.ones(targets.shape, np.float32),
  }
  # Each process supplies the rows of its data shard, as the trainer does.
  shard, shards = partitioning.data_shard(mesh)
  rows = cfg.batch // shards
  local = slice(shard * rows, (shard + 1) * rows)
  return partitioning.to_global_batch({k: v[local] for k, v in arrays.items()}, mesh)


def peak_bytes(devices: list[jax.Device]) -> int | None:
  """The largest peak_bytes_in_use among `devices`; None where memory_stats is unavailable (CPU)."""
  peaks = []
  for device in devices:
    try:
      stats = device.memory_stats()
    except Exception:  # some backends raise instead of returning None
      stats = None
    if stats and "peak_bytes_in_use" in stats:
      peaks.append(int(stats["peak_bytes_in_use"]))
  return max(peaks) if peaks else None


def program_bytes(jitted: Any, *args: Any) -> int | None:
  """What one call of `jitted` on `args` needs by XLA's memory analysis: arguments, outputs not
  aliased to them, and temporaries. Unlike the device's peak, it does not include what earlier rows
  of the same process held. A cache hit after the first call (no compile); None where the backend
  gives no analysis."""
  try:
    stats = jitted.lower(*args).compile().memory_analysis()
  except Exception:  # backends without an analysis raise rather than returning None
    stats = None
  if stats is None:
    return None
  return (
    stats.argument_size_in_bytes + stats.output_size_in_bytes - stats.alias_size_in_bytes + stats.temp_size_in_bytes
  )


def run(cfg: BenchConfig, profiler: Profiler | None = None) -> RunResult:
  """Times cfg.steps compiled train steps after cfg.warmup; 'out of memory' instead of a crash.
  The row is logged as it lands (bench.log_row). With a profiler, more steps are then traced and
  their kernel table printed and kept in the row's extra['profile']."""
  try:
    row = _run(cfg, profiler)
  except Exception as e:  # XlaRuntimeError RESOURCE_EXHAUSTED
    if not is_out_of_memory(e):
      raise
    extra = {"detail": first_line(e)[:300], "matmul_dtype": cfg.matmul_dtype}
    row = RunResult(cfg.ours_name, error="out of memory", extra=extra)
  log_row(row)
  return row


def _run(cfg: BenchConfig, profiler: Profiler | None) -> RunResult:
  config = cfg.t5_config()
  mesh = partitioning.make_mesh(cfg.num_partitions)
  module = PromptedTransformer(config, prompt_config=PromptConfig(cfg.prompt_length))
  model = EncoderDecoderModel(module, LossConfig())
  log(f"{cfg.ours_name}: initializing {cfg.model} ({cfg.dtype}) on {mesh.devices.size} device(s)")
  trainable, frozen, frozen_shardings = init_on_device(module, mesh, cfg.seed)
  tx, schedule = optimizer_lib.adafactor()
  # Placed as the step's outputs will be (replicated NamedSharding): an input sharding that differs
  # from the output's would make the second call compile again.
  state = jax.device_put(TrainState.create(trainable, tx), NamedSharding(mesh, PartitionSpec()))
  train_step = step_lib.compile_train_step(step_lib.make_train_step(model, tx, schedule), mesh, frozen_shardings)
  batch = synthetic_batch(cfg, config.vocab_size, mesh)
  rng = jax.random.PRNGKey(cfg.seed)

  jax.block_until_ready(frozen)
  log(f"{cfg.ours_name}: compiling and running the first step")
  start = time.perf_counter()
  state, metrics = train_step(state, frozen, batch, rng)  # compiles
  jax.block_until_ready(state)
  compile_s = time.perf_counter() - start
  first_loss = float(metrics["loss"])  # of the initial prompt: comparable across meshes
  for _ in range(cfg.warmup - 1):
    state, metrics = train_step(state, frozen, batch, rng)
  jax.block_until_ready(state)

  log(f"{cfg.ours_name}: timing {cfg.steps} steps")
  start = time.perf_counter()
  for _ in range(cfg.steps):
    state, metrics = train_step(state, frozen, batch, rng)
  jax.block_until_ready(state)
  seconds = time.perf_counter() - start

  devices = list(mesh.devices.flat)
  local = [d for d in devices if d.process_index == jax.process_index()]
  step_bytes = program_bytes(train_step, state, frozen, batch, rng)
  final_loss, final_step = float(metrics["loss"]), int(state.step)  # before any profiled steps
  profiled = {}  # the row's extra['profile'], with a profiler
  if profiler is not None:
    carried = [state]

    def one_step():
      carried[0], step_metrics = train_step(carried[0], frozen, batch, rng)  # the state is donated
      jax.block_until_ready(step_metrics)

    profiled = profiler.row_extra(cfg.ours_name, one_step)
  return RunResult.timed(
    cfg.ours_name,
    seconds,
    cfg.steps,
    cfg.batch,
    flops.flops_per_step(config, cfg.batch, cfg.input_length, cfg.target_length),
    peak_bytes(local),
    compile_s,
    devices=len(devices),
    mesh=dict(mesh.shape),
    optimizer="adafactor (optax)",
    first_loss=first_loss,
    final_loss=final_loss,
    step=final_step,
    matmul_dtype=config.matmul_dtype,
    fuse_projections=config.fuse_projections,
    step_memory_gib=None if step_bytes is None else step_bytes / 2**30,
    **profiled,
  )
