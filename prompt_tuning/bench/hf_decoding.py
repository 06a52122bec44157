"""The transformers side of `bench --mode decode`: PEFT prompt tuning's generate() and forward scoring.

One PEFT prompt-tuning model (peft_baseline.peft_model: transformers T5 with our config's dimensions,
random weights in the bench dtype, a prompt of cfg.prompt_length prepended by PEFT) serves every row,
in each of two modes:

  decoding  `generate()` on [batch, input_length - prompt_length] token ids, greedy or beam search.
    eager    transformers' default: a dynamic KV cache, no compilation.
    compile  the static cache under torch.compile as transformers 5 ships it: `cache_implementation=
             "static"` with a `CompileConfig(fullgraph=True, dynamic=False)` in "reduce-overhead" mode
             (CUDA graphs), which generate() applies to the decoder step (the encoder and the first
             step run eagerly, as generate() runs them). dynamic=False: every shape gets a graph
             specialized to it, the fastest generate() offers, at one compilation per shape.
             Beam search: generate() compiles nothing for it (transformers 5.17 on the GPU machine,
             5.24 read here: `_beam_search` calls the model eagerly after the prefill), so its
             compiled rows compile the model's forward themselves with the same CompileConfig, the
             static cache kept: what a user wanting compiled beam search writes. Without CUDA graphs
             (mode 'default'): beam search replaces the cache tensors every step (reorder_cache's
             index_select), which CUDA graphs would copy into their own buffers on every replay. Such
             a row counts the compiled forward's calls (extra['compiled_forward_calls']); none is an error.
    Both: `min_new_tokens = max_new_tokens` (transformers' way to forbid EOS until then), so every
    row decodes exactly the requested number of tokens; a row that did not is reported as an error.
  rank      the scoring a PEFT user writes: the inputs repeated once per candidate [batch * candidates,
            n] with the candidates as `labels` [batch * candidates, length], one forward pass (eager
            or `torch.compile(model, dynamic=False)`), and each candidate's summed log-probability taken from the
            logits. The encoder runs once per candidate.

torch is imported inside the functions, so importing this module is free.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any, Callable

from prompt_tuning.bench import BenchConfig, RunResult, log, peft_baseline

MODES = ("eager", "compile")


def _generate_kwargs(steps: int, beams: int, alpha: float, mode: str, compile_config: Any) -> dict[str, Any]:
  kwargs = dict(max_new_tokens=steps, min_new_tokens=steps, num_beams=beams, do_sample=False, use_cache=True)
  if beams > 1:
    kwargs["length_penalty"] = alpha  # ours: GNMT penalty alpha; speed does not depend on it
  if mode == "compile":
    kwargs.update(cache_implementation="static", compile_config=compile_config)
  return kwargs


def compile_config(backend: str, device_type: str, cuda_graphs: bool = True) -> Any:
  """The CompileConfig generate() compiles its decoder step with (see the module docstring).

  backend: 'inductor' (with CUDA graphs: mode 'reduce-overhead', unless `cuda_graphs` is False), or
  another TorchDynamo backend ('eager' traces the same full graph without generating code: the CPU
  tests use it).
  """
  from transformers import CompileConfig

  mode = "reduce-overhead" if backend == "inductor" and cuda_graphs else "default"
  config = CompileConfig(fullgraph=True, dynamic=False, backend=backend, mode=mode)
  # generate() compiles only on accelerators unless told otherwise; off them this runs the same path.
  config._compile_all_devices = device_type != "cuda"
  return config


def _timed(fn: Callable[[], Any], steps: int, warmup: int, sync: Callable[[], None]) -> tuple[float, float, Any]:
  """(first call s, seconds for `steps` calls after `warmup` calls, last output); the protocol of ours."""
  start = time.perf_counter()
  out = fn()
  sync()
  first = time.perf_counter() - start
  for _ in range(warmup - 1):
    out = fn()
  sync()
  start = time.perf_counter()
  for _ in range(steps):
    out = fn()
  sync()
  return first, time.perf_counter() - start, out


def run(
  cfg: BenchConfig,
  decode_steps: tuple[int, ...],
  methods: tuple[str, ...],
  beam_size: int,
  alpha: float,
  candidates: tuple[int, ...],
  modes: tuple[str, ...],
  backend: str = "inductor",
) -> list[RunResult]:
  """Rows '<method> <steps> hf <mode>' for each method in `methods` ('greedy', 'beam') and each of
  decode_steps, and 'rank <c> peft <mode>' for each of `candidates`, in every mode of `modes`. A
  failing row (out of memory, a compile error) reports its error. All torch memory is released before
  returning, so JAX can have the device afterwards."""
  import torch

  unknown = [m for m in modes if m not in MODES]
  if unknown:
    raise ValueError(f"unknown transformers mode(s) {unknown}: expected some of {MODES}")
  device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
  names = [f"{m} {n} hf {mode}" for mode in modes for m in methods for n in decode_steps]
  names += [f"rank {c} peft {mode}" for mode in modes for c in candidates]
  try:
    log(f"transformers: building {cfg.model} ({cfg.dtype}) + PEFT prompt {cfg.prompt_length} on {device}")
    model = peft_baseline.peft_model(cfg, device)
  except Exception as e:  # noqa: BLE001 -- e.g. the weights alone do not fit
    peft_baseline.free(device)
    return [peft_baseline.failure(name, e) for name in names]
  cuda = device.type == "cuda"
  sync = torch.cuda.synchronize if cuda else (lambda: None)
  generator = torch.Generator().manual_seed(cfg.seed)
  vocab = cfg.t5_config().vocab_size
  tokens = torch.randint(2, vocab, (cfg.batch, cfg.token_length), generator=generator).to(device)
  mask = torch.ones_like(tokens)
  settings = compile_config(backend, device.type)
  beam_settings = compile_config(backend, device.type, cuda_graphs=False)
  results = []
  for mode in modes:
    for method in methods:
      # generate() sizes a static cache for the longest call so far, to spare a recompilation; a fresh
      # start per method and ascending lengths give every call a cache of its own length.
      vars(model.base_model).pop("_previous_max_cache_length", None)
      for steps in sorted(decode_steps):
        name = f"{method} {steps} hf {mode}"
        beams = beam_size if method == "beam" else 1
        kwargs = _generate_kwargs(steps, beams, alpha, mode, beam_settings if beams > 1 else settings)
        call = functools.partial(model.generate, input_ids=tokens, attention_mask=mask, **kwargs)
        if mode == "compile" and beams > 1:
          results.append(
            _with_compiled_forward(model.base_model, beam_settings, name, call, cfg, device, sync, steps, beams)
          )
          continue
        row = _row(name, call, cfg, device, sync, decode_steps=steps, beams=beams)
        if mode == "compile" and not row.error and getattr(model.base_model, "_compiled_call", None) is None:
          row = RunResult(name, error="generate() did not compile its decoder step")  # never pass eager off as compiled
        results.append(row)
    for count in candidates:
      forward = model if mode == "eager" else torch.compile(model, backend=backend, dynamic=False)
      call = _scorer(forward, tokens, mask, count, cfg, generator, device)
      results.append(_row(f"rank {count} peft {mode}", call, cfg, device, sync, candidates=count))
  del model, tokens, mask
  if "compile" in modes:
    torch._dynamo.reset()  # drop compiled graphs (and the memory they pin)
  peft_baseline.free(device)
  return results


def _with_compiled_forward(
  base_model: Any,
  settings: Any,
  name: str,
  call: Callable,
  cfg: BenchConfig,
  device: Any,
  sync: Callable,
  steps: int,
  beams: int,
) -> RunResult:
  """A beam row of the compile mode: `base_model.forward` compiled with generate()'s CompileConfig for
  the row's calls (counted), then restored; a row whose calls never reached it is an error."""
  import torch

  had_own_forward = "forward" in vars(base_model)
  original = base_model.forward
  compiled = torch.compile(original, **settings.to_dict())
  calls = [0]

  def forward(*args, **kwargs):
    calls[0] += 1
    return compiled(*args, **kwargs)

  base_model.forward = forward
  try:
    row = _row(name, call, cfg, device, sync, decode_steps=steps, beams=beams)
  finally:
    if had_own_forward:
      base_model.forward = original
    else:
      del base_model.forward  # the class's method again
  if row.error:
    return row
  if calls[0] == 0:
    return RunResult(name, error="the compiled forward was never called")  # never pass eager off as compiled
  row.extra.update(compiled="forward", compiled_forward_calls=calls[0])
  return row


