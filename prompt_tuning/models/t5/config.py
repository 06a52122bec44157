"""T5 architecture configuration and the published named sizes.

`T5Config` is a small frozen (hashable) dataclass so it can be a Flax module
attribute and travel as JSON beside native checkpoints. Field names follow
t5x's `t5x.examples.t5.network.T5Config`.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Mapping

import jax.numpy as jnp

_DTYPES = ("float32", "bfloat16", "float16")
# Fields that say how a model runs, not which model it is: a checkpoint or a prompt fits whatever they are.
RUNTIME_FIELDS = (
  "dtype",
  "param_dtype",
  "dropout_rate",
  "attention_impl",
  "remat_policy",
  "matmul_dtype",
  "fuse_projections",
  "position_bias_gradient",
)
_ACTIVATIONS = ("relu", "gelu", "silu", "linear")
_ATTENTION_IMPLS = ("auto", "xla", "cudnn")
_REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch")
_MATMUL_DTYPES = ("default", "fp8")


@dataclasses.dataclass(frozen=True)
class T5Config:
  """Dimensions and numerics of a T5 encoder-decoder.

  T5 1.0 uses `mlp_activations=("relu",)` and `logits_via_embedding=True`
  (logits through the shared embedding, scaled by emb_dim**-0.5). T5 1.1,
  LM-adapted, Flan-T5 and mT5 use `("gelu", "linear")` (gated GELU) and a
  separate `decoder/logits_dense` kernel.
  """

  vocab_size: int = 32128
  emb_dim: int = 512
  num_heads: int = 8
  head_dim: int = 64
  mlp_dim: int = 2048
  num_encoder_layers: int = 6
  num_decoder_layers: int = 6
  mlp_activations: tuple[str, ...] = ("relu",)
  logits_via_embedding: bool = True
  relative_attention_num_buckets: int = 32
  relative_attention_max_distance: int = 128
  layer_norm_epsilon: float = 1e-6
  dropout_rate: float = 0.0
  dtype: str = "float32"  # activations
  param_dtype: str = "float32"  # stored parameters
  # How attention runs: 'auto' (cuDNN's fused kernel on GPUs for bf16/fp16 training and scoring, the
  # reference elsewhere), 'xla' (the reference: einsums, float32 logits and softmax), 'cudnn' (require
  # the fused kernel; cached decoding's encoder-decoder attention too). See layers.attention_backend.
  attention_impl: str = "auto"
  # Rematerialization of each layer in training: 'none', 'full', 'dots' (save matmul outputs),
  # 'dots_no_batch' (save only weight matmuls).
  remat_policy: str = "none"
  # The frozen weight matmuls of the encoder and decoder layers (attention q/k/v/o, MLP): 'default'
  # (the activation dtype) or 'fp8' (opt-in: e4m3 weights and activations, e5m2 gradients, per-tensor
  # scales; FP8 GEMMs on Hopper; no weight gradients). See models/t5/fp8.py; its cost in BENCHMARKS.md.
  matmul_dtype: str = "default"
  # One matmul for the projections that read the same input: attention's q/k/v (self-attention; k/v
  # of encoder-decoder attention) and a gated MLP's wi_0/wi_1. The kernels stay separate parameters
  # (t5x's names), stacked in the call. Same results up to float rounding; a speed knob.
  fuse_projections: bool = False
  # Whether the relative position bias takes a gradient through cuDNN's fused attention, whose backward
  # otherwise computes the bias gradient ([heads, length, length] summed over the batch, each layer)
  # whether or not anything reads it. Prompt tuning freezes the bias: runs/setup.py sets False unless
  # TRAINABLE_PARAMS trains it; False then stops the bias's gradient outright (exact when frozen).
  position_bias_gradient: bool = True

  def __post_init__(self):
    object.__setattr__(self, "mlp_activations", tuple(self.mlp_activations))
    for field in ("dtype", "param_dtype"):
      if getattr(self, field) not in _DTYPES:
        raise ValueError(f"T5Config.{field}={getattr(self, field)!r}: expected one of {_DTYPES}")
    if self.attention_impl not in _ATTENTION_IMPLS:
      raise ValueError(f"T5Config.attention_impl={self.attention_impl!r}: expected one of {_ATTENTION_IMPLS}")
    if self.remat_policy not in _REMAT_POLICIES:
      raise ValueError(f"T5Config.remat_policy={self.remat_policy!r}: expected one of {_REMAT_POLICIES}")
    for field in ("fuse_projections", "position_bias_gradient"):
      if not isinstance(getattr(self, field), bool):
        raise ValueError(f"T5Config.{field}={getattr(self, field)!r}: expected True or False")
    if self.matmul_dtype not in _MATMUL_DTYPES:
      raise ValueError(f"T5Config.matmul_dtype={self.matmul_dtype!r}: expected one of {_MATMUL_DTYPES}")
    for act in self.mlp_activations:
      if act not in _ACTIVATIONS:
        raise ValueError(f"T5Config.mlp_activations has unknown activation {act!r}: expected {_ACTIVATIONS}")
    for field in (
      "vocab_size",
      "emb_dim",
      "num_heads",
      "head_dim",
      "mlp_dim",
      "num_encoder_layers",
      "num_decoder_layers",
      "relative_attention_num_buckets",
    ):
      if getattr(self, field) < 1:
        raise ValueError(f"T5Config.{field} must be positive, got {getattr(self, field)}")

  @property
  def activation_dtype(self) -> jnp.dtype:
    return jnp.dtype(self.dtype)

  @property
  def parameter_dtype(self) -> jnp.dtype:
    return jnp.dtype(self.param_dtype)

  def architecture(self) -> dict[str, Any]:
    """The fields that make it this model (all but RUNTIME_FIELDS: dtypes, dropout, speed knobs)."""
    return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in RUNTIME_FIELDS}

  def architecture_differences(self, other: "T5Config") -> list[tuple[str, Any, Any]]:
    """[(field, self's value, other's value)] for every architecture field where they differ."""
    mine, theirs = self.architecture(), other.architecture()
    return [(name, mine[name], theirs[name]) for name in mine if mine[name] != theirs[name]]

  def replace(self, **changes: Any) -> "T5Config":
    return dataclasses.replace(self, **changes)

  def to_dict(self) -> dict[str, Any]:
    out = dataclasses.asdict(self)
    out["mlp_activations"] = list(self.mlp_activations)
    return out

  def to_json(self) -> str:
    return json.dumps(self.to_dict(), indent=2, sort_keys=True)

  @classmethod
  def from_dict(cls, values: Mapping[str, Any]) -> "T5Config":
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
      raise ValueError(f"unknown T5Config field(s) {unknown}; known fields: {sorted(known)}")
    return cls(**values)


_T5_1_0 = dict(mlp_activations=("relu",), logits_via_embedding=True, vocab_size=32128)
_T5_1_1 = dict(mlp_activations=("gelu", "linear"), logits_via_embedding=False, vocab_size=32128)
_MT5 = dict(_T5_1_1, vocab_size=250112)

# (emb_dim, num_heads, head_dim, mlp_dim, num_layers) of the published checkpoints.
_T5_1_0_SIZES = {
  "small": (512, 8, 64, 2048, 6),
  "base": (768, 12, 64, 3072, 12),
  "large": (1024, 16, 64, 4096, 24),
  "3b": (1024, 32, 128, 16384, 24),
  "11b": (1024, 128, 128, 65536, 24),
}
_T5_1_1_SIZES = {
  "small": (512, 6, 64, 1024, 8),
  "base": (768, 12, 64, 2048, 12),
  "large": (1024, 16, 64, 2816, 24),
  "xl": (2048, 32, 64, 5120, 24),
  "xxl": (4096, 64, 64, 10240, 24),
}


def _sized(family: Mapping[str, Any], size: tuple[int, int, int, int, int]) -> T5Config:
  emb_dim, num_heads, head_dim, mlp_dim, layers = size
  return T5Config(
    emb_dim=emb_dim,
    num_heads=num_heads,
    head_dim=head_dim,
    mlp_dim=mlp_dim,
    num_encoder_layers=layers,
    num_decoder_layers=layers,
    **family,
  )


NAMED_CONFIGS: dict[str, T5Config] = {
  # Tiny, for tests and the quick start: a T5 1.1 layout with the T5 vocabulary size.
  "tiny": T5Config(
    vocab_size=32128,
    emb_dim=32,
    num_heads=4,
    head_dim=8,
    mlp_dim=64,
    num_encoder_layers=2,
    num_decoder_layers=2,
    mlp_activations=("gelu", "linear"),
    logits_via_embedding=False,
  ),
  **{f"t5_{name}": _sized(_T5_1_0, size) for name, size in _T5_1_0_SIZES.items()},
  **{f"t5_1_1_{name}": _sized(_T5_1_1, size) for name, size in _T5_1_1_SIZES.items()},
  **{f"mt5_{name}": _sized(_MT5, size) for name, size in _T5_1_1_SIZES.items()},
}
# LM-adapted (t5_1_1_lm100k_*) and Flan-T5 checkpoints share the T5 1.1 shapes.
for _name, _size in _T5_1_1_SIZES.items():
  NAMED_CONFIGS[f"t5_1_1_lm100k_{_name}"] = NAMED_CONFIGS[f"t5_1_1_{_name}"]
  NAMED_CONFIGS[f"flan_t5_{_name}"] = NAMED_CONFIGS[f"t5_1_1_{_name}"]


@dataclasses.dataclass(frozen=True)
class RandomInitConfig:
  """A model config for a run WITHOUT a checkpoint; a checkpoint brings its own config instead.

  gin/quickstart.gin sets its tiny random T5 this way, so that adding
  INITIAL_CHECKPOINT_PATH alone switches to the checkpoint's architecture (HF
  and native checkpoints carry one; a t5x one needs MODEL_CONFIG named).
  """

  config: T5Config


def random_init_config(name: str = "tiny", **overrides: Any) -> RandomInitConfig:
  """`t5_config` for random initialization only, for gin: `MODEL_CONFIG = @t5.config.random_init_config()`."""
  return RandomInitConfig(get_config(name, **overrides))


def t5_config(name: str = "tiny", **overrides: Any) -> T5Config:
  """A named config with fields replaced, for gin: `MODEL_CONFIG = @t5.config.t5_config()` and
  `t5_config.emb_dim = 128`."""
  return get_config(name, **overrides)


def get_config(name_or_config: str | T5Config, **overrides: Any) -> T5Config:
  """Returns a named config (see NAMED_CONFIGS), optionally with fields replaced."""
  if isinstance(name_or_config, T5Config):
    config = name_or_config
  else:
    try:
      config = NAMED_CONFIGS[name_or_config]
    except KeyError:
      raise ValueError(f"unknown model config {name_or_config!r}; known: {', '.join(sorted(NAMED_CONFIGS))}") from None
  if not overrides:
    return config
  try:
    return config.replace(**overrides)
  except TypeError:
    unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(T5Config)})
    raise ValueError(f"unknown T5Config field(s) {unknown} in overrides of {name_or_config!r}") from None
