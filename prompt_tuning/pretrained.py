"""`load_pretrained`: a small handle on a T5 checkpoint for users and tests.

With `prompt=` (or `PretrainedT5.with_prompt`), the handle carries a trained
prompt and takes text: see `prompt_tuning.prompted`.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from prompt_tuning.checkpoints import loader
from prompt_tuning.models.model import EncoderDecoderModel
from prompt_tuning.models.t5 import network
from prompt_tuning.models.t5.config import T5Config


def _as_tokens(name: str, tokens: Any) -> np.ndarray:
  tokens = np.asarray(tokens)
  if tokens.ndim != 2 or tokens.dtype.kind not in "iu":
    raise ValueError(f"{name} must be an integer array [batch, length], got {tokens.dtype} {tokens.shape}")
  return tokens.astype(np.int32)


class PretrainedT5:
  """A T5 model with its parameters.

  Attributes:
    config: the T5Config.
    params: nested dict of parameter arrays (t5x names).
  """

  def __init__(self, config: T5Config, params: Any, module: Any = None):
    """`module`: the Flax network of `params` (default: the plain T5 `Transformer` of `config`)."""
    self.config = config
    self.params = jax.tree.map(jnp.asarray, params)
    self.model = EncoderDecoderModel(network.Transformer(config) if module is None else module)
    self._logits = jax.jit(self.model.logits)

  def with_prompt(
    self,
    prompt: Any,
    *,
    step: int | None = None,
    vocabulary: Any = None,
    task: str | None = None,
    placement: str | None = None,
  ):
    """This model with a trained prompt in front of its inputs, taking text: a `PromptedT5`.

    Args:
      prompt: a MODEL_DIR of train() (its latest checkpoint, or `step`), a .npy file of a
        prompt [p, d] (e.g. MODEL_DIR/prompts/step_300.npy), or such an array.
      step: the checkpoint step of a MODEL_DIR (default: the latest).
      vocabulary: a SentencePiece model path (read with T5's 100 extra ids) or a vocabulary
        object (e.g. a task's `.vocabulary`); default: the task's.
      task: a registered task name whose vocabulary and labels to use; default: MODEL_DIR's.
      placement: 'prefix', 'after_first' or 'suffix'; default: as trained ('prefix' for a bare array).
    See `prompt_tuning.prompted.attach_prompt`.
    """
    from prompt_tuning import prompted  # deferred: it imports this module

    return prompted.attach_prompt(self, prompt, step=step, vocabulary=vocabulary, task=task, placement=placement)

  def logits(self, encoder_input_tokens: Any, decoder_input_tokens: Any) -> np.ndarray:
    """Teacher-forced logits.

    Args:
      encoder_input_tokens: int [batch, enc_length], 0 = padding.
      decoder_input_tokens: int [batch, dec_length], starting with 0 (seqio's shifted targets).
    Returns:
      float32 numpy [batch, dec_length, vocab].
    """
    enc = _as_tokens("encoder_input_tokens", encoder_input_tokens)
    dec = _as_tokens("decoder_input_tokens", decoder_input_tokens)
    if enc.shape[0] != dec.shape[0]:
      raise ValueError(f"batch sizes differ: encoder {enc.shape[0]}, decoder {dec.shape[0]}")
    self._check_vocab(enc, dec)
    return np.asarray(self._logits(self.params, enc, dec), np.float32)

  def generate(
    self,
    encoder_input_tokens: Any,
    max_decode_length: int,
    method: str = "greedy",
    *,
    seed: int = 0,
    eos_id: int = 1,
    return_scores: bool = False,
    **options: Any,
  ):
    """Autoregressive decoding with a key/value cache.

    Args:
      encoder_input_tokens: int [batch, enc_length], 0 = padding.
      max_decode_length: number of tokens to produce at most.
      method: 'greedy' (default), 'beam' (beam_size=4, alpha=0.6) or 'sample'
        (temperature, top_k, top_p, num_decodes).
      seed: PRNG seed for sampling.
    Returns:
      int32 numpy tokens [batch, max_decode_length] (EOS included, 0 after
      it); the best beam for 'beam'; [batch, num_decodes, length] when
      sampling with num_decodes > 1. With return_scores, (tokens, scores).
    """
    enc = _as_tokens("encoder_input_tokens", encoder_input_tokens)
    self._check_vocab(enc)
    if method == "beam":
      options.setdefault("beam_size", 4)
    result = self._predict(
      enc, int(max_decode_length), method, int(eos_id), tuple(sorted(options.items())), jax.random.PRNGKey(seed)
    )
    tokens, scores = np.asarray(result.tokens), np.asarray(result.scores)
    if method != "sample" or options.get("num_decodes", 1) == 1:
      tokens, scores = tokens[:, 0], scores[:, 0]
    return (tokens, scores) if return_scores else tokens

  def _predict(self, enc, max_decode_length, method, eos_id, options, rng):
    return _jitted_predict(self.model, max_decode_length, method, eos_id, options)(self.params, enc, rng)

  def _check_vocab(self, *token_arrays: np.ndarray) -> None:
    for tokens in token_arrays:
      if tokens.size and (tokens.min() < 0 or tokens.max() >= self.config.vocab_size):
        raise ValueError(
          f"token id {int(tokens.max()) if tokens.max() >= self.config.vocab_size else int(tokens.min())}"
          f" is outside the vocabulary [0, {self.config.vocab_size})"
        )


@functools.lru_cache(maxsize=32)
def _jitted_predict(model: EncoderDecoderModel, max_decode_length: int, method: str, eos_id: int, options: tuple):
  def predict(params, enc, rng):
    return model.predict_batch(
      params, enc, max_decode_length=max_decode_length, method=method, rng=rng, eos_id=eos_id, **dict(options)
    )

  return jax.jit(predict)


def load_pretrained(
  path: str | None = None,
  config: str | T5Config | None = None,
  dtype: str = "float32",
  seed: int = 0,
  *,
  prompt: Any = None,
  step: int | None = None,
  vocabulary: Any = None,
  task: str | None = None,
  placement: str | None = None,
) -> PretrainedT5:
  """Loads a T5 checkpoint, or builds a randomly initialized model; with `prompt`, adds a trained prompt.

  Args:
    path: an HF directory, a t5x checkpoint (local or gs://), or a native
      checkpoint; None or '' for random initialization of `config`. With a
      MODEL_DIR as `prompt` and neither path nor config: the frozen model that
      MODEL_DIR was trained on (its run_config.json: checkpoint, or config and seed).
    config: a named config (see `prompt_tuning.models.t5.NAMED_CONFIGS`) or a
      T5Config. Needed for t5x checkpoints and random initialization.
    dtype: parameter and activation dtype, 'float32' or 'bfloat16'.
    seed: initialization seed when `path` is empty.
    prompt, step, vocabulary, task, placement: see `PretrainedT5.with_prompt`;
      the result is then a `prompt_tuning.prompted.PromptedT5` (predict, score, rank on text).
  """
  if prompt is not None and not path and config is None:
    from prompt_tuning import prompted

    model = prompted.frozen_model_of(prompt, dtype)
  else:
    model = _load(path, config, dtype, seed)
  if prompt is None:
    return model
  return model.with_prompt(prompt, step=step, vocabulary=vocabulary, task=task, placement=placement)


def _load(path: str | None, config: str | T5Config | None, dtype: str, seed: int) -> PretrainedT5:
  if not path:
    if config is None:
      raise ValueError("load_pretrained(path=None) builds a random model and needs config= (e.g. 'tiny')")
    cfg = loader.resolve_config(config).replace(dtype=dtype, param_dtype=dtype)
    return PretrainedT5(cfg, network.init_params(cfg, jax.random.PRNGKey(seed)))
  cfg, params = loader.load_checkpoint(path, config, dtype=dtype)
  return PretrainedT5(cfg, params)
