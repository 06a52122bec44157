"""Soft prompts (Lester et al. 2021): trainable embeddings spliced into the encoder input.

`Prompt` holds the parameter `prompt`, [length, embed] for one task (the
t5x prompt shape) or a table [tasks, length, embed] when serving several
tasks, and inserts it into already-embedded inputs [batch, n, embed],
giving [batch, length + n, embed] and a matching mask.

Placement is computed per example from the mask of right-padded inputs (as
seqio pads them), never assuming equal lengths. With X = x0..x_{m-1} an
example's m real tokens and P the prompt:
  prefix       [P; x0 .. x_{m-1}; padding]
  after_first  [x0; P; x1 .. x_{m-1}; padding]
  suffix       [x0 .. x_{m-2}; P; x_{m-1}; padding]   (P right before EOS)
Padding always stays at the end, prompt positions have mask 1, and an
all-padding row gets the prompt at position 0.

A table may hold prompts of different lengths (`PromptConfig.task_lengths`):
task t's prompt is rows [0, p_t) of its [p, embed] slot, and an example of
task t gets exactly the sequence a p_t-long prompt would give it, followed
by p - p_t more padding positions (mask 0). Trailing padding changes nothing
for the real positions, so a mixed batch computes what each task would alone.

A table may also have a part shared by every task (`PromptConfig.shared_length`), as the
reference repository's multi-task prompts (prompt_tuning/extended/multitask_prompts.py):
'concat' puts the shared [s, embed] part before the task's own [p - s, embed] part
(its ConcatMultiTaskPrompt), 'add' sums a shared [p, embed] and the task's [p, embed]
(its AddMultiTaskPrompt). The parameters are then `prompt` (the task parts, [k, p_t, embed])
and `shared_prompt`; `task_prompts` gives every task's whole prompt [k, p, embed].

Packed rows (data/packing.py) carry several examples, each with p prompt slots (token 0) before
its inputs, and `encoder_positions` counting from 0 at each example's first slot: the prompt layer
fills slot i of every example with row i of ITS prompt (its task's, by the per-position task ids of
a table), so each example reads [P; x_i] exactly as unpacked. Packing takes the 'prefix'
placement, and every example's prompt is the whole p (no `task_lengths`: a serving feature).

`PromptedTransformer` is the T5 `Transformer` with a `Prompt` between
`embed` and `encode`; its parameter tree is the T5 tree plus `prompt/prompt`.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from prompt_tuning.models.t5 import layers
from prompt_tuning.models.t5.network import Transformer, teacher_forced

Array = jax.Array
# init_fn(rng, (length, embed)) -> array [length, embed]
PromptInit = Callable[[Array, tuple[int, int]], Array]

PLACEMENTS = ("prefix", "after_first", "suffix")
SHARED_COMBINES = ("concat", "add")


def uniform_init(rng: Array, shape: tuple[int, ...]) -> Array:
  """The default prompt initializer: U[-0.5, 0.5], float32."""
  return jax.random.uniform(rng, shape, jnp.float32, -0.5, 0.5)


@dataclasses.dataclass(frozen=True)
class PromptConfig:
  """Attributes:
  length: p, the number of prompt vectors.
  placement: 'prefix', 'after_first' or 'suffix' (see the module docstring).
  num_tasks: None for one prompt [p, embed]; k for a table [k, p, embed]
    indexed by per-example task ids.
  task_lengths: with a table, each task's own prompt length p_t <= length
    (the first p_t rows of its slot); None: every task uses all `length`.
  shared_length: with a table, s > 0 adds a part shared by all tasks (see the module docstring):
    'concat': 0 < s < length, each task owning length - s vectors; 'add': s = length.
  shared_combine: 'concat' ([shared; task]) or 'add' (shared + task).
  """

  length: int
  placement: str = "prefix"
  num_tasks: int | None = None
  task_lengths: tuple[int, ...] | None = None
  shared_length: int = 0
  shared_combine: str = "concat"

  def __post_init__(self):
    if not isinstance(self.length, (int, np.integer)) or self.length < 1:
      raise ValueError(f"PromptConfig.length must be a positive int, got {self.length!r}")
    if self.placement not in PLACEMENTS:
      raise ValueError(f"PromptConfig.placement={self.placement!r}: expected one of {PLACEMENTS}")
    if self.num_tasks is not None and (not isinstance(self.num_tasks, (int, np.integer)) or self.num_tasks < 1):
      raise ValueError(f"PromptConfig.num_tasks must be None or a positive int, got {self.num_tasks!r}")
    if self.task_lengths is not None:
      lengths = tuple(self.task_lengths)
      if self.num_tasks is None or len(lengths) != self.num_tasks:
        raise ValueError(f"PromptConfig.task_lengths {lengths} needs num_tasks={len(lengths)} (got {self.num_tasks})")
      if not all(isinstance(n, (int, np.integer)) and 1 <= n <= self.length for n in lengths):
        raise ValueError(f"PromptConfig.task_lengths {lengths} must each be in [1, length={self.length}]")
    check_shared(self.length, self.shared_length, self.shared_combine, self.num_tasks, "PromptConfig")
    if self.shared_length and self.task_lengths is not None:
      raise ValueError("PromptConfig: a shared prompt part and per-task task_lengths cannot be combined")

  @property
  def task_length(self) -> int:
    """The length of each task's own part: p - s with a concatenated shared part, else p."""
    return self.length - self.shared_length if self.shared_combine == "concat" else self.length


