"""`prompt-tuning generate`: decode inputs with a T5 checkpoint.

With no flags it builds the built-in *tiny, randomly initialized* model and
greedy-decodes a fixed input, which shows the whole path (model, cache,
decoding) working. Point --checkpoint at a real model for real output (an HF
directory, or a hub id such as google/t5-v1_1-small already in the local HF
cache); --config takes a named size or a JSON config file:

  prompt-tuning generate --checkpoint /path/to/hf_t5 --input "translate English to German: Hello."
  prompt-tuning generate --checkpoint gs://.../checkpoint_1100000 --config t5_1_1_lm100k_base \
      --vocab /path/to/sentencepiece.model --input "..." --method beam --beam_size 4
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from prompt_tuning.checkpoints import hub
from prompt_tuning.checkpoints.structure import CheckpointError

DEFAULT_INPUT_IDS = "13 8 1566 12 2968 10 8774 5 1"  # "translate English to German: Hello." + EOS


def parse(argv: list[str]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
    prog="prompt-tuning generate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument(
    "--checkpoint",
    default="",
    help="HF, t5x or native checkpoint, or an HF hub id in the local cache; empty: random --config",
  )
  parser.add_argument(
    "--config",
    default=None,
    help="a named config (see `prompt_tuning.models.t5.NAMED_CONFIGS`) or a JSON file "
    "(t5_config.json, HF config.json); default 'tiny' without a checkpoint; a t5x "
    "checkpoint needs one unless its run's config.gin lies beside it",
  )
  parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
  parser.add_argument(
    "--vocab", default=None, help="SentencePiece model for --input text (default: spiece.model in an HF checkpoint)"
  )
  parser.add_argument("--input", action="append", default=None, help="input text (repeatable); needs a vocab")
  parser.add_argument("--input_ids", default=None, help=f"space-separated token ids (default: {DEFAULT_INPUT_IDS!r})")
  parser.add_argument("--method", choices=("greedy", "beam", "sample"), default="greedy")
  parser.add_argument("--max_decode_length", type=int, default=16)
  parser.add_argument("--beam_size", type=int, default=4)
  parser.add_argument("--alpha", type=float, default=0.6, help="beam length penalty")
  parser.add_argument("--temperature", type=float, default=1.0)
  parser.add_argument("--top_k", type=int, default=0)
  parser.add_argument("--top_p", type=float, default=1.0)
  parser.add_argument("--seed", type=int, default=0)
  return parser.parse_args(argv)


def _vocab_path(args: argparse.Namespace) -> str | None:
  if args.vocab:
    return args.vocab
  if not args.checkpoint:
    return None
  candidate = os.path.join(hub.resolve(args.checkpoint), "spiece.model")
  return candidate if os.path.isfile(candidate) else None


def detokenize(processor, ids: list[int]) -> str:
  """Text of token ids. Ids past the SentencePiece model are T5's sentinels, numbered from
  the end of its 100 extra ids as seqio does (<extra_id_0> is the highest); others show as <id:N>."""
  size = processor.get_piece_size()
  text, run = [], []
  for token in ids:
    if token < size:
      run.append(token)
      continue
    text.append(processor.decode(run))
    run = []
    text.append(f"<extra_id_{size + 99 - token}>" if token < size + 100 else f"<id:{token}>")
  text.append(processor.decode(run))
  return "".join(text)


def _encode_inputs(args: argparse.Namespace, processor) -> np.ndarray:
  """Token ids [batch, length], EOS-terminated and 0-padded as seqio does."""
  if args.input is not None:
    if processor is None:
      raise ValueError("--input text needs a SentencePiece model: pass --vocab (or use --input_ids)")
    if not all(text.strip() for text in args.input):  # it would decode from EOS alone: output unrelated to any input
      raise ValueError("--input is empty: pass the text to decode from")
    rows = [processor.encode(text) + [1] for text in args.input]
  else:
    ids = DEFAULT_INPUT_IDS if args.input_ids is None else args.input_ids
    try:
      rows = [[int(t) for t in ids.split()]]
    except ValueError:
      raise ValueError(f"--input_ids must be space-separated integers, got {args.input_ids!r}") from None
    if not rows[0]:
      raise ValueError("--input_ids is empty: pass the token ids to decode from")
  tokens = np.zeros((len(rows), max(len(r) for r in rows)), np.int32)
  for i, row in enumerate(rows):
    tokens[i, : len(row)] = row
  return tokens


def main(argv: list[str]) -> int:
  args = parse(argv)
  from prompt_tuning import pretrained  # jax import after flag parsing keeps --help fast
  from prompt_tuning.checkpoints import loader
  from prompt_tuning.cli import compilation_cache

  compilation_cache.enable()  # before anything compiles
  try:
    config = args.config or (None if args.checkpoint else "tiny")
    resolved = loader.resolve_config(config)  # a name or a JSON file
    model = pretrained.load_pretrained(args.checkpoint or None, config=resolved, dtype=args.dtype, seed=args.seed)
    processor = None
    vocab = _vocab_path(args)
    if vocab:
      import sentencepiece

      if not os.path.isfile(vocab):
        raise ValueError(f"--vocab {vocab}: file not found")
      processor = sentencepiece.SentencePieceProcessor(model_file=vocab)
    inputs = _encode_inputs(args, processor)
    options = {
      "beam": dict(beam_size=args.beam_size, alpha=args.alpha),
      "sample": dict(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p),
    }.get(args.method, {})
    tokens, scores = model.generate(
      inputs, args.max_decode_length, args.method, seed=args.seed, return_scores=True, **options
    )
  except (CheckpointError, ValueError) as e:
    print(f"prompt-tuning generate: error: {e}", file=sys.stderr)
    return 1
  if not args.checkpoint:
    print(
      f"NOTE: built-in '{config}' model, tiny and randomly initialized: its output is noise. "
      "A real model is one flag away: --checkpoint /path/to/hf_t5 (or a cached HF hub id; a t5x "
      "checkpoint also needs --config)"
    )
  print(
    f"model: {args.checkpoint or config} ({model.config.num_encoder_layers}+{model.config.num_decoder_layers} "
    f"layers, emb_dim {model.config.emb_dim}, vocab {model.config.vocab_size}); method: {args.method}"
  )
  for row_in, row_out, score in zip(inputs, tokens, scores):
    out_ids = [int(t) for t in row_out if t != 0]
    print(f"input ids:  {' '.join(str(int(t)) for t in row_in if t != 0)}")
    if processor is not None:
      print(f"input:      {detokenize(processor, [int(t) for t in row_in if t > 1])}")
      print(f"output:     {detokenize(processor, [t for t in out_ids if t > 1])}")
    print(f"output ids: {' '.join(map(str, out_ids))}   (log-prob score {float(score):.3f})")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
