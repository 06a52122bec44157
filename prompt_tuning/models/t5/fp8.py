"""FP8 matmuls for the frozen weights (T5Config.matmul_dtype = 'fp8', opt-in).

Prompt tuning never changes the T5 weights, so each projection over the
encoder's positions (the encoder layers' attention q/k/v/o and MLP wi/wo,
and the decoder's encoder-decoder attention key/value: every
`layers.DenseGeneral` in `network.Encoder`'s layer loop, and those
`network.DecoderLayer` marks) can run as an FP8 GEMM:

  forward   y  = (q(x, e4m3) @ q(W, e4m3)) * (s_x * s_W)
  backward  dx = (q(dy, e5m2) @ q(W, e4m3)^T) * (s_dy * s_W)      (no dW: the weights are frozen)

with one *current* per-tensor scale per operand, amax(|t|) / max(fp8),
computed in the call. No amax history, no new variables: the parameter tree,
checkpoints and t5x names are those of the bf16 model, and turning it off
again is a config change. e4m3 (3 mantissa bits, range 448) carries weights
and activations; e5m2 (2 mantissa bits, range 57344) the incoming gradient,
whose dynamic range is wider (the recipe of Micikevicius et al., 2022, and
Transformer Engine).

The dot takes the FP8 operands themselves (`dot_general` on float8 arrays,
its result in the activation dtype) and the two scales multiply its result.
On compute capability 8.9+ (Ada, Hopper) with CUDA 12, XLA runs such a dot
as one cuBLASLt FP8 GEMM (custom call `__cublas$lt$matmul$f8`). The other
form, dequantizing each operand (`convert(q) * scale`) right before a
bf16 dot, relies on XLA's GemmRewriter matching that pattern, and on an
H200 with jax 0.11.2 it did not: Triton's GEMM fusion took the converts and
the dot first, so the step ran bf16 GEMMs plus the quantization, slower than
bf16 (BENCHMARKS.md has the measurement). Anywhere without FP8 GEMMs (CPU,
older GPUs) XLA computes the same dot on the converted operands: the
quantization error is emulated exactly, at bf16 speed or below.

What stays in the activation dtype, and why:
- the decoder's projections over its own target positions (self-attention,
  the cross-attention query and output, the MLP): with targets of a few
  tokens they are a sliver of the step's FLOPs, while FP8 there feeds its
  error straight into the logits (random weights, 412 inputs: t5_1_1_small's
  logits 11.1% off bf16 with them in FP8, 4.8% without; t5_1_1_base's 12.9%
  and 7.1%);
- the output head (`decoder/logits_dense` and T5 1.0's `Embed.attend`): the
  loss reads its output directly, a 32k-way softmax is where FP8's 3-bit
  mantissa costs most, and with 8-token targets it is a few percent of the FLOPs;
- the attention score and value products (query.key, weights.value): they
  are not weight matmuls and run inside cuDNN's fused attention kernel;
- cached decoding steps: a decoder step is memory-bound, and quantizing the
  weights in the call would read every weight twice per generated token.

The context variable set by `matmuls` is how the network tells its layers
(attention projections included) which form to use without a new module
attribute on each of them; `DenseGeneral.matmul_dtype` overrides it.
"""

from __future__ import annotations

import contextlib
import contextvars
import re
from typing import Iterable, Iterator, Sequence

import jax
import jax.numpy as jnp

Array = jax.Array

E4M3 = jnp.float8_e4m3fn  # weights and activations
E5M2 = jnp.float8_e5m2  # incoming gradients

_MATMUL_DTYPE = contextvars.ContextVar("prompt_tuning_matmul_dtype", default="default")


@contextlib.contextmanager
def matmuls(matmul_dtype: str) -> Iterator[None]:
  """Within it, layers.DenseGeneral(matmul_dtype=None) traces in `matmul_dtype` ('default' or 'fp8')."""
  token = _MATMUL_DTYPE.set(matmul_dtype)
  try:
    yield
  finally:
    _MATMUL_DTYPE.reset(token)


def resolve(matmul_dtype: str | None) -> str:
  """A DenseGeneral's own setting, or the enclosing `matmuls` scope's when None ('default' outside any)."""
  return _MATMUL_DTYPE.get() if matmul_dtype is None else matmul_dtype


def current_scale(x: Array, fp8_dtype: jnp.dtype, dtype: jnp.dtype) -> Array:
  """amax(|x|) / max(fp8_dtype): a scalar in `dtype` (the activation dtype).

  Rounded to `dtype` here so that quantizing divides by exactly the value the
  dequantization multiplies by; kept at or above `dtype`'s smallest normal
  number (an all-zero tensor gets that floor, not a division by zero).
  """
  amax = jnp.max(jnp.abs(x)).astype(jnp.float32)
  scale = amax / float(jnp.finfo(fp8_dtype).max)
  return jnp.maximum(scale, float(jnp.finfo(dtype).tiny)).astype(dtype)


def quantize(x: Array, fp8_dtype: jnp.dtype, scale: Array) -> Array:
  """x / scale, saturated to fp8_dtype's range (e4m3fn has no infinity: a value past it would be NaN)."""
  limit = float(jnp.finfo(fp8_dtype).max)
  scaled = x.astype(jnp.float32) / scale.astype(jnp.float32)
  return jnp.clip(scaled, -limit, limit).astype(fp8_dtype)


