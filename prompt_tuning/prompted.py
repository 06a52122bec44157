"""A frozen T5 with a trained prompt, on text: predictions, target scores and rank classification.

  model = prompt_tuning.load_pretrained(prompt="quickstart_model")   # the model it was trained on + its prompt
  model.predict(["a warm, funny film"])          # [Prediction(text='positive', score=-0.02)]
  model.rank(["a warm, funny film"])             # [Ranking(prediction='positive', scores={...})]

The prompt comes from
  * a MODEL_DIR of train() (the CLI or Python): the trained parameters of its latest
    checkpoint (or `step`), and from its run_config.json the placement, the task (its
    vocabulary, labels and feature lengths) and the frozen model it was trained on;
  * a .npy file of a prompt [p, d]: inside MODEL_DIR/prompts/, that MODEL_DIR's run config
    applies too;
  * an array [p, d] ('prefix' placement unless told, the vocabulary as given).

Text is tokenized as in training (seqio's append_eos_after_trim): EOS appended, inputs and
targets cut to the trained TASK_FEATURE_LENGTHS (EOS kept), or, without them, padded to the
next power of two of the longest one.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import re
import sys
from typing import Any, Iterator, Sequence

import jax
import numpy as np
from etils import epath

from prompt_tuning import pretrained
from prompt_tuning.checkpoints.structure import CheckpointError
from prompt_tuning.checkpoints.train_state import PROMPTS_DIR, RunConfig, read_run_config
from prompt_tuning.data.features import shift_right, trim_with_eos
from prompt_tuning.models.prompt import PromptConfig, PromptedTransformer
from prompt_tuning.param_tree import PROMPT_ONLY

_STEP_FILE = re.compile(r"^step_(\d+)\.npy$")


@dataclasses.dataclass(frozen=True)
class Prediction:
  """text: the decoded output; score: its log-likelihood under the model (summed over its
  tokens, EOS included; beam search adds its length penalty)."""

  text: str
  score: float


@dataclasses.dataclass(frozen=True)
class Ranking:
  """prediction: the most likely candidate; scores: each candidate's log-likelihood as the target."""

  prediction: str
  scores: dict[str, float]


def _bucket(n: int) -> int:
  """The next power of two >= n: few distinct shapes, so few compilations."""
  return 1 << max(n - 1, 0).bit_length()


