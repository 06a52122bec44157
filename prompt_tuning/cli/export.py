"""`prompt-tuning export --peft SRC OUT`: a trained prompt as a HuggingFace PEFT prompt-tuning adapter.

SRC is a prompt bundle (prompts/step_<n>.safetensors, written by training) or a MODEL_DIR (its
latest bundle). OUT is a new folder holding adapter_config.json and adapter_model.safetensors,
which `PeftModel.from_pretrained(t5, OUT)` loads; on the same frozen T5 it computes what we do.

  prompt-tuning export --peft quickstart_model ./quickstart_peft --base_model ./t5-small-hf
"""

from __future__ import annotations

import argparse
import sys

from prompt_tuning.checkpoints import bundle as bundle_lib
from prompt_tuning.checkpoints.structure import CheckpointError
from prompt_tuning.checkpoints.train_state import PROMPTS_DIR


def parse(argv: list[str]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
    prog="prompt-tuning export", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument("--peft", action="store_true", required=True, help="write a PEFT prompt-tuning adapter")
  parser.add_argument("src", help="a prompt bundle, or a MODEL_DIR (its latest bundle)")
  parser.add_argument("out", help="new folder for the adapter")
  parser.add_argument("--task", default=None, help="the task's prompt, when src is a multi-task run's MODEL_DIR")
  parser.add_argument("--base_model", default="", help="recorded as the adapter's base_model_name_or_path")
  return parser.parse_args(argv)


def main(argv: list[str]) -> int:
  args = parse(argv)
  try:
    source = bundle_lib.latest_bundle(args.src, PROMPTS_DIR, args.task)
    bundle = bundle_lib.read_bundle(source)
    out = bundle_lib.export_peft(bundle, args.out, base_model_name_or_path=args.base_model)
  except (CheckpointError, OSError) as e:
    print(f"prompt-tuning export: error: {e}", file=sys.stderr)
    return 1
  step = f" (step {bundle.step})" if bundle.step is not None else ""
  print(f"wrote PEFT adapter {out} from {source}{step}: {bundle.prompt.shape[0]} virtual tokens")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
