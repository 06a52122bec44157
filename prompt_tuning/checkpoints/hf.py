"""HuggingFace T5 checkpoints -> our (t5x-named) parameter tree.

Reads a directory written by `save_pretrained`: `config.json` plus
`model.safetensors`, a sharded `model.safetensors.index.json`, or
`pytorch_model.bin` (only when torch is installed). Torch `nn.Linear` weights
are [out, in]; our kernels are [in, out], so projections are transposed.

The output head, as transformers 5 reads it: scaled by d_model**-0.5 through
the shared embedding when `scale_decoder_outputs` (T5 1.0); otherwise unscaled
through `lm_head.weight`, or through `shared.weight` when the file has no
lm_head (transformers 5 ties every T5 head, so a model it builds with
tie_word_embeddings=False saves none). That last kind loads as our untied head
with a copy of the embedding.

`dropout_rate` is read too: training applies it (T5Config.dropout_rate; the
train step always runs the network with a dropout rng), as transformers does in
train mode; evaluation and decoding never drop out.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Mapping

import numpy as np

from prompt_tuning.checkpoints.structure import CheckpointError
from prompt_tuning.errors import first_line
from prompt_tuning.models.t5.config import T5Config
from prompt_tuning.param_tree import unflatten

_ACTIVATIONS = {"gelu_new": "gelu", "gelu_pytorch_tanh": "gelu", "gelu": "gelu", "relu": "relu", "silu": "silu"}

# HF keys that carry no information of ours: tied copies of `shared`, and a
# cross-attention relative bias that old checkpoints saved but T5 never uses.
_IGNORED = re.compile(
  r"^(encoder|decoder)\.embed_tokens\.weight$"
  r"|^decoder\.block\.0\.layer\.1\.EncDecAttention\.relative_attention_bias\.weight$"
)


def is_hf_checkpoint(path: str) -> bool:
  return os.path.isfile(os.path.join(path, "config.json"))


def config_from_hf(hf: Mapping[str, Any]) -> T5Config:
  """Maps a HF T5Config dict (config.json) to our T5Config.

  T5 1.0 scales the decoder output by d_model**-0.5 and reads logits through
  the shared embedding. transformers >= 5 records this as
  `scale_decoder_outputs` (and always writes `tie_word_embeddings: true`);
  older files say `tie_word_embeddings: false` for the unscaled T5 1.1 family.
  A missing `dropout_rate` is transformers' default, 0.1.
  """
  model_type = hf.get("model_type", "t5")
  if model_type not in ("t5", "mt5"):
    raise CheckpointError(f"unsupported architecture model_type={model_type!r}: expected 't5' or 'mt5'")
  projection = hf.get("feed_forward_proj", "relu")
  gated = projection.startswith("gated-")
  act_name = hf.get("dense_act_fn") or projection.split("-")[-1]
  if act_name not in _ACTIVATIONS:
    raise CheckpointError(f"unsupported feed_forward_proj {projection!r} (activation {act_name!r})")
  act = _ACTIVATIONS[act_name]
  if "scale_decoder_outputs" in hf:
    via_embedding = bool(hf["scale_decoder_outputs"])
  else:
    via_embedding = bool(hf.get("tie_word_embeddings", True))
  return T5Config(
    vocab_size=hf["vocab_size"],
    emb_dim=hf["d_model"],
    num_heads=hf["num_heads"],
    head_dim=hf["d_kv"],
    mlp_dim=hf["d_ff"],
    num_encoder_layers=hf["num_layers"],
    num_decoder_layers=hf.get("num_decoder_layers") or hf["num_layers"],
    mlp_activations=(act, "linear") if gated else (act,),
    logits_via_embedding=via_embedding,
    relative_attention_num_buckets=hf.get("relative_attention_num_buckets", 32),
    relative_attention_max_distance=hf.get("relative_attention_max_distance", 128),
    layer_norm_epsilon=hf.get("layer_norm_epsilon", 1e-6),
    dropout_rate=float(hf.get("dropout_rate", 0.1)),
  )


def read_hf_state_dict(path: str) -> dict[str, np.ndarray]:
  """All tensors of a HF checkpoint directory, as numpy arrays keyed by HF name."""
  single = os.path.join(path, "model.safetensors")
  index = os.path.join(path, "model.safetensors.index.json")
  torch_bin = os.path.join(path, "pytorch_model.bin")
  if os.path.isfile(single):
    return _read_safetensors(single)
  if os.path.isfile(index):
    try:
      with open(index) as f:
        weight_map = json.load(f)["weight_map"]
    except (ValueError, KeyError) as e:
      raise CheckpointError(f"{index}: not a valid safetensors index ({e})") from None
    tensors: dict[str, np.ndarray] = {}
    for shard in sorted(set(weight_map.values())):
      tensors.update(_read_safetensors(os.path.join(path, shard)))
    missing = sorted(set(weight_map) - set(tensors))
    if missing:
      raise CheckpointError(f"{index}: tensor {missing[0]} is listed but not found in its shard")
    return tensors
  if os.path.isfile(torch_bin):
    return _read_torch_bin(torch_bin)
  raise CheckpointError(f"{path}: no model.safetensors, model.safetensors.index.json or pytorch_model.bin")


def _read_safetensors(file: str) -> dict[str, np.ndarray]:
  from safetensors import safe_open

  if not os.path.isfile(file):
    raise CheckpointError(f"{file}: safetensors shard not found")
  try:
    out = {}
    with safe_open(file, framework="numpy") as f:
      for key in f.keys():
        out[key] = f.get_tensor(key)
    return out
  except Exception as e:  # safetensors raises its own error types
    raise CheckpointError(f"{file}: unreadable safetensors file ({first_line(e, typed=True)})") from None


def _read_torch_bin(file: str) -> dict[str, np.ndarray]:
  try:
    import torch
  except ImportError:
    raise CheckpointError(
      f"{file}: reading pytorch_model.bin needs torch; install it or convert to safetensors"
    ) from None
  try:
    state = torch.load(file, map_location="cpu", weights_only=True)
  except Exception as e:
    raise CheckpointError(f"{file}: unreadable torch checkpoint ({first_line(e, typed=True)})") from None
  return {k: v.detach().float().numpy() if v.dtype == torch.bfloat16 else v.detach().numpy() for k, v in state.items()}


def _attention(prefix: str, hf_prefix: str) -> dict[str, tuple[str, bool]]:
  return {
    f"{prefix}/{ours}/kernel": (f"{hf_prefix}.{theirs}.weight", True)
    for ours, theirs in (("query", "q"), ("key", "k"), ("value", "v"), ("out", "o"))
  }


def _mlp(prefix: str, hf_prefix: str, config: T5Config) -> dict[str, tuple[str, bool]]:
  names = ["wi"] if len(config.mlp_activations) == 1 else [f"wi_{i}" for i in range(len(config.mlp_activations))]
  out = {f"{prefix}/{n}/kernel": (f"{hf_prefix}.{n}.weight", True) for n in names}
  out[f"{prefix}/wo/kernel"] = (f"{hf_prefix}.wo.weight", True)
  return out


def hf_name_map(config: T5Config, head: str = "lm_head.weight") -> dict[str, tuple[str, bool]]:
  """Our parameter path -> (HF tensor name, transpose?); `head`: the unscaled output head's tensor."""
  m = {
    "token_embedder/embedding": ("shared.weight", False),
    "encoder/relpos_bias/rel_embedding": ("encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight", True),
    "decoder/relpos_bias/rel_embedding": ("decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight", True),
    "encoder/encoder_norm/scale": ("encoder.final_layer_norm.weight", False),
    "decoder/decoder_norm/scale": ("decoder.final_layer_norm.weight", False),
  }
  for i in range(config.num_encoder_layers):
    ours, theirs = f"encoder/layers_{i}", f"encoder.block.{i}.layer"
    m[f"{ours}/pre_attention_layer_norm/scale"] = (f"{theirs}.0.layer_norm.weight", False)
    m.update(_attention(f"{ours}/attention", f"{theirs}.0.SelfAttention"))
    m[f"{ours}/pre_mlp_layer_norm/scale"] = (f"{theirs}.1.layer_norm.weight", False)
    m.update(_mlp(f"{ours}/mlp", f"{theirs}.1.DenseReluDense", config))
  for i in range(config.num_decoder_layers):
    ours, theirs = f"decoder/layers_{i}", f"decoder.block.{i}.layer"
    m[f"{ours}/pre_self_attention_layer_norm/scale"] = (f"{theirs}.0.layer_norm.weight", False)
    m.update(_attention(f"{ours}/self_attention", f"{theirs}.0.SelfAttention"))
    m[f"{ours}/pre_cross_attention_layer_norm/scale"] = (f"{theirs}.1.layer_norm.weight", False)
    m.update(_attention(f"{ours}/encoder_decoder_attention", f"{theirs}.1.EncDecAttention"))
    m[f"{ours}/pre_mlp_layer_norm/scale"] = (f"{theirs}.2.layer_norm.weight", False)
    m.update(_mlp(f"{ours}/mlp", f"{theirs}.2.DenseReluDense", config))
  if not config.logits_via_embedding:
    m["decoder/logits_dense/kernel"] = (head, True)
  return m


