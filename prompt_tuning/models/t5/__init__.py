"""The T5 family in Flax: config, layers and the encoder-decoder network."""

from prompt_tuning.models.t5.config import NAMED_CONFIGS, T5Config, get_config
from prompt_tuning.models.t5.network import Transformer

__all__ = ["NAMED_CONFIGS", "T5Config", "Transformer", "get_config"]
