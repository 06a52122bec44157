"""`prompt-tuning train` (also `python -m prompt_tuning.train`): train a prompt, t5x style.

prompt-tuning train --gin_file=quickstart.gin --gin.MODEL_DIR="'/tmp/quickstart'"
"""

from __future__ import annotations

import importlib.util
import os
import sys

from prompt_tuning.cli import gin_runner
from prompt_tuning.errors import doing


def _describe(result) -> None:
  import jax

  from prompt_tuning import gin_utils

  model_dir = gin_runner.macro("MODEL_DIR")
  if jax.process_index() == 0:  # multi-host: one writer
    with doing(f"write MODEL_DIR {model_dir}"):
      config_path = gin_utils.save_operative_config(model_dir)
  else:
    config_path = os.path.join(model_dir, "config.gin")
  cfg = result.config
  if not gin_runner.macro("INITIAL_CHECKPOINT_PATH", ""):
    print(
      f"NOTE: the frozen model is a tiny T5 ({cfg.num_encoder_layers}+{cfg.num_decoder_layers} layers, "
      f"emb_dim {cfg.emb_dim}) with RANDOM weights (no checkpoint): the prompt learns to steer noise. "
      f"A real model is one flag away: --gin.INITIAL_CHECKPOINT_PATH=\"'/path/to/hf_t5'\" (or a cached HF "
      f"hub id; a t5x checkpoint also needs --gin.MODEL_CONFIG)"
    )
  print(f"trained to step {result.step}")
  if result.eval_metrics:
    print(f"evaluated {gin_runner.describe_evaluation(result.eval_metrics)}")
    print("\n".join(gin_runner.metric_lines(result.eval_metrics, prefix="eval ")))
  bundles = os.path.join(model_dir, "prompts", f"step_{result.step}")
  if os.path.isdir(bundles):  # a multi-task run (runs/multitask.py): a bundle per task
    print(
      f"prompts:      {bundles}/<task>.safetensors ({', '.join(sorted(n[: -len('.safetensors')] for n in os.listdir(bundles)))})"
    )
  elif result.prompt_path:
    print(f"prompt:       {result.prompt_path}")
  print(f"checkpoints:  {os.path.join(model_dir, 'checkpoints')}")
  print(f"metrics:      {os.path.join(model_dir, 'metrics.jsonl')}")
  # The event files need no TensorBoard to be written, only to be viewed.
  missing = "" if importlib.util.find_spec("tensorboard") else "   (not installed: pip install tensorboard)"
  print(f"tensorboard:  tensorboard --logdir {os.path.join(model_dir, 'tensorboard')}{missing}")
  print(f"gin config:   {config_path}")


def main(argv: list[str]) -> int:
  return gin_runner.run(argv, "train", _describe, __doc__)


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