class PromptedT5(pretrained.PretrainedT5):
  """A `PretrainedT5` whose encoder input gets the trained prompt; token methods (logits,
  generate) see it too, and predict / score / rank take text.

  Attributes:
    prompt_config: the prompt's length and placement.
    vocabulary: encodes and decodes text (SentencePiece, as the task's).
    feature_lengths: the trained {'inputs': n, 'targets': m}, or None.
    candidates: the task's labels (the default candidates of `rank`), or None.
    step: the training step of the prompt, when known.
  """

  def __init__(
    self,
    config,
    params,
    prompt_config: PromptConfig,
    vocabulary: Any,
    *,
    feature_lengths: dict[str, int] | None = None,
    candidates: Sequence[str] | None = None,
    step: int | None = None,
  ):
    super().__init__(config, params, PromptedTransformer(config, prompt_config=prompt_config))
    self.prompt_config, self.vocabulary, self.step = prompt_config, vocabulary, step
    self.feature_lengths = dict(feature_lengths) if feature_lengths else None
    self.candidates = list(candidates) if candidates else None
    self._score, self._rank = _jitted(self.model, "score"), _jitted(self.model, "rank_classify")

  def __repr__(self) -> str:
    cfg = self.prompt_config
    return (
      f"PromptedT5(prompt {cfg.length}x{self.config.emb_dim} {cfg.placement}"
      f"{f', step {self.step}' if self.step is not None else ''}; {self.config.num_encoder_layers}+"
      f"{self.config.num_decoder_layers} layers, emb_dim {self.config.emb_dim})"
    )

  @property
  def prompt(self) -> np.ndarray:
    """The prompt, float32 [p, d]."""
    return np.asarray(self.params["prompt"]["prompt"], np.float32)

  # --- text -> tokens -------------------------------------------------------------------------

  def _tokens(self, texts: Sequence[str], feature: str, rows: int) -> np.ndarray:
    """int32 [rows, length]: each text's ids + EOS, cut to the trained length of `feature`
    (keeping EOS) or padded to a power of two; rows past the texts are all 0."""
    ids = [self.vocabulary.encode(text) for text in texts]
    length = (self.feature_lengths or {}).get(feature) or _bucket(max(len(x) for x in ids) + 1)
    cut = sum(len(x) + 1 > length for x in ids)
    if cut:
      logging.getLogger(__name__).warning(
        "%d of %d %s cut to the trained length of %d tokens", cut, len(ids), feature, length
      )
    out = np.zeros((rows, length), np.int32)
    for i, x in enumerate(ids):
      row = trim_with_eos(x, length, self.vocabulary.eos_id)
      out[i, : len(row)] = row
    return out

  def _batches(self, texts: Sequence[str], batch_size: int) -> Iterator[tuple[int, np.ndarray]]:
    """(number of real rows, encoder tokens [rows, n]) per chunk of `texts`; rows: a power of two,
    at least 8 (up to batch_size), so that calls with 1 to 8 texts share one compiled shape."""
    if batch_size < 1:
      raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    for start in range(0, len(texts), batch_size):
      chunk = texts[start : start + batch_size]
      yield len(chunk), self._tokens(chunk, "inputs", min(max(_bucket(len(chunk)), 8), batch_size))

  # --- text API --------------------------------------------------------------------------------

  def predict(
    self,
    texts: str | Sequence[str],
    max_decode_length: int | None = None,
    method: str = "greedy",
    *,
    batch_size: int = 32,
    seed: int = 0,
    **options: Any,
  ) -> Prediction | list[Prediction]:
    """Decodes an output for each input text.

    Args:
      texts: one string, or a list of them.
      max_decode_length: output tokens at most (default: the trained targets length).
      method, seed, options: as in `generate` ('greedy', 'beam' with beam_size/alpha,
        'sample' with temperature/top_k/top_p).
      batch_size: texts decoded together.
    Returns:
      A Prediction per text (a single one for a single string).
    """
    single, texts = isinstance(texts, str), _as_texts(texts)
    length = max_decode_length or (self.feature_lengths or {}).get("targets")
    if not length:
      raise ValueError("predict needs max_decode_length= (no trained TASK_FEATURE_LENGTHS to take it from)")
    out = []
    for count, tokens in self._batches(texts, batch_size):
      ids, scores = self.generate(tokens, length, method, seed=seed, return_scores=True, **options)
      if ids.ndim == 3:  # several samples per input: the best comes first
        ids, scores = ids[:, 0], scores[:, 0]
      out += [Prediction(self.vocabulary.decode(ids[i].tolist()), float(scores[i])) for i in range(count)]
    return out[0] if single else out

  def score(self, texts: str | Sequence[str], targets: str | Sequence[str], *, batch_size: int = 32) -> np.ndarray:
    """Log-likelihood of each target given its input text, float32 [len(texts)] (summed over the
    target's tokens, EOS included; targets cut to the trained length, as in training)."""
    texts, targets = _as_texts(texts), _as_texts(targets)
    if len(texts) != len(targets):
      raise ValueError(f"score needs one target per text: {len(texts)} texts, {len(targets)} targets")
    out = []
    for i, (count, tokens) in enumerate(self._batches(texts, batch_size)):
      goal = self._tokens(targets[i * batch_size : i * batch_size + count], "targets", len(tokens))
      self._check_vocab(tokens, goal)
      out.append(np.asarray(self._score(self.params, tokens, shift_right(goal), goal))[:count])
    return np.concatenate(out).astype(np.float32)

  def rank(
    self, texts: str | Sequence[str], candidates: Sequence[str] | None = None, *, batch_size: int = 32
  ) -> Ranking | list[Ranking]:
    """Rank classification: scores every candidate target for each text and picks the most likely.

    Args:
      candidates: the strings to choose from (default: the task's labels).
    Returns:
      A Ranking per text (a single one for a single string).
    """
    from prompt_tuning.evaluation import candidate_table

    single, texts = isinstance(texts, str), _as_texts(texts)
    candidates = list(candidates or self.candidates or [])
    if not candidates:
      raise ValueError("rank needs candidates= (the task has no labels to take them from)")
    length = (self.feature_lengths or {}).get("targets") or sys.maxsize
    table = candidate_table(self.vocabulary, [candidates], length)[0]  # [candidates, length]
    out = []
    for count, tokens in self._batches(texts, batch_size):
      self._check_vocab(tokens, table)
      scores = np.asarray(self._rank(self.params, tokens, table))[:count]
      out += [
        Ranking(candidates[int(np.argmax(row))], {c: float(s) for c, s in zip(candidates, row)}) for row in scores
      ]
    return out[0] if single else out


