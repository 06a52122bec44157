"""The T5 network: the prompt seam, logical axes, dtypes, dropout and the decode cache."""

from __future__ import annotations

import concurrent.futures
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prompt_tuning import partitioning
from prompt_tuning.models.model import EncoderDecoderModel
from prompt_tuning.models.prompt import PromptConfig, PromptedTransformer
from prompt_tuning.models.t5 import get_config, layers, network
from prompt_tuning.param_tree import flatten

CONFIG = get_config("tiny", vocab_size=128)


@pytest.fixture(scope="module")
def params():
  return network.init_params(CONFIG, jax.random.PRNGKey(0))


def _batch():
  rng = np.random.RandomState(1)
  enc = rng.randint(2, 128, size=(2, 7)).astype(np.int32)
  enc[1, 4:] = 0
  dec_in = rng.randint(2, 128, size=(2, 5)).astype(np.int32)
  dec_in[:, 0] = 0
  return enc, dec_in


def test_parameter_tree_uses_t5x_names(params):
  names = set(flatten(params))
  assert {
    "token_embedder/embedding",
    "encoder/relpos_bias/rel_embedding",
    "decoder/relpos_bias/rel_embedding",
    "encoder/layers_1/attention/query/kernel",
    "encoder/layers_0/mlp/wi_0/kernel",
    "encoder/layers_0/mlp/wi_1/kernel",
    "decoder/layers_1/encoder_decoder_attention/out/kernel",
    "decoder/layers_0/pre_cross_attention_layer_norm/scale",
    "decoder/decoder_norm/scale",
    "encoder/encoder_norm/scale",
    "decoder/logits_dense/kernel",
  } <= names
  # t5x stores attention kernels 2-D: [embed, heads * kv].
  assert params["encoder"]["layers_0"]["attention"]["query"]["kernel"].shape == (32, 32)
  assert params["encoder"]["relpos_bias"]["rel_embedding"].shape == (4, 32)


def test_every_parameter_has_logical_axes_from_the_rules_table(params):
  axes = flatten(network.module_logical_axes(network.Transformer(CONFIG)))
  assert set(axes) == set(flatten(params))
  for name, names in axes.items():
    assert len(names) == np.ndim(flatten(params)[name]), name
    assert set(names) <= partitioning.AXIS_NAMES, (name, names)
  assert axes["encoder/layers_0/attention/query/kernel"] == ("embed", "joined_kv")
  assert axes["decoder/logits_dense/kernel"] == ("embed", "vocab")


def test_encoder_accepts_embedded_inputs_with_explicit_mask(params):
  """The prompt seam: embed, edit the embeddings, encode with a mask."""
  module = network.Transformer(CONFIG)
  enc, dec_in = _batch()
  embedded = module.apply({"params": params}, enc, method="embed")
  mask = (enc > 0).astype(np.int32)
  via_embedded = module.apply({"params": params}, embedded, mask, method="encode")
  via_tokens, token_mask = module.apply({"params": params}, enc, method="encode_tokens")
  np.testing.assert_array_equal(via_embedded, via_tokens)
  np.testing.assert_array_equal(token_mask, mask)
  # Prepending 3 extra embedded positions changes the encoding of the original tokens (they attend to them).
  extra = jnp.concatenate([jnp.ones((2, 3, 32)), embedded], axis=1)
  extra_mask = jnp.concatenate([jnp.ones((2, 3), jnp.int32), mask], axis=1)
  with_prefix = module.apply({"params": params}, extra, extra_mask, method="encode")
  assert with_prefix.shape == (2, 10, 32)
  assert not np.allclose(with_prefix[:, 3:], via_embedded, atol=1e-3)


def test_padding_does_not_change_valid_positions(params):
  module = network.Transformer(CONFIG)
  enc, dec_in = _batch()
  logits = module.apply({"params": params}, enc, dec_in)
  wider = np.concatenate([enc, np.zeros((2, 5), np.int32)], axis=1)
  np.testing.assert_allclose(module.apply({"params": params}, wider, dec_in), logits, atol=1e-5)


