"""bench/flops.py's matmul parameter counts, taken from a real parameter tree (the closed form's check)."""

from __future__ import annotations

from typing import Any, Mapping

from prompt_tuning.bench import flops
from prompt_tuning.param_tree import flatten

# The decoder's cross-attention key/value kernels project the encoder output: encoder-side.
_CROSS_KV = ("encoder_decoder_attention/key/", "encoder_decoder_attention/value/")


def matmul_params_from_tree(params: Mapping[str, Any], logits_via_embedding: bool) -> flops.MatmulParams:
  """Counts from a (possibly abstract) parameter tree of the T5 / prompted T5 network.

  Args:
    params: nested dict with leaves that have `.shape` (arrays or ShapeDtypeStructs).
    logits_via_embedding: whether the logits use the token embedding (T5 1.0).
  """
  encoder_side = decoder_side = 0
  for path, leaf in flatten(params).items():
    size = 1
    for dim in leaf.shape:
      size *= int(dim)
    if path == "token_embedder/embedding":
      decoder_side += size if logits_via_embedding else 0
    elif not path.endswith("/kernel"):
      continue  # norm scales, relative-position tables, the prompt
    elif path.startswith("encoder/") or any(part in path for part in _CROSS_KV):
      encoder_side += size
    else:
      decoder_side += size
  return flops.MatmulParams(encoder_side, decoder_side)
