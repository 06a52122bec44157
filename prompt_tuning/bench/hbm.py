"""The memory-bandwidth bound of one greedy decoder step: bytes it must move over the card's HBM bandwidth.

At batch 32 a decoder step does little arithmetic per byte it reads, so its floor is the time to read,
once, everything the step needs from device memory:

  weights     every decoder matrix the step multiplies by, once: self-attention q/k/v/o, cross-attention
              q/o, the MLP, and the logits projection [embed, vocab] (flops.matmul_params' decoder side;
              the cross-attention key/value projections ran once, when the cache was made)
  self K/V    the self-attention keys and values of the positions attended to: step t (1-based) attends
              to t positions, in every decoder layer
  cross K/V   the cross-attention keys and values of the whole encoder output (prompt included), in
              every decoder layer

per example in the batch for the two caches. Not counted (each under ~1% at T5 base, batch 32): RMSNorm
scales, the relative-position table, the embedding rows looked up, activations, the logits written and
read back, the one cache position written per step. Our decoder reads its whole preallocated
self-attention cache every step (masked past the current position); the bound counts only what is needed.
"""

from __future__ import annotations

import dataclasses

from prompt_tuning.bench import flops
from prompt_tuning.models.t5.config import T5Config

# Peak HBM bandwidth in bytes/s by JAX `device_kind`, from the vendors' datasheets (decimal TB/s).
# NVIDIA: the H200, H100 and A100 Tensor Core GPU datasheets (SXM forms); Google: Cloud TPU system
# architecture pages. A card not listed gets no bound unless --hbm_bandwidth names its bandwidth.
HBM_BYTES_PER_SECOND = {
  "NVIDIA H200": 4.8e12,  # H200 SXM 141 GB HBM3e
  "NVIDIA H100 80GB HBM3": 3.35e12,  # H100 SXM5
  "NVIDIA H100 PCIe": 2.0e12,
  "NVIDIA A100-SXM4-80GB": 2.039e12,
  "NVIDIA A100-SXM4-40GB": 1.555e12,
  "TPU v4": 1.2e12,
  "TPU v5 lite": 0.819e12,  # v5e
}
SOURCE = "vendor datasheet peak (prompt_tuning.bench.hbm.HBM_BYTES_PER_SECOND)"

_DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4}


@dataclasses.dataclass(frozen=True)
class StepBytes:
  """Bytes one decoder step reads, by kind (see the module docstring)."""

  weights: float
  self_kv: float
  cross_kv: float

  @property
  def total(self) -> float:
    return self.weights + self.self_kv + self.cross_kv


def kv_bytes_per_position(config: T5Config) -> int:
  """Key + value of one position in every decoder layer: 2 * layers * heads * head_dim * bytes."""
  return 2 * config.num_decoder_layers * config.num_heads * config.head_dim * _DTYPE_BYTES[config.dtype]


def step_bytes(config: T5Config, batch: int, encoder_length: int, position: float) -> StepBytes:
  """Bytes read by the decoder step at `position` (1-based: the step attends to `position` positions).

  Args:
    config: weights are counted in config.param_dtype, caches in config.dtype (activations).
    batch: rows decoded together (batch * beams for beam search).
    encoder_length: encoder positions, prompt included.
    position: may be fractional: the mean position of a range of steps gives their mean bytes.
  """
  kv = kv_bytes_per_position(config)
  return StepBytes(
    weights=flops.matmul_params(config).decoder_side * _DTYPE_BYTES[config.param_dtype],
    self_kv=batch * position * kv,
    cross_kv=batch * encoder_length * kv,
  )


def mean_step_bytes(config: T5Config, batch: int, encoder_length: int, first: int, last: int) -> StepBytes:
  """The mean of step_bytes over steps first..last (inclusive); bytes are linear in the position."""
  if not 1 <= first <= last:
    raise ValueError(f"steps must satisfy 1 <= first <= last, got {first}..{last}")
  return step_bytes(config, batch, encoder_length, (first + last) / 2)


def bandwidth(device_kind: str, override: float | None) -> tuple[float | None, str]:
  """(bytes/s, where the figure comes from); (None, why) for a card missing from the table without override."""
  if override is not None:
    return override, "--hbm_bandwidth"
  if device_kind in HBM_BYTES_PER_SECOND:
    return HBM_BYTES_PER_SECOND[device_kind], f"{device_kind}: {SOURCE}"
  return None, f"no HBM bandwidth known for {device_kind!r}; pass --hbm_bandwidth TB/s"
