"""`prompt_tuning.load_pretrained`: the handle's logits and generate on a real (tiny) model."""

from __future__ import annotations

import numpy as np
import pytest

import prompt_tuning


@pytest.fixture(scope="module")
def model(hf_checkpoints):
  return prompt_tuning.load_pretrained(hf_checkpoints["t5_1_1"][1])


def _sequence_log_prob(model, enc, tokens):
  """Teacher-forced sum of log-probabilities of `tokens` [batch, length] (EOS included, 0 after)."""
  dec_in = np.concatenate([np.zeros((tokens.shape[0], 1), np.int32), tokens[:, :-1]], axis=1)
  logits = model.logits(enc, dec_in).astype(np.float64)
  log_probs = (
    logits
    - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True))
    - logits.max(-1, keepdims=True)
  )
  picked = np.take_along_axis(log_probs, tokens[..., None], axis=-1)[..., 0]
  produced = np.cumsum(tokens == 1, axis=1) - (tokens == 1) == 0  # up to and including the first EOS
  produced &= np.cumsum(tokens != 0, axis=1) > 0
  return (picked * produced).sum(-1)


@pytest.mark.slow
def test_scores_of_every_method_equal_teacher_forced_log_probs(model, padded_batch):
  """The cached decode path and the teacher-forced path agree on the produced sequences."""
  enc = padded_batch[0]
  for method, options in (
    ("greedy", {}),
    ("beam", dict(beam_size=3, alpha=0.0)),
    ("sample", dict(temperature=1.0, top_k=0, top_p=1.0)),
  ):
    tokens, scores = model.generate(enc, 6, method, return_scores=True, seed=3, **options)
    assert tokens.shape == (3, 6) and tokens.dtype == np.int32
    np.testing.assert_allclose(scores, _sequence_log_prob(model, enc, tokens), atol=1e-3, err_msg=method)


def test_beam_search_is_at_least_as_likely_as_greedy(model, padded_batch):
  enc = padded_batch[0]
  _, greedy = model.generate(enc, 6, return_scores=True)
  _, beam = model.generate(enc, 6, "beam", beam_size=4, alpha=0.0, return_scores=True)
  assert np.all(beam >= greedy - 1e-4)


def test_sampling_options(model, padded_batch):
  enc = padded_batch[0]
  greedy = model.generate(enc, 6)
  np.testing.assert_array_equal(model.generate(enc, 6, "sample", top_k=1, seed=5), greedy)
  many = model.generate(enc, 6, "sample", num_decodes=4, temperature=2.0, seed=0)
  assert many.shape == (3, 4, 6)
  np.testing.assert_array_equal(many, model.generate(enc, 6, "sample", num_decodes=4, temperature=2.0, seed=0))
  assert not np.array_equal(many, model.generate(enc, 6, "sample", num_decodes=4, temperature=2.0, seed=1))


def test_random_init_and_bad_inputs():
  tiny = prompt_tuning.load_pretrained(None, config="tiny")
  assert tiny.config.vocab_size == 32128
  assert tiny.generate(np.array([[5, 6, 1]]), 4).shape == (1, 4)
  with pytest.raises(ValueError, match="needs config="):
    prompt_tuning.load_pretrained(None)
  with pytest.raises(ValueError, match="encoder_input_tokens must be an integer array \\[batch, length\\]"):
    tiny.logits(np.ones((3,), np.int32), np.zeros((1, 2), np.int32))
  with pytest.raises(ValueError, match="token id 40000 is outside the vocabulary \\[0, 32128\\)"):
    tiny.generate(np.array([[40000, 1]]), 4)
  with pytest.raises(ValueError, match="unknown decoding method 'nucleus'|method 'nucleus'"):
    tiny.generate(np.array([[5, 1]]), 4, "nucleus")
