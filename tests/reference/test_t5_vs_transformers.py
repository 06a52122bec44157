"""Our T5 against HuggingFace transformers (PyTorch, CPU) on tiny random models."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import prompt_tuning
from prompt_tuning.models.t5 import layers
from support import hf_models

KINDS = sorted(hf_models.KINDS)


def _hf_logits(model, enc, dec_in) -> np.ndarray:
  with torch.no_grad():
    out = model(
      input_ids=torch.tensor(enc, dtype=torch.long),
      attention_mask=torch.tensor(enc > 0, dtype=torch.long),
      decoder_input_ids=torch.tensor(dec_in, dtype=torch.long),
    )
  return out.logits.numpy()


@pytest.mark.parametrize("kind", KINDS)
def test_logits_match_hf_on_padded_batch(kind, hf_checkpoints, padded_batch):
  hf_model, path = hf_checkpoints[kind]
  enc, dec_in, targets = padded_batch
  ours = prompt_tuning.load_pretrained(path)
  got = ours.logits(enc, dec_in)
  want = _hf_logits(hf_model, enc, dec_in)
  assert got.dtype == np.float32 and got.shape == want.shape == (3, 6, hf_models.VOCAB)
  valid = targets > 0  # logits at padded decoder positions are meaningless in both
  assert np.abs(got - want)[valid].max() < 1e-4
  # The comparison has teeth: a wrong padding mask or a dropped layer is far off.
  assert np.abs(want).max() > 1.0


@pytest.mark.parametrize("kind", KINDS)
def test_greedy_generation_matches_hf_generate(kind, hf_checkpoints, padded_batch):
  hf_model, path = hf_checkpoints[kind]
  enc = padded_batch[0]
  max_len = 8
  ours = prompt_tuning.load_pretrained(path).generate(enc, max_len)
  with torch.no_grad():
    hf_out = hf_model.generate(
      input_ids=torch.tensor(enc, dtype=torch.long),
      attention_mask=torch.tensor(enc > 0, dtype=torch.long),
      max_new_tokens=max_len,
      do_sample=False,
      num_beams=1,
    ).numpy()[:, 1:]
  want = np.zeros((enc.shape[0], max_len), np.int32)
  want[:, : hf_out.shape[1]] = hf_out
  np.testing.assert_array_equal(ours, want)
  assert len(set(map(tuple, ours))) > 1  # inputs lead to different outputs


def test_relative_position_buckets_match_hf():
  from transformers.models.t5.modeling_t5 import T5Attention

  relative = np.arange(-3000, 3000)
  for bidirectional in (True, False):
    for num_buckets, max_distance in ((32, 128), (8, 12), (64, 256)):
      want = T5Attention._relative_position_bucket(
        torch.tensor(relative), bidirectional, num_buckets, max_distance
      ).numpy()
      got = layers.relative_position_bucket(relative, bidirectional, num_buckets, max_distance)
      np.testing.assert_array_equal(got, want)


def test_transformers5_tied_unscaled_head_matches_hf(padded_batch, tmp_path):
  """transformers 5 ties every T5 head to `shared`: a model built with tie_word_embeddings=False computes
  unscaled logits through the embedding and saves no lm_head.weight. It loads with equal logits."""
  import json
  import os

  from safetensors import safe_open
  from transformers import T5Config, T5ForConditionalGeneration

  torch.manual_seed(0)
  hf_model = T5ForConditionalGeneration(
    T5Config(
      vocab_size=hf_models.VOCAB,
      d_model=32,
      d_kv=8,
      d_ff=48,
      num_heads=4,
      num_layers=2,
      dropout_rate=0.0,
      feed_forward_proj="gated-gelu",
      tie_word_embeddings=False,
      decoder_start_token_id=0,
    )
  ).eval()
  hf_model.save_pretrained(str(tmp_path))
  saved = json.load(open(os.path.join(tmp_path, "config.json")))
  with safe_open(os.path.join(tmp_path, "model.safetensors"), "np") as f:
    assert "lm_head.weight" not in f.keys()  # what transformers 5 really writes
  assert (saved["tie_word_embeddings"], saved["scale_decoder_outputs"]) == (True, False)
  enc, dec_in, targets = padded_batch
  ours = prompt_tuning.load_pretrained(str(tmp_path))
  assert not ours.config.logits_via_embedding
  got, want = ours.logits(enc, dec_in), _hf_logits(hf_model, enc, dec_in)
  assert np.abs(got - want)[targets > 0].max() < 1e-4
  assert np.abs(want).max() > 0.1  # not a vacuous comparison
