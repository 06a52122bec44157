"""train(): specs -> data -> model -> state -> steps -> checkpoints and metrics.

Called from Python (`prompt_tuning.train_prompt`) or with its specs built by gin at the CLI's
entry point (gin/runs/common.gin); starting again with the same model_dir resumes from the
latest checkpoint.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any

import jax
import numpy as np
from absl import logging

from prompt_tuning import faults, param_tree, partitioning
from prompt_tuning.checkpoints import bundle as bundle_lib
from prompt_tuning.checkpoints import lock
from prompt_tuning.checkpoints.train_state import (
  RunConfig,
  TrainCheckpointer,
  checkpoint_dir,
  prompt_file,
  write_run_config,
)
from prompt_tuning.data import packing as packing_lib
from prompt_tuning.data.features import BATCH_KEYS
from prompt_tuning.data.pipeline import BatchIterator
from prompt_tuning.errors import RunError
from prompt_tuning.metrics_writer import MetricsWriter
from prompt_tuning.models.t5 import network
from prompt_tuning.models.t5.config import T5Config
from prompt_tuning.progress import ProgressBar
from prompt_tuning.runs import multitask, preemption, preflight, records, selection
from prompt_tuning.runs import setup as setup_lib
from prompt_tuning.runs.specs import EvaluationSpec, MeshSpec, ModelSpec, TaskSpec, TrainSpec
from prompt_tuning.train import guard as guard_lib
from prompt_tuning.train import step as step_lib
from prompt_tuning.train.per_task import per_task_rows
from prompt_tuning.train.prefetch import DevicePrefetcher
from prompt_tuning.train.state import TrainState


@dataclasses.dataclass
class TrainResult:
  step: int
  config: T5Config  # the frozen model's, in the run's dtypes
  trainable: Any  # the trained subtree (host numpy)
  frozen: Any  # the frozen weights the run used (host numpy)
  eval_metrics: dict[str, float]
  prompt_path: str | None
  best: dict[str, Any] | None = None  # best.json: the selection metric and each metric's best step


def train(
  model: ModelSpec,
  task: TaskSpec,
  model_dir: str,
  training: TrainSpec = TrainSpec(),
  evaluation: EvaluationSpec = EvaluationSpec(),
  mesh: MeshSpec = MeshSpec(),
  progress: bool = True,
) -> TrainResult:
  """Trains the parameters `model.trainable_params` selects (default: the prompt only) of a frozen T5.

  From Python this is `prompt_tuning.train_prompt(...)`; the CLI builds the same specs from gin
  (runs/common.gin names the macros), and nothing here needs gin. The defaults are the paper's:
  a 100-token prompt, Adafactor at a constant 0.3, batch 32, 30000 steps.

  Args:
    model: the frozen model, the prompt on it, what trains.
    task: the task or mixture and its feature lengths.
    model_dir: where checkpoints/, prompts/step_<n>.npy, metrics.jsonl, tensorboard/ and
      run_config.json (what `load_pretrained(prompt=model_dir)` reads) go, with best.json (the best
      step per metric, runs/selection.py) and run_status.json (runs/records.py); local or gs://.
      Starting again with the same model_dir resumes from its latest checkpoint.
    training: steps, batch, optimizer, seed, save/log/eval periods.
    evaluation: the split evaluated every `training.eval_period` steps and at the end, and how.
    mesh: the device mesh; the frozen weights are sharded over it by the logical-axis rules.
    progress: the progress bar and a line before each quiet phase, on stderr (process 0).
  Returns:
    TrainResult: the final step, the frozen model's config, the trained and frozen parameters
    (host numpy), the last evaluation, the path of the prompt .npy and best.json's record.
  """
  # Before anything is built or written: a MODEL_DIR that cannot be written, a batch the devices
  # do not split; resuming, the prompt and frozen model MODEL_DIR was trained with (in build).
  preflight.writable_model_dir(model_dir)
  preflight.batch_divides(training.batch_size, mesh.make())
  if task.packing and model.prompt.placement != "prefix":  # data/packing.py: each example's prompt goes before it
    raise ValueError(f"PACKING needs PROMPT_PLACEMENT = 'prefix', got {model.prompt.placement!r}")
  with lock.hold(model_dir):  # MODEL_DIR/train.lock throughout: one trainer per MODEL_DIR (checkpoints/lock.py)
    return _train(model, task, model_dir, training, evaluation, mesh, progress)


def _train(
  model: ModelSpec,
  task: TaskSpec,
  model_dir: str,
  training: TrainSpec,
  evaluation: EvaluationSpec,
  mesh: MeshSpec,
  progress: bool,
) -> TrainResult:
  """train()'s work, holding MODEL_DIR's lock."""
  started = time.time()
  steps = training.steps
  resuming = preflight.has_checkpoints(model_dir)
  # Process 0 alone prints: the phase lines, the progress bar, and (below) writes metrics and prompts.
  bar = ProgressBar(steps, enabled=progress and jax.process_index() == 0)
  setup = setup_lib.build(
    model,
    task,
    mesh,
    seed=training.seed,
    note=bar.note,
    splits=["train", evaluation.split],
    trained_in=model_dir if resuming else None,
  )
  device_mesh = setup.mesh
  trainable, frozen = param_tree.split_trainable(setup.params, model.trainable_params)
  guard_lib.check_initial(trainable)  # an inf in the initial prompt: stop before MODEL_DIR is touched
  _, frozen_axes = param_tree.split_trainable(network.module_logical_axes(setup.model.module), model.trainable_params)
  frozen_shardings = partitioning.logical_to_sharding(frozen_axes, device_mesh)
  frozen = jax.device_put(frozen, frozen_shardings)
  tx, schedule = training.optimizer()
  tasks = tuple(setup.prompt_ids or ())  # a multi-task run's tasks, by prompt row (runs/multitask.py)
  if tasks:  # each task's row moved only by its own examples, its optimizer state too
    tx = per_task_rows(tx)
  # Placed as the step returns it (replicated), so the second step does not compile again.
  replicated = jax.sharding.NamedSharding(device_mesh, jax.sharding.PartitionSpec())
  state = jax.device_put(TrainState.create(jax.tree.map(np.asarray, trainable), tx), replicated)

  # Every saved prompt also travels as a bundle: the record of the frozen model it belongs to.
  record = bundle_lib.PromptBundle(
    prompt=np.zeros((0, setup.config.emb_dim), np.float32),
    config=bundle_lib.architecture(setup.config),
    fingerprint=param_tree.fingerprint(setup.params),
    placement=model.prompt.placement,
    task=setup.task.name,
    vocabulary_path=getattr(setup.task.vocabulary, "path", None) or task.vocabulary_path,
    feature_lengths=dict(task.feature_lengths),
  )
  checkpointer = TrainCheckpointer(
    model_dir,
    save_period=training.save_period,
    keep=training.keep,
    bundle=record,
    task_prompts=multitask.prompts_of(setup.model.module.prompt_config, tasks) if tasks else None,
    tasks=tasks,
  )
  position = 0
  latest = checkpointer.latest_step()
  if latest is not None:
    restored, position = checkpointer.restore(jax.tree.map(np.asarray, state.to_checkpoint()))
    state = jax.device_put(TrainState.from_checkpoint(restored), replicated)  # as above: one compile per shape
    # The newest good checkpoint: a corrupt latest one is skipped with a warning (checkpoints/integrity.py).
    bar.note(f"resuming at step {int(state.step)} from checkpoint {checkpoint_dir(model_dir, int(state.step))}")
  start = int(state.step)
  if start > steps:  # legal but odd: say so and change nothing (no evaluation, no metrics written)
    checkpointer.close()
    raise RunError(
      f"MODEL_DIR {model_dir} is already trained to step {start}, past TRAIN_STEPS={steps}: nothing was done "
      f"(set TRAIN_STEPS above {start} to train on, or use another MODEL_DIR)"
    )
  bar.restart_clock(start)
  if start >= steps:  # resumed a finished run: it reports its evaluation again
    bar.note(f"{model_dir} is already trained to step {start} (TRAIN_STEPS={steps}): nothing to train")
  if jax.process_index() == 0:
    write_run_config(
      model_dir,
      RunConfig(
        prompt_length=model.prompt.length,
        prompt_placement=model.prompt.placement,
        trainable_params=model.trainable_params,
        task=setup.task.name,
        mixture_or_task_module=task.module,
        vocabulary_path=task.vocabulary_path,
        task_feature_lengths=dict(task.feature_lengths),
        initial_checkpoint_path=model.checkpoint,
        model_config=setup.config,
        seed=training.seed,
        prompt_tasks=tasks or None,
        shared_prompt_length=model.prompt.shared_length,
        shared_prompt_combine=model.prompt.shared_combine,
      ),
    )
  # The best step per metric (resumed: from metrics.jsonl up to `start`), whose checkpoint stays through the
  # rotation; and MODEL_DIR/run_status.json (runs/selection.py, runs/records.py).
  best = selection.BestTracker(model_dir, training.selection_metric, resumed_step=start)
  checkpointer.protect(best.selected_step)
  status = records.StatusRecord(
    model_dir,
    train_steps=steps,
    trainable_params=records.count_params(trainable),
    model_params=records.model_param_count(setup.params),
    started=started,
    enabled=jax.process_index() == 0,
  )
  status.write(start)

  shard, shards = partitioning.data_shard(device_mesh)  # processes of one model replica read the same rows
  buckets = task.buckets()  # None: every batch padded to the feature lengths (data/buckets.py)
  # Several examples per row, each with its p prompt slots (data/packing.py): one shape, varying examples.
  packing = {"packing": packing_lib.Packing(model.prompt.length)} if task.packing else {}
  bar.note(f"reading the train split of {setup.task.name}")
  # A text corpus streams its documents (data/corpus.py: LM adaptation); other tasks are read whole.
  make_batches = getattr(setup.task, "batch_iterator", None) or functools.partial(BatchIterator, setup.task)
  batches = make_batches(
    "train",
    task.feature_lengths,
    training.batch_size,
    shuffle=True,
    seed=training.seed,
    repeat=True,
    drop_remainder=True,
    start_position=position,
    process_index=shard,
    process_count=shards,
    task_ids=setup.prompt_ids,
    length_buckets=buckets,
    **packing,
  )
  if tasks:
    multitask.check_examples(batches.task_counts(), setup.prompt_ids)
  batches.truncation.report()  # the whole split is tokenized up front: report its truncation once
  evaluator = setup_lib.evaluator(setup, task, evaluation, train_batch_size=training.batch_size, note=bar.note)
  train_step = step_lib.compile_train_step(
    step_lib.make_train_step(setup.model, tx, schedule, training.skip_nonfinite_steps, len(tasks) or None),
    device_mesh,
    frozen_shardings,
  )
  if buckets is not None and start < steps:
    # Every bucket's program before the first step: none compiles mid-run, whatever lengths come.
    bar.note(f"compiling the train step for the length buckets: {buckets.describe()}")
    specs = [step_lib.batch_spec(shape, training.batch_size, device_mesh, bool(tasks)) for shape in buckets.shapes()]
    train_step, seconds = step_lib.compile_ahead(train_step, state, frozen, jax.random.PRNGKey(training.seed), specs)
    shapes = ", ".join(f"{s['inputs']}x{s['targets']}" for s in buckets.shapes())
    logging.info(
      "compiled the train step for %d length buckets (inputs x targets: %s) in %.1f s", len(specs), shapes, seconds
    )

  def evaluate_now(state: TrainState) -> dict[str, float]:
    return evaluator.evaluate(param_tree.merge_params(state.params, frozen), evaluation.split)

  keys = BATCH_KEYS + (("task_ids",) if tasks else ())
  if packing:  # a prompt table's rows come per position in packed rows
    keys = (*BATCH_KEYS, *packing_lib.PACKED_KEYS, *(packing_lib.PACKED_TASK_KEYS if tasks else ()))

  def place(batch) -> dict[str, jax.Array]:
    return partitioning.to_global_batch({k: batch.arrays[k] for k in keys}, device_mesh)

  rng = jax.random.PRNGKey(training.seed)
  skip_limit = training.skip_nonfinite_steps

  def stop_if_diverged(state: TrainState) -> None:
    """Raises DivergenceError when the guard says so; called before anything of a step is written."""
    problem = guard_lib.diverged(state.guard, skip_limit)
    if problem is None:
      return
    last = checkpointer.latest_step()
    kept = (
      f"the last good checkpoint, {checkpoint_dir(model_dir, last)}, is untouched"
      if last is not None
      else "no checkpoint was written"
    )
    raise guard_lib.DivergenceError(
      f"training diverged {problem}; stopped before writing anything of it: {kept}. Lower the learning "
      f"rate{'' if skip_limit else ', or skip such steps with TrainSpec.skip_nonfinite_steps=N'}"
    )

  # Every process runs the same steps; only process 0 writes metrics, the progress bar and the prompt .npy.
  writer = MetricsWriter(model_dir)
  totals, period_start, eval_metrics = None, time.time(), {}
  uncounted = 0.0  # examples of the compiling first step, left out of the first period's rate
  saved = start  # the last committed checkpoint's step, for the status record
  try:
    with (
      DevicePrefetcher(batches, place, lambda it: it.position, size=training.prefetch_batches) as prefetcher,
      preemption.Preemption() as preempt,  # SIGTERM / SIGINT: save at the step boundary, then stop
    ):
      for step in range(start, steps):
        position, batch = next(prefetcher)  # position: where the stream resumes after this batch
        if step == start and buckets is None:
          bar.note("compiling the train step")
        state, metrics = train_step(state, frozen, batch, rng)
        totals = step_lib.accumulate(totals, metrics)  # stays on device: no host sync per step
        done = step + 1
        faults.point("step_done", done)  # test-only (prompt_tuning/faults.py)
        first = step == start and done < steps
        if first:  # it compiled (seconds to minutes): measure the ETA from its end
          jax.block_until_ready(state.step)
          bar.restart_clock(done)
        stop = preempt.requested(done)
        log = stop or done % training.log_period == 0 or done == steps
        # Preempted: no evaluation (the grace period is short); the resumed run evaluates at its end.
        evaluate = not stop and (done == steps or (training.eval_period and done % training.eval_period == 0))
        save = stop or done == steps or (training.save_period > 0 and done % training.save_period == 0)
        if log or evaluate or save:  # about to write: the guard first (one small read from the device)
          stop_if_diverged(state)
        if log:
          summary = step_lib.summarize(totals, tasks)  # with tasks, also '<task>/loss' and '<task>/token_accuracy'
          if not skip_limit:  # without skipping, a non-finite step never gets this far
            summary.pop("skipped_steps")
          seconds = max(time.time() - period_start, 1e-9)
          summary["examples_per_s"] = (float(jax.device_get(totals["examples"])) - uncounted) / seconds
          writer.write(done, summary, prefix="train")
          bar.update(done, loss=summary.get("loss"), examples_per_s=summary["examples_per_s"])
          totals, period_start, uncounted = None, time.time(), 0.0
        elif first:  # and out of the throughput: this period's rate counts from the second step
          period_start, uncounted = time.time(), float(jax.device_get(metrics["examples"]))
        improved = False
        if evaluate:
          eval_metrics = evaluate_now(state)
          writer.write(done, eval_metrics, prefix="eval")
          logging.info("step %d eval: %s", done, eval_metrics)
          improved = best.update(done, eval_metrics)  # the same on every process: so is the forced save
          if improved:  # protected before the save, whose rotation may then drop the previous best
            checkpointer.protect(done)
        # On every process: orbax coordinates the hosts (and writes each array once).
        if checkpointer.save(
          done,
          state.to_checkpoint(),
          position,
          force=done == steps or stop or improved,
          metrics=eval_metrics if evaluate else None,
        ):
          saved = done
          status.write(done)
        if evaluate and jax.process_index() == 0:  # after the save: best.json never names a missing checkpoint
          best.write()
          if improved:
            selection.keep_best_prompt(model_dir, done, tasks)
        if stop:
          raise preempt.stopped(done, checkpoint_dir(model_dir, done))
  except KeyboardInterrupt:  # preempted (or a second Ctrl-C): the same command resumes it
    status.end(saved, "stopped")
    raise
  except Exception as e:
    status.end(saved, "failed", e)
    raise
  finally:  # also on divergence or preemption: what was written is flushed, orbax shuts down
    bar.close()
    writer.close()
    checkpointer.close()
  if start >= steps:
    eval_metrics = evaluate_now(state)
  final = int(state.step)
  status.write(final, "finished")
  return TrainResult(
    step=final,
    config=setup.config,
    trainable=partitioning.to_host(state.params),
    frozen=partitioning.to_host(frozen),
    eval_metrics=eval_metrics,
    prompt_path=prompt_file(model_dir, final) if "prompt" in state.params else None,
    best=best.to_json(),
  )
