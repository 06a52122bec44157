"""Inference side of the benchmark: one frozen model, one prompt vs a table of many, same batch shape.

The question it answers (issue 13): what does serving k tasks from one frozen model in one batch
cost, against a batch of one task? Both rows run the same jitted functions the Evaluator and
`infer` run (EncoderDecoderModel.predict_batch, rank_classify) on the same synthetic batch:

  1 task     PromptedTransformer with one prompt [p, d] (no table, no task ids)
  k tasks    the same model with a table [k, p, d]; row i of the batch uses prompt i mod k, in a
             shuffled order so neighbours differ (--vary_prompt_lengths: the k prompts have
             lengths spread over [p/2, p], padded to p and masked, as bundles of mixed lengths are)

Two workloads per row:
  decode     greedy decoding of --target_length tokens. Decoding stops early only once every row
             has produced EOS, which random weights practically never do (1 in the vocabulary size
             per row and step); the rows report decoded_tokens_per_row to show it.
  rank       rank classification of --candidates candidate targets of --target_length tokens
             (EOS-terminated), the encoder run once per example and shared by its candidates.

Random weights are created on the devices (bench.ours.init_on_device); nothing of the data layer
or gin is imported.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from prompt_tuning import partitioning
from prompt_tuning.bench import BenchConfig, RunResult, is_out_of_memory, log
from prompt_tuning.bench.ours import init_on_device, peak_bytes
from prompt_tuning.errors import first_line
from prompt_tuning.models.model import EncoderDecoderModel, LossConfig
from prompt_tuning.models.prompt import PromptConfig, PromptedTransformer
from prompt_tuning.param_tree import merge_params

WORKLOADS = ("decode", "rank")


@dataclasses.dataclass(frozen=True)
class InferenceConfig:
  """What the inference mode adds to BenchConfig.

  tasks: k, the prompts in the table of the mixed row (>= 2).
  candidates: targets per example for rank classification.
  vary_prompt_lengths: the k prompts have lengths spread over [p/2, p] (masked) instead of all p.
  """

  tasks: int = 8
  candidates: int = 2
  vary_prompt_lengths: bool = False

  def __post_init__(self):
    if self.tasks < 2:
      raise ValueError(f"--tasks must be >= 2 (the mixed row needs several prompts), got {self.tasks}")
    if self.candidates < 1:
      raise ValueError(f"--candidates must be >= 1, got {self.candidates}")

  def task_lengths(self, prompt_length: int) -> tuple[int, ...] | None:
    """Each task's prompt length, or None when all are prompt_length."""
    if not self.vary_prompt_lengths:
      return None
    low = max(1, prompt_length // 2)
    return tuple(int(round(x)) for x in np.linspace(low, prompt_length, self.tasks))


def prompt_config(cfg: BenchConfig, infer: InferenceConfig, mixed: bool) -> PromptConfig:
  """One prompt of cfg.prompt_length, or the k-task table (lengths per InferenceConfig)."""
  if not mixed:
    return PromptConfig(cfg.prompt_length)
  return PromptConfig(cfg.prompt_length, num_tasks=infer.tasks, task_lengths=infer.task_lengths(cfg.prompt_length))


def task_ids(batch: int, tasks: int, seed: int) -> np.ndarray:
  """int32 [batch]: every task about equally often (i mod k), shuffled so neighbouring rows differ."""
  ids = np.arange(batch, dtype=np.int32) % tasks
  return np.random.default_rng(seed).permutation(ids).astype(np.int32)


def synthetic_inputs(cfg: BenchConfig, infer: InferenceConfig, vocab_size: int) -> dict[str, np.ndarray]:
  """encoder_input_tokens [batch, input_length - prompt_length] uniform in [2, vocab) (no padding),
  candidates [candidates, target_length] uniform in [2, vocab) with EOS (1) last."""
  rng = np.random.default_rng(cfg.seed)
  candidates = rng.integers(2, vocab_size, (infer.candidates, cfg.target_length), dtype=np.int32)
  candidates[:, -1] = 1
  return {
    "encoder_input_tokens": rng.integers(2, vocab_size, (cfg.batch, cfg.token_length), dtype=np.int32),
    "candidates": candidates,
  }


def _workload(model: EncoderDecoderModel, name: str, cfg: BenchConfig) -> Callable:
  """(params, tokens, candidates, task_ids) -> outputs, for one workload."""
  if name == "decode":
    return lambda params, tokens, candidates, ids: model.predict_batch(
      params, tokens, max_decode_length=cfg.target_length, method="greedy", task_ids=ids
    )
  return lambda params, tokens, candidates, ids: model.rank_classify(params, tokens, candidates, ids)


def time_calls(fn: Callable, args: tuple, steps: int, warmup: int) -> tuple[float, float, Any]:
  """(first call seconds, seconds for `steps` calls after `warmup`, last output)."""
  start = time.perf_counter()
  out = jax.block_until_ready(fn(*args))
  first = time.perf_counter() - start
  for _ in range(warmup - 1):
    out = fn(*args)
  jax.block_until_ready(out)
  start = time.perf_counter()
  for _ in range(steps):
    out = fn(*args)
  jax.block_until_ready(out)
  return first, time.perf_counter() - start, out


def run(cfg: BenchConfig, infer: InferenceConfig) -> list[RunResult]:
  """Rows '<workload> 1 task' and '<workload> <k> tasks' for each workload; 'out of memory' rows
  instead of a crash."""
  results = []
  for mixed in (False, True):
    label = f"{infer.tasks} tasks" if mixed else "1 task"
    try:
      results += _run_model(cfg, infer, mixed, label)
    except Exception as e:  # XlaRuntimeError RESOURCE_EXHAUSTED
      if not is_out_of_memory(e):
        raise
      results += [
        RunResult(f"{w} {label}", error="out of memory", extra={"detail": first_line(e)[:300]}) for w in WORKLOADS
      ]
  return results


def _run_model(cfg: BenchConfig, infer: InferenceConfig, mixed: bool, label: str) -> list[RunResult]:
  config = cfg.t5_config()
  mesh = partitioning.make_mesh(cfg.num_partitions)
  module = PromptedTransformer(config, prompt_config=prompt_config(cfg, infer, mixed))
  model = EncoderDecoderModel(module, LossConfig())
  log(f"ours ({label}): initializing {cfg.model} ({cfg.dtype}) on {mesh.devices.size} device(s)")
  trainable, frozen, _ = init_on_device(module, mesh, cfg.seed)
  params = merge_params(trainable, frozen)
  arrays = synthetic_inputs(cfg, infer, config.vocab_size)
  rows = {"encoder_input_tokens": arrays["encoder_input_tokens"]}
  if mixed:
    rows["task_ids"] = task_ids(cfg.batch, infer.tasks, cfg.seed)
  shard, shards = partitioning.data_shard(mesh)
  per_shard = cfg.batch // shards
  placed = partitioning.to_global_batch(
    {k: v[shard * per_shard : (shard + 1) * per_shard] for k, v in rows.items()}, mesh
  )
  candidates = jax.device_put(arrays["candidates"], NamedSharding(mesh, PartitionSpec()))
  replicated = NamedSharding(mesh, PartitionSpec())
  args = (params, placed["encoder_input_tokens"], candidates, placed.get("task_ids"))
  local = [d for d in mesh.devices.flat if d.process_index == jax.process_index()]
  results = []
  for name in WORKLOADS:
    fn = jax.jit(_workload(model, name, cfg), out_shardings=replicated)
    log(f"ours ({label}): {name}: compiling, then {cfg.steps} timed calls after {cfg.warmup} warmup")
    first, seconds, out = time_calls(fn, args, cfg.steps, cfg.warmup)
    extra = {"devices": int(mesh.devices.size), "tasks": infer.tasks if mixed else 1}
    if name == "decode":
      tokens = np.asarray(out.tokens)[:, 0]
      extra["decoded_tokens_per_row"] = float((tokens != 0).sum(axis=-1).mean())
      extra["target_tokens_per_s"] = cfg.batch * cfg.target_length * cfg.steps / seconds
    else:
      extra["candidates"] = infer.candidates
      extra["mean_score"] = float(np.asarray(out).mean())
    if mixed:
      extra["task_lengths"] = list(infer.task_lengths(cfg.prompt_length) or [cfg.prompt_length] * infer.tasks)
    # No TFLOP/s (the FLOP convention is a training step's). The peak is the process's highest so far
    # (JAX cannot reset it): a row's includes the rows before it.
    result = RunResult.timed(f"{name} {label}", seconds, cfg.steps, cfg.batch, 0, peak_bytes(local), first, **extra)
    results.append(dataclasses.replace(result, tflops=None))
  return results


def ratios(results: list[RunResult], infer: InferenceConfig) -> dict[str, float | None]:
  """'<workload>: k tasks / 1 task' = mixed examples/s over single-task examples/s (1.0: no cost)."""
  by_name = {r.name: r for r in results}
  out = {}
  for name in WORKLOADS:
    single, mixed = by_name.get(f"{name} 1 task"), by_name.get(f"{name} {infer.tasks} tasks")
    ok = single and mixed and single.examples_per_s and mixed.examples_per_s
    out[f"{name}: {infer.tasks} tasks / 1 task"] = mixed.examples_per_s / single.examples_per_s if ok else None
  return out