@functools.lru_cache(maxsize=32)
def _jitted(model: Any, method: str):
  """jit of a model method, shared by equal models: handles of one network compile once per shape."""
  return jax.jit(getattr(model, method))


def _as_texts(texts: str | Sequence[str]) -> list[str]:
  texts = [texts] if isinstance(texts, str) else list(texts)
  if not texts or not all(isinstance(t, str) for t in texts):
    raise ValueError(f"expected a string or a non-empty list of strings, got {texts!r:.80}")
  return texts


# --- where a prompt comes from -------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Source:
  value: np.ndarray | None  # the prompt [p, d], or None: restore it (and all trained params) from model_dir
  run: RunConfig | None
  model_dir: str | None
  step: int | None


def _source(prompt: Any, step: int | None) -> _Source:
  """Reads what `prompt` names: an array, a .npy file, or a MODEL_DIR."""
  if not isinstance(prompt, (str, os.PathLike)):
    return _Source(np.asarray(prompt, np.float32), None, None, None)
  path = os.fspath(prompt)
  if path.endswith(".npy"):
    file = epath.Path(path)
    if not file.exists():
      raise CheckpointError(f"prompt {path}: file not found")
    with file.open("rb") as f:
      value = np.load(f)
    # MODEL_DIR/prompts/step_N.npy: its MODEL_DIR says how it was trained.
    model_dir = str(file.parent.parent) if file.parent.name == PROMPTS_DIR else None
    match = _STEP_FILE.match(file.name)
    return _Source(
      np.asarray(value, np.float32),
      read_run_config(model_dir) if model_dir else None,
      model_dir,
      int(match.group(1)) if match else None,
    )
  run = read_run_config(path)
  if run is None:
    raise CheckpointError(
      f"prompt {path}: neither a .npy file nor a MODEL_DIR written by train() (no "
      f"run_config.json); pass MODEL_DIR/prompts/step_N.npy with placement= and vocabulary="
    )
  return _Source(None, run, path, step)


def frozen_model_of(prompt: Any, dtype: str) -> pretrained.PretrainedT5:
  """The frozen model a MODEL_DIR (or a prompt file in one) was trained on, from its run config."""
  run = _source(prompt, None).run if isinstance(prompt, (str, os.PathLike)) else None
  if run is None:
    raise ValueError(
      "load_pretrained(prompt=...) without a checkpoint path or config= needs a MODEL_DIR of "
      "train() (it names the frozen model); pass the frozen model's path or config="
    )
  if run.initial_checkpoint_path:
    return pretrained.load_pretrained(run.initial_checkpoint_path, run.model_config, dtype)
  # Random frozen weights (the quick start): train() initialized them from the run's seed, in its dtype.
  model = pretrained.load_pretrained(None, run.model_config, run.model_config.param_dtype, seed=run.seed)
  if dtype == run.model_config.param_dtype:
    return model
  return pretrained.PretrainedT5(
    model.config.replace(dtype=dtype, param_dtype=dtype), jax.tree.map(lambda x: x.astype(dtype), model.params)
  )


