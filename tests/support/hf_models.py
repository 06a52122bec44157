"""Tiny random HuggingFace T5 models written with `save_pretrained`, for reference tests."""

from __future__ import annotations

import os

import torch
from transformers import T5Config as HFT5Config
from transformers import T5ForConditionalGeneration

VOCAB = 96

# Architectures the reference tests cover.
KINDS = {
  # T5 1.0: ReLU, logits through the tied embedding scaled by d_model**-0.5.
  "t5_1_0": dict(feed_forward_proj="relu", num_layers=2, num_decoder_layers=2),
  # T5 1.1: gated GELU and its own lm_head.
  "t5_1_1": dict(feed_forward_proj="gated-gelu", tie_word_embeddings=False, num_layers=2, num_decoder_layers=2),
  # Encoder and decoder of different depths, small bucket settings to exercise the log buckets.
  "uneven": dict(
    feed_forward_proj="gated-gelu",
    tie_word_embeddings=False,
    num_layers=3,
    num_decoder_layers=1,
    relative_attention_num_buckets=8,
    relative_attention_max_distance=12,
  ),
}


def make_hf_t5(kind: str, seed: int = 0, vocab_size: int = VOCAB) -> T5ForConditionalGeneration:
  torch.manual_seed(seed)
  config = HFT5Config(
    vocab_size=vocab_size,
    d_model=32,
    d_kv=8,
    d_ff=48,
    num_heads=4,
    dropout_rate=0.0,
    decoder_start_token_id=0,
    **KINDS[kind],
  )
  model = T5ForConditionalGeneration(config)
  if config.feed_forward_proj.startswith("gated"):
    # transformers 5 ties lm_head to `shared` whatever the config says; give it its own weights.
    model.lm_head = torch.nn.Linear(config.d_model, vocab_size, bias=False)
  # Default init leaves small logits; widen the spread so greedy decoding is decisive.
  with torch.no_grad():
    for p in model.parameters():
      p.mul_(1.5)
  return model.eval()


def save_hf_t5(
  kind: str, path: str, seed: int = 0, vocab_size: int = VOCAB, **save_kwargs
) -> T5ForConditionalGeneration:
  model = make_hf_t5(kind, seed, vocab_size)
  model.save_pretrained(path, **save_kwargs)
  assert os.path.isfile(os.path.join(path, "config.json"))
  return model
