"""T5 building blocks in Flax Linen, with t5x parameter names and logical axes.

Every parameter is created through `nn.with_logical_partitioning` and every key
activation passes through `nn.with_logical_constraint`, using the axis names of
`prompt_tuning.partitioning.LOGICAL_AXIS_RULES` (batch, length, embed, mlp,
heads, kv, joined_kv, vocab, relpos_buckets). Kernels are stored 2-D, as in
t5x checkpoints ([embed, heads*kv] for attention projections), and reshaped
on use.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import threading
from typing import Callable, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from prompt_tuning.models.t5 import fp8

Array = jax.Array
Initializer = Callable[..., Array]

NEG_INF = -1e10  # additive mask value, as in t5x

# t5x initializers. T5 does not scale attention logits by 1/sqrt(head_dim):
# that factor is folded into the query initializer instead.
default_kernel_init = nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal")
attention_kernel_init = nn.initializers.variance_scaling(1.0, "fan_in", "normal")
embedding_init = nn.initializers.normal(stddev=1.0)
relpos_init = nn.initializers.variance_scaling(1.0, "fan_avg", "uniform")


def constrain(x: Array, axes: Sequence[str | None]) -> Array:
  """Names the logical axes of an activation (a no-op outside a mesh context)."""
  return nn.with_logical_constraint(x, tuple(axes))


class DenseGeneral(nn.Module):
  """A bias-free projection with a 2-D stored kernel [prod(in), prod(out)].

  Attributes:
    features: output shape, e.g. (heads, kv) for a query projection.
    axis: input axes contracted, e.g. -1 or (-2, -1).
    kernel_axes: logical names of the 2-D stored kernel.
    matmul_dtype: 'default' (the activation dtype) or 'fp8' (fp8.frozen_matmul: no kernel
      gradient); None takes the enclosing fp8.matmuls scope's (T5Config.matmul_dtype in the layers).
  """

  features: int | tuple[int, ...]
  kernel_axes: tuple[str, str]
  axis: int | tuple[int, ...] = -1
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32
  kernel_init: Initializer = default_kernel_init
  matmul_dtype: str | None = None

  @nn.compact
  def __call__(self, inputs: Array) -> Array:
    features = (self.features,) if isinstance(self.features, int) else tuple(self.features)
    axis = (self.axis,) if isinstance(self.axis, int) else tuple(self.axis)
    axis = tuple(a % inputs.ndim for a in axis)
    in_shape = tuple(inputs.shape[a] for a in axis)
    stored_shape = (int(np.prod(in_shape)), int(np.prod(features)))
    kernel = self.param(
      "kernel", nn.with_logical_partitioning(self.kernel_init, self.kernel_axes), stored_shape, self.param_dtype
    )
    if fp8.resolve(self.matmul_dtype) == "fp8":
      out = fp8.dense(inputs, kernel, axis, self.dtype)
      return out.reshape(out.shape[:-1] + features)
    kernel = jnp.asarray(kernel, self.dtype).reshape(in_shape + features)
    inputs = jnp.asarray(inputs, self.dtype)
    contract = (axis, tuple(range(len(axis))))
    return jax.lax.dot_general(inputs, kernel, (contract, ((), ())))


class StoredKernel(nn.Module):
  """The kernel a DenseGeneral of this name stores ([in, out]: same shape, initializer, logical axes
  and parameter path), returned for `fused_projection` to multiply together with its siblings."""

  shape: tuple[int, int]
  kernel_axes: tuple[str, str]
  param_dtype: jnp.dtype = jnp.float32
  kernel_init: Initializer = default_kernel_init

  @nn.compact
  def __call__(self) -> Array:
    init = nn.with_logical_partitioning(self.kernel_init, self.kernel_axes)
    return self.param("kernel", init, self.shape, self.param_dtype)


def fused_projection(
  inputs: Array, kernels: Sequence[Array], features: tuple[int, ...], dtype: jnp.dtype, matmul_dtype: str | None = None
) -> list[Array]:
  """inputs [..., in] through several stored kernels [in, prod(features)] in ONE matmul.

  The kernels are stacked [in, k, out] on a new, unsharded axis, so each keeps its own sharding of
  `out` and one GEMM reads the inputs once (T5Config.fuse_projections: q/k/v, or a gated MLP's two
  input projections). Under FP8 (`matmul_dtype`, as DenseGeneral) the kernels share one scale.
  Returns k arrays [..., *features], as k DenseGenerals would.
  """
  if fp8.resolve(matmul_dtype) == "fp8":
    out = fp8.dense(inputs, jnp.concatenate(kernels, axis=1), (inputs.ndim - 1,), dtype)
    parts = jnp.split(out, len(kernels), axis=-1)
  else:
    stacked = jnp.stack([jnp.asarray(k, dtype) for k in kernels], axis=1)
    out = jax.lax.dot_general(jnp.asarray(inputs, dtype), stacked, (((inputs.ndim - 1,), (0,)), ((), ())))
    parts = [out[..., i, :] for i in range(len(kernels))]
  return [part.reshape(*part.shape[:-1], *features) for part in parts]


class Embed(nn.Module):
  """Token embedding [vocab, embed]; `attend` gives logits against it."""

  num_embeddings: int
  features: int
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  def setup(self):
    self.embedding = self.param(
      "embedding",
      nn.with_logical_partitioning(embedding_init, ("vocab", "embed")),
      (self.num_embeddings, self.features),
      self.param_dtype,
    )

  def __call__(self, tokens: Array) -> Array:
    """[batch, length] int -> [batch, length, embed]."""
    embedding = jnp.asarray(self.embedding, self.dtype)
    return constrain(jnp.take(embedding, tokens, axis=0), ("batch", "length", "embed"))

  def attend(self, query: Array) -> Array:
    """[batch, length, embed] -> float32 logits [batch, length, vocab]."""
    embedding = jnp.asarray(self.embedding, self.dtype)
    return jnp.einsum("ble,ve->blv", jnp.asarray(query, self.dtype), embedding, preferred_element_type=jnp.float32)


class RMSNorm(nn.Module):
  """T5 layer norm: scale only, no mean subtraction, statistics in float32."""

  epsilon: float = 1e-6
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    x32 = jnp.asarray(x, jnp.float32)
    variance = jnp.mean(jnp.square(x32), axis=-1, keepdims=True)
    normed = jnp.asarray(x32 * jax.lax.rsqrt(variance + self.epsilon), self.dtype)
    scale = self.param(
      "scale", nn.with_logical_partitioning(nn.initializers.ones, ("embed",)), (x.shape[-1],), self.param_dtype
    )
    return computed_once(normed * jnp.asarray(scale, self.dtype))


def computed_once(x: Array, platform: str | None = None) -> Array:
  """`x`, which XLA:GPU must compute once, not once per consumer (identity elsewhere).

  A norm's output feeds several projections (q/k/v, the MLP's two inputs, every decoder layer's
  cross-attention keys and values). XLA:GPU fused the norm's scale multiply into each consumer's
  GEMM fusion and then ran the large GEMMs on cuBLAS, which cannot absorb it: the same [batch x
  length, embed] product was written once per consumer (168 kernels a step on XL, 7 ms of 210;
  BENCHMARKS.md). An optimization barrier keeps it one array: exact, XL's step 3% faster, base's
  and decoding's too. On TPU, XLA fuses such multiplies into the matmuls themselves: left alone.
  """
  if (platform or jax.default_backend()) in ("gpu", "cuda", "rocm"):
    return jax.lax.optimization_barrier(x)
  return x


def relative_position_bucket(
  relative_position: np.ndarray, bidirectional: bool, num_buckets: int, max_distance: int
) -> np.ndarray:
  """Mesh-TensorFlow's bucketing of (memory - query) positions, on the host.

  Exact buckets for small distances, logarithmic ones up to max_distance.
  Computed in float32 as the published checkpoints (and HF) do.
  """
  relative_position = np.asarray(relative_position, np.int64)
  buckets = np.zeros_like(relative_position)
  if bidirectional:
    num_buckets //= 2
    buckets += (relative_position > 0).astype(np.int64) * num_buckets
    distance = np.abs(relative_position)
  else:
    distance = -np.minimum(relative_position, 0)
  max_exact = num_buckets // 2
  is_small = distance < max_exact
  with np.errstate(divide="ignore"):
    scaled = (
      np.log(distance.astype(np.float32) / np.float32(max_exact))
      / np.float32(np.log(max_distance / max_exact))
      * np.float32(num_buckets - max_exact)
    )
  large = max_exact + np.where(is_small, 0, scaled).astype(np.int64)
  large = np.minimum(large, num_buckets - 1)
  return buckets + np.where(is_small, distance, large)


class RelativePositionBiases(nn.Module):
  """Shared per-stack attention bias from bucketed relative positions.

  Parameter `rel_embedding` is [heads, relpos_buckets], as in t5x.
  """

  num_buckets: int
  max_distance: int
  num_heads: int
  bidirectional: bool
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, query_length: int, key_length: int) -> Array:
    """Returns the bias [1, heads, query_length, key_length] (float32)."""
    context = np.arange(query_length)[:, None]
    memory = np.arange(key_length)[None, :]
    buckets = relative_position_bucket(memory - context, self.bidirectional, self.num_buckets, self.max_distance)
    table = self.param(
      "rel_embedding",
      nn.with_logical_partitioning(relpos_init, ("heads", "relpos_buckets")),
      (self.num_heads, self.num_buckets),
      self.param_dtype,
    )
    one_hot = jax.nn.one_hot(buckets, self.num_buckets, dtype=jnp.float32)  # [q, k, buckets]
    bias = jnp.einsum("hb,qkb->hqk", jnp.asarray(table, jnp.float32), one_hot)
    return bias[None]


FUSED_HEAD_DIMS = range(8, 129, 8)  # cuDNN's fused attention: head_dim a multiple of 8, at most 128
FUSED_DTYPES = (jnp.bfloat16, jnp.float16)


def attention_backend(
  attention_impl: str,
  dtype: jnp.dtype,
  head_dim: int,
  *,
  dropout: bool,
  decode: bool,
  lengths: tuple[int, int] = (2, 2),
  platform: str | None = None,
  cross: bool = False,
) -> str:
  """Which kernel a MultiHeadAttention runs: 'cudnn' (fused) or 'xla' (the einsum reference).

  'auto' picks cuDNN's fused kernel on a GPU for bfloat16/float16 activations
  with a head_dim it supports and even (query, key) `lengths`, outside attention
  dropout and cached decoding; everything else runs the reference (float32
  logits and softmax). 'cudnn' requires the fused kernel and names what rules it out.
  In cached decoding (`decode`) 'cudnn' runs encoder-decoder attention (`cross`)
  fused where the kernel can (no gradient there, so any lengths), and falls back
  to the reference otherwise and for self-attention, whose cache index masks it.
  """
  platform = platform or jax.default_backend()
  query_length, key_length = lengths
  reasons = [
    why
    for why, bad in (
      (f"it needs a GPU (this is {platform})", platform not in ("gpu", "cuda")),
      (f"it needs bfloat16 or float16 activations, not {jnp.dtype(dtype).name}", jnp.dtype(dtype) not in FUSED_DTYPES),
      (f"head_dim {head_dim} is not a multiple of 8 up to 128", head_dim not in FUSED_HEAD_DIMS),
      # cuDNN's backward pass with a bias (ours always has one) takes even lengths only; a prompt
      # makes odd encoder lengths easy to reach (24 inputs + 5 prompt tokens).
      (
        f"its gradient with a bias needs even sequence lengths (query {query_length}, key {key_length})",
        (query_length % 2 or key_length % 2) and not decode,
      ),
      ("attention dropout runs only in the reference path", dropout),
      ("cached self-attention runs the reference path", decode and not cross),
    )
    if bad
  ]
  if attention_impl == "xla" or (attention_impl == "auto" and (reasons or decode)):
    return "xla"
  if reasons:
    if decode:  # decoding falls back even when cuDNN is required
      return "xla"
    raise ValueError(f"attention_impl='cudnn' cannot run here: {reasons[0]}")
  return "cudnn"


class PaddedPositionBias(NamedTuple):
  """An encoder's self-attention bias kept in two parts, for right-padded rows.

  position: [1, heads, length, length] float32, the relative position bias (one for the batch);
  mask: [batch, 1, length, length] float32, the additive padding mask (`padding_mask_bias`);
  key_lengths: [batch] int32, each row's valid length: its mask is that many ones, then zeros, as
    right-padded rows have (seqio pads at the end; the prompt layer keeps padding at the end).
  The reference path adds `position + mask` ([batch, heads, length, length], what a single bias
  array held before); cuDNN's fused kernel takes the position bias without the batch broadcast
  and the padding as key lengths, so neither a [batch, heads, length, length] bias nor its
  gradient is written (measured on XL: 2.9% of the step, BENCHMARKS.md).
  """

  position: Array
  mask: Array
  key_lengths: Array

  def combined(self) -> Array:
    return self.position + self.mask


_bias_gradient_skipped = threading.local()  # .active: this thread is tracing a call whose bias is stopped
_hook_lock = threading.Lock()


def _installed_bias_gradient_hook() -> bool:
  """Wraps JAX's private cuDNN attention primitive (`_dot_product_attention`, a custom VJP) once per
  process so that, while the calling thread is inside `_cudnn_without_bias_gradient`, a call that
  would export the bias gradient (`variadic_args` (has_bias, has_dbias) = (True, True)) is bound
  with (True, False) instead; every other call passes through unchanged. JAX 0.10 and 0.11 both
  decide has_dbias in the public wrapper and then call this function by its module name, so one
  hook serves both (0.10 always exports it; 0.11 whenever the bias is a float). Installed once
  and never removed: no thread can restore another's state. False where JAX has no such function
  or its signature has no `variadic_args`."""
  from jax._src.cudnn import fused_attention_stablehlo as cudnn_attention  # noqa: PLC0415 -- private, GPU-only

  with _hook_lock:
    original = getattr(cudnn_attention, "_dot_product_attention", None)
    if original is None:
      return False
    if getattr(original, "_prompt_tuning_hook", False):
      return True
    try:
      parameters = list(inspect.signature(original).parameters)
    except (TypeError, ValueError):
      return False
    if "variadic_args" not in parameters:
      return False
    position = parameters.index("variadic_args")

    def dot_product_attention(*args, **kwargs):
      if getattr(_bias_gradient_skipped, "active", False) and len(args) > position and args[position] == (True, True):
        args = (*args[:position], (True, False), *args[position + 1 :])
      return original(*args, **kwargs)

    dot_product_attention._prompt_tuning_hook = True
    cudnn_attention._dot_product_attention = dot_product_attention
  return True


@contextlib.contextmanager
def _cudnn_without_bias_gradient():
  """Tracing inside: JAX's cuDNN attention leaves the bias gradient out of its backward kernel.

  The bias then gets None (zeros) as its gradient; callers pass a stopped bias, so nothing reads
  it. Where the hook cannot be installed (a JAX without the private function), the gradient is
  computed and unused, as before: slower, never wrong. Per thread: a concurrent trace elsewhere
  (the server's, another run's) keeps JAX's own answer.
  """
  if not _installed_bias_gradient_hook():
    yield
    return
  outer = getattr(_bias_gradient_skipped, "active", False)
  _bias_gradient_skipped.active = True
  try:
    yield
  finally:
    _bias_gradient_skipped.active = outer


def fused_attention(
  query: Array,
  key: Array,
  value: Array,
  bias: Array,
  implementation: str = "cudnn",
  key_lengths: Array | None = None,
  bias_gradient: bool = True,
) -> Array:
  """jax.nn.dot_product_attention without T5's (absent) 1/sqrt(d) scaling; no dropout.

  Shapes as `dot_product_attention`. Without `key_lengths` the bias [batch or 1, heads, q_length,
  kv_length] (positions + mask) is broadcast over the batch; with key_lengths [batch] (each row's
  keys are valid up to its length), the bias [1, heads, q_length, kv_length] is the position bias
  alone, passed without the broadcast, and the padding goes to the kernel as lengths (query rows
  past a row's length then attend to its valid keys: right padding, whose outputs nothing reads).
  The bias is cast to the activation dtype, as the fused kernel takes it. `implementation` 'xla'
  runs JAX's own version of the same computation (for tests off GPU). `bias_gradient=False`: the
  bias takes no gradient (a frozen position bias, or a mask), and cuDNN's backward skips computing
  one (a [heads or batch*heads, q_length, kv_length] reduction and a separate dQ pass per call).
  """
  if key_lengths is None:
    bias = jnp.broadcast_to(bias, (query.shape[0], bias.shape[1], query.shape[1], key.shape[1]))
  else:
    key_lengths = jnp.asarray(key_lengths, jnp.int32)
  attend = functools.partial(
    jax.nn.dot_product_attention, query, key, value, scale=1.0, implementation=implementation,
    key_value_seq_lengths=key_lengths,
  )  # fmt: skip
  if bias_gradient:
    return attend(bias=bias.astype(query.dtype))
  with _cudnn_without_bias_gradient():
    return attend(bias=jax.lax.stop_gradient(bias.astype(query.dtype)))


@functools.cache
def cudnn_takes_key_lengths(
  batch: int,
  length: int,
  heads: int,
  head_dim: int,
  dtype_name: str,
  bias_gradient: bool = True,
  platform: str | None = None,
) -> bool:
  """Whether cuDNN's fused attention builds here, forward and gradient, with a [1, heads, length,
  length] bias and key lengths (`fused_attention(..., key_lengths=..., bias_gradient=...)`), for
  these shapes.

  JAX's own tests cover a broadcast bias and key lengths apart, not together; so the first encoder
  attention of a process compiles the pair once (abstract operands: nothing runs) and falls back
  to the batch-broadcast bias if cuDNN refuses it. Off a GPU: False (the fused kernel is not there).
  """
  if (platform or jax.default_backend()) not in ("gpu", "cuda"):
    return False
  dtype = jnp.dtype(dtype_name)
  operand = jax.ShapeDtypeStruct((batch, length, heads, head_dim), dtype)
  bias = jax.ShapeDtypeStruct((1, heads, length, length), jnp.float32)
  lengths = jax.ShapeDtypeStruct((batch,), jnp.int32)

  def loss(query, key, value, bias, lengths):
    out = fused_attention(query, key, value, bias, key_lengths=lengths, bias_gradient=bias_gradient)
    return jnp.sum(out.astype(jnp.float32))

  try:
    jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(operand, operand, operand, bias, lengths).compile()
  except Exception:  # noqa: BLE001 -- cuDNN or JAX refusing the combination, in whatever form
    return False
  return True


def dot_product_attention(
  query: Array,
  key: Array,
  value: Array,
  bias: Array,
  dropout_rate: float,
  dropout_rng: Array | None,
  dtype: jnp.dtype,
  *,
  heads_major: bool = False,
) -> Array:
  """Unscaled multi-head attention with an additive bias.

  Args:
    query: [batch, q_length, heads, kv].
    key, value: [batch, kv_length, heads, kv], or with `heads_major` [batch,
      heads, kv_length, kv] (the decode cache's layout).
    bias: broadcastable to [batch, heads, q_length, kv_length] (positions + mask).
  Returns:
    [batch, q_length, heads, kv] in `dtype`. Logits and softmax are float32.
  """
  kv = "bhkd" if heads_major else "bkhd"
  logits = jnp.einsum(f"bqhd,{kv}->bhqk", query, key, preferred_element_type=jnp.float32)
  weights = jax.nn.softmax(logits + bias, axis=-1)
  if dropout_rng is not None and dropout_rate > 0.0:
    keep = jax.random.bernoulli(dropout_rng, 1.0 - dropout_rate, weights.shape)
    weights = weights * keep / (1.0 - dropout_rate)
  weights = jnp.asarray(weights, dtype)
  return jnp.einsum(f"bhqk,{kv}->bqhd", weights, value)


class MultiHeadAttention(nn.Module):
  """T5 attention with query/key/value/out projections.

  With `decode=True`, keys and values live in the `cache` collection, heads-major
  ([batch, heads, length, kv], so each step's attention reads them as they lie):
  self-attention appends one position per call, and encoder-decoder attention
  projects the encoder output once, when the cache is created.

  Encoder-decoder attention may serve several decoder rows per encoder row:
  queries [batch * group, ...] (example-major, as `decoding.flat_batch_beam_expand`
  lays them out) against keys and values of [batch, ...]. Each example's group of
  rows is attended as one longer query sequence, so beams, samples and
  rank-classification candidates share one projection and one read of the
  example's keys and values. Exact: encoder-decoder attention has no position
  bias, and its mask then depends only on the encoder positions.
  """

  num_heads: int
  head_dim: int
  dropout_rate: float = 0.0
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32
  attention_impl: str = "auto"  # T5Config.attention_impl
  fuse_projections: bool = False  # T5Config.fuse_projections
  position_bias_gradient: bool = True  # T5Config.position_bias_gradient (self-attention's bias)
  # Encoder-decoder attention's key/value projections (over the encoder's positions): their matmul
  # dtype, as DenseGeneral's (None: the enclosing fp8.matmuls scope's, as every other projection).
  kv_matmul_dtype: str | None = None

  def _query_init(self, rng: Array, shape: tuple[int, ...], dtype: jnp.dtype) -> Array:
    # Keep the parameter dtype: a numpy scalar would promote a bfloat16 kernel to float32.
    return (attention_kernel_init(rng, shape, dtype) / np.sqrt(self.head_dim)).astype(dtype)

  def _projections(self, x: Array, names: Sequence[str], matmul_dtype: str | None = None) -> list[Array]:
    """x [batch, length, embed] -> one [batch, length, heads, kv] per name ('query', 'key', 'value'),
    in one matmul with `fuse_projections`; `matmul_dtype` as DenseGeneral's."""
    inits = {"query": self._query_init, "key": attention_kernel_init, "value": attention_kernel_init}
    features = (self.num_heads, self.head_dim)
    if self.fuse_projections and len(names) > 1:
      shape = (x.shape[-1], self.num_heads * self.head_dim)
      kernels = [StoredKernel(shape, ("embed", "joined_kv"), self.param_dtype, inits[n], name=n)() for n in names]
      outs = fused_projection(x, kernels, features, self.dtype, matmul_dtype)
    else:
      outs = [
        DenseGeneral(
          features, ("embed", "joined_kv"), dtype=self.dtype, param_dtype=self.param_dtype, kernel_init=inits[n],
          matmul_dtype=matmul_dtype, name=n,
        )(x)
        for n in names
      ]  # fmt: skip
    return [constrain(out, ("batch", "length", "heads", "kv")) for out in outs]

  @nn.compact
  def __call__(
    self,
    inputs_q: Array,
    inputs_kv: Array | None,
    bias: Array,
    *,
    deterministic: bool = True,
    decode: bool = False,
    cross: bool = False,
  ) -> Array:
    """Attends from inputs_q [batch, q_length, embed] to inputs_kv [batch, kv_length, embed].

    Args:
      inputs_kv: for encoder-decoder attention, [batch / group, kv_length, embed]
        serves `group` consecutive query rows per row (see the class docstring).
      bias: relative-position bias plus mask, broadcastable to
        [batch, heads, q_length, kv_length], or a `PaddedPositionBias` (the encoder's
        self-attention over right-padded rows). For cached self-attention it is the
        position bias over the whole cache, [1, heads, max_length, max_length];
        the row of the current step is taken here and later positions masked.
        For grouped encoder-decoder attention: [batch / group, 1, 1, kv_length].
      decode: use the `cache` collection. A call on an empty cache creates it
        from the inputs (a [batch, max_length] template for self-attention, the
        encoder output for cross-attention); later calls feed one position.
      cross: this is encoder-decoder attention (keys from the encoder).
    Returns:
      [batch, q_length, embed].
    """
    dropout_rng = None if deterministic or self.dropout_rate == 0.0 else self.make_rng("dropout")
    choose = functools.partial(
      attention_backend,
      self.attention_impl,
      self.dtype,
      self.head_dim,
      dropout=dropout_rng is not None,
      decode=decode,
      cross=cross,
    )
    # No gradient in decoding: lengths do not matter there, and the cache's layout follows the kernel.
    backend = choose() if decode else None
    heads_major = backend == "xla"  # cuDNN's kernel reads [batch, length, heads, kv]
    if cross or (inputs_kv is not None and inputs_kv is not inputs_q):
      (query,) = self._projections(inputs_q, ("query",))
      if decode:
        key, value = self._cached_cross_kv(inputs_kv, heads_major)
      else:
        key, value = self._projections(inputs_kv, ("key", "value"), self.kv_matmul_dtype)
    else:  # self-attention: one input for the three projections
      query, key, value = self._projections(inputs_q, ("query", "key", "value"))
      if decode:
        key, value, bias = self._cached_self_kv(key, value, bias)
    batch, q_length = query.shape[:2]
    kv_batch = key.shape[0]
    if batch % kv_batch or (batch != kv_batch and not cross):
      raise ValueError(f"{batch} query rows cannot share keys and values of {kv_batch} rows")
    query = query.reshape(kv_batch, batch // kv_batch * q_length, *query.shape[2:])  # the group's rows in a row
    if not decode:
      backend = choose(lengths=(query.shape[1], key.shape[1]))
    # Encoder-decoder attention's bias is a mask: no parameter behind it.
    bias_gradient = self.position_bias_gradient and not cross
    if not bias_gradient:
      bias = jax.lax.stop_gradient(bias)
    if isinstance(bias, PaddedPositionBias):
      shape = (query.shape[0], query.shape[1], self.num_heads, self.head_dim, jnp.dtype(self.dtype).name)
      if backend == "cudnn" and cudnn_takes_key_lengths(*shape, bias_gradient):
        out = fused_attention(
          query, key, value, bias.position, key_lengths=bias.key_lengths, bias_gradient=bias_gradient
        )
        return self._output(inputs_q, out, batch, q_length)
      bias = bias.combined()
    if backend == "cudnn":
      out = fused_attention(query, key, value, bias, bias_gradient=bias_gradient)
    else:  # the reference path, and the only one with attention dropout
      out = dot_product_attention(
        query, key, value, bias, self.dropout_rate, dropout_rng, self.dtype, heads_major=heads_major
      )
    return self._output(inputs_q, out, batch, q_length)

  def _output(self, inputs_q: Array, out: Array, batch: int, q_length: int) -> Array:
    """The heads' outputs [rows, length, heads, kv] -> [batch, q_length, embed] through `out`."""
    out = out.reshape(batch, q_length, *out.shape[2:])
    out = DenseGeneral(
      inputs_q.shape[-1],
      ("joined_kv", "embed"),
      axis=(-2, -1),
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      kernel_init=attention_kernel_init,
      name="out",
    )(out)
    return constrain(out, ("batch", "length", "embed"))

  def _heads_major(self, x: Array) -> Array:
    """[batch, length, heads, kv] -> [batch, heads, length, kv], the cache's layout."""
    return constrain(jnp.swapaxes(x, 1, 2), ("batch", "heads", "length", "kv"))

  def _cached_cross_kv(self, encoded: Array | None, heads_major: bool) -> tuple[Array, Array]:
    """Projects the encoder output into the cache once; later steps read it. [batch, heads, enc_length,
    kv] with `heads_major`, else [batch, enc_length, heads, kv] (cuDNN's layout)."""
    if self.has_variable("cache", "cached_key"):
      return self.get_variable("cache", "cached_key"), self.get_variable("cache", "cached_value")
    if encoded is None:
      raise ValueError("the encoder-decoder attention cache is empty: create it with the encoder output")
    layout = self._heads_major if heads_major else (lambda x: x)
    key, value = (layout(x) for x in self._projections(encoded, ("key", "value")))
    self.put_variable("cache", "cached_key", key)
    self.put_variable("cache", "cached_value", value)
    return key, value

  def _cached_self_kv(self, key: Array, value: Array, position_bias: Array) -> tuple[Array, Array, Array]:
    """Writes one step's key/value [batch, 1, heads, kv] at the cache index; returns the cache
    [batch, heads, max_length, kv] and the step's bias."""
    key, value = self._heads_major(key), self._heads_major(value)
    if not self.has_variable("cache", "cached_key"):
      # Creating the cache from a [batch, max_length] template: nothing is appended.
      self.put_variable("cache", "cached_key", jnp.zeros_like(key))
      self.put_variable("cache", "cached_value", jnp.zeros_like(value))
      self.put_variable("cache", "cache_index", jnp.array(0, jnp.int32))
      return key, value, position_bias + causal_mask_bias(key.shape[2])
    if key.shape[2] != 1:
      raise ValueError(f"cached decoding feeds one position per step, got {key.shape[2]}")
    index = self.get_variable("cache", "cache_index")
    cached_key = jax.lax.dynamic_update_slice(self.get_variable("cache", "cached_key"), key, (0, 0, index, 0))
    cached_value = jax.lax.dynamic_update_slice(self.get_variable("cache", "cached_value"), value, (0, 0, index, 0))
    self.put_variable("cache", "cached_key", cached_key)
    self.put_variable("cache", "cached_value", cached_value)
    self.put_variable("cache", "cache_index", index + 1)
    max_length = cached_key.shape[2]
    row = jax.lax.dynamic_slice_in_dim(position_bias, index, 1, axis=-2)  # [1, heads, 1, max_length]
    visible = jnp.arange(max_length) <= index
    return cached_key, cached_value, row + jnp.where(visible, 0.0, NEG_INF)


def causal_mask_bias(length: int) -> Array:
  """Additive mask [1, 1, length, length] letting position i see positions <= i."""
  visible = np.tril(np.ones((length, length), dtype=bool))
  return jnp.asarray(np.where(visible, 0.0, NEG_INF), jnp.float32)[None, None]


def padding_mask_bias(query_mask: Array, key_mask: Array) -> Array:
  """Additive mask [batch, 1, q_length, kv_length] from [batch, length] validity masks."""
  visible = jnp.logical_and(query_mask[:, :, None] > 0, key_mask[:, None, :] > 0)
  return jnp.where(visible, 0.0, NEG_INF)[:, None].astype(jnp.float32)


def segment_mask_bias(query_segment_ids: Array, key_segment_ids: Array) -> Array:
  """Additive mask [batch, 1, q_length, kv_length] letting a position see only its own segment
  (packed rows, data/packing.py: segment ids 1..k, 0 = padding, which sees and is seen by nothing).

  The same shape and cost as `padding_mask_bias`, which it replaces for packed rows.
  """
  q, k = query_segment_ids[:, :, None], key_segment_ids[:, None, :]
  visible = jnp.logical_and(q == k, q > 0)
  return jnp.where(visible, 0.0, NEG_INF)[:, None].astype(jnp.float32)


class MlpBlock(nn.Module):
  """Feed-forward: relu (T5 1.0) or gated activations (T5 1.1 gated GELU)."""

  mlp_dim: int
  activations: tuple[str, ...]
  dropout_rate: float = 0.0
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32
  fuse_projections: bool = False  # T5Config.fuse_projections: a gated MLP's input projections in one matmul

  @nn.compact
  def __call__(self, inputs: Array, *, deterministic: bool = True) -> Array:
    """[batch, length, embed] -> [batch, length, embed]."""
    dense = functools.partial(DenseGeneral, dtype=self.dtype, param_dtype=self.param_dtype)
    names = ["wi"] if len(self.activations) == 1 else [f"wi_{i}" for i in range(len(self.activations))]
    if self.fuse_projections and len(names) > 1:
      shape = (inputs.shape[-1], self.mlp_dim)
      kernels = [StoredKernel(shape, ("embed", "mlp"), self.param_dtype, name=n)() for n in names]
      projected = fused_projection(inputs, kernels, (self.mlp_dim,), self.dtype)
    else:
      projected = [dense(self.mlp_dim, ("embed", "mlp"), name=n)(inputs) for n in names]
    hidden = None
    for act, h in zip(self.activations, projected):
      h = _ACTIVATION_FNS[act](h)
      hidden = h if hidden is None else hidden * h
    hidden = constrain(hidden, ("batch", "length", "mlp"))
    hidden = nn.Dropout(self.dropout_rate, broadcast_dims=(-2,))(hidden, deterministic=deterministic)
    out = dense(inputs.shape[-1], ("mlp", "embed"), name="wo")(hidden)
    return constrain(out, ("batch", "length", "embed"))


_ACTIVATION_FNS = {
  "relu": jax.nn.relu,
  "gelu": functools.partial(jax.nn.gelu, approximate=True),  # HF "gelu_new"
  "silu": jax.nn.silu,
  "linear": lambda x: x,
}
