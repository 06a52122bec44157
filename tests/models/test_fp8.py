"""FP8 frozen matmuls (T5Config.matmul_dtype='fp8'): quantized for real, close to the unquantized result,
gradients to the inputs only, and the same parameter tree as the default model."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from prompt_tuning.models.model import EncoderDecoderModel
from prompt_tuning.models.prompt import PromptConfig, PromptedTransformer
from prompt_tuning.models.t5 import fp8, get_config, layers, network
from prompt_tuning.param_tree import merge_params, split_trainable

CONFIG = get_config("tiny", vocab_size=128)


def _rel(a, b) -> float:
  a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
  return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _qdq(x: np.ndarray, fp8_dtype) -> np.ndarray:
  """numpy's (ml_dtypes') per-tensor current-scaled quantize-dequantize, independent of fp8.py."""
  scale = np.float32(np.abs(x).max() / float(ml_dtypes.finfo(fp8_dtype).max))
  return (x / scale).astype(fp8_dtype).astype(np.float32) * scale


@pytest.fixture(scope="module")
def dense():
  """An attention-output-like projection [2, 5, heads 4, kv 8] -> [2, 5, 32], params, and inputs."""
  module = layers.DenseGeneral(32, ("joined_kv", "embed"), axis=(-2, -1))
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 5, 4, 8))
  return module, module.init(jax.random.PRNGKey(1), x), x


def test_fp8_projection_quantizes_both_operands_to_e4m3(dense):
  module, params, x = dense
  kernel = np.asarray(params["params"]["kernel"].value)
  exact = module.apply(params, x)
  quantized = module.clone(matmul_dtype="fp8").apply(params, x)
  # What numpy gets from the same recipe, down to float32 rounding...
  expected = _qdq(np.asarray(x).reshape(10, 32), ml_dtypes.float8_e4m3fn) @ _qdq(kernel, ml_dtypes.float8_e4m3fn)
  np.testing.assert_allclose(np.asarray(quantized).reshape(10, 32), expected, rtol=1e-5, atol=1e-5)
  # ...which is FP8-close to the exact product, not equal to it.
  assert 1e-3 < _rel(quantized, exact) < 0.08


def test_the_gradient_reaches_the_inputs_through_e5m2_and_never_the_kernel(dense):
  module, params, x = dense
  cotangent = jax.random.normal(jax.random.PRNGKey(2), (2, 5, 32))

  def grads(m):
    return jax.grad(lambda x, p: jnp.sum(m.apply(p, x) * cotangent), argnums=(0, 1))(x, params)

  (dx_exact, _), (dx, dkernel) = grads(module), grads(module.clone(matmul_dtype="fp8"))
  kernel = np.asarray(params["params"]["kernel"].value)
  # dx = q5(dy) . q4(W)^T, the e5m2 gradient against the same e4m3 kernel as the forward pass.
  expected = (
    _qdq(np.asarray(cotangent).reshape(10, 32), ml_dtypes.float8_e5m2) @ _qdq(kernel, ml_dtypes.float8_e4m3fn).T
  )
  np.testing.assert_allclose(np.asarray(dx).reshape(10, 32), expected, rtol=1e-5, atol=1e-5)
  assert 1e-3 < _rel(dx, dx_exact) < 0.15
  assert not np.any(np.asarray(dkernel["params"]["kernel"].value))
  # Forward and input-gradient matmuls only: no weight-gradient matmul is built.
  fp8_module = module.clone(matmul_dtype="fp8")
  jaxpr = jax.make_jaxpr(jax.grad(lambda x, p: jnp.sum(fp8_module.apply(p, x) * cotangent), argnums=(0, 1)))(x, params)
  assert str(jaxpr).count("dot_general") == 2
  # Both dots take the FP8 arrays themselves, the form XLA runs as cuBLASLt FP8 GEMMs on Hopper (a bf16
  # dot on dequantized operands ran as a bf16 GEMM there): forward e4m3 x e4m3, backward e5m2 x e4m3.
  operands = [tuple(str(v.aval.dtype) for v in eqn.invars) for eqn in _equations(jaxpr.jaxpr, "dot_general")]
  assert operands == [("float8_e4m3fn", "float8_e4m3fn"), ("float8_e5m2", "float8_e4m3fn")]


def test_fp8_runs_the_matmuls_over_encoder_positions_only():
  """The encoder layers' seven projections and the decoder's cross-attention key/value take FP8 operands;
  the decoder's projections over its target positions and the output head do not."""
  module = network.Transformer(CONFIG.replace(matmul_dtype="fp8"))
  params = network.init_params(CONFIG, jax.random.PRNGKey(0))
  enc, dec = jnp.ones((2, 6), jnp.int32), jnp.ones((2, 3), jnp.int32)
  jaxpr = jax.make_jaxpr(lambda p: module.apply({"params": p}, enc, dec))(params)
  kinds = [str(eqn.invars[0].aval.dtype) for eqn in _equations(jaxpr.jaxpr, "dot_general")]
  fp8_dots = kinds.count("float8_e4m3fn")
  assert fp8_dots == 7 * CONFIG.num_encoder_layers + 2 * CONFIG.num_decoder_layers
  # bf16 / float32 dots: attention scores and values everywhere, the decoder's q/k/v/o and cross q/o and
  # MLP (3) per layer, and the output head.
  decoder_target_side = (4 + 2 + 3) * CONFIG.num_decoder_layers
  assert len(kinds) - fp8_dots >= decoder_target_side + 1


