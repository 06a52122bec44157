"""Is a model-parallel mesh's difference from one device only rounding?

`prompt-tuning bench --check_rounding --num_partitions P` runs one forward of
the bench's random-weight model (same weights, same synthetic batch) five ways:

  f32          float32 on one device, full-precision matmuls: the reference
  f32_nudged   the same, with the prompt scaled by (1 + 2**-22), about one ulp
  f32_mp       float32 on a 1 x P (model-parallel) mesh
  bf16         the configured bfloat16 model on one device
  bf16_mp      the same on the 1 x P mesh

and reports, per encoder layer, the relative L2 gap ||a - b|| / ||b|| of the
layer outputs [batch, length, embed], plus the cross-entropy of the batch and
of each example (no z-loss), from the same forward. A sharded program that is right differs from one device only in the
order of its sums: in float32 its gap tracks the one-ulp nudge at every layer,
and in bf16 it stays within one device's own bf16-vs-float32 gap. A sharding
bug gives an O(1) gap from layer 0.

A random-weight T5 amplifies small differences with depth, so these gaps grow
layer by layer; only the comparison at each layer means something.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from prompt_tuning import param_tree, partitioning
from prompt_tuning.bench import BenchConfig, log, ours
from prompt_tuning.models.prompt import PromptConfig, PromptedTransformer
from prompt_tuning.models.t5.config import T5Config

NUDGE = 2.0**-22
# (run, reference) pairs reported; each row of the table is one layer.
PAIRS = (("f32_mp", "f32"), ("f32_nudged", "f32"), ("bf16_mp", "bf16"), ("bf16", "f32"), ("bf16_mp", "f32"))


@dataclasses.dataclass(frozen=True)
class Forward:
  layers: list[np.ndarray]  # per encoder layer, its output float32 [batch, prompt + tokens, embed]
  example_losses: np.ndarray  # float32 [batch]: mean target-token cross-entropy of each example
  loss: float  # their mean: the batch's cross-entropy (synthetic targets have no padding)


def forward(cfg: BenchConfig, config: T5Config, num_partitions: int, nudge: bool = False) -> Forward:
  """One forward on the first `num_partitions` devices as a 1 x num_partitions mesh."""
  mesh = partitioning.make_mesh(num_partitions, devices=jax.devices()[:num_partitions])
  module = PromptedTransformer(config, prompt_config=PromptConfig(cfg.prompt_length))
  trainable, frozen, _ = ours.init_on_device(module, mesh, cfg.seed)
  if nudge:
    trainable = jax.tree.map(lambda p: p * (1 + NUDGE), trainable)
  params = param_tree.merge_params(trainable, frozen)
  batch = ours.synthetic_batch(cfg, config.vocab_size, mesh)

  def is_encoder_layer(module: Any, method: str) -> bool:
    return method == "__call__" and len(module.path) == 2 and module.path[0] == "encoder"

  @jax.jit
  def run(params, batch):
    logits, state = module.apply(
      {"params": params},
      batch["encoder_input_tokens"],
      batch["decoder_input_tokens"],
      capture_intermediates=is_encoder_layer,
      mutable=["intermediates"],
    )
    encoder = state["intermediates"]["encoder"]
    layers = [encoder[f"layers_{i}"]["__call__"][0].astype("float32") for i in range(config.num_encoder_layers)]
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    picked = jnp.take_along_axis(log_probs, batch["decoder_target_tokens"][..., None], axis=-1)[..., 0]
    return layers, -jnp.mean(picked, axis=-1)  # [batch]

  precision = "float32" if config.dtype == "float32" else "default"
  with jax.default_matmul_precision(precision), jax.set_mesh(mesh):
    layers, example_losses = run(params, batch)
    example_losses = np.asarray(example_losses)
    return Forward([np.asarray(x) for x in layers], example_losses, float(example_losses.mean()))


def relative_gap(a: np.ndarray, b: np.ndarray) -> float:
  return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def compare(cfg: BenchConfig, config: T5Config | None = None) -> dict[str, Any]:
  """The five forwards of the module docstring on a 1 x cfg.num_partitions mesh; a JSON-able report."""
  if cfg.num_partitions < 2:
    raise ValueError("--check_rounding compares a model-parallel mesh with one device: give --num_partitions 2 or more")
  if jax.device_count() < cfg.num_partitions:
    raise ValueError(f"--num_partitions={cfg.num_partitions} needs that many devices; there are {jax.device_count()}")
  config = config or cfg.t5_config()
  f32 = dataclasses.replace(config, dtype="float32", param_dtype="float32")
  bf16 = dataclasses.replace(config, dtype="bfloat16", param_dtype="bfloat16")
  specs = {
    "f32": (f32, 1, False),
    "f32_nudged": (f32, 1, True),
    "f32_mp": (f32, cfg.num_partitions, False),
    "bf16": (bf16, 1, False),
    "bf16_mp": (bf16, cfg.num_partitions, False),
  }
  runs = {}
  for name, spec in specs.items():
    log(f"check_rounding: {name}")
    runs[name] = forward(cfg, *spec)
  pair_names = [f"{a}~{b}" for a, b in PAIRS]
  return {
    "num_partitions": cfg.num_partitions,
    "pairs": pair_names,
    "layer_gaps": [
      [relative_gap(runs[a].layers[i], runs[b].layers[i]) for a, b in PAIRS] for i in range(config.num_encoder_layers)
    ],
    "loss": {name: r.loss for name, r in runs.items()},
    "loss_gaps": {f"{a}~{b}": abs(runs[a].loss - runs[b].loss) for a, b in PAIRS},
    # Root-mean-square over the examples of the per-example loss differences: less noisy than one scalar.
    "example_loss_rms_gaps": {
      f"{a}~{b}": float(np.sqrt(np.mean((runs[a].example_losses - runs[b].example_losses) ** 2))) for a, b in PAIRS
    },
  }


def format_report(report: dict[str, Any]) -> str:
  pairs = report["pairs"]
  lines = [
    f"relative L2 gap of each encoder layer's output (model-parallel mesh: 1 x {report['num_partitions']})",
    "layer " + " ".join(f"{p:>16s}" for p in pairs),
  ]
  lines += [f"{i:5d} " + " ".join(f"{g:16.3e}" for g in gaps) for i, gaps in enumerate(report["layer_gaps"])]
  lines.append("loss  " + "  ".join(f"{k} {v:.6f}" for k, v in report["loss"].items()))
  for title, key in (("|loss gap|", "loss_gaps"), ("per-example loss, rms gap", "example_loss_rms_gaps")):
    lines.append(f"{title}: " + "  ".join(f"{k} {v:.5f}" for k, v in report[key].items()))
  return "\n".join(lines)
