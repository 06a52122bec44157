"""train(): config -> data -> model -> state -> steps -> checkpoints and metrics.

Called from Python (`prompt_tuning.train_prompt`) or with every argument bound from gin at
the CLI's entry point (see gin/runs/*.gin); starting again with the same model_dir resumes
from the latest checkpoint.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Mapping

import jax
import numpy as np
from absl import logging

from prompt_tuning import partitioning, prompt_init as prompt_init_lib
from prompt_tuning.checkpoints.train_state import (RunConfig, TrainCheckpointer, checkpoint_dir, prompt_file,
                                                   write_run_config)
from prompt_tuning.data.features import BATCH_KEYS
from prompt_tuning.data.pipeline import BatchIterator
from prompt_tuning.evaluation import Evaluator
from prompt_tuning.metrics_writer import MetricsWriter
from prompt_tuning.models.model import LossConfig
from prompt_tuning.models.prompt import PromptConfig
from prompt_tuning.models.t5 import network
from prompt_tuning.models.t5.config import T5Config
from prompt_tuning.progress import ProgressBar
from prompt_tuning.task_registry import resolve_task
from prompt_tuning.train import model_setup, optimizer as optimizer_lib, step as step_lib
from prompt_tuning.train.prefetch import DevicePrefetcher
from prompt_tuning.train.state import TrainState



@dataclasses.dataclass
class TrainResult:
  step: int
  config: T5Config  # the frozen model's
  trainable: Any  # the trained subtree (host numpy)
  frozen: Any  # the frozen weights the run used (host numpy)
  eval_metrics: dict[str, float]
  prompt_path: str | None


def to_global_batch(arrays: Mapping[str, np.ndarray], mesh: jax.sharding.Mesh) -> dict[str, jax.Array]:
  """This process's rows (its data shard) -> one global array per feature, sharded over the data axis."""
  sharding = partitioning.data_sharding(mesh)
  _, shards = partitioning.data_shard(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, arrays[k], (shards * len(arrays[k]),
                                                                         *arrays[k].shape[1:]))
          for k in BATCH_KEYS}


