"""`prompt-tuning convert SRC DST`: an HF or t5x checkpoint -> the native format, once.

SRC may also be an HF hub id already in the local HF cache; --config takes a
named size or a JSON config file (t5_config.json, HF config.json).

  prompt-tuning convert /path/to/hf_dir /path/to/native
  prompt-tuning convert google/t5-v1_1-small ./t5_1_1_small
  prompt-tuning convert gs://t5-data/pretrained_models/t5x/t5_1_1_lm100k_base/checkpoint_1100000 \
      ./t5_1_1_lm100k_base --config t5_1_1_lm100k_base
"""

from __future__ import annotations

import argparse
import sys

from prompt_tuning.checkpoints import loader, native
from prompt_tuning.checkpoints.structure import CheckpointError


def parse(argv: list[str]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
    prog="prompt-tuning convert", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument("src", help="HF directory or cached hub id, t5x checkpoint (local or gs://) or native checkpoint")
  parser.add_argument("dst", help="new directory for the native checkpoint (must not exist)")
  parser.add_argument(
    "--config",
    default=None,
    help="a named config or a JSON config file; a t5x checkpoint needs one unless its run's "
    "config.gin lies beside it; for HF and native it replaces theirs and must fit the arrays",
  )
  parser.add_argument(
    "--dtype", choices=("float32", "bfloat16"), default=None, help="store parameters in this dtype (default: float32)"
  )
  return parser.parse_args(argv)


def main(argv: list[str]) -> int:
  args = parse(argv)
  try:
    config, params = loader.load_checkpoint(args.src, args.config, dtype=args.dtype)
    native.save_native(args.dst, config, params)
  except (CheckpointError, ValueError) as e:
    print(f"prompt-tuning convert: error: {e}", file=sys.stderr)
    return 1
  print(
    f"wrote native checkpoint {args.dst} ({loader.detect_format(args.src)} source; "
    f"{config.num_encoder_layers}+{config.num_decoder_layers} layers, emb_dim {config.emb_dim}, "
    f"{config.param_dtype})"
  )
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