def attach_prompt(
  model: pretrained.PretrainedT5,
  prompt: Any,
  *,
  step: int | None = None,
  vocabulary: Any = None,
  task: str | None = None,
  placement: str | None = None,
) -> PromptedT5:
  """`model` with the prompt `prompt` names (see the module docstring): a PromptedT5."""
  source = _source(prompt, step)
  run = source.run
  if step is not None and source.value is not None:
    raise ValueError(f"step={step} picks a checkpoint of a MODEL_DIR; this prompt is a file or an array")
  if source.value is not None and run is not None and run.trainable_params != PROMPT_ONLY:
    logging.getLogger(__name__).warning(
      "%s trained %r, not the prompt alone: the .npy holds only the prompt; load the MODEL_DIR for the rest",
      source.model_dir,
      run.trainable_params,
    )
  params = {k: v for k, v in model.params.items() if k != "prompt"}
  d = model.config.emb_dim
  if source.value is None and run.prompt_tasks is not None:  # a multi-task run: the task's whole prompt
    params["prompt"], restored_step = _task_prompt(source.model_dir, run, params, task, step)
    length = run.prompt_length
  elif source.value is None:  # a MODEL_DIR: restore what was trained (the prompt, or more for model tuning)
    from prompt_tuning.checkpoints.train_state import restore_trained

    template = {**params, "prompt": {"prompt": np.zeros((run.prompt_length, d), np.float32)}}
    params, restored_step = restore_trained(source.model_dir, template, run.trainable_params, step)
    length = run.prompt_length
  else:
    value, restored_step = source.value, source.step
    if value.ndim != 2 or value.shape[1] != d:
      raise ValueError(
        f"the prompt must be [length, {d}] (the model's emb_dim), got shape {value.shape}"
        + (" (a table of prompts: pick one row)" if value.ndim == 3 else "")
      )
    params["prompt"] = {"prompt": value}
    length = value.shape[0]
  prompt_config = PromptConfig(length, placement or (run.prompt_placement if run else "prefix"))
  task_obj = _task(task or (run.task if run else None), run)
  vocab = _vocabulary(vocabulary, task_obj)
  if vocab.vocab_size > model.config.vocab_size:
    raise ValueError(f"the vocabulary has {vocab.vocab_size} ids but the model only {model.config.vocab_size}")
  return PromptedT5(
    model.config,
    params,
    prompt_config,
    vocab,
    feature_lengths=dict(run.task_feature_lengths) if run else None,
    candidates=task_obj.candidates if task_obj is not None else None,
    step=restored_step,
  )


def _task_prompt(model_dir: str, run: RunConfig, frozen: dict, task: str | None, step: int | None) -> tuple[dict, int]:
  """{'prompt': [p, d]}: task `task`'s whole prompt (shared part combined in) from a multi-task run's
  checkpoint, and the restored step."""
  from prompt_tuning.checkpoints.train_state import restore_trained
  from prompt_tuning.models.prompt import task_prompts

  tasks = run.prompt_tasks
  if task not in tasks:
    raise ValueError(f"{model_dir} trained a prompt per task ({', '.join(tasks)}): pass task= one of them")
  config = PromptConfig(
    run.prompt_length,
    num_tasks=len(tasks),
    shared_length=run.shared_prompt_length,
    shared_combine=run.shared_prompt_combine,
  )
  d = frozen["token_embedder"]["embedding"].shape[-1]
  prompt = {"prompt": np.zeros((len(tasks), config.task_length, d), np.float32)}
  if config.shared_length:
    prompt["shared_prompt"] = np.zeros((config.shared_length, d), np.float32)
  restored, restored_step = restore_trained(model_dir, {**frozen, "prompt": prompt}, run.trainable_params, step)
  trained = restored["prompt"]
  whole = task_prompts(np.asarray(trained["prompt"]), trained.get("shared_prompt"), config.shared_combine)
  return {"prompt": np.asarray(whole[tasks.index(task)], np.float32)}, restored_step


def _task(name: str | None, run: RunConfig | None):
  if not name:
    return None
  from prompt_tuning.task_registry import resolve_task

  if run is not None and (name == run.task or name in (run.prompt_tasks or ())):  # found as in training
    return resolve_task(name, run.mixture_or_task_module, run.vocabulary_path)
  return resolve_task(name)


def _vocabulary(vocabulary: Any, task: Any):
  if vocabulary is None:
    if task is None:
      raise ValueError("no vocabulary for text: pass vocabulary= (a SentencePiece model) or task=")
    return task.vocabulary
  if isinstance(vocabulary, (str, os.PathLike)):
    from prompt_tuning.data.vocab import SentencePieceVocabulary

    return SentencePieceVocabulary(os.fspath(vocabulary))
  return vocabulary
