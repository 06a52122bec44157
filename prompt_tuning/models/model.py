"""The model wrapper: what to compute with a network, apart from the network.

`EncoderDecoderModel` turns a Flax encoder-decoder module (the plain T5
`Transformer`, or a prompted one with the same `encode_tokens` / `decode`
methods) into pure functions of (params, batch): teacher-forced logits, the
training loss, sequence scores (rank classification) and autoregressive
prediction with a key/value cache.

Batches are seqio-style dicts of int32 arrays: encoder_input_tokens [batch,
enc_length], decoder_input_tokens / decoder_target_tokens [batch, dec_length]
and float decoder_loss_weights [batch, dec_length]. Packed batches (data/packing.py: several
examples per row) add encoder_segment_ids / encoder_positions [batch, enc_length] and
decoder_segment_ids / decoder_positions [batch, dec_length], and carry a prompt table's rows per
position (encoder_task_ids, decoder_task_ids) in place of task_ids [batch]; `loss` and `logits`
take them (training and teacher-forced scoring; decoding takes unpacked rows).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from prompt_tuning import decoding

Array = jax.Array
Params = Any


def _task_kwargs(task_ids: Array | None, prompt_lengths: Array | None = None) -> dict[str, Array]:
  """task_ids [batch] pick each example's prompt from a prompt table, prompt_lengths [batch] (optional)
  how many of its rows it uses; plain T5 takes none."""
  kwargs = {} if task_ids is None else {"task_ids": task_ids}
  return kwargs if prompt_lengths is None else {**kwargs, "prompt_lengths": prompt_lengths}


def is_packed(batch: dict[str, Array]) -> bool:
  """Whether a batch holds packed rows (data/packing.py)."""
  return "encoder_segment_ids" in batch


def _model_kwargs(batch: dict[str, Array]) -> dict[str, Array]:
  """The module's keyword arguments from a batch: its task ids, and packed rows' segments and positions."""
  if not is_packed(batch):
    return _task_kwargs(batch.get("task_ids"))
  keys = ("encoder_segment_ids", "encoder_positions", "decoder_segment_ids")
  return {**{k: batch[k] for k in keys}, **_task_kwargs(batch.get("encoder_task_ids"))}


def num_examples(batch: dict[str, Array]) -> Array:
  """float32 scalar: the examples a batch holds (packed: the segments of every row, else its rows)."""
  if is_packed(batch):
    return jnp.sum(jnp.max(batch["decoder_segment_ids"], axis=-1)).astype(jnp.float32)
  return jnp.asarray(batch["encoder_input_tokens"].shape[0], jnp.float32)


@dataclasses.dataclass(frozen=True)
class LossConfig:
  """t5x's loss: cross-entropy with z-loss and label smoothing.

  loss_normalizing_factor: 'num_real_target_tokens' divides by the number of
    target tokens in the batch (per-token loss); a number divides by that
    fixed factor (t5x style, stable across batches); None gives the sum.
  """

  z_loss: float = 1e-4
  label_smoothing: float = 0.0
  loss_normalizing_factor: float | str | None = "num_real_target_tokens"

  def __post_init__(self):
    factor = self.loss_normalizing_factor
    if isinstance(factor, str) and factor != "num_real_target_tokens":
      raise ValueError(f"loss_normalizing_factor={factor!r}: expected 'num_real_target_tokens', a number or None")
    if not 0.0 <= self.label_smoothing < 1.0:
      raise ValueError(f"label_smoothing={self.label_smoothing} must be in [0, 1)")


def cross_entropy_with_z_loss(
  logits: Array, targets: Array, weights: Array, z_loss: float, label_smoothing: float
) -> tuple[Array, Array]:
  """Per-token cross-entropy [batch, length] and its z-loss part, both weighted.

  Label smoothing spreads `label_smoothing` of the target mass uniformly over
  the other tokens; the constant entropy of the smoothed target is subtracted
  so that a perfect prediction scores 0.
  """
  vocab = logits.shape[-1]
  confidence = 1.0 - label_smoothing
  low_confidence = label_smoothing / (vocab - 1)
  normalizer = -(confidence * jnp.log(confidence) + (vocab - 1) * low_confidence * jnp.log(low_confidence + 1e-20))
  log_z = jax.nn.logsumexp(logits, axis=-1)
  # sum(soft_targets * logits) without materializing a [batch, length, vocab] one-hot.
  target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  soft_dot = (confidence - low_confidence) * target_logit + low_confidence * jnp.sum(logits, axis=-1)
  token_loss = log_z - soft_dot - normalizer
  token_z_loss = z_loss * jnp.square(log_z)
  return (token_loss + token_z_loss) * weights, token_z_loss * weights


@dataclasses.dataclass(frozen=True)
class EncoderDecoderModel:
  module: nn.Module
  loss_config: LossConfig = LossConfig()

  def loss(
    self, params: Params, batch: dict[str, Array], dropout_rng: Array | None = None, num_tasks: int | None = None
  ) -> tuple[Array, dict[str, Array]]:
    """Training loss of a batch and its metrics (sums over the batch's target tokens).

    With `dropout_rng`, dropout is on. Returns (loss, metrics) where metrics
    holds the summed loss, z_loss, correct-token count and token count, so
    they aggregate exactly across steps and devices. With `num_tasks` k (and
    batch['task_ids'] [batch]), also the same sums per task: task_loss_sum,
    task_correct_tokens and task_num_tokens, each float32 [k] (packed batches: by decoder_task_ids).
    A packed batch (`is_packed`) gives the sums its examples give unpacked.
    """
    rngs = None if dropout_rng is None else {"dropout": dropout_rng}
    logits = self.module.apply(
      {"params": params},
      batch["encoder_input_tokens"],
      batch["decoder_input_tokens"],
      batch["decoder_target_tokens"],
      deterministic=dropout_rng is None,
      rngs=rngs,
      **_model_kwargs(batch),
    )
    targets = batch["decoder_target_tokens"]
    weights = batch.get("decoder_loss_weights")
    weights = (targets > 0).astype(jnp.float32) if weights is None else weights.astype(jnp.float32)
    token_loss, token_z_loss = cross_entropy_with_z_loss(
      logits, targets, weights, self.loss_config.z_loss, self.loss_config.label_smoothing
    )
    num_tokens = jnp.sum(weights)
    factor = self.loss_config.loss_normalizing_factor
    if factor == "num_real_target_tokens":
      denominator = jnp.maximum(num_tokens, 1.0)
    elif factor is None:
      denominator = 1.0
    else:
      denominator = float(factor)
    loss = jnp.sum(token_loss) / denominator
    correct = jnp.sum((jnp.argmax(logits, axis=-1) == targets) * weights)
    metrics = {
      "loss_sum": jnp.sum(token_loss),
      "z_loss_sum": jnp.sum(token_z_loss),
      "correct_tokens": correct,
      "num_tokens": num_tokens,
    }
    if num_tasks is not None:
      # Each target token's task: packed rows carry it per position, unpacked rows once per row.
      if is_packed(batch):
        token_tasks = batch["decoder_task_ids"]
      else:
        token_tasks = jnp.broadcast_to(batch["task_ids"][:, None], targets.shape)

      def per_task(per_token: Array) -> Array:  # [batch, length] -> [k]
        return jax.ops.segment_sum(per_token.ravel(), token_tasks.ravel(), num_segments=num_tasks)

      metrics.update(
        task_loss_sum=per_task(token_loss),
        task_correct_tokens=per_task((jnp.argmax(logits, axis=-1) == targets) * weights),
        task_num_tokens=per_task(weights),
      )
    return loss, metrics

  def score(
    self, params: Params, encoder_input_tokens: Array, decoder_input_tokens: Array, decoder_target_tokens: Array
  ) -> Array:
    """Sum of target-token log-probabilities, float32 [batch] (no z-loss, no smoothing)."""
    logits = self.logits(params, encoder_input_tokens, decoder_input_tokens, decoder_target_tokens)
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    picked = jnp.take_along_axis(log_probs, decoder_target_tokens[..., None], axis=-1)[..., 0]
    return jnp.sum(picked * (decoder_target_tokens > 0), axis=-1)

  def rank_classify(
    self,
    params: Params,
    encoder_input_tokens: Array,
    candidate_targets: Array,
    task_ids: Array | None = None,
    prompt_lengths: Array | None = None,
  ) -> Array:
    """Scores every candidate target for every example: float32 [batch, num_candidates].

    Args:
      encoder_input_tokens: [batch, enc_length].
      candidate_targets: token ids, EOS-terminated, 0-padded: [num_candidates,
        dec_length] shared by all examples, or [batch, num_candidates, dec_length]
        per example (an all-zero row scores 0; callers mask such padding).
      task_ids, prompt_lengths: [batch] prompt-table rows and their lengths (PromptedTransformer).
    The encoder runs once per example, and its output is projected to the
    encoder-decoder attention's keys and values once per example: the
    candidates of an example share them (see layers.MultiHeadAttention).
    """
    batch, num_candidates = encoder_input_tokens.shape[0], candidate_targets.shape[-2]
    encoded, encoder_mask = self.module.apply(
      {"params": params}, encoder_input_tokens, method="encode_tokens", **_task_kwargs(task_ids, prompt_lengths)
    )
    if candidate_targets.ndim == 2:
      targets = jnp.tile(candidate_targets, (batch, 1))  # [batch * candidates, dec_length], example-major
    else:
      targets = candidate_targets.reshape(batch * num_candidates, -1)
    inputs = jnp.concatenate([jnp.zeros_like(targets[:, :1]), targets[:, :-1]], axis=1)
    logits = self.module.apply(
      {"params": params}, encoded, encoder_mask, inputs, decoder_mask=(targets > 0).astype(jnp.int32), method="decode"
    )
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    picked = jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
    return jnp.sum(picked * (targets > 0), axis=-1).reshape(batch, num_candidates)

  def logits(
    self,
    params: Params,
    encoder_input_tokens: Array,
    decoder_input_tokens: Array,
    decoder_target_tokens: Array | None = None,
    **packed: Array,
  ) -> Array:
    """float32 logits [batch, dec_length, vocab] (deterministic: no dropout). packed: a packed batch's
    encoder_segment_ids, encoder_positions, decoder_segment_ids (and task_ids per position)."""
    return self.module.apply(
      {"params": params}, encoder_input_tokens, decoder_input_tokens, decoder_target_tokens, **packed
    )

  def initial_cache(
    self, params: Params, encoded: Array, encoder_mask: Array, max_decode_length: int, rows_per_example: int = 1
  ) -> Any:
    """Creates the decoder cache: empty self-attention keys/values of length
    `max_decode_length` for [batch * rows_per_example] decoder rows (beams or
    samples, example-major), and the cross-attention keys/values of `encoded`
    [batch, enc_length, embed], once per example: an example's rows share them."""
    template = jnp.zeros((encoded.shape[0] * rows_per_example, max_decode_length), jnp.int32)
    _, variables = self.module.apply(
      {"params": params}, encoded, encoder_mask, template, decode=True, method="decode", mutable=["cache"]
    )
    return variables["cache"]

  def predict_batch(
    self,
    params: Params,
    encoder_input_tokens: Array,
    *,
    max_decode_length: int,
    method: str = "greedy",
    rng: Array | None = None,
    eos_id: int | None = 1,
    task_ids: Array | None = None,
    prompt_lengths: Array | None = None,
    **options: Any,
  ) -> decoding.DecodeResult:
    """Decodes [batch, enc_length] inputs autoregressively.

    Args:
      method: 'greedy', 'beam' (options beam_size, alpha) or 'sample'
        (options temperature, top_k, top_p, num_decodes).
      eos_id: the end token; None: none, every row decodes max_decode_length tokens.
      task_ids: [batch] prompt-table rows, for a model serving several tasks.
      prompt_lengths: [batch] how many rows of its prompt each example uses (default: the
        table's task_lengths), for a server whose table changes at run time.
    Returns:
      DecodeResult with tokens [batch, num_decodes, max_decode_length] (EOS
      included, 0 after it) and scores [batch, num_decodes].
    """
    encoded, encoder_mask = self.module.apply(
      {"params": params}, encoder_input_tokens, method="encode_tokens", **_task_kwargs(task_ids, prompt_lengths)
    )
    rows_per_example = options.get("beam_size" if method == "beam" else "num_decodes", 1)
    cache = self.initial_cache(params, encoded, encoder_mask, max_decode_length, rows_per_example)

    def tokens_to_logits(tokens: Array, cache: Any) -> tuple[Array, Any]:
      logits, variables = self.module.apply(
        {"params": params, "cache": cache}, None, encoder_mask, tokens, decode=True, method="decode", mutable=["cache"]
      )
      return logits[:, -1, :], variables["cache"]

    return decoding.decode(
      method,
      tokens_to_logits,
      cache,
      rng=rng,
      batch_size=encoder_input_tokens.shape[0],
      max_decode_length=max_decode_length,
      eos_id=eos_id,
      **options,
    )
