"""FP8 against bf16 over a prompt-tuning run: speed, memory, the loss and the prompt's trajectory.

`prompt-tuning bench --mode fp8` trains one prompt three times, from the same
initial prompt on the same batches, with the trainer's own step (Adafactor,
prompt only) on the bench's random frozen weights (query kernels scaled as
t5x initializes them, see `t5x_query_scale`):

  bf16         the frozen layer matmuls in the activation dtype: the reference
  fp8          the same run with T5Config.matmul_dtype='fp8'
  bf16 nudged  the reference again, from the initial prompt scaled by (1 + eps)
               of the activation dtype (one bf16 ulp): how far two bf16 runs drift
               apart from a change that means nothing. An FP8 gap near it is the
               run's own sensitivity; one far above it is FP8's cost.

The task is synthetic and learnable, so the loss means something without a
dataset or a pretrained checkpoint (`keyword_batch`). At `points` steps it
compares each run with the reference: the mean loss and token accuracy over
the steps since the last point (the same batches in every run), and the prompt, as
||p - p_ref|| / ||p_ref|| and cosine, and as its update from the initial
prompt (p - p0 against p_ref - p0_ref: the part training changed, which the
prompt's own norm would otherwise hide). The end: the loss gap averaged over
the last tenth of the steps, and each final prompt's held-out loss and
accuracy on the label token, through the bf16 model.

Step time excludes the first (compiling) step; no host sync inside the loop
(losses and prompt snapshots stay on the device until the end).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from prompt_tuning import param_tree, partitioning
from prompt_tuning.bench import BenchConfig, RunResult, flops, is_out_of_memory, log, log_row, tables
from prompt_tuning.bench.ours import init_on_device, peak_bytes, program_bytes
from prompt_tuning.errors import first_line
from prompt_tuning.models.model import EncoderDecoderModel, LossConfig
from prompt_tuning.models.prompt import PromptConfig, PromptedTransformer
from prompt_tuning.train import optimizer as optimizer_lib
from prompt_tuning.train import step as step_lib
from prompt_tuning.train.state import TrainState

SHORT = {"bfloat16": "bf16", "float32": "f32"}
SERIES = ("prompt_rel_l2", "prompt_cosine", "update_rel_l2", "update_cosine")


@dataclasses.dataclass(frozen=True)
class TrajectoryConfig:
  """steps: optimizer steps per run; points: how many steps (evenly spaced, the last included) compare
  the runs; vocab: input token ids of the task (2 .. vocab + 1); heldout_batches: batches of the
  held-out evaluation; learning_rate: Adafactor's (the paper's 0.3 by default)."""

  steps: int = 300
  points: int = 10
  vocab: int = 256
  heldout_batches: int = 8
  learning_rate: float = 0.3

  def __post_init__(self):
    for field in ("steps", "points", "heldout_batches"):
      if getattr(self, field) < 1:
        raise ValueError(f"--trajectory_{field} must be >= 1, got {getattr(self, field)}")
    if self.vocab < 2 or self.vocab % 2:
      raise ValueError(f"the task's vocab must be even and >= 2, got {self.vocab}")
    if self.points > self.steps:
      raise ValueError(f"--trajectory_points={self.points} exceeds --trajectory_steps={self.steps}")
    if not self.learning_rate > 0:
      raise ValueError(f"--trajectory_learning_rate must be > 0, got {self.learning_rate}")

  def compared_steps(self) -> list[int]:
    return sorted({round(self.steps * (i + 1) / self.points) for i in range(self.points)})

  def task(self, cfg: BenchConfig) -> str:
    half = self.vocab // 2
    return (
      f"keyword classification: class c in {{0, 1}}; {cfg.token_length} input ids, each from c's half of "
      f"2..{self.vocab + 1} with probability {KEYWORD_SHARE} ({half} ids a half); target: label id "
      f"{self.vocab + 2} + c, then EOS"
    )


KEYWORD_SHARE = 0.75  # of an input's ids drawn from its class's half of the ids (the rest: the other half)


def keyword_batch(cfg: BenchConfig, tcfg: TrajectoryConfig, key: tuple[int, ...]) -> dict[str, np.ndarray]:
  """The batch drawn for `key` (e.g. (seed, 0, step)) of the task `TrajectoryConfig.task` describes.

  A bag-of-words problem like the quick start's keyword sentiment: a prompt on a random frozen T5 can
  learn the label ids, EOS and, above the 50% of the label prior, some of the class (measured on
  t5_1_1_small, float32, batch 8: loss 11 -> 0.4, label accuracy 66% and rising after 200 steps).
  Shapes as the bench's batches: encoder_input_tokens [batch, token_length], decoder_* [batch,
  target_length] with the target [label, EOS, 0...] and loss weights on its two tokens.
  """
  rng = np.random.default_rng(key)
  half = tcfg.vocab // 2
  label = rng.integers(0, 2, cfg.batch)
  own = rng.random((cfg.batch, cfg.token_length)) < KEYWORD_SHARE
  start = 2 + half * np.where(own, label[:, None], 1 - label[:, None])
  inputs = (start + rng.integers(0, half, own.shape)).astype(np.int32)
  targets = np.zeros((cfg.batch, cfg.target_length), np.int32)
  targets[:, 0] = tcfg.vocab + 2 + label
  if cfg.target_length > 1:
    targets[:, 1] = 1  # EOS
  return {
    "encoder_input_tokens": inputs,
    "decoder_input_tokens": np.concatenate([np.zeros_like(targets[:, :1]), targets[:, :-1]], axis=1),
    "decoder_target_tokens": targets,
    "decoder_loss_weights": (targets > 0).astype(np.float32),
  }


def t5x_query_scale(frozen: dict, head_dim: int) -> dict:
  """`frozen` with every attention query kernel scaled by head_dim**-0.5, as t5x initializes them
  (layers.MultiHeadAttention's query_init). The bench's speed-only weights leave that factor out,
  which saturates every softmax: a prompt then cannot steer the model at all (t5_1_1_small's loss
  did not move in 200 steps)."""
  flat = param_tree.flatten(frozen)
  return param_tree.unflatten(
    {path: value * head_dim**-0.5 if path.endswith("/query/kernel") else value for path, value in flat.items()}
  )


def _global(batch: dict[str, np.ndarray], mesh) -> dict[str, jax.Array]:
  shard, shards = partitioning.data_shard(mesh)  # each process supplies its rows, as the trainer does
  rows = batch["encoder_input_tokens"].shape[0] // shards
  return partitioning.to_global_batch({k: v[shard * rows : (shard + 1) * rows] for k, v in batch.items()}, mesh)


def _train(name, step_fn, state, frozen, batches, rng, compared, cfg, config, mesh) -> tuple[RunResult, Any]:
  """One run: (its row, {'loss', 'accuracy': [steps] host arrays, 'prompts': {step: [p, d]}, 'final': prompt})."""
  start = time.perf_counter()
  state, metrics = step_fn(state, frozen, batches[0], rng)  # compiles (unless an earlier run did)
  jax.block_until_ready(state)
  compile_s = time.perf_counter() - start
  history, prompts = [metrics], {}
  start = time.perf_counter()
  for i in range(1, len(batches)):
    if i in compared:  # a copy: the next step donates the state's buffers
      prompts[i] = jnp.copy(state.params["prompt"]["prompt"])
    state, metrics = step_fn(state, frozen, batches[i], rng)
    history.append(metrics)
  jax.block_until_ready(state)
  seconds = time.perf_counter() - start
  prompts[len(batches)] = state.params["prompt"]["prompt"]
  history = jax.device_get(history)
  loss = np.array([float(m["loss"]) for m in history])
  accuracy = np.array([float(m["correct_tokens"]) / max(float(m["num_tokens"]), 1.0) for m in history])
  devices = list(mesh.devices.flat)
  step_bytes = program_bytes(step_fn, state, frozen, batches[0], rng)
  row = RunResult.timed(
    name,
    seconds,
    max(len(batches) - 1, 1),
    cfg.batch,
    flops.flops_per_step(config, cfg.batch, cfg.input_length, cfg.target_length),
    peak_bytes([d for d in devices if d.process_index == jax.process_index()]),
    compile_s,
    matmul_dtype=config.matmul_dtype,
    step_memory_gib=None if step_bytes is None else step_bytes / 2**30,
  )
  snapshots = {step: np.asarray(jax.device_get(p), np.float32) for step, p in prompts.items()}
  return row, {"loss": loss, "accuracy": accuracy, "prompts": snapshots}


def _rel_and_cos(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
  a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
  norm = np.linalg.norm(b)
  cosine = float(a @ b / (np.linalg.norm(a) * norm)) if norm and np.linalg.norm(a) else float("nan")
  return float(np.linalg.norm(a - b) / norm) if norm else float("nan"), cosine


def windows(series: np.ndarray, steps: list[int]) -> list[float]:
  """The mean of a per-step series over each stretch of steps ending at one of `steps` (1-based):
  steps (0, s1], (s1, s2], ... Smoother than one batch, and still paired across runs."""
  bounds = [0, *steps]
  return [float(np.mean(series[a:b])) for a, b in zip(bounds, bounds[1:])]


def compare(run: dict, ref: dict, p0: np.ndarray, p0_ref: np.ndarray, steps: list[int]) -> dict[str, Any]:
  """The series of one run against the reference at `steps` (1-based), and the end's loss gap."""
  out: dict[str, Any] = {"steps": steps, "loss_gap": [], **{k: [] for k in SERIES}}
  out["loss_gap"] = [a - b for a, b in zip(windows(run["loss"], steps), windows(ref["loss"], steps))]
  for step in steps:
    p, p_ref = run["prompts"][step], ref["prompts"][step]
    for prefix, (a, b) in (("prompt", (p, p_ref)), ("update", (p - p0, p_ref - p0_ref))):
      rel, cos = _rel_and_cos(a, b)
      out[f"{prefix}_rel_l2"].append(rel)
      out[f"{prefix}_cosine"].append(cos)
  window = max(1, len(ref["loss"]) // 10)
  gap = float(np.mean(run["loss"][-window:]) - np.mean(ref["loss"][-window:]))
  out.update(
    final_window=window,
    final_loss_gap=gap,
    final_loss_gap_relative=gap / float(np.mean(ref["loss"][-window:])),
    heldout_loss_gap=run["heldout_loss"] - ref["heldout_loss"],
    heldout_accuracy_gap=run["heldout_accuracy"] - ref["heldout_accuracy"],
  )
  return out


def run_names(cfg: BenchConfig) -> tuple[str, str, str]:
  """('bf16', 'fp8', 'bf16 nudged') for --dtype bfloat16: the first is the reference of the others."""
  ref = SHORT[cfg.dtype]
  return ref, "fp8", f"{ref} nudged"


def run(cfg: BenchConfig, tcfg: TrajectoryConfig) -> tuple[list[RunResult], dict[str, dict]]:
  """The three runs of run_names (rows, logged as they finish) and the comparisons with the first."""
  names = run_names(cfg)
  base = cfg.t5_config().replace(matmul_dtype="default")
  configs = dict(zip(names, (base, base.replace(matmul_dtype="fp8"), base)))
  mesh = partitioning.make_mesh(cfg.num_partitions)
  modules = {k: PromptedTransformer(c, prompt_config=PromptConfig(cfg.prompt_length)) for k, c in configs.items()}
  log(f"fp8: initializing {cfg.model} ({cfg.dtype}) on {mesh.devices.size} device(s)")
  trainable, frozen, frozen_shardings = init_on_device(modules[names[0]], mesh, cfg.seed)
  p0 = np.asarray(jax.device_get(trainable["prompt"]["prompt"]), np.float32)
  nudge = np.float32(1 + float(jnp.finfo(base.activation_dtype).eps))  # one ulp of the activation dtype
  initial = dict(zip(names, (p0, p0, p0 * nudge)))
  frozen = t5x_query_scale(frozen, base.head_dim)
  batches = [_global(keyword_batch(cfg, tcfg, (cfg.seed, 0, i)), mesh) for i in range(tcfg.steps)]
  heldout = [keyword_batch(cfg, tcfg, (cfg.seed, 1, i)) for i in range(tcfg.heldout_batches)]
  for batch in heldout:  # held out: the label token's loss and accuracy only
    batch["decoder_loss_weights"][:, 1:] = 0.0
  heldout = [_global(batch, mesh) for batch in heldout]
  tx, schedule = optimizer_lib.adafactor(tcfg.learning_rate)
  replicated = NamedSharding(mesh, PartitionSpec())
  rng = jax.random.PRNGKey(cfg.seed)
  reference_model = EncoderDecoderModel(modules[names[0]], LossConfig())
  evaluate = jax.jit(lambda t, f, b: reference_model.loss(param_tree.merge_params(t, f), b)[1])
  steps_fns: dict[Any, Any] = {}  # one compiled step per distinct config: the nudged run reuses bf16's
  rows, runs = [], {}
  compared = set(tcfg.compared_steps())
  for name in names:
    config = configs[name]
    if config not in steps_fns:
      step = step_lib.make_train_step(EncoderDecoderModel(modules[name], LossConfig()), tx, schedule)
      steps_fns[config] = step_lib.compile_train_step(step, mesh, frozen_shardings)
    state = jax.device_put(TrainState.create({"prompt": {"prompt": jnp.asarray(initial[name])}}, tx), replicated)
    log(f"fp8: training '{name}' for {tcfg.steps} steps")
    try:
      row, record = _train(name, steps_fns[config], state, frozen, batches, rng, compared, cfg, config, mesh)
    except Exception as e:  # XlaRuntimeError RESOURCE_EXHAUSTED
      if not is_out_of_memory(e):
        raise
      extra = {"detail": first_line(e)[:300], "matmul_dtype": config.matmul_dtype}
      row, record = RunResult(name, error="out of memory", extra=extra), None
    if record is not None:
      final = {"prompt": {"prompt": jnp.asarray(record["prompts"][tcfg.steps])}}
      sums = jax.device_get([evaluate(final, frozen, b) for b in heldout])
      tokens = sum(float(s["num_tokens"]) for s in sums)
      record["heldout_loss"] = sum(float(s["loss_sum"]) for s in sums) / tokens
      record["heldout_accuracy"] = sum(float(s["correct_tokens"]) for s in sums) / tokens
      points = sorted(compared)
      row.extra.update(
        steps=points,
        loss=windows(record["loss"], points),
        accuracy=windows(record["accuracy"], points),
        heldout_loss=record["heldout_loss"],
        heldout_accuracy=record["heldout_accuracy"],
      )
      runs[name] = record
    log_row(row)
    rows.append(row)
  reference = runs.get(names[0])
  comparisons = {
    name: compare(runs[name], reference, initial[name], initial[names[0]], sorted(compared))
    for name in names[1:]
    if reference is not None and name in runs
  }
  return rows, comparisons


def report(
  cfg: BenchConfig, tcfg: TrajectoryConfig, rows: list[RunResult], comparisons: dict, environment: dict
) -> dict[str, Any]:
  """Everything --mode fp8 prints, as one JSON-able dict (rows keyed with '_' for ' ')."""
  by_name = {r.name: r for r in rows}
  ref, fp8 = (by_name.get(n) for n in run_names(cfg)[:2])
  speedup = None
  if ref is not None and fp8 is not None and ref.examples_per_s and fp8.examples_per_s:
    speedup = fp8.examples_per_s / ref.examples_per_s
  return {
    "config": dataclasses.asdict(cfg),
    "trajectory": {**dataclasses.asdict(tcfg), "task": tcfg.task(cfg), "compared_steps": tcfg.compared_steps()},
    "environment": environment,
    "results": {r.name.replace(" ", "_"): r.to_dict() for r in rows},
    "comparisons": {name.replace(" ", "_"): c for name, c in comparisons.items()},
    "fp8_speedup": speedup,
    "speedup_definition": "fp8 examples/s / reference examples/s (> 1: fp8 faster)",
  }


def format_report(data: dict[str, Any]) -> str:
  cfg, traj, env = data["config"], data["trajectory"], data["environment"]
  results, comparisons = data["results"], data["comparisons"]
  names = [name.replace("_", " ") for name in results]
  versions = ", ".join(f"{k} {v}" for k, v in env["versions"].items() if v)
  lines = [
    (
      f"prompt-tuning bench --mode fp8: {cfg['model']} {cfg['dtype']} (attention {cfg['attention_impl']}, remat "
      f"{cfg['remat_policy']}), batch {cfg['batch']}, input {cfg['input_length']} (prompt {cfg['prompt_length']} + "
      f"{cfg['input_length'] - cfg['prompt_length']} tokens), target {cfg['target_length']}; {traj['steps']} Adafactor "
      f"steps of the prompt per run from the same initial prompt on the same batches; task: {traj['task']}"
    ),
    f"jax device: {env['jax_device']} x{env['jax_devices']} ({env['jax_platform']}); versions: {versions}",
    "",
  ]
  lines += tables.table(
    results,
    13,
    [
      ("step ms", "9.2f", tables.field("step_ms")),
      ("examples/s", "11.1f", tables.field("examples_per_s")),
      ("TFLOP/s", "8.1f", tables.field("tflops")),
      ("peak GiB", "9.2f", tables.field("peak_gib")),
      ("step GiB", "9.2f", tables.extra("step_memory_gib")),
      ("1st step s", "11.1f", tables.field("compile_s")),
      ("label loss", "11.4f", tables.extra("heldout_loss")),
      ("label acc", "10.4f", tables.extra("heldout_accuracy")),
    ],
  )
  lines += [
    "label loss/acc: each final prompt on held-out batches through the reference model, the label token only",
    "",
    "mean loss (token accuracy: label and EOS) over the steps since the row above; the same batches in every run:",
  ]
  ok = {n: r for n, r in results.items() if not r["error"]}
  lines.append(f"{'step':>6s} " + " ".join(f"{n.replace('_', ' '):>17s}" for n in ok))
  for i, step in enumerate(traj["compared_steps"]):
    cells = [f"{r['extra']['loss'][i]:9.4f} ({r['extra']['accuracy'][i]:.3f})" for r in ok.values()]
    lines.append(f"{step:6d} " + " ".join(f"{c:>17s}" for c in cells))
  reference = names[0]
  for name, c in comparisons.items():
    lines += [
      "",
      f"{name.replace('_', ' ')} vs {reference} (update = prompt - initial prompt):",
      f"{'step':>6s} {'loss gap':>9s} {'prompt rel L2':>14s} {'prompt cos':>11s} {'update rel L2':>14s} {'update cos':>11s}",
    ]
    for i, step in enumerate(c["steps"]):
      lines.append(
        f"{step:6d} {c['loss_gap'][i]:+9.4f} {c['prompt_rel_l2'][i]:14.3e} {c['prompt_cosine'][i]:11.6f} "
        f"{c['update_rel_l2'][i]:14.3e} {c['update_cosine'][i]:11.6f}"
      )
    lines.append(
      f"end: loss gap {c['final_loss_gap']:+.4f} ({100 * c['final_loss_gap_relative']:+.2f}%) over the last "
      f"{c['final_window']} steps; held-out loss gap {c['heldout_loss_gap']:+.4f}, accuracy gap "
      f"{c['heldout_accuracy_gap']:+.4f} (the label token)"
    )
  if data["fp8_speedup"] is not None:
    lines += ["", f"fp8 / {reference}: {data['fp8_speedup']:.3f}x examples/s (> 1: fp8 faster)"]
  return "\n".join(lines)