def test_bfloat16_activations_and_params_close_to_float32(params):
  enc, dec_in = _batch()
  f32 = network.Transformer(CONFIG).apply({"params": params}, enc, dec_in)
  cfg16 = CONFIG.replace(dtype="bfloat16", param_dtype="bfloat16")
  params16 = jax.tree.map(lambda p: p.astype(jnp.bfloat16), params)
  assert network.abstract_params(cfg16)["token_embedder"]["embedding"].dtype == jnp.bfloat16
  bf16 = network.Transformer(cfg16).apply({"params": params16}, enc, dec_in)
  assert bf16.dtype == jnp.float32  # logits are always float32
  scale = float(np.abs(f32).max())
  assert float(np.abs(bf16 - f32).max()) < 0.05 * scale


def test_dropout_only_when_not_deterministic(params):
  enc, dec_in = _batch()
  module = network.Transformer(CONFIG.replace(dropout_rate=0.3))
  a = module.apply({"params": params}, enc, dec_in, deterministic=True)
  np.testing.assert_array_equal(a, network.Transformer(CONFIG).apply({"params": params}, enc, dec_in))
  rngs = lambda seed: {"dropout": jax.random.PRNGKey(seed)}
  b = module.apply({"params": params}, enc, dec_in, deterministic=False, rngs=rngs(0))
  c = module.apply({"params": params}, enc, dec_in, deterministic=False, rngs=rngs(0))
  d = module.apply({"params": params}, enc, dec_in, deterministic=False, rngs=rngs(1))
  np.testing.assert_array_equal(b, c)
  assert not np.allclose(a, b) and not np.allclose(b, d)


def test_cached_decoding_steps_equal_teacher_forced_logits(params):
  """Feeding tokens one at a time through the cache reproduces the full forward pass."""
  model = EncoderDecoderModel(network.Transformer(CONFIG))
  enc, dec_in = _batch()
  full = model.logits(params, enc, dec_in)
  encoded, mask = model.module.apply({"params": params}, enc, method="encode_tokens")
  cache = model.initial_cache(params, encoded, mask, max_decode_length=dec_in.shape[1])
  for t in range(dec_in.shape[1]):
    logits, variables = model.module.apply(
      {"params": params, "cache": cache},
      None,
      mask,
      dec_in[:, t : t + 1],
      decode=True,
      method="decode",
      mutable=["cache"],
    )
    cache = variables["cache"]
    np.testing.assert_allclose(logits[:, 0], full[:, t], atol=2e-5)


@pytest.mark.slow  # logits, gradients, beams and rank scores of two models, and two FP8 ones: ~17 s
def test_fused_projections_keep_the_parameters_and_the_results(params):
  """fuse_projections: the same parameter tree and initial values (t5x's names), and the same logits,
  prompt-free gradient of the loss w.r.t. the encoder input, beams and rank scores, up to rounding."""
  fused = network.Transformer(CONFIG.replace(fuse_projections=True))
  fused_params = fused.init(jax.random.PRNGKey(0), *(jnp.ones((1, 1), jnp.int32),) * 2)["params"]
  jax.tree.map(np.testing.assert_array_equal, nn.meta.unbox(fused_params), params)  # same tree, same values
  enc, dec_in = _batch()
  plain_model, fused_model = EncoderDecoderModel(network.Transformer(CONFIG)), EncoderDecoderModel(fused)
  np.testing.assert_allclose(
    fused_model.logits(params, enc, dec_in), plain_model.logits(params, enc, dec_in), atol=1e-5
  )

  def input_gradient(module):  # d loss / d (embedded encoder input): what the prompt's gradient flows through
    def loss(embedded):
      encoded = module.apply({"params": params}, embedded, (enc > 0).astype(jnp.int32), method="encode")
      logits = module.apply({"params": params}, encoded, (enc > 0).astype(jnp.int32), dec_in, method="decode")
      return jnp.sum(jax.nn.log_softmax(logits)[..., 3])

    return jax.grad(loss)(module.apply({"params": params}, enc, method="embed"))

  np.testing.assert_allclose(input_gradient(fused), input_gradient(plain_model.module), atol=1e-5)
  beams = [
    m.predict_batch(params, enc, max_decode_length=3, method="beam", beam_size=2) for m in (plain_model, fused_model)
  ]
  np.testing.assert_array_equal(beams[0].tokens, beams[1].tokens)
  candidates = jnp.asarray([[5, 6, 1], [7, 1, 0]])
  np.testing.assert_allclose(
    fused_model.rank_classify(params, enc, candidates), plain_model.rank_classify(params, enc, candidates), atol=1e-5
  )
  # Under FP8 the fused kernels share one scale: about as far from the exact logits as unfused FP8's.
  exact = plain_model.logits(params, enc, dec_in)
  errors = [
    float(
      jnp.mean(
        jnp.abs(EncoderDecoderModel(network.Transformer(CONFIG.replace(**kw))).logits(params, enc, dec_in) - exact)
      )
    )
    for kw in (dict(matmul_dtype="fp8"), dict(matmul_dtype="fp8", fuse_projections=True))
  ]
  assert 0 < errors[1] < 2 * errors[0], errors