def check_shared(length: int, shared_length: int, combine: str, num_tasks: int | None, owner: str) -> None:
  """One line (ValueError) unless a shared part of `shared_length` fits a prompt of `length`."""
  if not isinstance(shared_length, (int, np.integer)) or shared_length < 0:
    raise ValueError(f"{owner}.shared_length must be an integer >= 0, got {shared_length!r}")
  if combine not in SHARED_COMBINES:
    raise ValueError(f"{owner}.shared_combine={combine!r}: expected one of {SHARED_COMBINES}")
  if not shared_length:
    return
  if num_tasks is None:
    raise ValueError(f"{owner}: a shared prompt part (shared_length={shared_length}) needs a table of task prompts")
  if combine == "concat" and shared_length >= length:
    raise ValueError(
      f"{owner}: shared_length={shared_length} must be below the prompt length {length} "
      f"(each task keeps length - shared_length vectors of its own)"
    )
  if combine == "add" and shared_length != length:
    raise ValueError(f"{owner}: an added shared part spans the whole prompt: shared_length must be {length}")


def task_prompts(table: Array, shared: Array | None, combine: str = "concat") -> Array:
  """Every task's whole prompt: table [k, p_t, embed] and shared [s, embed] -> [k, p, embed].

  'concat': [shared; table[t]] (p = s + p_t); 'add': shared + table[t] (p = s = p_t); no shared
  part: the table itself.
  """
  if shared is None:
    return table
  if combine == "add":
    return table + shared[None].astype(table.dtype)
  k = table.shape[0]
  return jnp.concatenate([jnp.broadcast_to(shared.astype(table.dtype)[None], (k, *shared.shape)), table], axis=1)


def insert_positions(mask: Array, placement: str) -> Array:
  """Where each example's prompt starts: mask [batch, n] -> int32 [batch].

  The position of the last real token is used for 'suffix', so trailing
  padding of any width never moves the prompt.
  """
  real = mask > 0
  batch, n = mask.shape
  if placement == "prefix":
    return jnp.zeros((batch,), jnp.int32)
  if placement == "after_first":
    return jnp.minimum(jnp.any(real, axis=1).astype(jnp.int32), 1)
  if placement == "suffix":
    end = jnp.max(jnp.where(real, jnp.arange(1, n + 1, dtype=jnp.int32)[None], 0), axis=1)  # last real index + 1
    return jnp.maximum(end - 1, 0)
  raise ValueError(f"unknown prompt placement {placement!r}: expected one of {PLACEMENTS}")


