"""Model FLOPs of one prompt-tuning step, by the "4N per token" convention.

The frozen weights need no weight gradient, so each weight matrix of N
parameters costs 2N FLOPs per token in the forward pass and 2N more in the
backward pass (the gradient with respect to its input activations, which is
needed all the way down to the prompt): 4N per token a matrix sees.

Counted: parameter matmuls only, i.e. every attention projection (query, key,
value, out), every MLP matrix (wi / wi_0, wi_1, wo) and the logits
projection [embed, vocab] (decoder/logits_dense for T5 1.1, the tied token
embedding for T5 1.0). Not counted: the token-embedding lookup (a gather),
RMSNorm scales, relative-position bias tables, the prompt itself, the
attention score/value products (QK^T, AV), softmax and the loss.

Each matrix is charged for the tokens that actually pass through it, since
an encoder-decoder sends encoder tokens through the encoder only:
  encoder-side N_enc: every encoder matrix, plus the decoder's cross-attention
    key/value projections (they project the encoder output);
    tokens = batch * input_length (input_length includes the prompt);
  decoder-side N_dec: every other decoder matrix plus the logits projection;
    tokens = batch * target_length.
  FLOPs/step = 4 * (N_enc * batch * input_length + N_dec * batch * target_length).
`naive_flops_per_step` is the cruder 4 * (N_enc + N_dec) * batch * (input_length
+ target_length), which overcounts an encoder-decoder ~2-3x; it is reported
for reference only.
"""

from __future__ import annotations

import dataclasses

from prompt_tuning.models.t5.config import T5Config


@dataclasses.dataclass(frozen=True)
class MatmulParams:
  """Parameter-matmul weights, split by which tokens they see.

  encoder_side: weights applied to every encoder position.
  decoder_side: weights applied to every decoder position.
  """

  encoder_side: int
  decoder_side: int

  @property
  def total(self) -> int:
    return self.encoder_side + self.decoder_side


def matmul_params(config: T5Config) -> MatmulParams:
  """Closed form from the config's dimensions (tests/support/param_counts.py counts the real tree)."""
  d, inner, mlp = config.emb_dim, config.num_heads * config.head_dim, config.mlp_dim
  attention = 4 * d * inner  # query, key, value [d, inner] and out [inner, d]
  mlp_block = (len(config.mlp_activations) + 1) * d * mlp  # wi (or wi_0, wi_1) and wo
  cross_kv = 2 * d * inner
  encoder_layer = attention + mlp_block
  decoder_layer = 2 * attention + mlp_block - cross_kv  # self + cross attention, minus cross key/value
  logits = d * config.vocab_size
  return MatmulParams(
    encoder_side=config.num_encoder_layers * encoder_layer + config.num_decoder_layers * cross_kv,
    decoder_side=config.num_decoder_layers * decoder_layer + logits,
  )


def flops_per_step(config: T5Config, batch: int, input_length: int, target_length: int) -> int:
  """4 * (N_enc * batch * input_length + N_dec * batch * target_length); see the module docstring.

  Args:
    input_length: total encoder length, prompt included.
  """
  n = matmul_params(config)
  return 4 * (n.encoder_side * batch * input_length + n.decoder_side * batch * target_length)


def naive_flops_per_step(config: T5Config, batch: int, input_length: int, target_length: int) -> int:
  """4 * N_total * batch * (input_length + target_length): every token through every matrix."""
  return 4 * matmul_params(config).total * batch * (input_length + target_length)


CONVENTION = (
  "model FLOPs = 4 * (N_enc * batch * input_length + N_dec * batch * target_length); "
  "4N per token: frozen weights need no weight gradient (forward 2N + activation gradient 2N). "
  "N counts parameter matmuls only (attention q/k/v/o, MLP, logits projection [embed, vocab]); "
  "N_enc = encoder matrices + decoder cross-attention key/value, N_dec = the other decoder matrices "
  "+ logits. Excluded: embedding lookup, norms, relative-position biases, attention QK^T/AV, loss. "
  "input_length includes the prompt."
)