def _equations(jaxpr, primitive: str) -> list:
  """The equations of `primitive` in a jaxpr and the jaxprs nested in it (custom_vjp, pjit), in order."""
  found = []
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == primitive:
      found.append(eqn)
    for param in eqn.params.values():
      inner = getattr(param, "jaxpr", None)
      if inner is not None and hasattr(inner, "eqns"):
        found += _equations(inner, primitive)
      elif hasattr(param, "eqns"):
        found += _equations(param, primitive)
  return found


@pytest.mark.slow  # compiles the prompted tiny model's loss and gradient twice (about 5 s)
def test_fp8_model_has_the_same_parameters_and_trains_the_prompt_close_to_default():
  fp8_config = CONFIG.replace(matmul_dtype="fp8")
  assert jax.tree.map(lambda s: (s.shape, s.dtype), network.abstract_params(fp8_config)) == jax.tree.map(
    lambda s: (s.shape, s.dtype), network.abstract_params(CONFIG)
  )
  assert "matmul_dtype" not in CONFIG.architecture()  # a checkpoint or prompt fits either way

  rng = np.random.RandomState(1)
  targets = rng.randint(2, 128, size=(2, 4)).astype(np.int32)
  batch = {
    "encoder_input_tokens": rng.randint(2, 128, size=(2, 6)).astype(np.int32),
    "decoder_input_tokens": np.concatenate([np.zeros((2, 1), np.int32), targets[:, :-1]], axis=1),
    "decoder_target_tokens": targets,
  }
  module = PromptedTransformer(CONFIG, prompt_config=PromptConfig(3))
  params = nn.meta.unbox(jax.jit(module.init)(jax.random.PRNGKey(0), batch["encoder_input_tokens"], targets)["params"])
  trainable, frozen = split_trainable(params, r"prompt/prompt")

  def loss_and_grad(config):
    model = EncoderDecoderModel(PromptedTransformer(config, prompt_config=PromptConfig(3)))
    return jax.jit(jax.value_and_grad(lambda t: model.loss(merge_params(t, frozen), batch)[0]))(trainable)

  (loss, grad), (fp8_loss, fp8_grad) = loss_and_grad(CONFIG), loss_and_grad(fp8_config)
  grad, fp8_grad = grad["prompt"]["prompt"], fp8_grad["prompt"]["prompt"]
  assert fp8_loss != loss and abs(fp8_loss - loss) < 0.05 * loss
  assert np.all(np.isfinite(fp8_grad))
  # The prompt's gradient crosses every quantized matmul twice (forward e4m3, backward e5m2): about 25%
  # off in norm through this tiny model (bf16 alone: 2%), and still pointing the same way.
  assert 1e-3 < _rel(fp8_grad, grad) < 0.4
  assert np.vdot(fp8_grad, grad) / np.linalg.norm(fp8_grad) / np.linalg.norm(grad) > 0.95


def test_model_tuning_with_fp8_is_refused_in_one_line():
  paths = [
    "prompt/prompt",
    "decoder/logits_dense/kernel",
    "encoder/layers_0/mlp/wo/kernel",
    "decoder/layers_1/encoder_decoder_attention/key/kernel",
    "decoder/layers_1/mlp/wi_0/kernel",
  ]
  fp8.check_frozen("fp8", paths, r"prompt/prompt")
  fp8.check_frozen("fp8", paths, r"decoder/logits_dense/kernel")  # the output head is not FP8: it may train
  fp8.check_frozen("fp8", paths, r"decoder/layers_1/mlp/.*")  # nor the decoder's target-side projections
  fp8.check_frozen("default", paths, r".*")
  with pytest.raises(
    ValueError,
    match=r"TRAINABLE_PARAMS='\.\*' trains decoder/layers_1/encoder_decoder_attention/key/kernel \(2 kernels in all\)",
  ):
    fp8.check_frozen("fp8", paths, r".*")


def test_bad_matmul_dtype_is_one_line():
  with pytest.raises(ValueError, match=r"^T5Config.matmul_dtype='int8': expected one of \('default', 'fp8'\)$"):
    CONFIG.replace(matmul_dtype="int8")