def combine(
  embedded: Array, mask: Array, prompt: Array, start: Array, prompt_lengths: Array | None = None
) -> tuple[Array, Array]:
  """Splices the prompt into each example at its own position, by gathers.

  Args:
    embedded: [batch, n, embed] embedded inputs.
    mask: [batch, n] (1 = token).
    prompt: [p, embed], shared, or [batch, p, embed], one per example.
    start: int [batch], the combined position of each example's first prompt vector.
    prompt_lengths: int [batch], how many of the p prompt rows each example uses (its first
      ones); None: all p.
  Returns:
    (combined [batch, p + n, embed], combined_mask [batch, p + n]) with
    combined[b, start[b] + i] = prompt[i] for i < prompt_lengths[b], the inputs before and
    after it in order, then (p - prompt_lengths[b]) positions of padding (mask 0).
  """
  batch, n, dim = embedded.shape
  p = prompt.shape[-2]
  if prompt.ndim == 2:
    prompt = jnp.broadcast_to(prompt, (batch, p, dim))
  used = jnp.full((batch, 1), p, jnp.int32) if prompt_lengths is None else prompt_lengths.astype(jnp.int32)[:, None]
  if n == 0:
    rows = jnp.arange(p, dtype=jnp.int32)[None]
    return prompt.astype(embedded.dtype), (rows < used).astype(mask.dtype)
  pos = jnp.arange(p + n, dtype=jnp.int32)[None]  # [1, p + n]
  start = start.astype(jnp.int32)[:, None]  # [batch, 1]
  in_prompt = (pos >= start) & (pos < start + used)  # [batch, p + n]
  past_inputs = pos >= used + n  # the padding a shorter prompt leaves at the end
  x_index = jnp.clip(jnp.where(pos < start, pos, pos - used), 0, n - 1)
  p_index = jnp.clip(pos - start, 0, p - 1)
  from_x = jnp.take_along_axis(embedded, x_index[..., None], axis=1)
  from_prompt = jnp.take_along_axis(prompt.astype(embedded.dtype), p_index[..., None], axis=1)
  combined = jnp.where(in_prompt[..., None], from_prompt, jnp.where(past_inputs[..., None], 0, from_x))
  x_mask = jnp.where(past_inputs, 0, jnp.take_along_axis(mask, x_index, axis=1))
  combined_mask = jnp.where(in_prompt, 1, x_mask).astype(mask.dtype)
  return combined, combined_mask


def _concrete(x: Array | None) -> np.ndarray | None:
  """x as numpy when its value is known (not traced under jit), else None."""
  if x is None or isinstance(x, jax.core.Tracer):
    return None
  return np.asarray(x)