def test_rows_sharing_an_encoder_row_equal_the_repeated_encoder_output(params):
  """Grouped encoder-decoder attention (beams, samples, candidates) gives what repeating the encoder
  output per row gives, teacher-forced and through the cache; rows that cannot group are refused."""
  model = EncoderDecoderModel(network.Transformer(CONFIG))
  enc, dec_in = _batch()
  group = 3
  rows = np.random.RandomState(2).randint(2, 128, size=(2 * group, dec_in.shape[1])).astype(np.int32)
  rows[:, 0] = 0
  encoded, mask = model.module.apply({"params": params}, enc, method="encode_tokens")
  repeated = (np.repeat(encoded, group, axis=0), np.repeat(mask, group, axis=0))
  decode = lambda enc_out, enc_mask, tokens, **kw: model.module.apply(
    {"params": params}, enc_out, enc_mask, tokens, method="decode", **kw
  )
  np.testing.assert_allclose(decode(encoded, mask, rows), decode(*repeated, rows), atol=2e-5)

  grouped = model.initial_cache(params, encoded, mask, max_decode_length=rows.shape[1], rows_per_example=group)
  flat = model.initial_cache(params, *repeated, max_decode_length=rows.shape[1])
  cross = grouped["decoder"]["layers_0"]["encoder_decoder_attention"]["cached_key"]
  assert cross.shape[0] == 2 and flat["decoder"]["layers_0"]["encoder_decoder_attention"]["cached_key"].shape[0] == 6

  def step(cache, enc_mask, t):
    logits, variables = model.module.apply(
      {"params": params, "cache": cache},
      None,
      enc_mask,
      rows[:, t : t + 1],
      decode=True,
      method="decode",
      mutable=["cache"],
    )
    return logits, variables["cache"]

  for t in range(2):
    (a, grouped), (b, flat) = step(grouped, mask, t), step(flat, repeated[1], t)
    np.testing.assert_allclose(a, b, atol=2e-5)
  with pytest.raises(ValueError, match="4 query rows cannot share keys and values of 3 rows"):
    decode(np.repeat(encoded, 2, axis=0)[:3], np.repeat(mask, 2, axis=0)[:3], rows[:4])


