"""The T5 encoder-decoder, with t5x parameter names.

Parameter tree (t5x's `target`):
  token_embedder/embedding                       [vocab, embed]
  encoder/relpos_bias/rel_embedding              [heads, relpos_buckets]
  encoder/layers_{i}/pre_attention_layer_norm/scale, attention/{query,key,value,out}/kernel,
                     pre_mlp_layer_norm/scale, mlp/{wi | wi_0, wi_1, wo}/kernel
  encoder/encoder_norm/scale
  decoder/relpos_bias/rel_embedding
  decoder/layers_{i}/pre_self_attention_layer_norm, self_attention, pre_cross_attention_layer_norm,
                     encoder_decoder_attention, pre_mlp_layer_norm, mlp
  decoder/decoder_norm/scale
  decoder/logits_dense/kernel                    [embed, vocab]  (T5 1.1 family only)

The encoder takes already-embedded inputs with an explicit mask, so a prompt
layer can sit between `embed` and `encode`.

Packed rows (data/packing.py: several examples per row, segment ids 1..k, 0 = padding): with
segment ids, encoder self-attention stays within a segment, decoder self-attention is causal within
a segment and encoder-decoder attention reaches only the same segment; without them nothing changes.
The relative position bias is still computed from the row's indices, and that is exact: a segment
is contiguous, so for two positions of one segment (the only pairs left unmasked) the difference
of their per-segment positions equals the difference of their row indices. The bias thus keeps its
[1, heads, q, k] shape and costs nothing more; positions only place the prompt (models/prompt.py).
"""

from __future__ import annotations

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from prompt_tuning.models.t5 import fp8, layers
from prompt_tuning.models.t5.config import T5Config

Array = jax.Array


def _dtypes(config: T5Config) -> dict:
  return dict(dtype=config.activation_dtype, param_dtype=config.parameter_dtype)


_REMAT_POLICIES = {
  "full": None,  # save nothing: recompute the whole layer
  "dots": jax.checkpoint_policies.dots_saveable,
  "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def _layer_class(cls: type, config: T5Config, static_argnums: tuple[int, ...]) -> type:
  """`cls`, or its rematerialized version per config.remat_policy (parameter names unchanged)."""
  if config.remat_policy == "none":
    return cls
  return nn.remat(cls, policy=_REMAT_POLICIES[config.remat_policy], static_argnums=static_argnums)


def _attention(cfg: T5Config, name: str, kv_matmul_dtype: str | None = None) -> layers.MultiHeadAttention:
  """A layer's attention block as the config says (created inside the layer, so it is its child)."""
  return layers.MultiHeadAttention(
    cfg.num_heads,
    cfg.head_dim,
    cfg.dropout_rate,
    **_dtypes(cfg),
    attention_impl=cfg.attention_impl,
    fuse_projections=cfg.fuse_projections,
    position_bias_gradient=cfg.position_bias_gradient,
    kv_matmul_dtype=kv_matmul_dtype,
    name=name,
  )


def _mlp(cfg: T5Config) -> layers.MlpBlock:
  return layers.MlpBlock(
    cfg.mlp_dim,
    cfg.mlp_activations,
    cfg.dropout_rate,
    **_dtypes(cfg),
    fuse_projections=cfg.fuse_projections,
    name="mlp",
  )


class EncoderLayer(nn.Module):
  config: T5Config

  @nn.compact
  def __call__(self, x: Array, bias: Array | layers.PaddedPositionBias, deterministic: bool) -> Array:
    """x [batch, length, embed], bias [batch, heads, length, length] (or its parts,
    `layers.PaddedPositionBias`) -> [batch, length, embed]."""
    cfg = self.config
    dropout = functools.partial(nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,)), deterministic=deterministic)
    norm = functools.partial(layers.RMSNorm, cfg.layer_norm_epsilon, **_dtypes(cfg))
    h = norm(name="pre_attention_layer_norm")(x)
    h = _attention(cfg, "attention")(h, h, bias, deterministic=deterministic)
    x = x + dropout(h)
    h = norm(name="pre_mlp_layer_norm")(x)
    h = _mlp(cfg)(h, deterministic=deterministic)
    return layers.constrain(x + dropout(h), ("batch", "length", "embed"))