class Prompt(nn.Module):
  """A soft prompt, or a table of them, and its placement into the inputs.

  Attributes:
    config: length, placement, number of tasks.
    embed_dim: d, the model's embedding size.
    init_fn: init_fn(rng, (p, d)) -> [p, d]; a table calls it once per task
      with its own rng.
    dtype: the activation dtype the prompt is cast to on use.
    param_dtype: the stored dtype of the parameter.
  """

  config: PromptConfig
  embed_dim: int
  init_fn: PromptInit = uniform_init
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  def _init(self, rng: Array, shape: tuple[int, ...]) -> Array:
    one_shape = tuple(shape[-2:])

    def one(key: Array) -> Array:
      value = self.init_fn(key, one_shape)
      if tuple(np.shape(value)) != one_shape:
        raise ValueError(
          f"prompt initializer {getattr(self.init_fn, '__name__', self.init_fn)!r} returned shape "
          f"{tuple(np.shape(value))}, expected {one_shape}"
        )
      return jnp.asarray(value, self.param_dtype)

    if len(shape) == 2:
      return one(rng)
    return jnp.stack([one(key) for key in jax.random.split(rng, shape[0])])

  @nn.compact
  def __call__(
    self,
    embedded: Array,
    mask: Array,
    task_ids: Array | None = None,
    prompt_lengths: Array | None = None,
    *,
    segment_ids: Array | None = None,
    positions: Array | None = None,
  ) -> tuple[Array, Array]:
    """Inserts the prompt (or, in packed rows, fills every example's prompt slots).

    Args:
      embedded: [batch, n, embed] embedded inputs.
      mask: [batch, n] (1 = token, 0 = padding).
      task_ids: int [batch], each example's row of the table; required with
        `num_tasks`, else it must be None or all zero. Out-of-range ids are
        an error when the ids are concrete; under jit they give NaN prompts.
      prompt_lengths: int [batch], each example's own prompt length (its first rows of its
        slot), given as data rather than `task_lengths`: a server whose table changes at run
        time (prompt_tuning.serving) then never recompiles. None: `task_lengths` (or all p).
      segment_ids, positions: packed rows' [batch, n] (see the module docstring): `embedded`
        already has the prompt slots, and task_ids (with a table) is then [batch, n], each
        position's prompt row.
    Returns:
      (combined [batch, p + n, embed], combined_mask [batch, p + n]); packed: ([batch, n, embed],
      [batch, n]).
    """
    cfg = self.config
    p, d = cfg.length, self.embed_dim
    packed = segment_ids is not None
    if packed and (positions is None or cfg.placement != "prefix" or cfg.task_lengths or prompt_lengths is not None):
      raise ValueError(
        "packed rows need encoder_positions, the 'prefix' prompt placement and one prompt length for every task "
        f"(got placement {cfg.placement!r}, task_lengths {cfg.task_lengths})"
      )
    if embedded.ndim != 3 or embedded.shape[-1] != d or mask.shape != embedded.shape[:2]:
      raise ValueError(
        f"Prompt expects embedded [batch, n, {d}] and mask [batch, n], got {embedded.shape} and {mask.shape}"
      )
    if cfg.num_tasks is None:
      prompt = self.param("prompt", nn.with_logical_partitioning(self._init, ("prompt", "embed")), (p, d))
      ids = _concrete(task_ids)
      if ids is not None and np.any(ids != 0):
        raise ValueError(f"Prompt has a single prompt (num_tasks=None) but got nonzero task_ids {ids.tolist()}")
      prompt = layers.constrain(jnp.asarray(prompt, self.dtype), ("prompt", "embed"))
      if packed:
        return self._fill_slots(embedded, segment_ids, positions, prompt[None], None)
    else:
      table = self.param(
        "prompt",
        nn.with_logical_partitioning(self._init, ("tasks", "prompt", "embed")),
        (cfg.num_tasks, cfg.task_length, d),
      )
      shared = None
      if cfg.shared_length:
        shared = self.param(
          "shared_prompt", nn.with_logical_partitioning(self._init, ("prompt", "embed")), (cfg.shared_length, d)
        )
        shared = jnp.asarray(shared, self.dtype)
      if task_ids is None:
        raise ValueError(f"Prompt has a table of {cfg.num_tasks} prompts (num_tasks set): pass task_ids [batch]")
      expected = embedded.shape[:2] if packed else embedded.shape[:1]
      if np.shape(task_ids) != expected:
        raise ValueError(f"task_ids must have shape {list(expected)}, got {list(np.shape(task_ids))}")
      ids = _concrete(task_ids)
      if ids is not None and (np.any(ids < 0) or np.any(ids >= cfg.num_tasks)):
        raise ValueError(f"task_ids {ids.tolist()} out of range for num_tasks={cfg.num_tasks}")
      # The whole table is combined before the gather: k is small, and each example's gradient then
      # reaches only its own task's row (and the shared part).
      table = task_prompts(jnp.asarray(table, self.dtype), shared, cfg.shared_combine)
      if packed:
        return self._fill_slots(embedded, segment_ids, positions, table, task_ids)
      prompt = jnp.take(table, jnp.asarray(task_ids, jnp.int32), axis=0, mode="fill", fill_value=jnp.nan)
      prompt = layers.constrain(prompt, ("batch", "prompt", "embed"))
    lengths = None if prompt_lengths is None else jnp.asarray(prompt_lengths, jnp.int32)
    if lengths is None and cfg.task_lengths is not None:
      lengths = jnp.take(jnp.asarray(cfg.task_lengths, jnp.int32), jnp.asarray(task_ids, jnp.int32), mode="clip")
    start = insert_positions(mask, cfg.placement)
    combined, combined_mask = combine(jnp.asarray(embedded, self.dtype), mask, prompt, start, lengths)
    return layers.constrain(combined, ("batch", "length", "embed")), combined_mask

  def _fill_slots(
    self, embedded: Array, segment_ids: Array, positions: Array, table: Array, task_ids: Array | None
  ) -> tuple[Array, Array]:
    """Packed rows: embedded [batch, n, embed] with each example's p prompt slots at its positions
    0..p-1 -> (the slots holding the prompt rows of the example's task [batch, n, embed], mask
    [batch, n]). table: [k, p, embed]; task_ids: [batch, n] (None: row 0)."""
    p = table.shape[1]
    slot = (segment_ids > 0) & (positions < p)  # [batch, n]
    row = jnp.clip(positions, 0, p - 1).astype(jnp.int32)
    if task_ids is not None:  # one gather from the flattened table; a bad task id reads NaN, as unpacked
      row = jnp.asarray(task_ids, jnp.int32) * p + row
    vectors = jnp.take(table.reshape(-1, table.shape[-1]), row, axis=0, mode="fill", fill_value=jnp.nan)
    combined = jnp.where(slot[..., None], vectors, jnp.asarray(embedded, self.dtype))
    mask = (segment_ids > 0).astype(jnp.int32)
    return layers.constrain(combined, ("batch", "length", "embed")), mask


