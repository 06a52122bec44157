"""`prompt-tuning inspect SOURCE`: the vocabulary tokens nearest to each prompt vector, and its norms.

SOURCE is a prompt bundle (.safetensors), a PEFT adapter folder, a MODEL_DIR (its latest bundle;
--task for a multi-task run's) or a .npy prompt [p, d]. The frozen model whose embedding table the
prompt is compared with is --checkpoint (HF, t5x or native; --config as in `generate`); for a MODEL_DIR
(or a prompt file inside one) without --checkpoint, the model it was trained on (its run_config.json,
random weights included). A bundle of another frozen model is refused in one line.

  prompt-tuning inspect quickstart_model
  prompt-tuning inspect runs/boolq/prompts/step_30000.safetensors --checkpoint ./t5-base-hf --top_k 10 --json
  prompt-tuning inspect prompt.npy --checkpoint gs://.../checkpoint_1100000 --config t5_1_1_lm100k_base \
      --vocabulary ./sentencepiece.model

Tokens are shown as SentencePiece pieces with --vocabulary (default: the bundle's, the run's, or an HF
checkpoint's spiece.model), else by id. No TensorFlow, no gin.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import os
import sys
from typing import Any

import numpy as np
from etils import epath

from prompt_tuning.checkpoints import bundle as bundle_lib
from prompt_tuning.checkpoints.structure import CheckpointError
from prompt_tuning.checkpoints.train_state import PROMPTS_DIR, RunConfig, read_run_config


def parse(argv: list[str]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
    prog="prompt-tuning inspect", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument("source", help="a prompt bundle, PEFT adapter folder, MODEL_DIR or .npy prompt [p, d]")
  parser.add_argument("--checkpoint", default=None, help="the frozen model (default: the MODEL_DIR's)")
  parser.add_argument("--config", default=None, help="a named config or JSON config file for --checkpoint")
  parser.add_argument("--vocabulary", default=None, help="SentencePiece model to show tokens as pieces")
  parser.add_argument("--task", default=None, help="the task's prompt, when SOURCE is a multi-task run's MODEL_DIR")
  parser.add_argument("--top_k", type=_positive, default=5, help="nearest tokens per prompt position (5)")
  parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
  return parser.parse_args(argv)


def _positive(text: str) -> int:
  try:
    value = int(text)
  except ValueError:
    value = 0
  if value < 1:
    raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
  return value


@dataclasses.dataclass(frozen=True)
class _Prompt:
  value: np.ndarray  # [p, d]
  path: str  # what was read
  bundle: bundle_lib.PromptBundle | None  # None for a .npy
  model_dir: str | None  # the MODEL_DIR it came from, if any
  run: RunConfig | None


def _model_dir_of(path: str) -> str | None:
  """The MODEL_DIR holding `path` (MODEL_DIR itself, or a file of its prompts/ folder), or None."""
  here = epath.Path(path)
  for folder in (here, *list(here.parents)[:3]):
    if folder.name == PROMPTS_DIR:
      folder = folder.parent
    if (folder / "run_config.json").exists():
      return os.fspath(folder)
  return None


def read_prompt(source: str, task: str | None) -> _Prompt:
  """The prompt SOURCE names (see the module docstring); CheckpointError in one line otherwise."""
  path = epath.Path(source)
  if not path.exists():
    raise CheckpointError(f"{source}: no such prompt bundle, MODEL_DIR or .npy file")
  model_dir = _model_dir_of(source)
  run = read_run_config(model_dir) if model_dir else None
  if source.endswith(".npy"):
    try:
      value = np.load(io.BytesIO(path.read_bytes()), allow_pickle=False)
    except ValueError as e:
      raise CheckpointError(f"{source}: not a .npy array ({e})") from None
    if value.ndim != 2:
      hint = "; pass the MODEL_DIR with --task" if run is not None and run.prompt_tasks else ""
      raise CheckpointError(f"{source}: a prompt is [p, d], this array is {value.shape}{hint}")
    return _Prompt(np.asarray(value, np.float32), source, None, model_dir, run)
  chosen = bundle_lib.latest_bundle(source, PROMPTS_DIR, task)
  bundle = bundle_lib.read_bundle(chosen)
  return _Prompt(np.asarray(bundle.prompt, np.float32), chosen, bundle, model_dir, run)


def frozen_model(args: argparse.Namespace, prompt: _Prompt) -> tuple[Any, dict, str]:
  """(T5Config, params, a description) of the frozen model: --checkpoint, else the MODEL_DIR's."""
  if args.checkpoint:
    from prompt_tuning.checkpoints import loader

    config = args.config or (prompt.run.model_config if prompt.run else None)
    config, params = loader.load_checkpoint(args.checkpoint, config)
    return config, params, args.checkpoint
  if prompt.run is None:
    raise CheckpointError(
      f"{args.source} does not say which frozen model it belongs to (no MODEL_DIR run_config.json): pass --checkpoint"
    )
  from prompt_tuning import prompted

  model = prompted.frozen_model_of(prompt.model_dir, "float32")
  run = prompt.run
  described = run.initial_checkpoint_path or f"random weights of {prompt.model_dir}'s run (seed {run.seed})"
  return model.config, model.params, described