class DecoderLayer(nn.Module):
  config: T5Config

  @nn.compact
  def __call__(
    self, y: Array, encoded: Array | None, self_bias: Array, cross_bias: Array, deterministic: bool, decode: bool
  ) -> Array:
    """y [batch, length, embed] attends to itself and to encoded [batch, enc_length, embed]."""
    cfg = self.config
    dropout = functools.partial(nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,)), deterministic=deterministic)
    norm = functools.partial(layers.RMSNorm, cfg.layer_norm_epsilon, **_dtypes(cfg))
    h = norm(name="pre_self_attention_layer_norm")(y)
    h = _attention(cfg, "self_attention")(h, h, self_bias, deterministic=deterministic, decode=decode)
    y = y + dropout(h)
    h = norm(name="pre_cross_attention_layer_norm")(y)
    # Under FP8 only the keys and values of the encoder's positions (the decoder's one projection over
    # the encoder length) are worth it; every other decoder matmul spans the few target positions.
    kv_matmul_dtype = "default" if decode else cfg.matmul_dtype
    h = _attention(cfg, "encoder_decoder_attention", kv_matmul_dtype)(
      h, encoded, cross_bias, deterministic=deterministic, decode=decode, cross=True
    )
    y = y + dropout(h)
    h = norm(name="pre_mlp_layer_norm")(y)
    h = _mlp(cfg)(h, deterministic=deterministic)
    return layers.constrain(y + dropout(h), ("batch", "length", "embed"))


class Encoder(nn.Module):
  config: T5Config

  @nn.compact
  def __call__(
    self, embedded: Array, mask: Array, *, segment_ids: Array | None = None, deterministic: bool = True
  ) -> Array:
    """embedded [batch, length, embed] with mask [batch, length] (1 = token) -> [batch, length, embed].

    segment_ids: packed rows' [batch, length] (see the module docstring); None: unpacked rows."""
    cfg = self.config
    length = embedded.shape[1]
    bias = layers.RelativePositionBiases(
      cfg.relative_attention_num_buckets,
      cfg.relative_attention_max_distance,
      cfg.num_heads,
      bidirectional=True,
      **_dtypes(cfg),
      name="relpos_bias",
    )(length, length)
    if segment_ids is None:  # right-padded rows: the mask is each row's first key_lengths positions
      # At least 1: an all-padding row (an evaluation batch's filler) then attends to its first
      # position and stays finite, as the reference's uniform weights do; nothing reads its output.
      lengths = jnp.maximum(jnp.sum(mask > 0, axis=-1, dtype=jnp.int32), 1)
      bias = layers.PaddedPositionBias(bias, layers.padding_mask_bias(mask, mask), lengths)
    else:
      bias = bias + layers.segment_mask_bias(segment_ids, segment_ids)
    dropout = nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))
    x = dropout(jnp.asarray(embedded, cfg.activation_dtype), deterministic=deterministic)
    layer = _layer_class(EncoderLayer, cfg, static_argnums=(3,))
    with fp8.matmuls(cfg.matmul_dtype):  # the layers' projections (layers.DenseGeneral) read it
      for i in range(cfg.num_encoder_layers):
        x = layer(cfg, name=f"layers_{i}")(x, bias, deterministic)
    x = layers.RMSNorm(cfg.layer_norm_epsilon, **_dtypes(cfg), name="encoder_norm")(x)
    return dropout(x, deterministic=deterministic)