def params_from_hf_state_dict(tensors: Mapping[str, np.ndarray], config: T5Config, source: str) -> dict:
  """Renames (and transposes) HF tensors into our nested parameter dict.

  Raises CheckpointError naming the first HF tensor that is missing, or the
  first one left over (e.g. a checkpoint with more layers than the config).
  """
  # No lm_head with an unscaled head: tied to the embedding, as transformers 5 builds it (see the module doc).
  head = "lm_head.weight" if "lm_head.weight" in tensors or config.logits_via_embedding else "shared.weight"
  name_map = hf_name_map(config, head)
  flat = {}
  for ours, (theirs, transpose) in name_map.items():
    if theirs not in tensors:
      raise CheckpointError(f"{source}: missing tensor {theirs} (for parameter {ours})")
    flat[ours] = np.ascontiguousarray(tensors[theirs].T) if transpose else tensors[theirs]
  used = {theirs for theirs, _ in name_map.values()}
  if config.logits_via_embedding:
    used.add("lm_head.weight")  # a tied copy of shared.weight when present
  extra = sorted(k for k in tensors if k not in used and not _IGNORED.match(k))
  if extra:
    raise CheckpointError(
      f"{source}: unexpected tensor {extra[0]} {tuple(tensors[extra[0]].shape)} "
      f"that the config does not use ({len(extra)} unexpected in all)"
    )
  return unflatten(flat)


def load_hf(path: str) -> tuple[T5Config, dict]:
  """Reads a HF T5 directory -> (config, nested numpy params)."""
  config_file = os.path.join(path, "config.json")
  try:
    with open(config_file) as f:
      hf_config = json.load(f)
  except FileNotFoundError:
    raise CheckpointError(f"{path}: no config.json; not a HuggingFace checkpoint directory") from None
  except ValueError as e:
    raise CheckpointError(f"{config_file}: not valid JSON ({e})") from None
  tensors = read_hf_state_dict(path)
  try:
    config = config_from_hf(hf_config)
  except KeyError as e:
    raise CheckpointError(f"{config_file}: missing field {e.args[0]!r}") from None
  return config, params_from_hf_state_dict(tensors, config, path)