def train(*, model_dir: str, mixture_or_task_name: str, task_feature_lengths: Mapping[str, int],
          batch_size: int = 32, train_steps: int = 30000, model_config: str | T5Config | None = None,
          initial_checkpoint_path: str = "", prompt_length: int = 100, prompt_placement: str = "prefix",
          prompt_init: Callable[..., Callable] = prompt_init_lib.random_uniform,
          trainable_params: str = optimizer_lib.PROMPT_ONLY, optimizer: Callable = optimizer_lib.adafactor,
          loss: LossConfig = LossConfig(), dtype: str | None = None, seed: int = 0, save_period: int = 500,
          keep: int | None = 3, log_period: int = 10, eval_period: int = 0, eval_split: str = "validation",
          eval_batch_size: int | None = None, decode_method: str = "greedy",
          decode_options: Mapping[str, Any] | None = None, rank_classification: bool | None = None,
          num_partitions: int = 1, progress: bool = True, mixture_or_task_module: str | None = None,
          vocabulary_path: str | None = None, attention_impl: str | None = None,
          remat_policy: str | None = None, prefetch_batches: int = 2,
          mesh_shape: tuple[int, int] | None = None) -> TrainResult:
  """Trains the parameters matching `trainable_params` (default: the prompt only) of a frozen T5.

  From Python this is `prompt_tuning.train_prompt(...)`; the CLI binds the same arguments from
  gin (runs/common.gin names the macros), and nothing here needs gin. The defaults are the
  paper's: a 100-token prompt, Adafactor at a constant 0.3, batch 32, 30000 steps. Starting
  again with the same `model_dir` resumes from its latest checkpoint.

  Args:
    model_dir: where checkpoints/, prompts/step_<n>.npy, metrics.jsonl, tensorboard/ and
      run_config.json (what `load_pretrained(prompt=model_dir)` reads) go; local or gs://.
    mixture_or_task_name: a registered task or mixture (`prompt-tuning tasks` lists them).
    task_feature_lengths: {'inputs': n, 'targets': m}: longer texts are cut (EOS kept).
    batch_size, train_steps: examples per step (over all devices and hosts); the last step.
    model_config: a named config ('t5_1_1_base', ...) or a T5Config; None takes it from an HF or
      native checkpoint. Required for t5x checkpoints and random initialization.
    initial_checkpoint_path: the frozen model (HF, t5x or native); '' initializes it at random.
    prompt_length, prompt_placement: p, and 'prefix', 'after_first' or 'suffix'.
    prompt_init: a factory from prompt_tuning.prompt_init (e.g. functools.partial(
      prompt_init.class_labels, labels=[...])).
    trainable_params: regex over parameter paths ('.*': model tuning).
    optimizer: () -> (optax transformation, schedule), e.g. prompt_tuning.train.optimizer.adafactor.
    loss: z-loss, label smoothing and normalization.
    dtype: parameters and activations; None keeps float32 on the CPU and uses bfloat16 on accelerators.
    seed: the data order, the prompt initialization and random frozen weights.
    save_period: checkpoint every this many steps (and always at the end), keeping `keep`.
    log_period: steps per metrics record and progress line.
    eval_period: evaluate every this many steps (0: only at the end), on `eval_split`, in batches
      of `eval_batch_size` (default batch_size).
    decode_method / decode_options: 'greedy', 'beam' ({'beam_size': 4, 'alpha': 0.6}) or 'sample'.
    rank_classification: score the task's labels too (None: when the task has labels).
    progress: the progress bar and a line before each quiet phase, on stderr (process 0).
    mixture_or_task_module: a module to import first, registering more tasks.
    vocabulary_path: SentencePiece model of tasks that name none (default: T5's).
    attention_impl, remat_policy: see T5Config; None keeps the config's.
    prefetch_batches: training batches read and copied to the devices ahead of the step.
    num_partitions / mesh_shape: the device mesh (see partitioning.make_mesh).
  Returns:
    TrainResult: the final step, the frozen model's config, the trained and frozen parameters
    (host numpy), the last evaluation and the path of the prompt .npy.
  """
  # Process 0 alone prints: the phase lines, the progress bar, and (below) writes metrics and prompts.
  bar = ProgressBar(train_steps, enabled=progress and jax.process_index() == 0)
  mesh = partitioning.make_mesh(num_partitions, mesh_shape=mesh_shape)
  task = resolve_task(mixture_or_task_name, mixture_or_task_module, vocabulary_path)
  bar.note(f"loading the frozen model from {initial_checkpoint_path}" if initial_checkpoint_path else
           f"initializing the frozen model at random (no initial checkpoint), seed {seed}")
  model, params, config = model_setup.load_prompted_model(
      model_config, initial_checkpoint_path, PromptConfig(prompt_length, prompt_placement), prompt_init,
      tokenize=task.vocabulary.encode, vocab_size=task.vocabulary.vocab_size, loss=loss, dtype=dtype, seed=seed,
      runtime=dict(attention_impl=attention_impl, remat_policy=remat_policy))
  trainable, frozen = optimizer_lib.split_trainable(params, trainable_params)
  _, frozen_axes = optimizer_lib.split_trainable(network.module_logical_axes(model.module), trainable_params)
  frozen_shardings = partitioning.logical_to_sharding(frozen_axes, mesh)
  frozen = jax.device_put(frozen, frozen_shardings)
  tx, schedule = optimizer()
  # Placed as the step returns it (replicated), so the second step does not compile again.
  state = jax.device_put(TrainState.create(jax.tree.map(np.asarray, trainable), tx),
                         jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))

  checkpointer = TrainCheckpointer(model_dir, save_period=save_period, keep=keep)
  position = 0
  latest = checkpointer.latest_step()
  if latest is not None:
    restored, position = checkpointer.restore(jax.tree.map(np.asarray, state.to_checkpoint()))
    state = TrainState.from_checkpoint(restored)
    bar.note(f"resuming at step {int(state.step)} from checkpoint {checkpoint_dir(model_dir, latest)}")
  start = int(state.step)
  bar.restart_clock(start)
  if start >= train_steps:  # resumed a finished run: it reports its evaluation again
    bar.note(f"{model_dir} is already trained to step {start} (train_steps={train_steps}): nothing to train")
  if jax.process_index() == 0:
    write_run_config(model_dir, RunConfig(
        prompt_length=prompt_length, prompt_placement=prompt_placement, trainable_params=trainable_params,
        task=task.name, mixture_or_task_module=mixture_or_task_module, vocabulary_path=vocabulary_path,
        task_feature_lengths=dict(task_feature_lengths), initial_checkpoint_path=initial_checkpoint_path,
        model_config=config, seed=seed))

  shard, shards = partitioning.data_shard(mesh)  # processes of one model replica read the same rows
  bar.note(f"reading the train split of {task.name}")
  batches = BatchIterator(task, "train", task_feature_lengths, batch_size, shuffle=True, seed=seed, repeat=True,
                          drop_remainder=True, start_position=position, process_index=shard,
                          process_count=shards)
  batches.truncation.report()  # the whole split is tokenized up front: report its truncation once
  evaluator = Evaluator(model, task, task_feature_lengths, eval_batch_size or batch_size,
                        decode_method=decode_method, decode_options=decode_options,
                        rank_classification=rank_classification, mesh=mesh, note=bar.note)
  train_step = step_lib.compile_train_step(step_lib.make_train_step(model, tx, schedule), mesh, frozen_shardings)
  rng = jax.random.PRNGKey(seed)
  # Every process runs the same steps; only process 0 writes metrics, the progress bar and the prompt .npy.
  writer = MetricsWriter(model_dir)
  totals, period_start, eval_metrics = None, time.time(), {}
  uncounted = 0.0  # examples of the compiling first step, left out of the first period's rate
  with DevicePrefetcher(batches, lambda b: to_global_batch(b.arrays, mesh), lambda it: it.position,
                        size=prefetch_batches) as prefetcher:
    for step in range(start, train_steps):
      position, batch = next(prefetcher)  # position: where the stream resumes after this batch
      if step == start:
        bar.note("compiling the train step")
      state, metrics = train_step(state, frozen, batch, rng)
      totals = step_lib.accumulate(totals, metrics)  # stays on device: no host sync per step
      done = step + 1
      first = step == start and done < train_steps
      if first:  # it compiled (seconds to minutes): measure the ETA from its end
        jax.block_until_ready(state.step)
        bar.restart_clock(done)
      if done % log_period == 0 or done == train_steps:
        summary = step_lib.summarize(totals)
        seconds = max(time.time() - period_start, 1e-9)
        summary["examples_per_s"] = (float(jax.device_get(totals["examples"])) - uncounted) / seconds
        writer.write(done, summary, prefix="train")
        bar.update(done, loss=summary["loss"], examples_per_s=summary["examples_per_s"])
        totals, period_start, uncounted = None, time.time(), 0.0
      elif first:  # and out of the throughput: this period's rate counts from the second step
        period_start, uncounted = time.time(), float(jax.device_get(metrics["examples"]))
      if done == train_steps or (eval_period and done % eval_period == 0):
        eval_metrics = evaluator.evaluate(optimizer_lib.merge_params(state.params, frozen), eval_split)
        writer.write(done, eval_metrics, prefix="eval")
        logging.info("step %d eval: %s", done, eval_metrics)
      # On every process: orbax coordinates the hosts (and writes each array once).
      checkpointer.save(done, state.to_checkpoint(), position, force=done == train_steps)
  bar.close()
  if start >= train_steps:
    eval_metrics = evaluator.evaluate(optimizer_lib.merge_params(state.params, frozen), eval_split)
  writer.close()
  checkpointer.close()
  final = int(state.step)
  has_prompt = "prompt" in state.params
  return TrainResult(step=final, config=config, trainable=partitioning.to_host(state.params),
                     frozen=partitioning.to_host(frozen), eval_metrics=eval_metrics,
                     prompt_path=prompt_file(model_dir, final) if has_prompt else None)