def _scorer(forward: Any, tokens: Any, mask: Any, count: int, cfg: BenchConfig, generator: Any, device: Any):
  """A call scoring `count` random EOS-terminated candidates [count, target_length] for every row."""
  import torch

  vocab = cfg.t5_config().vocab_size
  options = torch.randint(2, vocab, (count, cfg.target_length), generator=generator)
  options[:, -1] = 1
  # Example-major, as ours: row b * count + j is example b with candidate j.
  inputs = tokens.repeat_interleave(count, dim=0)
  inputs_mask = mask.repeat_interleave(count, dim=0)
  labels = options.repeat(cfg.batch, 1).to(device)

  def score():
    with torch.no_grad():
      logits = forward(input_ids=inputs, attention_mask=inputs_mask, labels=labels).logits
      picked = torch.log_softmax(logits.float(), dim=-1).gather(-1, labels[..., None])[..., 0]
      return (picked * (labels > 0)).sum(-1).view(cfg.batch, count)

  return score


def _row(name: str, call: Callable[[], Any], cfg: BenchConfig, device: Any, sync: Callable, **extra: Any) -> RunResult:
  import torch

  log(f"{name}: first call (compiles in compile mode), then {cfg.steps} timed after {cfg.warmup} warmup")
  try:
    if device.type == "cuda":
      torch.cuda.reset_peak_memory_stats(device)
    first, seconds, out = _timed(call, cfg.steps, cfg.warmup, sync)
  except Exception as e:  # noqa: BLE001 -- OOM or a compile failure: report it, run the other rows
    return peft_baseline.failure(name, e)
  finally:
    peft_baseline.free(device)
  peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
  if "decode_steps" in extra:
    decoded = out.shape[1] - 1  # generate() returns the decoder start token, then the new tokens
    if decoded != extra["decode_steps"]:
      return RunResult(name, error=f"decoded {decoded} tokens per row, not {extra['decode_steps']}")
    extra["tokens_per_row"] = decoded
    extra["tokens_per_s"] = cfg.batch * decoded * cfg.steps / seconds
  else:
    extra["mean_score"] = float(out.float().mean())
  row = RunResult.timed(name, seconds, cfg.steps, cfg.batch, 0, peak, first, **extra)
  return dataclasses.replace(row, tflops=None)  # no FLOP convention for inference
