"""The real-workload benchmark: prompt tuning on a task's length distribution, end to end.

The question it answers (issue 15): on real inputs, short and ragged, how fast is our trainer
against PEFT with the dynamic padding its users use? Every row trains on the same examples in the
same order (the data pipeline's shuffled stream from --seed), batch for batch:

  ours bucketed     our data pipeline (data/pipeline.py BatchIterator) with length buckets
                    (data/buckets.py): each batch padded to its smallest bucket, every bucket's
                    step compiled before the first, batches placed on the devices ahead of the
                    step (train/prefetch.py), the trainer's compiled step
  ours padded       the same, every batch padded to the feature lengths (buckets off)
  ours packed       the same pipeline with packing (data/packing.py): each of the batch's rows
                    holds several whole examples, each with its own prompt copy, one compiled
                    shape; a step then trains a varying number of examples (more than the batch),
                    so its examples/s counts the examples its timed steps really read
  peft <mode> dynamic   transformers T5 + peft prompt tuning fed by a torch DataLoader with
                    DataCollatorForSeq2Seq(padding='longest'), eager or torch.compile
                    (peft_baseline.run_dynamic)

Measured: examples/s and real (unpadded) target tokens/s over the timed steps, the share of input
positions that were padding (packed: of the rows' positions other than the prompt slots), and the
time to the first step done (compilation included). Every row reads the same stream in the same
order; the packed row gets further into it in its timed steps.

The examples come from a task's data when given (`from_task`: its tokenized split, measured) or
from an approximate SuperGLUE length histogram (`from_histogram`, bench/lengths.py: documented,
not measured), with random token ids; the frozen model has random weights either way (speed does
not depend on them). The feature lengths are BenchConfig's: inputs input_length - prompt_length,
targets target_length; longer examples are cut as training cuts them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from typing import Any, Iterator

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from prompt_tuning import partitioning
from prompt_tuning.bench import BenchConfig, RunResult, is_out_of_memory, lengths, log, log_row, peft_baseline, tables
from prompt_tuning.bench.ours import init_on_device, peak_bytes
from prompt_tuning.errors import first_line
from prompt_tuning.models.model import EncoderDecoderModel, LossConfig
from prompt_tuning.models.prompt import PromptConfig, PromptedTransformer
from prompt_tuning.train import optimizer as optimizer_lib
from prompt_tuning.train import step as step_lib
from prompt_tuning.train.state import TrainState

EOS = 1
OURS_ROWS = ("bucketed", "padded", "packed")


@dataclasses.dataclass(frozen=True)
class Workload:
  """Examples as token ids without EOS (the pipeline appends it): inputs[i], targets[i] lists of int."""

  name: str
  source: str  # where the lengths come from, for the report
  inputs: list[list[int]]
  targets: list[list[int]]


def from_histogram(name: str, count: int, vocab_size: int, seed: int) -> Workload:
  """`count` examples whose lengths are drawn from lengths.HISTOGRAMS[name], random ids in [2, vocab)."""
  if name not in lengths.HISTOGRAMS:
    raise ValueError(f"--workload {name!r}: no histogram of that name; there are {', '.join(lengths.HISTOGRAMS)}")
  if count < 1:
    raise ValueError(f"--workload_examples must be >= 1, got {count}")
  histogram = lengths.HISTOGRAMS[name]
  input_lengths, target_lengths = histogram.sample(count, seed)
  rng = np.random.default_rng([seed, 1])
  # The histograms count EOS, which the pipeline adds: one id fewer here.
  inputs = [rng.integers(2, vocab_size, n - 1).tolist() for n in input_lengths]
  targets = [rng.integers(2, vocab_size, m - 1).tolist() for m in target_lengths]
  source = f"approximate histogram '{name}' (mean {histogram.mean_tokens} input tokens; bench/lengths.py)"
  return Workload(name, source, inputs, targets)


def from_task(task_name: str, split: str, vocab_size: int) -> Workload:
  """The tokenized examples of a registered task's split, as training reads them (needs the task's data;
  TensorFlow only for tfds tasks)."""
  from prompt_tuning import task_registry

  task = task_registry.resolve_task(task_name)
  if split not in task.splits:
    raise ValueError(f"--workload_split {split!r}: task {task.name} has {', '.join(task.splits)}")
  vocab, inputs, targets = task.vocabulary, [], []
  for example in task.examples(split):
    inputs.append(list(example["inputs_ids"]) if "inputs_ids" in example else vocab.encode(example["inputs"]))
    targets.append(list(example["targets_ids"]) if "targets_ids" in example else vocab.encode(example["targets"]))
  if not inputs:
    raise ValueError(f"--workload_task {task_name}: split {split} has no examples")
  top = max(max(ids, default=0) for ids in inputs + targets)
  if top >= vocab_size:
    raise ValueError(f"--workload_task {task_name}: token id {top} is outside the model's vocabulary of {vocab_size}")
  return Workload(task.name, f"task {task.name}, split {split} ({len(inputs)} examples, measured)", inputs, targets)


class _WorkloadTask:
  """A Workload as a `Task` (data/task.py) for the pipeline: the examples carry their ids."""

  splits = ["train"]
  metrics: tuple = ()
  candidates = None

  def __init__(self, workload: Workload, vocab_size: int):
    self.name = f"workload_{workload.name}"
    self.vocabulary = type("Ids", (), {"eos_id": EOS, "vocab_size": vocab_size})()
    self._workload = workload

  def examples(self, split: str):
    for i, (x, y) in enumerate(zip(self._workload.inputs, self._workload.targets)):
      yield {"inputs": "", "targets": "", "idx": i, "inputs_ids": x, "targets_ids": y}

  def score(self, records):
    return {}


def feature_lengths(cfg: BenchConfig) -> dict[str, int]:
  return {"inputs": cfg.token_length, "targets": cfg.target_length}


def packed_feature_lengths(cfg: BenchConfig, packed_target_length: int | None) -> dict[str, int]:
  """The packed row's: the same encoder row, and a decoder row of `packed_target_length` (None: twice
  cfg.target_length). A classification target (a label and EOS) takes several of the unpacked row's
  few target positions, so at the unpacked length the decoder row, not the encoder's, would stop a row
  at one or two examples; a user packing sets a longer targets length for the same reason."""
  targets = 2 * cfg.target_length if packed_target_length is None else packed_target_length
  return {**feature_lengths(cfg), "targets": targets}


def _iterator(
  cfg: BenchConfig, workload: Workload, vocab_size: int, length_buckets: Any, packed_lengths: dict | None = None
) -> Any:
  """Our pipeline over the workload; packed rows of `packed_lengths` when given."""
  from prompt_tuning.data.packing import Packing
  from prompt_tuning.data.pipeline import BatchIterator

  # The trainer's own iterator and order: shuffled from the seed, endless, full batches.
  return BatchIterator(
    _WorkloadTask(workload, vocab_size), "train", packed_lengths or feature_lengths(cfg), cfg.batch,
    shuffle=True, seed=cfg.seed, repeat=True, drop_remainder=True, length_buckets=length_buckets,
    packing=None if packed_lengths is None else Packing(cfg.prompt_length),
  )  # fmt: skip


def peft_examples(cfg: BenchConfig, workload: Workload, vocab_size: int) -> tuple[list[dict], list[int]]:
  """(examples as PEFT gets them, their order): the very ids and order of our pipeline's first
  (warmup + steps) batches, EOS-terminated and cut to the feature lengths as ours are."""
  from prompt_tuning.data import features
  from prompt_tuning.data.pipeline import epoch_permutation

  task = _WorkloadTask(workload, vocab_size)
  tokenized = features.tokenize(task.examples("train"), task.vocabulary, feature_lengths(cfg))
  examples = [{"input_ids": ex["inputs_ids"], "labels": ex["targets_ids"]} for ex in tokenized]
  n, count = len(examples), (cfg.warmup + cfg.steps) * cfg.batch
  order = [int(epoch_permutation(n, cfg.seed, i // n)[i % n]) for i in range(count)]  # BatchIterator's stream
  return examples, order


@contextlib.contextmanager
def _xla_compiles() -> Iterator[list[str]]:
  """Collects the names of the programs XLA compiles inside the block."""
  from jax._src import dispatch  # BACKEND_COMPILE_EVENT: no public name for the event yet

  seen: list[str] = []

  def listener(event: str, duration: float, **kwargs: Any) -> None:
    if event == dispatch.BACKEND_COMPILE_EVENT:
      seen.append(kwargs.get("fun_name", "?"))

  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    yield seen
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)


def run_ours(
  cfg: BenchConfig, workload: Workload, length_buckets: Any, packed_lengths: dict[str, int] | None = None
) -> RunResult:
  """Our trainer over the workload, buckets from the spec `length_buckets` (None: padded), or packed
  rows of `packed_lengths` (packed_feature_lengths); 'out of memory' instead of a crash."""
  packed = packed_lengths is not None
  name = "ours packed" if packed else "ours bucketed" if length_buckets is not None else "ours padded"
  try:
    return _run_ours(name, cfg, workload, length_buckets, packed_lengths)
  except Exception as e:  # XlaRuntimeError RESOURCE_EXHAUSTED
    if not is_out_of_memory(e):
      raise
    return RunResult(name, error="out of memory", extra={"detail": first_line(e)[:300]})


def _run_ours(
  name: str, cfg: BenchConfig, workload: Workload, spec: Any, packed_lengths: dict[str, int] | None
) -> RunResult:
  from prompt_tuning.data.buckets import make_buckets
  from prompt_tuning.data.features import BATCH_KEYS
  from prompt_tuning.data.packing import PACKED_KEYS
  from prompt_tuning.train.prefetch import DevicePrefetcher

  config = cfg.t5_config()
  mesh = partitioning.make_mesh(cfg.num_partitions)
  module = PromptedTransformer(config, prompt_config=PromptConfig(cfg.prompt_length))
  model = EncoderDecoderModel(module, LossConfig())
  log(f"{name}: initializing {cfg.model} ({cfg.dtype}) on {mesh.devices.size} device(s)")
  trainable, frozen, frozen_shardings = init_on_device(module, mesh, cfg.seed)
  tx, schedule = optimizer_lib.adafactor()
  state = jax.device_put(TrainState.create(trainable, tx), NamedSharding(mesh, PartitionSpec()))
  train_step = step_lib.compile_train_step(step_lib.make_train_step(model, tx, schedule), mesh, frozen_shardings)
  rng = jax.random.PRNGKey(cfg.seed)
  buckets = make_buckets(spec, feature_lengths(cfg))
  batches = _iterator(cfg, workload, config.vocab_size, buckets, packed_lengths)
  packed = packed_lengths is not None
  keys = (*BATCH_KEYS, *PACKED_KEYS) if packed else BATCH_KEYS

  def place(batch: Any) -> tuple[dict[str, int], dict[str, jax.Array]]:
    arrays = batch.arrays
    inputs = int((arrays["encoder_input_tokens"] > 0).sum())  # real tokens: prompt slots hold 0
    counts = {
      "targets": int(arrays["decoder_loss_weights"].sum()),
      "inputs": inputs,
      # Positions other than the prompt's: unpacked, the n input positions of each row; packed, the
      # real tokens and the padding (segment id 0) of each row, its examples' prompt slots aside.
      "positions": inputs + int((arrays["encoder_segment_ids"] == 0).sum())
      if packed
      else arrays["encoder_input_tokens"].size,
      "examples": int(arrays["decoder_segment_ids"].max(axis=1).sum()) if packed else int(arrays["mask"].sum()),
    }
    return counts, partitioning.to_global_batch({k: arrays[k] for k in keys}, mesh)

  jax.block_until_ready(frozen)
  start = time.perf_counter()
  shapes = None
  if buckets is not None:
    log(f"{name}: compiling the step for the length buckets {buckets.describe()}")
    specs = [step_lib.batch_spec(shape, cfg.batch, mesh) for shape in buckets.shapes()]
    train_step, _ = step_lib.compile_ahead(train_step, state, frozen, rng, specs)
    shapes = len(specs)
  counts = {"targets": 0, "inputs": 0, "positions": 0, "examples": 0}
  with DevicePrefetcher(batches, place, lambda it: it.position, size=2) as prefetcher:
    log(f"{name}: {cfg.warmup} warmup and {cfg.steps} timed steps")
    for i in range(cfg.warmup):
      state, metrics = train_step(state, frozen, next(prefetcher)[1][1], rng)
      if i == 0:
        jax.block_until_ready(state)
        compile_s = time.perf_counter() - start  # compiling (all buckets, or the one shape) + one step
    jax.block_until_ready(state)
    start = time.perf_counter()
    timed_shapes = set()
    with _xla_compiles() as compiled_while_timed:
      for _ in range(cfg.steps):
        _, (batch_counts, batch) = next(prefetcher)
        state, metrics = train_step(state, frozen, batch, rng)
        counts = {k: counts[k] + batch_counts[k] for k in counts}
        timed_shapes.add((batch["encoder_input_tokens"].shape[1], batch["decoder_target_tokens"].shape[1]))
      jax.block_until_ready(state)
    seconds = time.perf_counter() - start
  local = [d for d in mesh.devices.flat if d.process_index == jax.process_index()]
  return RunResult.timed(
    name,
    seconds,
    cfg.steps,
    counts["examples"] / cfg.steps,  # packed: examples per step vary, more than the batch's rows
    None,
    peak_bytes(local),
    compile_s,
    target_tokens_per_s=counts["targets"] / seconds,
    input_padding=1 - counts["inputs"] / counts["positions"],
    buckets=None if buckets is None else buckets.describe(),
    target_length=(packed_lengths or feature_lengths(cfg))["targets"],
    compiled_shapes=shapes,
    examples_timed=counts["examples"],
    batch_shapes_timed=len(timed_shapes),
    graphs_compiled_timed=len(compiled_while_timed),
    final_loss=float(metrics["loss"]),
    step=int(state.step),
  )


def run(
  cfg: BenchConfig,
  workload: Workload,
  length_buckets: Any,
  peft_modes: tuple[str, ...],
  peft_options: peft_baseline.Dynamic | None = None,
  ours_rows: tuple[str, ...] = OURS_ROWS,
  packed_target_length: int | None = None,
) -> list[RunResult]:
  """The PEFT rows first (they hand their memory back; JAX would not; `peft_options`: a
  peft_baseline.Dynamic, None for its defaults), then ours: of `ours_rows`, bucketed, padded and
  packed (its decoder row `packed_target_length` long, packed_feature_lengths)."""
  vocab_size = cfg.t5_config().vocab_size
  baseline = []
  if peft_modes:
    examples, order = peft_examples(cfg, workload, vocab_size)
    baseline = peft_baseline.run_dynamic(cfg, examples, order, peft_modes, peft_options or peft_baseline.Dynamic())
  ours = []
  packed_lengths = packed_feature_lengths(cfg, packed_target_length)
  for row, buckets, row_lengths in (
    ("bucketed", length_buckets, None),
    ("padded", None, None),
    ("packed", None, packed_lengths),
  ):
    if row in ours_rows:
      ours.append(run_ours(cfg, workload, buckets, row_lengths))
      log_row(ours[-1])
  return [*ours, *baseline]


def ratios(results: list[RunResult]) -> dict[str, float | None]:
  """ours packed and ours bucketed examples/s over every other row's (bucketed: but packed), and ours
  padded over every PEFT row's (> 1: ours faster). Every row trains on the same stream of examples, so
  the target tokens/s ratio is about the same."""
  out = {}
  for ours_name in ("ours packed", "ours bucketed", "ours padded"):
    ours = next((r for r in results if r.name == ours_name), None)
    if ours is None:
      continue
    for r in results:
      already = ours_name != "ours packed" and r.name == "ours packed"
      if r.name != ours.name and not already and not (ours_name == "ours padded" and r.name.startswith("ours")):
        ok = ours.examples_per_s is not None and r.examples_per_s is not None
        out[f"{ours_name} / {r.name}"] = ours.examples_per_s / r.examples_per_s if ok else None
  return out


def format_report(data: dict[str, Any]) -> str:
  cfg, env, work = data["config"], data["environment"], data["workload"]
  versions = ", ".join(f"{k} {v}" for k, v in env["versions"].items() if v)
  lines = [
    (
      f"prompt-tuning bench --mode workload: {cfg['model']} {cfg['dtype']}, batch {cfg['batch']}, prompt "
      f"{cfg['prompt_length']} + inputs up to {cfg['input_length'] - cfg['prompt_length']} tokens, targets up to "
      f"{cfg['target_length']}; {cfg['steps']} timed steps after {cfg['warmup']} warmup, the same examples for every row"
    ),
    f"workload: {work['source']}; {work['examples']} examples",
    f"jax device: {env['jax_device']} x{env['jax_devices']}; torch device: {env['torch_device'] or '-'}; {versions}",
    "",
  ]
  lines += tables.table(
    data["results"],
    22,
    [
      ("step ms", "9.2f", tables.field("step_ms")),
      ("examples/s", "11.2f", tables.field("examples_per_s")),
      ("target tok/s", "13.1f", tables.extra("target_tokens_per_s")),
      ("padding", "8.1%", tables.extra("input_padding")),
      ("1st step s", "11.1f", tables.field("compile_s")),
      ("shapes", "7d", tables.extra("batch_shapes_timed")),
      ("compiled while timed", "21d", tables.extra("graphs_compiled_timed")),
    ],
  )
  buckets = data["results"].get("ours_bucketed", {}).get("extra", {}).get("buckets")
  packed_targets = data["results"].get("ours_packed", {}).get("extra", {}).get("target_length")
  lines += [
    "",
    f"ours bucketed: buckets {buckets}; ours packed: several examples per row (decoder row {packed_targets}), so "
    "more examples per step; padding: "
    "the share of input positions (prompt aside) that pad; shapes: distinct batch shapes in the timed steps; "
    "compiled while timed: programs compiled during them (ours: XLA's, PEFT: TorchDynamo graphs)",
  ]
  peft_rows = [r["extra"] for k, r in data["results"].items() if k.startswith("peft") and r.get("extra")]
  if peft_rows and peft_rows[0].get("pad_to_multiple_of"):
    lines.append(f"PEFT rows: DataCollatorForSeq2Seq(pad_to_multiple_of={peft_rows[0]['pad_to_multiple_of']})")
  if any(extra.get("mark_dynamic") for extra in peft_rows):
    lines.append("PEFT compiled rows: each batch's length dimensions marked dynamic (torch._dynamo.maybe_mark_dynamic)")
  for name, ratio in data["ratios"].items():
    lines.append(f"{name + ':':44s} {'-' if ratio is None else f'{ratio:.2f}x'}  (examples/s; > 1: the first faster)")
  return "\n".join(lines)
