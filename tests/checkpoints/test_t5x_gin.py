"""Reading a t5x run's saved config.gin: the bindings that pin the model (no gin, no t5x)."""

from __future__ import annotations

import pytest

from prompt_tuning.checkpoints import t5x_gin
from prompt_tuning.checkpoints.structure import CheckpointError

# As t5x writes it (gin's operative config): flat bindings, macros, backslash and bracket continuations.
OPERATIVE = """\
from __gin__ import dynamic_registration
import t5x.models
# Macros:
# ==============================================================================
MAX_DISTANCE = 64
NUM_HEADS = 4

# Parameters for relative_position_biases.RelativePositionBiases:
# ==============================================================================
relative_position_biases.RelativePositionBiases.dtype = %ACTIVATION_DTYPE
relative_position_biases.RelativePositionBiases.embedding_init = \\
    @relative_position_bias_init/linen.initializers.variance_scaling()
relative_position_biases.RelativePositionBiases.max_distance = %MAX_DISTANCE
relative_position_biases.RelativePositionBiases.num_buckets = 16  # a comment
relative_position_biases.RelativePositionBiases.num_heads = %NUM_HEADS

seqio.Evaluator.logger_cls = \\
    [@seqio.PyLoggingLogger, '# not a comment (', @seqio.JSONLogger]
"""

# As t5x.examples.t5 gin files write the network (block form).
BLOCK = """\
network.T5Config:
  vocab_size = 32128  # vocab size rounded to a multiple of 128
  dtype = 'bfloat16'
  emb_dim = 768
  num_heads = 12
  num_encoder_layers = 12
  num_decoder_layers = 12
  head_dim = 64
  mlp_dim = 2048
  mlp_activations = ('gelu',
                     'linear')
  dropout_rate = %DROPOUT_RATE
  logits_via_embedding = False
"""


def test_relative_position_settings_from_operative_bindings():
  assert t5x_gin.read_model_settings(OPERATIVE, "config.gin") == {
    "relative_attention_max_distance": 64,
    "relative_attention_num_buckets": 16,
  }


def test_network_sizes_from_a_block():
  assert t5x_gin.read_model_settings(BLOCK, "config.gin") == {
    "vocab_size": 32128,
    "emb_dim": 768,
    "num_heads": 12,
    "num_encoder_layers": 12,
    "num_decoder_layers": 12,
    "head_dim": 64,
    "mlp_dim": 2048,
    "mlp_activations": ("gelu", "linear"),
    "logits_via_embedding": False,
  }


def test_scoped_settings_must_agree():
  text = (
    "encoder/relative_position_biases.RelativePositionBiases.max_distance = 128\n"
    "decoder/relative_position_biases.RelativePositionBiases.max_distance = 64\n"
  )
  with pytest.raises(
    CheckpointError,
    match=r"config.gin: different relative_attention_max_distance per scope "
    r"\(decoder/\S+=64, encoder/\S+=128\)",
  ):
    t5x_gin.read_model_settings(text, "config.gin")
  same = text.replace("= 64", "= 128")
  assert t5x_gin.read_model_settings(same, "config.gin") == {"relative_attention_max_distance": 128}