class Decoder(nn.Module):
  config: T5Config

  @nn.compact
  def __call__(
    self,
    embedded: Array,
    encoded: Array | None,
    encoder_mask: Array,
    *,
    shared_embedding: layers.Embed,
    decoder_mask: Array | None = None,
    deterministic: bool = True,
    decode: bool = False,
    decoder_segment_ids: Array | None = None,
    encoder_segment_ids: Array | None = None,
  ) -> Array:
    """Decoder stack and output head.

    Args:
      embedded: [batch, length, embed] embedded decoder inputs; in decode mode
        either the [batch, max_length] template that creates the cache or one step.
      encoded: [batch, enc_length, embed]; may be None for cached decode steps. Or
        [batch / group, enc_length, embed]: each encoder row serves `group`
        consecutive decoder rows (beams, samples, candidates), whose
        encoder-decoder attention shares its keys and values.
      encoder_mask: [batch or batch / group, enc_length] (1 = token), as `encoded`.
      decoder_mask: optional [batch, length] (1 = target token); padding is
        otherwise harmless because attention is causal.
      decoder_segment_ids, encoder_segment_ids: packed rows' [batch, length] and [batch,
        enc_length] (teacher forcing only: not with `decode` nor grouped rows); None: unpacked.
    Returns:
      float32 logits [batch, length, vocab].
    """
    cfg = self.config
    relpos = layers.RelativePositionBiases(
      cfg.relative_attention_num_buckets,
      cfg.relative_attention_max_distance,
      cfg.num_heads,
      bidirectional=False,
      **_dtypes(cfg),
      name="relpos_bias",
    )
    if decode and decoder_segment_ids is not None:
      raise ValueError("packed rows are for teacher forcing: cached decoding takes unpacked rows")
    if decode:
      # Bias over the whole cache; each layer's attention picks the current row.
      max_length = self._cache_length(embedded)
      self_bias = relpos(max_length, max_length)
      cross_bias = jnp.where(encoder_mask > 0, 0.0, layers.NEG_INF)[:, None, None, :].astype(jnp.float32)
    elif decoder_segment_ids is not None:
      if encoder_segment_ids is None or encoder_segment_ids.shape[0] != embedded.shape[0]:
        raise ValueError("packed decoder rows need the encoder_segment_ids of their own encoder rows")
      length = embedded.shape[1]
      self_bias = relpos(length, length) + layers.causal_mask_bias(length)
      self_bias = self_bias + layers.segment_mask_bias(decoder_segment_ids, decoder_segment_ids)
      cross_bias = layers.segment_mask_bias(decoder_segment_ids, encoder_segment_ids)
    else:
      length = embedded.shape[1]
      self_bias = relpos(length, length) + layers.causal_mask_bias(length)
      if decoder_mask is not None:
        self_bias = self_bias + layers.padding_mask_bias(decoder_mask, decoder_mask)
        query_mask = decoder_mask
      else:
        query_mask = jnp.ones(embedded.shape[:2], jnp.int32)
      if encoder_mask.shape[0] == embedded.shape[0]:
        cross_bias = layers.padding_mask_bias(query_mask, encoder_mask)
      else:  # rows sharing an encoder row (rank classification): their attention is grouped, keys masked
        cross_bias = layers.padding_mask_bias(jnp.ones_like(encoder_mask[:, :1]), encoder_mask)
    dropout = nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))
    y = dropout(jnp.asarray(embedded, cfg.activation_dtype), deterministic=deterministic)
    layer = _layer_class(DecoderLayer, cfg, static_argnums=(5, 6)) if not decode else DecoderLayer
    # The decoder's matmuls over its target positions stay in the activation dtype (see fp8.py): at a
    # few target tokens they are a sliver of the step, and FP8 there more than doubled t5_1_1_small's
    # logits error for no speed; cached decoding steps are memory-bound besides. Its encoder-side
    # projection (cross-attention keys and values) follows cfg.matmul_dtype (DecoderLayer).
    with fp8.matmuls("default"):
      for i in range(cfg.num_decoder_layers):
        y = layer(cfg, name=f"layers_{i}")(y, encoded, self_bias, cross_bias, deterministic, decode)
    y = layers.RMSNorm(cfg.layer_norm_epsilon, **_dtypes(cfg), name="decoder_norm")(y)
    y = dropout(y, deterministic=deterministic)
    if cfg.logits_via_embedding:
      logits = shared_embedding.attend(y * (cfg.emb_dim**-0.5))
    else:
      # The output head stays in the activation dtype whatever cfg.matmul_dtype is (see fp8.py).
      logits = layers.DenseGeneral(
        cfg.vocab_size, ("embed", "vocab"), **_dtypes(cfg), matmul_dtype="default", name="logits_dense"
      )(y)
      logits = jnp.asarray(logits, jnp.float32)
    return layers.constrain(logits, ("batch", "length", "vocab"))

  def _cache_length(self, embedded: Array) -> int:
    """The cache length: the template's length, or that of the existing cache."""
    cache = self.variables.get("cache", {})
    if "layers_0" in cache:
      return cache["layers_0"]["self_attention"]["cached_key"].shape[2]  # [batch, heads, length, kv]
    return embedded.shape[1]


