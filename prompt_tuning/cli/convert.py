"""`prompt-tuning convert SRC DST`: an HF or t5x checkpoint -> the native format, once.

  prompt-tuning convert /path/to/hf_dir /path/to/native
  prompt-tuning convert gs://t5-data/pretrained_models/t5x/t5_1_1_lm100k_base/checkpoint_1100000 \
      ./t5_1_1_lm100k_base --config t5_1_1_lm100k_base
"""

from __future__ import annotations

import argparse
import sys

from prompt_tuning.checkpoints import loader, native
from prompt_tuning.checkpoints.structure import CheckpointError
from prompt_tuning.models.t5.config import NAMED_CONFIGS


def parse(argv: list[str]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(prog="prompt-tuning convert", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("src", help="HF directory, t5x checkpoint (local or gs://) or native checkpoint")
  parser.add_argument("dst", help="new directory for the native checkpoint (must not exist)")
  parser.add_argument("--config", choices=sorted(NAMED_CONFIGS), default=None,
                      help="model config; required for t5x checkpoints, checked against the arrays otherwise")
  parser.add_argument("--dtype", choices=("float32", "bfloat16"), default=None,
                      help="store parameters in this dtype (default: float32)")
  return parser.parse_args(argv)


def main(argv: list[str]) -> int:
  args = parse(argv)
  try:
    config, params = loader.load_checkpoint(args.src, args.config, dtype=args.dtype)
    native.save_native(args.dst, config, params)
  except (CheckpointError, ValueError) as e:
    print(f"prompt-tuning convert: error: {e}", file=sys.stderr)
    return 1
  print(f"wrote native checkpoint {args.dst} ({loader.detect_format(args.src)} source; "
        f"{config.num_encoder_layers}+{config.num_decoder_layers} layers, emb_dim {config.emb_dim}, "
        f"{config.param_dtype})")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
