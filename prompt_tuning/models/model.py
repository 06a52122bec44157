"""The model wrapper: what to compute with a network, apart from the network.

`EncoderDecoderModel` turns a Flax encoder-decoder module (the plain T5
`Transformer`, or later a prompted one with the same `encode_tokens` /
`decode` methods) into pure functions of (params, batch): teacher-forced
logits and autoregressive prediction with a key/value cache.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from prompt_tuning import decoding

Array = jax.Array
Params = Any


@dataclasses.dataclass(frozen=True)
class EncoderDecoderModel:
  module: nn.Module

  def logits(self, params: Params, encoder_input_tokens: Array, decoder_input_tokens: Array,
             decoder_target_tokens: Array | None = None) -> Array:
    """float32 logits [batch, dec_length, vocab] (deterministic: no dropout)."""
    return self.module.apply({"params": params}, encoder_input_tokens, decoder_input_tokens, decoder_target_tokens)

  def initial_cache(self, params: Params, encoded: Array, encoder_mask: Array, max_decode_length: int) -> Any:
    """Creates the decoder cache: empty self-attention keys/values of length
    `max_decode_length`, and cross-attention keys/values of `encoded`
    [flat_batch, enc_length, embed]."""
    template = jnp.zeros((encoded.shape[0], max_decode_length), jnp.int32)
    _, variables = self.module.apply({"params": params}, encoded, encoder_mask, template, decode=True,
                                     method="decode", mutable=["cache"])
    return variables["cache"]

  def predict_batch(self, params: Params, encoder_input_tokens: Array, *, max_decode_length: int,
                    method: str = "greedy", rng: Array | None = None, eos_id: int = 1,
                    **options: Any) -> decoding.DecodeResult:
    """Decodes [batch, enc_length] inputs autoregressively.

    Args:
      method: 'greedy', 'beam' (options beam_size, alpha) or 'sample'
        (options temperature, top_k, top_p, num_decodes).
    Returns:
      DecodeResult with tokens [batch, num_decodes, max_decode_length] (EOS
      included, 0 after it) and scores [batch, num_decodes].
    """
    encoded, encoder_mask = self.module.apply({"params": params}, encoder_input_tokens, method="encode_tokens")
    expand = options.get("beam_size" if method == "beam" else "num_decodes", 1)
    encoded = decoding.flat_batch_beam_expand(encoded, expand)
    encoder_mask = decoding.flat_batch_beam_expand(encoder_mask, expand)
    cache = self.initial_cache(params, encoded, encoder_mask, max_decode_length)

    def tokens_to_logits(tokens: Array, cache: Any) -> tuple[Array, Any]:
      logits, variables = self.module.apply({"params": params, "cache": cache}, None, encoder_mask, tokens,
                                            decode=True, method="decode", mutable=["cache"])
      return logits[:, -1, :], variables["cache"]

    return decoding.decode(method, tokens_to_logits, cache, rng=rng, batch_size=encoder_input_tokens.shape[0],
                           max_decode_length=max_decode_length, eos_id=eos_id, **options)