def vocabulary_path(args: argparse.Namespace, prompt: _Prompt) -> str | None:
  """--vocabulary, else the bundle's, the run's, or an HF checkpoint folder's spiece.model; else None."""
  for path in (
    args.vocabulary,
    prompt.bundle.vocabulary_path if prompt.bundle else None,
    prompt.run.vocabulary_path if prompt.run else None,
  ):
    if path:
      return path
  if args.checkpoint and os.path.isfile(os.path.join(args.checkpoint, "spiece.model")):
    return os.path.join(args.checkpoint, "spiece.model")
  return None


def main(argv: list[str]) -> int:
  args = parse(argv)
  from prompt_tuning import inspection, param_tree

  try:
    prompt = read_prompt(args.source, args.task)
    config, params, model_description = frozen_model(args, prompt)
    if prompt.bundle is not None:
      bundle_lib.check_fits(prompt.bundle, config, param_tree.fingerprint(params), prompt.path)
    elif prompt.value.shape[1] != config.emb_dim:
      raise CheckpointError(
        f"{prompt.path}: the prompt is {prompt.value.shape[1]} wide, the frozen model's emb_dim is {config.emb_dim}"
      )
    embedding = np.asarray(params["token_embedder"]["embedding"], np.float32)
    vocab_path = vocabulary_path(args, prompt)
    piece, num_rows = None, None
    if vocab_path:
      from prompt_tuning.data.vocab import SentencePieceVocabulary

      vocabulary = SentencePieceVocabulary(vocab_path)
      # Rows past the vocabulary (T5's table is padded to a multiple of 128) are no token.
      num_rows = min(vocabulary.vocab_size, embedding.shape[0])
      piece = vocabulary.tokenizer.IdToPiece
    report = inspection.inspect_prompt(prompt.value, embedding, args.top_k, piece, num_rows)
  except (CheckpointError, ValueError, OSError) as e:
    print(f"prompt-tuning inspect: error: {str(e).strip().splitlines()[0]}", file=sys.stderr)
    return 1
  bundle = prompt.bundle
  header = {
    "source": prompt.path,
    "shape": list(prompt.value.shape),
    "step": bundle.step if bundle else None,
    "task": bundle.task if bundle else (prompt.run.task if prompt.run else None),
    "frozen_model": model_description,
    "vocabulary": vocab_path,
  }
  if args.json:
    print(json.dumps({**header, **report.to_json()}))
    return 0
  p, d = prompt.value.shape
  details = ", ".join(f"{k} {header[k]}" for k in ("step", "task") if header[k] is not None)
  print(f"prompt {prompt.path}: {p} positions x {d}" + (f" ({details})" if details else ""))
  print(f"frozen model: {model_description} (embedding table {embedding.shape[0]} x {embedding.shape[1]})")
  print(f"vocabulary: {vocab_path}" if vocab_path else "vocabulary: none given (--vocabulary): tokens shown by id")
  print("\n".join(report.lines()))
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