@pytest.mark.parametrize("policy", ["full", "dots", "dots_no_batch"])
@pytest.mark.slow
def test_remat_changes_memory_not_results(params, policy):
  """Rematerialized layers keep the parameter tree and give the same loss and gradients."""
  enc, dec_in = _batch()
  targets = np.concatenate([dec_in[:, 1:], np.ones((2, 1), np.int32)], axis=1)
  batch = {"encoder_input_tokens": enc, "decoder_input_tokens": dec_in, "decoder_target_tokens": targets}
  cfg = CONFIG.replace(dropout_rate=0.1)

  def loss_and_grad(config):
    model = EncoderDecoderModel(network.Transformer(config))
    fn = jax.jit(jax.value_and_grad(lambda p: model.loss(p, batch, jax.random.PRNGKey(3))[0]))
    return fn(params)

  assert jax.tree.structure(network.abstract_params(cfg.replace(remat_policy=policy))) == jax.tree.structure(params)
  (plain_loss, plain_grad), (remat_loss, remat_grad) = (
    loss_and_grad(cfg),
    loss_and_grad(cfg.replace(remat_policy=policy)),
  )
  np.testing.assert_allclose(remat_loss, plain_loss, rtol=1e-6)
  for a, b in zip(jax.tree.leaves(remat_grad), jax.tree.leaves(plain_grad)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_fused_attention_call_equals_the_reference():
  """The fused call (jax.nn.dot_product_attention, run by JAX's XLA version here) gets T5's bias,
  mask and absent scaling right: same output as the einsum reference."""
  rng = np.random.default_rng(0)
  query, key, value = (jnp.asarray(rng.normal(size=(2, n, 4, 8)), jnp.float32) for n in (5, 7, 7))
  position_bias = jnp.asarray(rng.normal(size=(1, 4, 5, 7)), jnp.float32)
  key_mask = jnp.asarray([[1] * 7, [1] * 4 + [0] * 3])
  bias = position_bias + layers.padding_mask_bias(jnp.ones((2, 5)), key_mask)
  reference = layers.dot_product_attention(query, key, value, bias, 0.0, None, jnp.float32)
  fused = layers.fused_attention(query, key, value, bias, implementation="xla")
  np.testing.assert_allclose(fused, reference, atol=1e-5)


@pytest.mark.parametrize(
  "impl, platform, dtype, head_dim, dropout, decode, expected",
  [
    ("auto", "gpu", "bfloat16", 64, False, False, "cudnn"),
    ("auto", "cpu", "bfloat16", 64, False, False, "xla"),
    ("auto", "gpu", "float32", 64, False, False, "xla"),  # float32 keeps the exact reference
    ("auto", "gpu", "bfloat16", 160, False, False, "xla"),
    ("auto", "gpu", "bfloat16", 64, True, False, "xla"),  # attention dropout
    ("auto", "gpu", "bfloat16", 64, False, True, "xla"),  # cached decoding
    ("xla", "gpu", "bfloat16", 64, False, False, "xla"),
    ("cudnn", "gpu", "float16", 128, False, False, "cudnn"),
    ("cudnn", "gpu", "bfloat16", 64, False, True, "xla"),  # cached self-attention falls back even when required
  ],
)
def test_attention_backend_choice(impl, platform, dtype, head_dim, dropout, decode, expected):
  assert (
    layers.attention_backend(impl, jnp.dtype(dtype), head_dim, dropout=dropout, decode=decode, platform=platform)
    == expected
  )


@pytest.mark.parametrize(
  "impl, platform, dtype, lengths, expected",
  [
    ("cudnn", "gpu", "bfloat16", (1, 29), "cudnn"),  # forward only: odd lengths are fine
    ("auto", "gpu", "bfloat16", (1, 30), "xla"),
    ("cudnn", "cpu", "bfloat16", (1, 30), "xla"),  # required but impossible: decoding falls back
    ("cudnn", "gpu", "float32", (1, 30), "xla"),
  ],
)
def test_cached_cross_attention_backend(impl, platform, dtype, lengths, expected):
  choice = layers.attention_backend(
    impl, jnp.dtype(dtype), 64, dropout=False, decode=True, cross=True, lengths=lengths, platform=platform
  )
  assert choice == expected


def test_fused_decode_cross_attention_keeps_its_cache_in_the_kernels_layout(params, monkeypatch):
  """With attention_impl='cudnn' the encoder-decoder cache is [batch, enc_length, heads, kv] and the
  fused call decodes what the reference does (JAX's XLA version of the fused call stands in off GPU)."""
  model = EncoderDecoderModel(network.Transformer(CONFIG.replace(attention_impl="cudnn")))
  reference = EncoderDecoderModel(network.Transformer(CONFIG))
  monkeypatch.setattr(layers, "attention_backend", lambda *a, **kw: "cudnn" if kw.get("cross") else "xla")
  fused_calls = []

  def fused(query, key, value, bias, bias_gradient=True):
    fused_calls.append(query.shape)
    return jax.nn.dot_product_attention(
      query, key, value, bias=jnp.broadcast_to(bias, (query.shape[0], bias.shape[1], query.shape[1], key.shape[1])),
      scale=1.0, implementation="xla",
    )  # fmt: skip

  monkeypatch.setattr(layers, "fused_attention", fused)
  enc, _ = _batch()
  encoded, mask = model.module.apply({"params": params}, enc, method="encode_tokens")
  cache = model.initial_cache(params, encoded, mask, max_decode_length=4, rows_per_example=2)
  cross = cache["decoder"]["layers_0"]["encoder_decoder_attention"]["cached_key"]
  assert cross.shape == (2, enc.shape[1], CONFIG.num_heads, CONFIG.head_dim)  # length-major, per example
  ours = model.predict_batch(params, enc, max_decode_length=4, method="beam", beam_size=2, eos_id=None)
  step_calls = fused_calls[-CONFIG.num_decoder_layers :]  # the loop body's, traced once after the cache's
  assert len(fused_calls) > len(step_calls) and all(shape[:2] == (2, 2) for shape in step_calls)  # 2 beams, one row
  monkeypatch.undo()
  expected = reference.predict_batch(params, enc, max_decode_length=4, method="beam", beam_size=2, eos_id=None)
  np.testing.assert_array_equal(ours.tokens, expected.tokens)
  np.testing.assert_allclose(ours.scores, expected.scores, rtol=1e-5)


@pytest.mark.parametrize("cudnn_takes_lengths", [True, False])
def test_fused_encoder_attention_gets_the_position_bias_unbroadcast_and_the_padding_as_lengths(
  params, monkeypatch, cudnn_takes_lengths
):
  """Where cuDNN runs and takes them (`cudnn_takes_key_lengths`, probed on the GPU), the encoder's
  self-attention gets the [1, heads, q, k] position bias and each row's length, not a [batch, heads,
  q, k] bias; where it does not, the combined bias as before (JAX's XLA version of the fused call stands
  in off GPU). Either way the logits and the gradient w.r.t. the embedded input (what the prompt's
  flows through) are the reference's."""
  enc, dec_in = _batch()  # row 1: 4 tokens, then padding
  mask = (enc > 0).astype(jnp.int32)
  module = network.Transformer(CONFIG)
  real_fused = layers.fused_attention
  seen, gradients = [], []

  def fused(query, key, value, bias, implementation="cudnn", key_lengths=None, bias_gradient=True):
    if key_lengths is None:
      seen.append((bias.shape, None))
    else:  # traced under jit: the values arrive when the program runs
      jax.debug.callback(lambda lengths, shape=bias.shape: seen.append((shape, lengths.tolist())), key_lengths)
    gradients.append(bias_gradient)
    return real_fused(query, key, value, bias, implementation="xla", key_lengths=key_lengths)

  def run():  # traced afresh each call (a new function each time: jit's cache would reuse a trace)
    def logits_and_gradient():
      logits = module.apply({"params": params}, enc, dec_in)

      def loss(embedded):
        encoded = module.apply({"params": params}, embedded, mask, method="encode")
        logits = module.apply({"params": params}, encoded, mask, dec_in, method="decode")
        return jnp.sum(jax.nn.log_softmax(logits)[..., 3])

      return logits, jax.grad(loss)(module.apply({"params": params}, enc, method="embed"))

    return jax.block_until_ready(jax.jit(logits_and_gradient)())

  monkeypatch.setattr(layers, "fused_attention", fused)
  monkeypatch.setattr(layers, "attention_backend", lambda *a, **kw: "xla" if kw.get("decode") else "cudnn")
  monkeypatch.setattr(layers, "cudnn_takes_key_lengths", lambda *shape: cudnn_takes_lengths)
  logits, gradient = run()
  monkeypatch.undo()
  expected_logits, expected_gradient = run()
  np.testing.assert_allclose(logits, expected_logits, atol=1e-5)
  np.testing.assert_allclose(gradient, expected_gradient, atol=1e-5)
  # Every encoder layer's call (the logits' pass and the gradient's) has the lengths; the decoder's don't.
  jax.effects_barrier()
  with_lengths = [call for call in seen if call[1] is not None]  # the gradient's may report twice
  decoder_calls = 2 * 2 * CONFIG.num_decoder_layers  # self and cross, both passes
  if cudnn_takes_lengths:
    assert len(with_lengths) >= 2 * CONFIG.num_encoder_layers
    assert all(call == ((1, CONFIG.num_heads, 7, 7), [7, 4]) for call in with_lengths)
    assert len(seen) - len(with_lengths) == decoder_calls
  else:  # the encoder's calls get the bias with its batch: [batch, heads, q, k]
    assert not with_lengths and len(seen) == 2 * CONFIG.num_encoder_layers + decoder_calls
    assert seen.count(((2, CONFIG.num_heads, 7, 7), None)) == 2 * CONFIG.num_encoder_layers
  # The self-attention biases (a trainable parameter in CONFIG) ask for their gradient; the masks do not.
  assert (
    gradients.count(False) == 2 * CONFIG.num_decoder_layers
    and gradients.count(True) == len(gradients) - 2 * CONFIG.num_decoder_layers
  )


def test_a_frozen_position_bias_takes_no_gradient_and_cudnn_computes_none(params, monkeypatch):
  """position_bias_gradient=False (what prompt tuning sets): the same logits, no gradient for the
  position biases, and cuDNN's backward is built without the bias gradient (its jaxpr, traced with a
  cuDNN version standing in off GPU); with True it keeps it, also while another thread traces a
  stopped one (the switch is per thread)."""
  from jax._src.cudnn import fused_attention_stablehlo as cudnn_attention

  enc, dec_in = _batch()
  frozen = network.Transformer(CONFIG.replace(position_bias_gradient=False))

  def logits_and_bias_grads(module):
    def loss(p):
      return jnp.sum(jax.nn.log_softmax(module.apply({"params": p}, enc, dec_in))[..., 3])

    grads = jax.jit(jax.grad(loss))(params)
    return module.apply({"params": params}, enc, dec_in), [
      grads[s]["relpos_bias"]["rel_embedding"] for s in ("encoder", "decoder")
    ]

  (logits, (enc_grad, dec_grad)), (expected_logits, expected_grads) = (
    logits_and_bias_grads(frozen), logits_and_bias_grads(network.Transformer(CONFIG))
  )  # fmt: skip
  np.testing.assert_allclose(logits, expected_logits, atol=1e-6)
  assert not np.any(enc_grad) and not np.any(dec_grad) and all(np.any(g) for g in expected_grads)

  monkeypatch.setattr(cudnn_attention, "check_cudnn_version", lambda: 91000)
  query = jnp.zeros((2, 16, 4, 64), jnp.bfloat16)
  bias = jnp.zeros((1, 4, 16, 16), jnp.float32)

  def backward_args(bias_gradient):
    def attention_sum(query, bias):
      out = layers.fused_attention(
        query, query, query, bias, key_lengths=jnp.array([3, 16]), bias_gradient=bias_gradient
      )
      return jnp.sum(out.astype(jnp.float32))

    jaxpr = str(jax.make_jaxpr(jax.grad(attention_sum, argnums=(0, 1)))(query, bias))
    return [arg for arg in ("(True, False)", "(True, True)") if f"variadic_args={arg}" in jaxpr]

  assert backward_args(False) == ["(True, False)"] and backward_args(True) == ["(True, True)"]
  with layers._cudnn_without_bias_gradient(), concurrent.futures.ThreadPoolExecutor(1) as other_thread:
    assert other_thread.submit(backward_args, True).result() == ["(True, True)"]


def test_the_bias_gradient_hook_declines_a_jax_whose_private_call_it_does_not_know(monkeypatch):
  """A JAX whose cuDNN attention primitive has no `variadic_args` (or no such function): no hook, so
  the bias gradient is computed and unused (slower, never wrong), and nothing is replaced."""
  from jax._src.cudnn import fused_attention_stablehlo as cudnn_attention

  def unknown_signature(query, key, value, bias, options):
    return query

  monkeypatch.setattr(cudnn_attention, "_dot_product_attention", unknown_signature)
  assert not layers._installed_bias_gradient_hook()
  assert cudnn_attention._dot_product_attention is unknown_signature
  monkeypatch.delattr(cudnn_attention, "_dot_product_attention")
  assert not layers._installed_bias_gradient_hook()
  with layers._cudnn_without_bias_gradient():
    assert not getattr(layers._bias_gradient_skipped, "active", False)


def test_on_gpus_each_norm_output_is_computed_once_with_the_same_values_and_gradients(params, monkeypatch):
  """XLA:GPU duplicated a norm's scale multiply into every consuming projection; an optimization
  barrier (GPU only) keeps one array. Exact: the same loss and gradients, the norm scales' too
  (what model tuning trains)."""
  enc, dec_in = _batch()
  model = network.Transformer(CONFIG)

  def new_loss():  # a new function each time: JAX caches a function's trace
    return lambda p: jnp.sum(jax.nn.log_softmax(model.apply({"params": p}, enc, dec_in))[..., 3])

  expected_loss, expected_grads = jax.value_and_grad(new_loss())(params)
  assert "optimization_barrier" not in str(jax.make_jaxpr(new_loss())(params))  # this CPU: left to XLA
  monkeypatch.setattr(layers, "computed_once", functools.partial(layers.computed_once, platform="gpu"))
  norms = 2 * CONFIG.num_encoder_layers + 1 + 3 * CONFIG.num_decoder_layers + 1
  assert str(jax.make_jaxpr(new_loss())(params)).count("optimization_barrier") == norms
  value, grads = jax.value_and_grad(new_loss())(params)
  np.testing.assert_allclose(value, expected_loss, rtol=1e-6)
  for path, grad in flatten(grads).items():
    np.testing.assert_allclose(grad, flatten(expected_grads)[path], rtol=1e-5, atol=1e-7, err_msg=path)
  assert np.any(flatten(grads)["encoder/encoder_norm/scale"])


def test_off_a_gpu_nothing_is_probed_for_key_lengths():
  assert not layers.cudnn_takes_key_lengths(2, 8, 4, 8, "bfloat16", platform="cpu")


def test_odd_sequence_lengths_keep_the_reference_path():
  """cuDNN's backward pass with a bias refuses odd lengths (seen on an H200: 24 inputs + 5 prompt tokens)."""
  for lengths in ((29, 29), (4, 29), (29, 4)):
    assert (
      layers.attention_backend("auto", jnp.bfloat16, 64, dropout=False, decode=False, lengths=lengths, platform="gpu")
      == "xla"
    )
    with pytest.raises(ValueError, match=rf"needs even sequence lengths \(query {lengths[0]}, key {lengths[1]}\)"):
      layers.attention_backend("cudnn", jnp.bfloat16, 64, dropout=False, decode=False, lengths=lengths, platform="gpu")
  assert (
    layers.attention_backend("auto", jnp.bfloat16, 64, dropout=False, decode=False, lengths=(4, 30), platform="gpu")
    == "cudnn"
  )


def test_required_cudnn_names_what_rules_it_out(params):
  with pytest.raises(ValueError, match=r"attention_impl='cudnn' cannot run here: it needs a GPU \(this is cpu\)"):
    layers.attention_backend("cudnn", jnp.bfloat16, 64, dropout=False, decode=False, platform="cpu")
  with pytest.raises(ValueError, match="cannot run here: head_dim 160 is not a multiple of 8 up to 128"):
    layers.attention_backend("cudnn", jnp.bfloat16, 160, dropout=False, decode=False, platform="gpu")
  enc, dec_in = _batch()
  # CONFIG's float32 rules the kernel out everywhere; off a GPU, the platform comes first.
  first_reason = "it needs a GPU" if jax.default_backend() == "cpu" else "it needs bfloat16 or float16"
  with pytest.raises(ValueError, match=f"cannot run here: {first_reason}"):
    network.Transformer(CONFIG.replace(attention_impl="cudnn")).apply({"params": params}, enc, dec_in)
  # 'auto' where the kernel is ruled out is the reference itself.
  auto = network.Transformer(CONFIG.replace(attention_impl="auto")).apply({"params": params}, enc, dec_in)
  reference = network.Transformer(CONFIG.replace(attention_impl="xla")).apply({"params": params}, enc, dec_in)
  np.testing.assert_array_equal(auto, reference)
  with pytest.raises(ValueError, match="attention_impl='flash'"):
    CONFIG.replace(attention_impl="flash")


def test_parameters_do_not_depend_on_the_attention_kernel():
  """Initializing traces one-token inputs: a required 'cudnn' would refuse them (odd lengths with a
  prompt; seen in `bench --mode decode --attention_impl cudnn` on an H200) or a CPU, though the
  parameters are the reference's."""
  cudnn = CONFIG.replace(attention_impl="cudnn")
  prompted = PromptedTransformer(cudnn, prompt_config=PromptConfig(5))
  shapes = network.abstract_module_params(prompted)
  reference = network.abstract_module_params(PromptedTransformer(CONFIG, prompt_config=PromptConfig(5)))
  assert jax.tree.map(lambda a: (a.shape, a.dtype), shapes) == jax.tree.map(lambda a: (a.shape, a.dtype), reference)
  a, b = network.init_params(cudnn, jax.random.PRNGKey(0)), network.init_params(CONFIG, jax.random.PRNGKey(0))
  jax.tree.map(np.testing.assert_array_equal, a, b)


def test_bfloat16_params_stay_bfloat16():
  shapes = network.abstract_params(CONFIG.replace(param_dtype="bfloat16", dtype="bfloat16"))
  dtypes = {str(x.dtype) for x in jax.tree.leaves(shapes)}
  assert dtypes == {"bfloat16"}, dtypes  # the scaled query initializer included