class Transformer(nn.Module):
  """T5 encoder-decoder. `embed` -> `encode` -> `decode`; `__call__` runs all three."""

  config: T5Config

  def setup(self):
    cfg = self.config
    self.token_embedder = layers.Embed(cfg.vocab_size, cfg.emb_dim, **_dtypes(cfg))
    self.encoder = Encoder(cfg)
    self.decoder = Decoder(cfg)

  def embed(self, tokens: Array) -> Array:
    """Token ids [batch, length] -> embeddings [batch, length, embed] (activation dtype)."""
    return self.token_embedder(tokens)

  def encode(
    self, embedded: Array, mask: Array, *, segment_ids: Array | None = None, deterministic: bool = True
  ) -> Array:
    """Encoder over embedded inputs [batch, length, embed] with mask [batch, length] (and packed
    rows' segment_ids [batch, length])."""
    return self.encoder(embedded, mask, segment_ids=segment_ids, deterministic=deterministic)

  def encode_tokens(
    self,
    encoder_input_tokens: Array,
    *,
    deterministic: bool = True,
    encoder_segment_ids: Array | None = None,
    encoder_positions: Array | None = None,
  ) -> tuple[Array, Array]:
    """Token ids [batch, length] (0 = padding) -> (encoded [batch, length, embed], mask [batch, length]).

    This is the seam a prompt layer overrides: it returns the encoder output
    and the mask the decoder's cross-attention must use. encoder_segment_ids: packed rows
    (data/packing.py); encoder_positions place a prompt layer's copies and are unused here.
    """
    del encoder_positions  # the relative position bias needs only the row (module docstring)
    if encoder_segment_ids is None:
      mask = (encoder_input_tokens > 0).astype(jnp.int32)
    else:
      mask = (encoder_segment_ids > 0).astype(jnp.int32)
    embedded = self.embed(encoder_input_tokens)
    return self.encode(embedded, mask, segment_ids=encoder_segment_ids, deterministic=deterministic), mask

  def decode(
    self,
    encoded: Array | None,
    encoder_mask: Array,
    decoder_input_tokens: Array,
    *,
    decoder_mask: Array | None = None,
    deterministic: bool = True,
    decode: bool = False,
    decoder_segment_ids: Array | None = None,
    encoder_segment_ids: Array | None = None,
  ) -> Array:
    """Decoder logits, float32 [batch, length, vocab]; see `Decoder`."""
    embedded = self.token_embedder(decoder_input_tokens)
    return self.decoder(
      embedded,
      encoded,
      encoder_mask,
      shared_embedding=self.token_embedder,
      decoder_mask=decoder_mask,
      deterministic=deterministic,
      decode=decode,
      decoder_segment_ids=decoder_segment_ids,
      encoder_segment_ids=encoder_segment_ids,
    )

  def __call__(
    self,
    encoder_input_tokens: Array,
    decoder_input_tokens: Array,
    decoder_target_tokens: Array | None = None,
    *,
    deterministic: bool = True,
    **packed: Array,
  ) -> Array:
    """Teacher-forced logits.

    Args:
      encoder_input_tokens: int32 [batch, enc_length], 0 = padding.
      decoder_input_tokens: int32 [batch, dec_length], starting with 0.
      decoder_target_tokens: optional int32 [batch, dec_length]; its padding
        masks decoder positions, as in t5x.
      packed: packed rows' encoder_segment_ids / encoder_positions [batch, enc_length] and
        decoder_segment_ids [batch, dec_length] (data/packing.py); none for unpacked rows.
    Returns:
      float32 logits [batch, dec_length, vocab].
    """
    return teacher_forced(
      self, encoder_input_tokens, decoder_input_tokens, decoder_target_tokens, deterministic, packed
    )


