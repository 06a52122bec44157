"""`prompt-tuning serve`: one frozen model, many trained prompts, a JSON API over HTTP.

Each --prompt TASK=SOURCE names a prompt bundle, a MODEL_DIR (its latest bundle) or a PEFT
adapter folder; every one is checked against the frozen model and all share its vocabulary.
Concurrent requests of every task are batched together on the device (prompt_tuning.serving):

  prompt-tuning serve --checkpoint ./t5-small-hf --prompt rte=runs/rte --prompt sst2=runs/sst2
  curl -s localhost:8000/predict -d '{"task": "rte", "inputs": ["rte sentence1: ... sentence2: ..."]}'

Needs the serve extra: pip install "prompt-tuning[serve]". Neither gin nor TensorFlow is imported.
"""

from __future__ import annotations

import argparse
import sys

from prompt_tuning.errors import first_line


def _prompt(text: str) -> tuple[str, str]:
  name, sep, source = text.partition("=")
  if not sep or not name or not source:
    raise argparse.ArgumentTypeError(f"--prompt takes TASK=SOURCE (a bundle, MODEL_DIR or PEFT folder), got {text!r}")
  return name, source


def _sizes(text: str) -> tuple[int, ...]:
  try:
    sizes = tuple(int(t) for t in text.split(","))
  except ValueError:
    raise argparse.ArgumentTypeError(f"--batch_buckets takes ascending sizes like 1,4,16,32, got {text!r}") from None
  if not sizes or list(sizes) != sorted(set(sizes)) or sizes[0] < 1:
    raise argparse.ArgumentTypeError(f"--batch_buckets takes ascending sizes like 1,4,16,32, got {text!r}")
  return sizes


def parse(argv: list[str]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
    prog="prompt-tuning serve", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  model = parser.add_argument_group("the frozen model")
  model.add_argument("--checkpoint", default="", help="HF, t5x or native checkpoint; empty: random --config weights")
  model.add_argument("--config", default=None, help="named config or JSON file (required without --checkpoint)")
  model.add_argument("--seed", type=int, default=0, help="random weights' seed (no --checkpoint)")
  model.add_argument("--activation_dtype", choices=("float32", "bfloat16"), default=None, help="default: bf16 on GPU")
  model.add_argument("--param_dtype", choices=("float32", "bfloat16"), default=None)
  prompts = parser.add_argument_group("prompts")
  prompts.add_argument("--prompt", type=_prompt, action="append", default=[], metavar="TASK=SOURCE", required=True)
  prompts.add_argument("--vocabulary", default=None, help="SentencePiece model (default: the one the bundles record)")
  prompts.add_argument("--max_prompts", type=int, default=64, help="prompt table rows (prompts added at run time)")
  prompts.add_argument("--max_prompt_length", type=int, default=None, help="default: the longest prompt given")
  prompts.add_argument("--max_inputs_length", type=int, default=None, help="default: the longest recorded")
  prompts.add_argument("--max_targets_length", type=int, default=None, help="default: the longest recorded")
  batching = parser.add_argument_group("batching")
  batching.add_argument("--max_batch_size", type=int, default=32, help="rows per device batch")
  batching.add_argument(
    "--batch_buckets",
    type=_sizes,
    default=None,
    help="compiled batch sizes (default 1,2,4..max); the largest is the max batch size",
  )
  batching.add_argument("--max_wait_ms", type=float, default=5.0, help="how long a request waits for company")
  batching.add_argument("--methods", default="greedy", help="decoding methods served: greedy, beam or greedy,beam")
  batching.add_argument("--beam_size", type=int, default=4)
  batching.add_argument("--alpha", type=float, default=0.6, help="beam length penalty")
  batching.add_argument("--max_candidates", type=int, default=8, help="/score candidates per device row")
  http = parser.add_argument_group("http")
  http.add_argument("--host", default="127.0.0.1")
  http.add_argument("--port", type=int, default=8000)
  http.add_argument("--log_level", default="info", choices=("critical", "error", "warning", "info", "debug"))
  args = parser.parse_args(argv)
  names = [name for name, _ in args.prompt]
  duplicate = sorted({n for n in names if names.count(n) > 1})
  if duplicate:
    parser.error(f"--prompt names task {duplicate[0]} twice")
  return args


def _note(message: str) -> None:
  print(f"prompt-tuning serve: {message}", file=sys.stderr, flush=True)


def main(argv: list[str]) -> int:
  args = parse(argv)
  try:
    import starlette  # noqa: F401
    import uvicorn  # noqa: F401  (the serve extra, checked before the model loads)
  except ImportError as e:
    print(f"prompt-tuning serve: error: {e.name} is missing: pip install 'prompt-tuning[serve]'", file=sys.stderr)
    return 1
  from prompt_tuning.checkpoints.structure import CheckpointError
  from prompt_tuning.cli import compilation_cache
  from prompt_tuning.runs.setup import frozen_model
  from prompt_tuning.runs.specs import ModelSpec
  from prompt_tuning.serving.registry import PromptError
  from prompt_tuning.serving.start import build_server, plan_limits, read_bundles, serve

  compilation_cache.enable()  # warm-up compiles every bucket: the next start reads them back
  try:
    if not args.checkpoint and not args.config:
      raise ValueError("no --checkpoint and no --config: name the frozen model")
    sources = dict(args.prompt)
    limits = dict(
      vocabulary_path=args.vocabulary,
      max_prompts=args.max_prompts,
      max_prompt_length=args.max_prompt_length,
      max_inputs_length=args.max_inputs_length,
      max_targets_length=args.max_targets_length,
    )
    # Before the model loads: a mistyped path or prompts that cannot serve together fail at once.
    bundles = read_bundles(sources)
    plan_limits(bundles, **limits)
    spec = ModelSpec(
      config=args.config,
      checkpoint=args.checkpoint,
      activation_dtype=args.activation_dtype,
      param_dtype=args.param_dtype,
    )
    _note(f"loading the frozen model from {args.checkpoint}" if args.checkpoint else f"random {args.config} weights")
    config, params = frozen_model(spec, args.seed)
    server = build_server(
      config,
      params,
      sources,
      bundles=bundles,
      **limits,
      max_batch_size=args.batch_buckets[-1] if args.batch_buckets else args.max_batch_size,
      batch_buckets=args.batch_buckets,
      max_wait_ms=args.max_wait_ms,
      methods=[m.strip() for m in args.methods.split(",") if m.strip()],
      beam_size=args.beam_size,
      alpha=args.alpha,
      max_candidates=args.max_candidates,
      note=_note,
    )
  except (CheckpointError, PromptError, ValueError, OSError) as e:
    print(f"prompt-tuning serve: error: {first_line(e)}", file=sys.stderr)
    return 1
  tasks = ", ".join(f"{p.name} ({p.length})" for p in server.registry.tasks())
  _note(f"serving {tasks} on http://{args.host}:{args.port}")
  serve(server, args.host, args.port, args.log_level)
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
