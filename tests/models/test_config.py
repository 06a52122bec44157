"""Named configs: published parameter counts, computed without allocating memory."""

from __future__ import annotations

import pytest

from prompt_tuning.models.t5 import NAMED_CONFIGS, T5Config, get_config
from prompt_tuning.models.t5.network import abstract_params
from prompt_tuning.param_tree import flatten

# Published sizes (T5 paper and the HF model cards), in parameters.
PUBLISHED = {
  "t5_small": 60.5e6,
  "t5_base": 223e6,
  "t5_large": 738e6,
  "t5_3b": 2.85e9,
  "t5_11b": 11.3e9,
  "t5_1_1_small": 77e6,
  "t5_1_1_base": 248e6,
  "t5_1_1_large": 783e6,
  "t5_1_1_xl": 2.85e9,
  "t5_1_1_xxl": 11.1e9,
  "mt5_small": 300e6,
  "mt5_base": 582e6,
  "mt5_large": 1.23e9,
  "mt5_xl": 3.74e9,
  "mt5_xxl": 12.9e9,
}


def count(config: T5Config) -> int:
  return sum(int(x.size) for x in flatten(abstract_params(config)).values())


def analytic_count(c: T5Config) -> int:
  """The T5 parameter count from first principles, independent of the model code."""
  inner = c.num_heads * c.head_dim
  attention = 4 * c.emb_dim * inner
  mlp = len(c.mlp_activations) * c.emb_dim * c.mlp_dim + c.mlp_dim * c.emb_dim
  encoder_layer = attention + mlp + 2 * c.emb_dim
  decoder_layer = 2 * attention + mlp + 3 * c.emb_dim
  relpos = 2 * c.num_heads * c.relative_attention_num_buckets
  head = 0 if c.logits_via_embedding else c.emb_dim * c.vocab_size
  return (
    c.vocab_size * c.emb_dim
    + c.num_encoder_layers * encoder_layer
    + c.num_decoder_layers * decoder_layer
    + 2 * c.emb_dim
    + relpos
    + head
  )


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_named_config_matches_published_size(name):
  config = get_config(name)
  n = count(config)
  assert n == analytic_count(config)
  assert abs(n - PUBLISHED[name]) / PUBLISHED[name] < 0.015, f"{name}: {n:,} vs published {PUBLISHED[name]:,.0f}"


def test_exact_counts_of_well_known_checkpoints():
  # google/t5-v1_1-base and t5-small as HF reports them.
  assert count(get_config("t5_1_1_base")) == 247_577_856
  assert count(get_config("t5_small")) == 60_506_624


def test_aliases_and_overrides():
  assert get_config("t5_1_1_lm100k_xl") == get_config("t5_1_1_xl") == get_config("flan_t5_xl")
  assert get_config("tiny", dtype="bfloat16").dtype == "bfloat16"
  assert set(PUBLISHED) <= set(NAMED_CONFIGS)


def test_bad_configs_fail_clearly():
  with pytest.raises(ValueError, match="unknown model config 't5_huge'"):
    get_config("t5_huge")
  with pytest.raises(ValueError, match="dtype='float8'"):
    T5Config(dtype="float8")
  with pytest.raises(ValueError, match="unknown activation 'tanh'"):
    T5Config(mlp_activations=("tanh",))
  with pytest.raises(ValueError, match=r"unknown T5Config field\(s\) \['d_model'\]"):
    T5Config.from_dict({"d_model": 3})


def test_config_json_round_trip():
  config = get_config("mt5_base", dropout_rate=0.1)
  assert T5Config.from_dict(__import__("json").loads(config.to_json())) == config
