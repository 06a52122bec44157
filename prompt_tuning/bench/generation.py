"""Decoding and rank classification, ours vs transformers, and the HBM bound (`bench --mode decode`).

The workloads of evaluation and `infer`, on one synthetic batch [batch, input_length - prompt_length]
(the prompt makes the encoder input_length long), random weights, both sides in the same run:

  greedy N   greedy decoding of N tokens, for each N of --decode_steps
  beam N     beam search (--beam_size beams, length penalty alpha 0.6) of N tokens
  rank C     rank classification of C candidates of --target_length tokens (EOS-terminated)

Neither side may stop early: ours decodes with no end token (eos_id=None: every row runs every
step), transformers with min_new_tokens = max_new_tokens (EOS forbidden until the last token). Both
report tokens_per_row.

Ours runs the functions the Evaluator runs (EncoderDecoderModel.predict_batch and rank_classify,
jitted): rank_classify encodes each example once and runs the decoder on [batch * candidates]
rows that share its encoder output. The other side (bench.hf_decoding) is PEFT prompt tuning's
generate(), eager and/or with the static cache under torch.compile, and PEFT's forward pass scoring
the candidates, which encodes each example once per candidate. Ratios are call time over call time.

The bound (bench.hbm): the bytes a greedy decoder step at this batch must read, over the card's HBM
bandwidth, against the measured per-step time: (call time at the longest N - call time at the
shortest N) / (difference in N), which removes the encoder and everything else done once per call.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from prompt_tuning import partitioning
from prompt_tuning.bench import BenchConfig, RunResult, hbm, is_out_of_memory, log, tables
from prompt_tuning.bench.inference import time_calls
from prompt_tuning.bench.ours import init_on_device, peak_bytes
from prompt_tuning.bench.profile import Profiler
from prompt_tuning.errors import first_line
from prompt_tuning.models.model import EncoderDecoderModel, LossConfig
from prompt_tuning.models.prompt import PromptConfig, PromptedTransformer
from prompt_tuning.param_tree import merge_params

WORKLOADS = ("greedy", "beam", "rank")


@dataclasses.dataclass(frozen=True)
class DecodeConfig:
  """What the decode mode adds to BenchConfig.

  decode_steps: tokens decoded per row, one row per value (the bound needs two).
  candidates: rank-classification candidates per example, one row per value.
  hbm_bandwidth: bytes/s; None takes the card's from hbm.HBM_BYTES_PER_SECOND.
  torch_compile_backend: TorchDynamo backend of the compiled transformers rows.
  """

  decode_steps: tuple[int, ...] = (8, 64)
  beam_size: int = 4
  alpha: float = 0.6
  candidates: tuple[int, ...] = (2, 4)
  workloads: tuple[str, ...] = WORKLOADS
  hbm_bandwidth: float | None = None
  torch_compile_backend: str = "inductor"

  def __post_init__(self):
    if not self.decode_steps or min(self.decode_steps) < 1 or len(set(self.decode_steps)) < len(self.decode_steps):
      raise ValueError(f"--decode_steps must be distinct integers >= 1, got {list(self.decode_steps)}")
    if not self.candidates or min(self.candidates) < 1:
      raise ValueError(f"--rank_candidates must be integers >= 1, got {list(self.candidates)}")
    if self.beam_size < 2:
      raise ValueError(f"--beam_size must be >= 2 (1 is greedy), got {self.beam_size}")
    unknown = sorted(set(self.workloads) - set(WORKLOADS))
    if not self.workloads or unknown:
      raise ValueError(f"--workloads must name some of {','.join(WORKLOADS)}, got {','.join(self.workloads)}")
    if self.hbm_bandwidth is not None and self.hbm_bandwidth <= 0:
      raise ValueError(f"--hbm_bandwidth must be positive, got {self.hbm_bandwidth}")

  @property
  def methods(self) -> tuple[str, ...]:
    return tuple(m for m in ("greedy", "beam") if m in self.workloads)

  @property
  def rank_candidates(self) -> tuple[int, ...]:
    return self.candidates if "rank" in self.workloads else ()


def run(
  cfg: BenchConfig, dec: DecodeConfig, hf_modes: tuple[str, ...], profiler: Profiler | None = None
) -> list[RunResult]:
  """The transformers rows first (they hand their memory back; JAX would not), then ours (each
  traced after timing, with a profiler)."""
  rows = []
  if hf_modes:
    from prompt_tuning.bench import hf_decoding

    rows += hf_decoding.run(
      cfg,
      tuple(sorted(dec.decode_steps)),
      dec.methods,
      dec.beam_size,
      dec.alpha,
      dec.rank_candidates,
      hf_modes,
      dec.torch_compile_backend,
    )
  results = _ours(cfg, dec, profiler) + rows
  # Table order: workload by workload, ours first.
  order = [f"{m} {n}" for m in dec.methods for n in sorted(dec.decode_steps)]
  order += [f"rank {c}" for c in dec.rank_candidates]
  return sorted(results, key=lambda r: (order.index(" ".join(r.name.split()[:2])), not r.name.endswith(" ours")))


def _ours(cfg: BenchConfig, dec: DecodeConfig, profiler: Profiler | None) -> list[RunResult]:
  names = [f"{m} {n} ours" for m in dec.methods for n in sorted(dec.decode_steps)]
  names += [f"rank {c} ours" for c in dec.rank_candidates]
  try:
    return _run_ours(cfg, dec, profiler)
  except Exception as e:  # XlaRuntimeError RESOURCE_EXHAUSTED while making the weights
    if not is_out_of_memory(e):
      raise
    return [RunResult(name, error="out of memory", extra={"detail": first_line(e)[:300]}) for name in names]


def _run_ours(cfg: BenchConfig, dec: DecodeConfig, profiler: Profiler | None) -> list[RunResult]:
  config = cfg.t5_config()
  mesh = partitioning.make_mesh(cfg.num_partitions)
  module = PromptedTransformer(config, prompt_config=PromptConfig(cfg.prompt_length))
  model = EncoderDecoderModel(module, LossConfig())
  log(f"ours: initializing {cfg.model} ({cfg.dtype}) on {mesh.devices.size} device(s)")
  trainable, frozen, _ = init_on_device(module, mesh, cfg.seed)
  params = merge_params(trainable, frozen)
  rng = np.random.default_rng(cfg.seed)
  tokens = rng.integers(2, config.vocab_size, (cfg.batch, cfg.token_length), dtype=np.int32)
  shard, shards = partitioning.data_shard(mesh)
  rows = cfg.batch // shards
  placed = partitioning.to_global_batch({"tokens": tokens[shard * rows : (shard + 1) * rows]}, mesh)["tokens"]
  replicated = NamedSharding(mesh, PartitionSpec())
  local = [d for d in mesh.devices.flat if d.process_index == jax.process_index()]

  calls = []  # (row name, jitted fn, its last argument, extra)
  for method in dec.methods:
    options = dict(beam_size=dec.beam_size, alpha=dec.alpha) if method == "beam" else {}
    for steps in sorted(dec.decode_steps):
      # eos_id=None: no end token, so every row decodes `steps` tokens whatever the weights.
      decode = functools.partial(model.predict_batch, max_decode_length=steps, method=method, eos_id=None, **options)
      decode = jax.jit(decode, out_shardings=replicated)
      calls.append((f"{method} {steps} ours", decode, None, {"decode_steps": steps}))
  for count in dec.rank_candidates:
    candidates = rng.integers(2, config.vocab_size, (count, cfg.target_length), dtype=np.int32)
    candidates[:, -1] = 1  # EOS-terminated, as the Evaluator's candidate table
    rank = jax.jit(model.rank_classify, out_shardings=replicated)  # as the Evaluator jits it
    calls.append((f"rank {count} ours", rank, jax.device_put(candidates, replicated), {"candidates": count}))

  results = []
  for name, fn, last, extra in calls:
    log(f"{name}: compiling, then {cfg.steps} timed calls after {cfg.warmup} warmup")
    args = (params, placed) if last is None else (params, placed, last)
    try:
      first, seconds, out = time_calls(fn, args, cfg.steps, cfg.warmup)
    except Exception as e:  # XlaRuntimeError RESOURCE_EXHAUSTED: report it, run the other rows
      if not is_out_of_memory(e):
        raise
      results.append(RunResult(name, error="out of memory", extra={"detail": first_line(e)[:300]}))
      continue
    extra = dict(extra, devices=int(mesh.devices.size))
    if "decode_steps" in extra:
      extra["tokens_per_row"] = int(out.tokens.shape[-1])  # every step ran: there is no end token
      extra["tokens_per_s"] = cfg.batch * extra["tokens_per_row"] * cfg.steps / seconds
    else:
      extra["mean_score"] = float(np.asarray(out).mean())
    if profiler is not None:
      extra.update(profiler.row_extra(name, lambda fn=fn, args=args: jax.block_until_ready(fn(*args))))
    # The peak is the process's highest so far (JAX cannot reset it): a row's includes the rows before.
    row = RunResult.timed(name, seconds, cfg.steps, cfg.batch, 0, peak_bytes(local), first, **extra)
    results.append(dataclasses.replace(row, tflops=None))
  return results


def _peers(results: list[RunResult]) -> list[str]:
  """The other side's labels present, e.g. ['hf compile', 'peft compile']."""
  return sorted({r.name.split(" ", 2)[2] for r in results if not r.name.endswith(" ours")})