def scaled_dot(
  lhs: Array, lhs_scale: Array, rhs: Array, rhs_scale: Array, contract: tuple[int, int], dtype, precision=None
):
  """(lhs @ rhs) * (lhs_scale * rhs_scale) in `dtype`, the dot on the FP8 operands themselves.

  lhs [n, a], rhs [b, c] (fp8), contracting lhs axis contract[0] with rhs axis contract[1]; the
  scales' product is formed in float32 and rounded to `dtype` once.
  """
  dims = (((contract[0],), (contract[1],)), ((), ()))
  out = jax.lax.dot_general(lhs, rhs, dims, precision=precision, preferred_element_type=dtype)
  return out * (lhs_scale.astype(jnp.float32) * rhs_scale.astype(jnp.float32)).astype(dtype)


@jax.custom_vjp
def frozen_matmul(x: Array, kernel: Array) -> Array:
  """x [n, k] @ kernel [k, m] -> [n, m] in x's dtype, both operands in e4m3.

  The gradient flows to x only (through e5m2); the kernel's cotangent is
  zero and no weight-gradient matmul is built: use it for frozen weights.
  """
  return _forward(x, kernel)[0]


def _forward(x: Array, kernel: Array) -> tuple[Array, tuple[Array, Array]]:
  dtype = x.dtype
  x_scale = current_scale(x, E4M3, dtype)
  w_scale = current_scale(kernel, E4M3, dtype)
  y = scaled_dot(quantize(x, E4M3, x_scale), x_scale, quantize(kernel, E4M3, w_scale), w_scale, (1, 0), dtype)
  # The residuals are the stored kernel (alive anyway, as a frozen parameter) and its scale, not its
  # FP8 copy: keeping that from the forward to the backward pass would add a byte per weight.
  return y, (kernel, w_scale)


def _backward(residuals: tuple[Array, Array], grad: Array) -> tuple[Array, None]:
  kernel, w_scale = residuals
  dtype = grad.dtype
  # Without the barrier XLA's CSE would merge this quantization with the forward pass's identical one
  # and keep the FP8 kernel alive in between, which the residual choice above avoids.
  kernel = jax.lax.optimization_barrier(kernel)
  g_scale = current_scale(grad, E5M2, dtype)
  w_q = quantize(kernel, E4M3, w_scale)
  # HIGHEST: XLA gives an FP8 GEMM cuBLASLt's fast (reduced-precision) accumulation unless the dot asks
  # for HIGHEST; Transformer Engine's recipe keeps it for the forward pass only, as here.
  # dx [n, k] = dy [n, m] . W [k, m] over m.
  dx = scaled_dot(quantize(grad, E5M2, g_scale), g_scale, w_q, w_scale, (1, 1), dtype, jax.lax.Precision.HIGHEST)
  return dx, None


frozen_matmul.defvjp(_forward, _backward)


def dense(inputs: Array, kernel: Array, axis: Sequence[int], dtype: jnp.dtype) -> Array:
  """A DenseGeneral projection through `frozen_matmul`.

  Args:
    inputs: [..., in axes at `axis` (non-negative, in the kernel's order)].
    kernel: the stored 2-D kernel [prod(in shape), prod(out shape)], any float dtype.
    dtype: the activation dtype: the inputs' before quantizing, and the result's.
  Returns:
    [non-contracted input axes..., prod(out shape)] in `dtype`.
  """
  contracted = len(axis)
  moved = jnp.moveaxis(jnp.asarray(inputs, dtype), tuple(axis), tuple(range(inputs.ndim - contracted, inputs.ndim)))
  batch_shape = moved.shape[: inputs.ndim - contracted]
  # 2-D operands: the shape cuBLASLt's FP8 GEMM takes (one contracting, one free dimension).
  out = frozen_matmul(moved.reshape(-1, kernel.shape[0]), kernel)
  return out.reshape(*batch_shape, kernel.shape[1])


# The kernels `frozen_matmul` runs (the encoder layers', the decoder's cross-attention key/value), by path.
LAYER_KERNELS = re.compile(
  r"encoder/layers_\d+/.+/kernel|decoder/layers_\d+/encoder_decoder_attention/(key|value)/kernel"
)


def check_frozen(matmul_dtype: str, paths: Iterable[str], trainable_pattern: str) -> None:
  """One line when `trainable_pattern` (a full-path regex) trains a kernel that FP8 matmuls give no gradient."""
  if matmul_dtype != "fp8":
    return
  try:
    regex = re.compile(trainable_pattern)
  except re.error:
    return  # param_tree.split_trainable names the bad regex
  trained = sorted(p for p in paths if LAYER_KERNELS.fullmatch(p) and regex.fullmatch(p))
  if trained:
    raise ValueError(
      f"matmul_dtype='fp8' gives the layers' kernels no gradient, but TRAINABLE_PARAMS={trainable_pattern!r} "
      f"trains {trained[0]} ({len(trained)} kernels in all); train them with matmul_dtype='default'"
    )
