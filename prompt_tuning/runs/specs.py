"""What a run is made of, in small frozen specs that every entry point shares.

  ModelSpec       the frozen T5 (config, checkpoint, dtypes, loss) and the prompt on it (PromptSpec)
  TaskSpec        the task or mixture and its feature lengths (t5x's DatasetConfig, less split and batch)
  TrainSpec       steps, batch, optimizer, seed and the save/log/eval periods
  EvaluationSpec  which split, in what batches, scored how (decoding, rank classification)
  MeshSpec        the device mesh
  PromptDesignSpec  evaluate's prompt-design baseline: a text template and k demonstrations, no prompt

`train`, `evaluate` and `infer` (prompt_tuning.runs) take these. gin/runs/common.gin builds them
once from the t5x-style macros (MODEL_DIR, MIXTURE_OR_TASK_NAME, ...), and from Python they are
plain constructors:

  ModelSpec(config="t5_1_1_base", checkpoint="/ckpt", prompt=PromptSpec(length=20))
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Sequence

import jax

from prompt_tuning import param_tree, partitioning, prompt_init
from prompt_tuning.data import buckets as buckets_lib
from prompt_tuning.data import packing as packing_lib
from prompt_tuning.data.design import template_fields
from prompt_tuning.models.model import LossConfig
from prompt_tuning.models.prompt import SHARED_COMBINES
from prompt_tuning.models.t5.config import RandomInitConfig, T5Config
from prompt_tuning.train import optimizer as optimizer_lib

_PLACEMENTS = ("prefix", "after_first", "suffix")
_DTYPES = ("float32", "bfloat16", "float16")


def _check(condition: bool, message: str) -> None:
  if not condition:
    raise ValueError(message)


def _positive_int(value: Any) -> bool:
  return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _natural(value: Any) -> bool:
  return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _bundle_paths(value: Any) -> bool:
  """A bundle path, or a list (tuple) of them: an ensemble (empty: caught with its own message)."""
  return isinstance(value, str) or (isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value))


@dataclasses.dataclass(frozen=True)
class PromptSpec:
  """The soft prompt P [length, embed] and where it goes.

  length: p, the number of prompt vectors (gin: PROMPT_LENGTH).
  placement: 'prefix' ([P; X], the paper's), 'after_first' (after the first token) or 'suffix'.
  init: an initializer factory from prompt_tuning.prompt_init (gin/prompts/*.gin pick one).
  per_task: training on a mixture, one prompt per member task, each example training its own task's
    (gin: MULTI_TASK_PROMPTS; runs/multitask.py).
  shared_length: with per_task, the length of a part shared by all tasks (gin: SHARED_PROMPT_LENGTH);
    'concat': [shared; task], 0 < shared_length < length; 'add': shared + task, shared_length = length.
  shared_combine: 'concat' or 'add', the reference repository's ConcatMultiTaskPrompt / AddMultiTaskPrompt.
  """

  length: int = 100
  placement: str = "prefix"
  init: Callable[..., Callable] = prompt_init.random_uniform
  per_task: bool = False
  shared_length: int = 0
  shared_combine: str = "concat"

  def __post_init__(self):
    _check(_positive_int(self.length), f"PROMPT_LENGTH must be a positive integer, got {self.length!r}")
    _check(
      self.placement in _PLACEMENTS, f"PROMPT_PLACEMENT must be one of {', '.join(_PLACEMENTS)}, got {self.placement!r}"
    )
    _check(isinstance(self.per_task, bool), f"MULTI_TASK_PROMPTS must be True or False, got {self.per_task!r}")
    _check(_natural(self.shared_length), f"SHARED_PROMPT_LENGTH must be an integer >= 0, got {self.shared_length!r}")
    _check(
      not self.shared_length or self.per_task,
      f"SHARED_PROMPT_LENGTH={self.shared_length} needs MULTI_TASK_PROMPTS = True (a part shared by task prompts)",
    )
    _check(
      self.shared_combine in SHARED_COMBINES,
      f"PromptSpec.shared_combine must be one of {', '.join(SHARED_COMBINES)}, got {self.shared_combine!r}",
    )
    if self.shared_length and self.shared_combine == "concat":
      _check(
        self.shared_length < self.length,
        f"SHARED_PROMPT_LENGTH={self.shared_length} must be below PROMPT_LENGTH={self.length} (each task keeps "
        f"PROMPT_LENGTH - SHARED_PROMPT_LENGTH vectors of its own)",
      )
    if self.shared_length and self.shared_combine == "add":
      _check(
        self.shared_length == self.length,
        f"SHARED_PROMPT_LENGTH={self.shared_length}: an added shared part (PromptSpec.shared_combine='add') spans "
        f"the whole prompt, so it must be PROMPT_LENGTH={self.length}",
      )


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """The frozen model, the prompt on it, and what trains.

  config: a named config ('t5_1_1_base'), a T5Config, a .json config file, or a RandomInitConfig
    (used only without a checkpoint). None: the checkpoint's own (HF and native checkpoints carry
    one; a t5x checkpoint only if its run's config.gin lies beside it). gin: MODEL_CONFIG.
  checkpoint: HF, t5x or native checkpoint, local or gs://; '' initializes at random (gin:
    INITIAL_CHECKPOINT_PATH).
  trainable_params: a regex over parameter paths, matched in full ('.*': model tuning).
  activation_dtype: what the layers compute in; None: float32 on the CPU, bfloat16 on accelerators
    (gin: ACTIVATION_DTYPE).
  param_dtype: what the frozen weights are stored in; None: the activation dtype (gin: PARAM_DTYPE).
    The prompt is kept in float32 whatever these are.
  loss: z-loss, label smoothing and normalization.
  attention_impl, remat_policy, matmul_dtype, fuse_projections: how (not what) the model computes
    (see T5Config); None keeps the config's. matmul_dtype 'fp8' (opt-in) runs the layers' frozen
    matmuls as FP8 GEMMs; fuse_projections runs q/k/v (and a gated MLP's input projections) as one matmul.
  bundles: trained prompts to run instead of MODEL_DIR's, {task name: a prompt bundle, a MODEL_DIR
    (its latest bundle) or a PEFT adapter folder}; `infer` and `evaluate` put them in one table and
    run batches mixing the tasks (runs/bundles.py). A task mapped to a list of them is an ensemble
    of those prompts (prompt_tuning/ensemble.py). gin: PROMPT_BUNDLES.
  """

  config: str | T5Config | RandomInitConfig | None = None
  checkpoint: str = ""
  prompt: PromptSpec = PromptSpec()
  trainable_params: str = param_tree.PROMPT_ONLY
  activation_dtype: str | None = None
  param_dtype: str | None = None
  loss: LossConfig = LossConfig()
  attention_impl: str | None = None
  remat_policy: str | None = None
  matmul_dtype: str | None = None
  fuse_projections: bool | None = None
  bundles: Mapping[str, str | Sequence[str]] | None = None

  def __post_init__(self):
    for name, value in (("ACTIVATION_DTYPE", self.activation_dtype), ("PARAM_DTYPE", self.param_dtype)):
      _check(value is None or value in _DTYPES, f"{name} must be None or one of {', '.join(_DTYPES)}, got {value!r}")
    _check(
      isinstance(self.checkpoint, str),
      f"INITIAL_CHECKPOINT_PATH must be a path string ('' for random weights), got {self.checkpoint!r}",
    )
    if self.prompt.shared_length:  # a shared part left out of TRAINABLE_PARAMS would silently stay at its init
      import re

      try:
        selects = re.fullmatch(self.trainable_params, "prompt/shared_prompt") is not None
      except re.error:
        selects = True  # param_tree.split_trainable names the bad regex
      _check(
        selects,
        f"TRAINABLE_PARAMS={self.trainable_params!r} leaves the shared prompt part (prompt/shared_prompt) frozen; "
        f"set TRAINABLE_PARAMS = 'prompt/.*' (runs/multitask.gin does)",
      )
    bundles = self.bundles
    _check(
      bundles is None
      or (isinstance(bundles, Mapping) and bool(bundles) and all(_bundle_paths(v) for v in bundles.values())),
      f"PROMPT_BUNDLES must map task names to bundle paths, e.g. {{'rte': '/runs/rte'}} (or to a list of them: an "
      f"ensemble), got {bundles!r}",
    )
    for name, value in (bundles or {}).items():
      _check(
        isinstance(value, str) or bool(value),
        f"PROMPT_BUNDLES[{name!r}] is an empty list; an ensemble needs at least one bundle path",
      )


@dataclasses.dataclass(frozen=True)
class TaskSpec:
  """Which task, and how long its tokenized features may be.

  name: a registered task or mixture (`prompt-tuning tasks` lists them; gin: MIXTURE_OR_TASK_NAME).
  feature_lengths: {'inputs': n, 'targets': m}; longer texts are cut, EOS kept.
  module: a module to import first, registering more tasks (t5x's MIXTURE_OR_TASK_MODULE).
  vocabulary_path: SentencePiece model of tasks that name none (None: T5's).
  target_sentinel: put `<extra_id_0>` before every target, and strip it from predictions before
    scoring: the paper's "span corruption + sentinel" setting (data/sentinel.py; gin: TARGET_SENTINEL).
  length_buckets: pad each batch (training and evaluation) to the smallest of a few lengths that
    holds it, instead of to the feature lengths: None (off), 'pow2', or {'inputs': [64, 128],
    'targets': 'pow2'} (data/buckets.py; gin: LENGTH_BUCKETS). Training compiles every bucket's
    step before its first step.
  packing: pack several examples per training row, each with its own prompt copy, told apart by
    segment ids (data/packing.py; gin: PACKING): one compiled shape and little padding; a training
    batch then holds a varying number of examples. Exclusive with length_buckets; evaluation and
    decoding stay unpacked.
  """

  name: str
  feature_lengths: Mapping[str, int]
  module: str | None = None
  vocabulary_path: str | None = None
  target_sentinel: bool = False
  length_buckets: str | Mapping[str, str | Sequence[int]] | None = None
  packing: bool = False

  def __post_init__(self):
    _check(
      isinstance(self.name, str) and bool(self.name), f"MIXTURE_OR_TASK_NAME must be a task name, got {self.name!r}"
    )
    lengths = self.feature_lengths
    _check(
      isinstance(lengths, Mapping)
      and {"inputs", "targets"} <= set(lengths)
      and all(_positive_int(lengths[k]) for k in ("inputs", "targets")),
      f"TASK_FEATURE_LENGTHS must map 'inputs' and 'targets' to positive integers, got {lengths!r}",
    )
    _check(
      isinstance(self.target_sentinel, bool), f"TARGET_SENTINEL must be True or False, got {self.target_sentinel!r}"
    )
    self.buckets()  # a bad LENGTH_BUCKETS stops here, in one line, before anything is built
    _check(isinstance(self.packing, bool), f"PACKING must be True or False, got {self.packing!r}")
    packing_lib.check_exclusive(self.packing, self.length_buckets)

  def buckets(self) -> buckets_lib.LengthBuckets | None:
    """The resolved length buckets (None: off)."""
    return buckets_lib.make_buckets(self.length_buckets, self.feature_lengths)


@dataclasses.dataclass(frozen=True)
class TrainSpec:
  """How long and how to train. The defaults are the paper's: batch 32, 30000 steps, Adafactor at 0.3.

  steps: the last step (gin: TRAIN_STEPS); batch_size: examples per step over all devices and hosts.
  optimizer: () -> (optax transformation, schedule), e.g. prompt_tuning.train.optimizer.adafactor.
  seed: the data order, the prompt initialization and random frozen weights.
  save_period / keep: a checkpoint every this many steps (0: only at the end), keeping the last `keep`
    (None: all).
  log_period: steps per metrics record and progress line.
  eval_period: evaluate every this many steps (0: only at the end).
  selection_metric: the evaluation metric whose best step selects the run's result, e.g.
    'rank/accuracy' (None: the first one evaluated, the task's first metric by decoding); that
    step's checkpoint is kept out of the `keep` rotation and its prompt copied to prompts/best.*
    (runs/selection.py; MODEL_DIR/best.json records every metric's best step).
  prefetch_batches: training batches read and copied to the devices ahead of the step.
  skip_nonfinite_steps: a step whose loss, gradient norm or update is not finite is never applied;
    0 (default): it stops the run (one line, nothing of it written); N: up to N such steps in a row
    are skipped (counted as train/skipped_steps), one more stops the run (train/guard.py).
  """

  steps: int = 30000
  batch_size: int = 32
  optimizer: Callable[[], tuple[Any, Any]] = optimizer_lib.adafactor
  seed: int = 0
  save_period: int = 500
  keep: int | None = 3
  log_period: int = 10
  eval_period: int = 0
  selection_metric: str | None = None
  prefetch_batches: int = 2
  skip_nonfinite_steps: int = 0

  def __post_init__(self):
    # TRAIN_STEPS=0 or keep=0 would run (and exit 0) yet leave no trained prompt behind.
    _check(_positive_int(self.steps), f"TRAIN_STEPS must be a positive integer, got {self.steps!r}")
    _check(_positive_int(self.batch_size), f"BATCH_SIZE must be a positive integer, got {self.batch_size!r}")
    _check(_positive_int(self.log_period), f"TrainSpec.log_period must be a positive integer, got {self.log_period!r}")
    _check(
      self.keep is None or _positive_int(self.keep),
      f"TrainSpec.keep must be a positive integer (or None: keep every checkpoint), got {self.keep!r}",
    )
    for name, value in (("save_period", self.save_period), ("eval_period", self.eval_period)):
      _check(_natural(value), f"TrainSpec.{name} must be a non-negative integer (0: only at the end), got {value!r}")
    _check(
      self.selection_metric is None or (isinstance(self.selection_metric, str) and bool(self.selection_metric)),
      f"TrainSpec.selection_metric must be a metric name such as 'rank/accuracy' (or None), got "
      f"{self.selection_metric!r}",
    )
    _check(
      _natural(self.skip_nonfinite_steps),
      f"TrainSpec.skip_nonfinite_steps must be an integer >= 0, got {self.skip_nonfinite_steps!r}",
    )


@dataclasses.dataclass(frozen=True)
class EvaluationSpec:
  """What evaluation (during and after training, `evaluate` and `infer`) scores, and how.

  split: the task split.
  batch_size: examples per batch; None: the training batch size (TrainSpec's 32 outside training).
  decode_method / decode_options: 'greedy', 'beam' ({'beam_size': 4, 'alpha': 0.6}) or 'sample'.
  rank_classification: score the task's labels too (None: when the task has labels; infer never).
  """

  split: str = "validation"
  batch_size: int | None = None
  decode_method: str = "greedy"
  decode_options: Mapping[str, Any] | None = None
  rank_classification: bool | None = None

  def __post_init__(self):
    _check(
      self.batch_size is None or _positive_int(self.batch_size),
      f"EVAL_BATCH_SIZE must be a positive integer, got {self.batch_size!r}",
    )

  def batch_size_or(self, default: int) -> int:
    return default if self.batch_size is None else self.batch_size


@dataclasses.dataclass(frozen=True)
class PromptDesignSpec:
  """The paper's prompt-design baseline (GPT-3 style) for `evaluate`: the frozen model alone, each input
  written into a text template after k demonstrations of the training split (data/design.py).

  template: str.format template over example fields, '{inputs}' being the task's input text, e.g.
    'Review: {inputs} Sentiment:' (gin: PROMPT_DESIGN_TEMPLATE).
  shots: demonstrations per example, each the template filled with a training example followed by
    its target (gin: PROMPT_DESIGN_SHOTS); dropped, the earliest first, when the input would not fit.
  seed: which demonstrations each example draws.
  separator: between demonstrations, and before the query.
  demonstration_split: the split demonstrations come from.
  """

  template: str = "{inputs}"
  shots: int = 0
  seed: int = 0
  separator: str = " "
  demonstration_split: str = "train"

  def __post_init__(self):
    template_fields(self.template)  # one line for a bad template
    _check(_natural(self.shots), f"PROMPT_DESIGN_SHOTS must be an integer >= 0, got {self.shots!r}")
    _check(_natural(self.seed), f"PromptDesignSpec.seed must be an integer >= 0, got {self.seed!r}")
    _check(isinstance(self.separator, str), f"PromptDesignSpec.separator must be a string, got {self.separator!r}")


@dataclasses.dataclass(frozen=True)
class MeshSpec:
  """The device mesh (data, model): see prompt_tuning.partitioning.make_mesh.

  num_partitions: devices per model replica, the 'model' axis (gin: NUM_PARTITIONS).
  shape: or the whole mesh as (data, model), one entry may be -1 (gin: MESH_SHAPE).
  """

  num_partitions: int = 1
  shape: tuple[int, int] | None = None

  def make(self) -> jax.sharding.Mesh:
    return partitioning.make_mesh(self.num_partitions, mesh_shape=self.shape)