def ratios(results: list[RunResult]) -> dict[str, float | None]:
  """'<workload>: <peer> / ours' = the peer's call time over ours (> 1: ours faster)."""
  by_name = {r.name: r for r in results}
  out = {}
  for row in results:
    if not row.name.endswith(" ours"):
      continue
    workload = row.name[: -len(" ours")]
    for peer in _peers(results):
      other = by_name.get(f"{workload} {peer}")
      if other is None:
        continue
      ok = row.step_ms and other.step_ms
      out[f"{workload}: {peer} / ours"] = other.step_ms / row.step_ms if ok else None
  return out


def per_step_ms(results: list[RunResult], side: str, short: int, long: int) -> float | None:
  """(greedy call ms at `long` tokens - at `short`) / (long - short) for side ('ours', 'hf compile')."""
  by_name = {r.name: r for r in results}
  a, b = by_name.get(f"greedy {short} {side}"), by_name.get(f"greedy {long} {side}")
  if not (a and b and a.step_ms and b.step_ms) or long <= short:
    return None
  return (b.step_ms - a.step_ms) / (long - short)


def bound(cfg: BenchConfig, dec: DecodeConfig, results: list[RunResult], device_kind: str) -> dict[str, Any]:
  """The HBM-bandwidth bound of a greedy decoder step over the steps the per-step time covers (the
  shortest decode's last step + 1 to the longest's last), and each side's measured step over it."""
  short, long = min(dec.decode_steps), max(dec.decode_steps)
  first = short + 1 if long > short else 1
  config = cfg.t5_config()
  bytes_ = hbm.mean_step_bytes(config, cfg.batch, cfg.input_length, first, long)
  bandwidth, source = hbm.bandwidth(device_kind, dec.hbm_bandwidth)
  bound_ms = None if bandwidth is None else 1e3 * bytes_.total / bandwidth
  sides = ["ours", *(p for p in _peers(results) if p.startswith("hf "))]
  steps = {side: per_step_ms(results, side, short, long) for side in sides}
  return {
    "batch": cfg.batch,
    "steps": [first, long],
    "bytes": {**dataclasses.asdict(bytes_), "total": bytes_.total},
    "hbm_bytes_per_s": bandwidth,
    "source": source,
    "bound_ms": bound_ms,
    "step_ms": steps,
    "over_bound": {s: (v / bound_ms if v is not None and bound_ms else None) for s, v in steps.items()},
  }


