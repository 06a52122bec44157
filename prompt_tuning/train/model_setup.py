"""Building the prompted model: frozen T5 weights (checkpoint or random) plus an initialized prompt."""

from __future__ import annotations

from typing import Callable

import jax
import numpy as np
from absl import logging

from prompt_tuning.checkpoints import loader
from prompt_tuning.checkpoints.structure import check_params
from prompt_tuning.models.model import EncoderDecoderModel, LossConfig
from prompt_tuning.models.prompt import PromptConfig, PromptedTransformer
from prompt_tuning.models.t5 import network
from prompt_tuning.models.t5.config import T5Config


def load_prompted_model(model_config: str | T5Config | None, initial_checkpoint_path: str, prompt: PromptConfig,
                        prompt_init: Callable[..., Callable], *, tokenize: Callable[[str], list[int]] | None,
                        vocab_size: int | None, loss: LossConfig, dtype: str | None, seed: int,
                        runtime: dict | None = None) -> tuple[EncoderDecoderModel, dict, T5Config]:
  """Returns (model, params, config); params = T5 weights + {'prompt': {'prompt': [p, d]}}.

  Args:
    model_config: named config, T5Config or .json config file; may be None with an HF or native
      checkpoint (which carry their own). A models.t5.config.RandomInitConfig applies only without
      a checkpoint.
    initial_checkpoint_path: HF, t5x or native checkpoint; '' for random weights (tests, quick start).
    prompt_init: an initializer factory (prompt_tuning.prompt_init), called with the model's
      embedding table and the task's tokenizer.
    vocab_size: the task vocabulary's size, checked against the model's.
    dtype: parameter and activation dtype; None keeps the checkpoint's (float32) on the CPU and
      uses bfloat16 on accelerators.
    runtime: T5Config fields that change how, not what, it computes (attention_impl, remat_policy).
  """
  if dtype is None and jax.default_backend() != "cpu":
    dtype = "bfloat16"
  if initial_checkpoint_path:
    config, t5_params = loader.load_checkpoint(initial_checkpoint_path, model_config, dtype=dtype)
    logging.info("loaded frozen model weights from %s", initial_checkpoint_path)
  else:
    if model_config is None:
      raise ValueError("no INITIAL_CHECKPOINT_PATH and no model config: set one of them")
    config = loader.resolve_config(model_config)
    if dtype is not None:
      config = config.replace(dtype=dtype, param_dtype=dtype)
    t5_params = network.init_params(config, jax.random.PRNGKey(seed))
  runtime = {k: v for k, v in (runtime or {}).items() if v is not None}
  if runtime:
    config = config.replace(**runtime)
  if vocab_size is not None and vocab_size > config.vocab_size:
    raise ValueError(f"the task vocabulary has {vocab_size} ids but the model only {config.vocab_size}")
  embedding = np.asarray(t5_params["token_embedder"]["embedding"], np.float32)
  init_fn = prompt_init(embedding=embedding, tokenize=tokenize)
  shape = (prompt.length, config.emb_dim) if prompt.num_tasks is None else (prompt.num_tasks, prompt.length,
                                                                            config.emb_dim)
  # The prompt is kept in float32 whatever the frozen weights are (PromptedTransformer.prompt_param_dtype).
  prompt_value = np.asarray(init_fn(jax.random.PRNGKey(seed + 1), shape), np.float32)
  module = PromptedTransformer(config, prompt_config=prompt)
  params = {**t5_params, "prompt": {"prompt": prompt_value}}
  check_params(params, network.abstract_module_params(module), "prompted model")
  return EncoderDecoderModel(module, loss), params, config