class PromptedTransformer(Transformer):
  """T5 with a soft prompt between `embed` and `encode`.

  Parameter paths are those of `Transformer` plus `prompt/prompt`. The
  encoder output and mask are [batch, p + n, ...]; the decoder cross-attends
  to the prompt positions like any others.

  Attributes:
    prompt_config: the prompt's length, placement and task count.
    prompt_init: init_fn(rng, (p, embed)) -> [p, embed].
    prompt_param_dtype: the prompt's stored dtype; float32 by default whatever
      config.param_dtype is, since it is the parameter being trained.
  """

  prompt_config: PromptConfig
  prompt_init: PromptInit = uniform_init
  prompt_param_dtype: str = "float32"

  def setup(self):
    super().setup()
    cfg = self.config
    self.prompt = Prompt(
      self.prompt_config,
      cfg.emb_dim,
      self.prompt_init,
      dtype=cfg.activation_dtype,
      param_dtype=jnp.dtype(self.prompt_param_dtype),
    )

  def encode_tokens(
    self,
    encoder_input_tokens: Array,
    *,
    task_ids: Array | None = None,
    prompt_lengths: Array | None = None,
    deterministic: bool = True,
    encoder_segment_ids: Array | None = None,
    encoder_positions: Array | None = None,
  ) -> tuple[Array, Array]:
    """Token ids [batch, n] (0 = padding) -> (encoded [batch, p + n, embed], mask [batch, p + n]).

    prompt_lengths: int [batch], see `Prompt.__call__`. Packed rows (encoder_segment_ids and
    encoder_positions [batch, n], n counting every example's prompt slots): (encoded [batch, n,
    embed], mask [batch, n]), and task_ids is [batch, n]."""
    mask = (encoder_input_tokens > 0).astype(jnp.int32)
    embedded, mask = self.prompt(
      self.embed(encoder_input_tokens),
      mask,
      task_ids,
      prompt_lengths,
      segment_ids=encoder_segment_ids,
      positions=encoder_positions,
    )
    return self.encode(embedded, mask, segment_ids=encoder_segment_ids, deterministic=deterministic), mask

  def __call__(
    self,
    encoder_input_tokens: Array,
    decoder_input_tokens: Array,
    decoder_target_tokens: Array | None = None,
    *,
    task_ids: Array | None = None,
    deterministic: bool = True,
    **packed: Array,
  ) -> Array:
    """Teacher-forced logits, float32 [batch, dec_length, vocab]; see `Transformer.__call__`.

    Args:
      task_ids: int [batch], the prompt row of each example (prompt tables only); packed rows:
        [batch, enc_length], each position's (data/packing.py's encoder_task_ids).
    """
    task = {} if task_ids is None else {"task_ids": task_ids}
    return teacher_forced(
      self, encoder_input_tokens, decoder_input_tokens, decoder_target_tokens, deterministic, packed, **task
    )