def report(
  cfg: BenchConfig, dec: DecodeConfig, results: list[RunResult], environment: dict[str, Any]
) -> dict[str, Any]:
  """Everything the table shows, as one JSON-able dict."""
  return {
    "config": dataclasses.asdict(cfg),
    "decode": dataclasses.asdict(dec),
    "environment": environment,
    "results": {r.name.replace(" ", "_"): r.to_dict() for r in results},
    "ratios": ratios(results),
    "ratio_definition": "the other side's call time / ours (> 1: ours faster)",
    "bound": bound(cfg, dec, results, environment["jax_device"]),
  }


def format_report(data: dict[str, Any]) -> str:
  cfg, dec, env, b = data["config"], data["decode"], data["environment"], data["bound"]
  versions = ", ".join(f"{k} {v}" for k, v in env["versions"].items() if v)
  steps = ", ".join(str(n) for n in sorted(dec["decode_steps"]))
  lines = [
    (
      f"prompt-tuning bench --mode decode: {cfg['model']} {cfg['dtype']}, batch {cfg['batch']}, input "
      f"{cfg['input_length']} (prompt {cfg['prompt_length']} + {cfg['input_length'] - cfg['prompt_length']} "
      f"tokens); {'/'.join(dec['workloads'])}: greedy and beam {dec['beam_size']} decoding of {steps} tokens "
      f"(no early stop: ours without an end token, transformers with min_new_tokens), rank classification of "
      f"{', '.join(map(str, dec['candidates']))} candidates of {cfg['target_length']} tokens; "
      f"{cfg['steps']} timed calls after {cfg['warmup']} warmup"
    ),
    f"jax device: {env['jax_device']} x{env['jax_devices']}; torch device: {env['torch_device'] or '-'}",
    f"versions: {versions}",
    "",
  ]
  lines += tables.table(
    data["results"],
    22,
    [
      ("call ms", "10.2f", tables.field("step_ms")),
      ("tokens/s", "11.0f", tables.extra("tokens_per_s")),
      ("examples/s", "11.1f", tables.field("examples_per_s")),
      ("peak GiB", "9.2f", tables.field("peak_gib")),
      ("1st call s", "11.1f", tables.field("compile_s")),
    ],
  )
  if data["ratios"]:
    lines.append("")
    for name, ratio in data["ratios"].items():
      lines.append(f"{name + ':':34s} {'-' if ratio is None else f'{ratio:.2f}x'}  (call time; > 1: ours faster)")
  mb = {k: v / 1e6 for k, v in b["bytes"].items()}
  lines += [
    "",
    (
      f"HBM bound of a greedy decoder step at batch {b['batch']}, steps {b['steps'][0]}..{b['steps'][1]}: "
      f"weights {mb['weights']:.1f} MB + self-attention K/V {mb['self_kv']:.1f} MB + cross-attention K/V "
      f"{mb['cross_kv']:.1f} MB = {mb['total']:.1f} MB per step"
    ),
  ]
  if b["bound_ms"] is None:
    lines.append(f"  bound: - ({b['source']})")
  else:
    lines.append(f"  at {b['hbm_bytes_per_s'] / 1e12:.3g} TB/s ({b['source']}): {b['bound_ms']:.4f} ms")
  for side, ms in b["step_ms"].items():
    over = b["over_bound"][side]
    measured = "-" if ms is None else f"{ms:.4f} ms"
    lines.append(f"  {side} step (from the greedy calls): {measured}" + ("" if over is None else f" = {over:.2f}x"))
  return "\n".join(lines)
