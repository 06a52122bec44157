"""Benchmark one prompt-tuning optimizer step: our trainer vs HF PEFT prompt tuning.

Synthetic batches only, so this package imports nothing of prompt_tuning.data,
tasks or gin_utils (it runs where TensorFlow, seqio and gin are absent), and
torch is imported only inside `peft_baseline`'s functions.

  ours           prompt_tuning.bench.ours: the compiled train step of prompt_tuning.train.step
  peft_baseline  transformers T5 + peft PromptTuningConfig, eager or torch.compile
  flops          the model-FLOP convention shared by both rows
  workload       a task's real length distribution (lengths: approximate SuperGLUE histograms), end to
                 end through our data pipeline (length buckets on and off) vs PEFT's dynamic padding

Only `workload` reads the data layer (prompt_tuning.data, TensorFlow-free), and only when it runs.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from typing import Any

from prompt_tuning.models.t5.config import T5Config, get_config


@dataclasses.dataclass(frozen=True)
class BenchConfig:
  """One configuration, run identically by every implementation.

  input_length: total encoder length INCLUDING the prompt; the token input
    is [batch, input_length - prompt_length].
  dtype: 'bfloat16' or 'float32', for the frozen weights and activations
    (the prompt itself stays float32 in our trainer).
  attention_impl, remat_policy, matmul_dtype, fuse_projections: our T5Config speed knobs (the
    PEFT side has no equivalent; HF T5 runs its own attention, no
    checkpointing, bf16 matmuls). matmul_dtype 'fp8': FP8 GEMMs for the frozen
    layer matmuls (models/t5/fp8.py).
  """

  model: str = "t5_1_1_base"
  batch: int = 32
  input_length: int = 512
  target_length: int = 8
  prompt_length: int = 100
  dtype: str = "bfloat16"
  steps: int = 10
  warmup: int = 3
  num_partitions: int = 1
  seed: int = 0
  attention_impl: str = "auto"
  remat_policy: str = "none"
  matmul_dtype: str = "default"
  fuse_projections: bool = False

  def __post_init__(self):
    for field in ("batch", "target_length", "prompt_length", "steps", "num_partitions"):
      if getattr(self, field) < 1:
        raise ValueError(f"--{field} must be >= 1, got {getattr(self, field)}")
    if self.warmup < 1:
      raise ValueError(f"--warmup must be >= 1 (the first step compiles), got {self.warmup}")
    if self.input_length <= self.prompt_length:
      raise ValueError(
        f"--input_length={self.input_length} includes the prompt, so it must exceed "
        f"--prompt_length={self.prompt_length}"
      )
    if self.dtype not in ("bfloat16", "float32"):
      raise ValueError(f"--dtype must be bfloat16 or float32, got {self.dtype!r}")
    if self.matmul_dtype not in ("default", "fp8"):
      raise ValueError(f"--matmul_dtype must be default or fp8, got {self.matmul_dtype!r}")

  @property
  def token_length(self) -> int:
    """Encoder token ids per example: the total minus the prompt."""
    return self.input_length - self.prompt_length

  def t5_config(self) -> T5Config:
    """The named config with weights and activations in `dtype`, its position bias frozen."""
    return get_config(
      self.model,
      dtype=self.dtype,
      param_dtype=self.dtype,
      attention_impl=self.attention_impl,
      remat_policy=self.remat_policy,
      matmul_dtype=self.matmul_dtype,
      fuse_projections=self.fuse_projections,
      position_bias_gradient=False,  # prompt tuning: the frozen bias takes no gradient, as in runs/setup.py
    )

  @property
  def ours_name(self) -> str:
    """Our row's name: 'ours', or 'ours fp8' with FP8 matmuls."""
    return "ours" if self.matmul_dtype == "default" else f"ours {self.matmul_dtype}"


@dataclasses.dataclass
class RunResult:
  """One row of the table. `error` is set (and timings are None) when the run failed, e.g. out of memory."""

  name: str
  step_ms: float | None = None
  examples_per_s: float | None = None
  tflops: float | None = None  # model TFLOP/s (prompt_tuning.bench.flops), summed over devices used
  peak_gib: float | None = None  # peak device memory; None where the backend does not report it
  compile_s: float | None = None  # the first step (tracing/compilation + one step)
  error: str | None = None
  extra: dict[str, Any] = dataclasses.field(default_factory=dict)

  @classmethod
  def timed(
    cls,
    name: str,
    seconds: float,
    steps: int,
    batch: int,
    flops_per_step: int | None,
    peak_bytes: int | None,
    compile_s: float | None,
    **extra: Any,
  ) -> RunResult:
    """From `steps` steps that took `seconds` in all (flops_per_step None: steps of varying
    shapes, no TFLOP/s)."""
    step_s = seconds / steps
    return cls(
      name,
      step_ms=1e3 * step_s,
      examples_per_s=batch / step_s,
      tflops=None if flops_per_step is None else flops_per_step / step_s / 1e12,
      peak_gib=None if peak_bytes is None else peak_bytes / 2**30,
      compile_s=compile_s,
      extra=dict(extra),
    )

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


_START = time.perf_counter()


def log_row(row: "RunResult") -> None:
  """One finished row, logged as it lands: a run cut short (a job's time limit) keeps what it measured."""
  if row.error is not None:
    log(f"{row.name}: {row.error}")
  else:
    log(f"{row.name}: {row.step_ms:.2f} ms a step, {row.examples_per_s:.1f} ex/s")


def log(message: str) -> None:
  """A progress line on stderr with the seconds since import (large models take minutes to set up)."""
  print(f"[bench {time.perf_counter() - _START:7.1f}s] {message}", file=sys.stderr, flush=True)


def is_out_of_memory(error: BaseException) -> bool:
  """XLA RESOURCE_EXHAUSTED, torch.cuda.OutOfMemoryError, or anything saying 'out of memory'."""
  text = f"{type(error).__name__}: {error}".lower()
  return any(s in text for s in ("out of memory", "outofmemory", "resource_exhausted", "resource exhausted"))