PACKED_ARGS = ("encoder_segment_ids", "encoder_positions", "decoder_segment_ids")


def teacher_forced(
  module: Transformer,
  encoder_input_tokens: Array,
  decoder_input_tokens: Array,
  decoder_target_tokens: Array | None,
  deterministic: bool,
  packed: dict[str, Array],
  **encode_kwargs: Array,
) -> Array:
  """encode_tokens then decode, for `Transformer.__call__` and its prompted subclass."""
  unknown = sorted(set(packed) - set(PACKED_ARGS))
  if unknown:
    raise TypeError(f"unexpected arguments {unknown}: packed rows take {', '.join(PACKED_ARGS)}")
  encoder_segment_ids = packed.get("encoder_segment_ids")
  if (encoder_segment_ids is None) != (packed.get("decoder_segment_ids") is None):
    raise ValueError("packed rows need both encoder_segment_ids and decoder_segment_ids")
  encoded, encoder_mask = module.encode_tokens(
    encoder_input_tokens,
    deterministic=deterministic,
    encoder_segment_ids=encoder_segment_ids,
    encoder_positions=packed.get("encoder_positions"),
    **encode_kwargs,
  )
  if encoder_segment_ids is not None:  # the segment ids mask the padding too
    decoder_mask = None
  elif decoder_target_tokens is not None:
    decoder_mask = (decoder_target_tokens > 0).astype(jnp.int32)
  else:
    decoder_mask = None
  return module.decode(
    encoded,
    encoder_mask,
    decoder_input_tokens,
    decoder_mask=decoder_mask,
    deterministic=deterministic,
    decoder_segment_ids=packed.get("decoder_segment_ids"),
    encoder_segment_ids=encoder_segment_ids,
  )


def _init_inputs() -> tuple[Array, Array]:
  return jnp.ones((1, 1), jnp.int32), jnp.ones((1, 1), jnp.int32)


def _init(module: nn.Module, rng: Array) -> dict:
  """module.init on one-token inputs; a prompted module with a table of prompts gets task ids too.

  Traced with the reference attention: the parameters do not depend on the kernel, and a required
  'cudnn' would refuse the one-token lengths (odd with an odd prompt) or a machine without a GPU.
  """
  if module.config.attention_impl != "xla":
    module = module.clone(config=dataclasses.replace(module.config, attention_impl="xla"))
  prompt_config = getattr(module, "prompt_config", None)
  extra = {"task_ids": jnp.zeros((1,), jnp.int32)} if getattr(prompt_config, "num_tasks", None) else {}
  return module.init(rng, *_init_inputs(), **extra)


def init_params(config: T5Config, rng: Array) -> dict:
  """Randomly initialized parameters (t5x initializers), unboxed: a plain nested dict."""
  variables = _init(Transformer(config), rng)
  return nn.meta.unbox(variables["params"])


def abstract_module_params(module: nn.Module) -> dict:
  """The parameter tree of a Transformer (or a subclass, e.g. the prompted one) as
  jax.ShapeDtypeStructs, computed without allocating memory."""
  boxed = jax.eval_shape(lambda: _init(module, jax.random.PRNGKey(0)))["params"]
  return nn.meta.unbox(boxed)


def module_logical_axes(module: nn.Module) -> dict:
  """The logical axis names of every parameter, e.g. ('embed', 'joined_kv'), as a nested dict."""
  boxed = jax.eval_shape(lambda: _init(module, jax.random.PRNGKey(0)))["params"]
  return jax.tree.map(lambda box: tuple(box.names), boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))


def abstract_params(config: T5Config) -> dict:
  return abstract_module_params(Transformer(config))
