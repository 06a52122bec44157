"""`prompt-tuning bench`: one prompt-tuning optimizer step, ours vs HF PEFT, same config, same run;
or (--mode infer) decoding and rank classification with one prompt vs a batch mixing k tasks; or
(--mode decode) greedy/beam decoding and rank classification, ours vs transformers' generate()
and PEFT's forward scoring, with the HBM-bandwidth bound of a decoder step; or (--mode serve)
`prompt-tuning serve`'s requests/s under a bounded local load (needs the serve extra); or
(--mode workload) training on a task's real length distribution, end to end through our data pipeline
with length buckets on and off, vs PEFT with dynamic padding (DataCollatorForSeq2Seq) eager and compiled;
or (--mode fp8) FP8 frozen matmuls against bf16 over a few hundred steps: speed, memory, loss, prompt.

  prompt-tuning bench                                    # t5_1_1_base, batch 32, 512 = 100 prompt + 412 tokens
  prompt-tuning bench --mode infer --tasks 8             # greedy decode 8 + rank 2 candidates, 1 vs 8 tasks
  prompt-tuning bench --mode decode                      # greedy/beam 8 and 64, rank 2/4: ours vs transformers
  prompt-tuning bench --mode serve --tasks 8 --concurrency 1,64  # the HTTP server's requests/s
  prompt-tuning bench --mode workload --workload rte       # RTE-like lengths (approximate), 512 = 100 + 412
  prompt-tuning bench --mode workload --workload_task super_glue_rte_v102  # RTE's own train split
  prompt-tuning bench --matmul_dtype both --peft none            # ours with bf16 and with FP8 matmuls
  prompt-tuning bench --mode fp8                         # 300 steps each: bf16, fp8, bf16 nudged; the gaps
  prompt-tuning bench --model t5_1_1_xxl --batch 8 --peft eager --json xxl.json
  prompt-tuning bench --model t5_1_1_xxl --batch 8 --num_partitions 2 --check_rounding
  python -m prompt_tuning.cli.bench --model tiny --dtype float32 --peft none

Ours is the trainer's compiled prompt-only step (Adafactor, random frozen
weights created on the devices). The baseline is transformers T5 + peft
PromptTuningConfig with the same dimensions and dtype, eager and/or
torch.compile. --input_length is the TOTAL encoder length including the
prompt, so both feed input_length - prompt_length token ids. Batches are
synthetic: nothing of the data layer (TensorFlow, seqio) or gin is imported.

The PEFT rows run first and release their memory before JAX takes the
device (JAX's allocator keeps what it has grabbed; torch's can give it back).
JAX preallocation is turned off unless XLA_PYTHON_CLIENT_PREALLOCATE is set.

--check_rounding times nothing: it checks that a 1 x num_partitions mesh
differs from one device only by rounding, layer by layer, in float32 and bf16
(prompt_tuning.bench.rounding).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from typing import TYPE_CHECKING, Any

from prompt_tuning.bench import BenchConfig, RunResult, flops, tables
from prompt_tuning.models.t5.config import NAMED_CONFIGS

if TYPE_CHECKING:
  from prompt_tuning.bench.profile import Profiler

PEFT_CHOICES = {"none": (), "eager": ("eager",), "compile": ("compile",), "both": ("eager", "compile")}


def _int_list(text: str) -> tuple[int, ...]:
  """'1,32,64' -> (1, 32, 64); argparse turns the ValueError into one usage line."""
  return tuple(int(x) for x in text.split(","))


_int_list.__name__ = "comma-separated integers"


def _name_list(text: str) -> tuple[str, ...]:
  return tuple(x.strip() for x in text.split(",") if x.strip())


def parse(argv: list[str]) -> argparse.Namespace:
  defaults = BenchConfig()
  parser = argparse.ArgumentParser(
    prog="prompt-tuning bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument(
    "--model",
    choices=sorted(NAMED_CONFIGS),
    default=defaults.model,
    metavar="NAME",
    help=f"named T5 config (default {defaults.model}; e.g. t5_1_1_small/base/large/xl/xxl)",
  )
  parser.add_argument("--batch", type=int, default=defaults.batch, help="global batch size")
  parser.add_argument(
    "--input_length", type=int, default=defaults.input_length, help="total encoder length INCLUDING the prompt"
  )
  parser.add_argument("--target_length", type=int, default=defaults.target_length)
  parser.add_argument("--prompt_length", type=int, default=defaults.prompt_length)
  parser.add_argument(
    "--dtype",
    choices=("bfloat16", "float32"),
    default=defaults.dtype,
    help="frozen weights and activations (the prompt is float32 in ours)",
  )
  parser.add_argument(
    "--attention_impl",
    choices=("auto", "xla", "cudnn"),
    default=defaults.attention_impl,
    help="ours: 'auto' = cuDNN's fused attention on GPUs in bf16, the einsum reference elsewhere",
  )
  parser.add_argument(
    "--remat_policy",
    choices=("none", "full", "dots", "dots_no_batch"),
    default=defaults.remat_policy,
    help="ours: per-layer rematerialization",
  )
  parser.add_argument(
    "--matmul_dtype",
    choices=("default", "fp8", "both"),
    default=defaults.matmul_dtype,
    help="ours: the frozen layer matmuls in the activation dtype or as FP8 GEMMs (T5Config.matmul_dtype); "
    "both (--mode train): one row with each",
  )
  parser.add_argument(
    "--fuse_projections",
    action="store_true",
    help="ours: q/k/v (and a gated MLP's two input projections) in one matmul each (T5Config.fuse_projections)",
  )
  parser.add_argument("--steps", type=int, default=defaults.steps, help="timed steps")
  parser.add_argument("--warmup", type=int, default=defaults.warmup, help="untimed steps first (>= 1: compiles)")
  parser.add_argument(
    "--num_partitions",
    type=int,
    default=defaults.num_partitions,
    help="mesh 'model' axis size for ours; data axis = devices / num_partitions",
  )
  parser.add_argument(
    "--peft",
    choices=sorted(PEFT_CHOICES),
    default=None,
    help="PEFT baseline modes (default: both when torch+transformers+peft import, else none; "
    "--mode decode: compile, i.e. generate() with the static cache compiled and PEFT's compiled forward)",
  )
  parser.add_argument(
    "--check_rounding",
    action="store_true",
    help="instead of timing: per-layer gaps of a 1 x --num_partitions mesh vs one device, "
    "float32 and bf16, against a one-ulp prompt nudge (prompt_tuning.bench.rounding)",
  )
  parser.add_argument(
    "--mode",
    choices=("train", "infer", "decode", "serve", "workload", "fp8"),
    default="train",
    help="train: the optimizer step, ours vs PEFT; infer: decoding (--target_length tokens) and rank "
    "classification, one prompt vs a table of --tasks prompts mixed in one batch (prompt_tuning.bench.inference); "
    "decode: greedy and beam decoding of --decode_steps tokens and rank classification of --rank_candidates, "
    "ours vs transformers generate() and PEFT's forward scoring, and the HBM bound (prompt_tuning.bench.generation); "
    "serve: the HTTP server of --tasks prompts under --requests at --concurrency (prompt_tuning.bench.serving); "
    "workload: training on a task's length distribution, ours (buckets on, off, packed) vs PEFT dynamic padding "
    "(prompt_tuning.bench.workload); fp8: --trajectory_steps of prompt training with bf16, FP8 and nudged bf16 "
    "matmuls from the same start on the same batches, their speed, memory, losses and prompts compared "
    "(prompt_tuning.bench.trajectory)",
  )
  parser.add_argument("--trajectory_steps", type=int, default=300, help="fp8: optimizer steps of each run")
  parser.add_argument("--trajectory_points", type=int, default=10, help="fp8: steps at which the runs are compared")
  parser.add_argument(
    "--trajectory_learning_rate", type=float, default=0.3, help="fp8: Adafactor's learning rate (the paper's 0.3)"
  )
  parser.add_argument(
    "--workload",
    default="rte",
    help="workload: the approximate SuperGLUE length histogram (rte, boolq, cb, copa, wic, multirc; "
    "prompt_tuning/bench/lengths.py says how they were derived)",
  )
  parser.add_argument(
    "--workload_task", default=None, metavar="TASK", help="workload: a registered task's own data instead"
  )
  parser.add_argument("--workload_split", default="train", help="workload: --workload_task's split")
  parser.add_argument(
    "--peft_symbolic",
    action="store_true",
    help="workload: also PEFT under torch.compile(dynamic=True) (symbolic shapes from the first compile)",
  )
  parser.add_argument("--workload_examples", type=int, default=4096, help="workload: examples drawn from the histogram")
  parser.add_argument(
    "--length_buckets",
    default="pow2",
    help="workload: ours bucketed's LENGTH_BUCKETS: 'pow2', or comma-separated input lengths such as 64,128,256",
  )
  parser.add_argument(
    "--ours_rows",
    type=_name_list,
    default=("bucketed", "padded", "packed"),
    help="workload: which of our rows run, some of bucketed,padded,packed (all by default), or none (PEFT's only)",
  )
  parser.add_argument(
    "--packed_target_length",
    type=int,
    default=None,
    help="workload: ours packed's decoder row (default: twice --target_length, so that a row's targets hold "
    "as many examples as its encoder row; examples' targets are cut to it)",
  )
  parser.add_argument(
    "--peft_pad_to_multiple_of",
    type=int,
    default=None,
    help="workload: DataCollatorForSeq2Seq's pad_to_multiple_of for the PEFT rows (default: pad to the longest)",
  )
  parser.add_argument(
    "--peft_mark_dynamic",
    action="store_true",
    help="workload: mark each PEFT batch's length dimensions dynamic, so torch.compile starts symbolic (one compile)",
  )
  parser.add_argument("--tasks", type=int, default=8, help="infer: prompts in the mixed batch; serve: prompts served")
  parser.add_argument("--requests", type=int, default=2000, help="serve: requests timed")
  parser.add_argument(
    "--concurrency",
    type=_int_list,
    default=(64,),
    help="serve: requests in flight at most; several levels as 1,32,64 (one load each, same server)",
  )
  parser.add_argument("--max_wait_ms", type=float, default=5.0, help="serve: how long a batch waits to fill")
  parser.add_argument("--endpoint", choices=("predict", "score"), default="predict", help="serve: what is requested")
  parser.add_argument("--candidates", type=int, default=2, help="infer: rank-classification candidates per example")
  parser.add_argument(
    "--vary_prompt_lengths",
    action="store_true",
    help="infer: the mixed prompts have lengths spread over [p/2, p], padded and masked",
  )
  parser.add_argument(
    "--decode_steps", type=_int_list, default=(8, 64), help="decode: tokens decoded per row, e.g. 8,64"
  )
  parser.add_argument("--beam_size", type=int, default=4, help="decode: beams of the beam-search rows")
  parser.add_argument(
    "--rank_candidates",
    type=_int_list,
    default=(2, 4),
    help="decode: rank-classification candidates (of --target_length tokens) per example, e.g. 2,4",
  )
  parser.add_argument(
    "--workloads", type=_name_list, default=("greedy", "beam", "rank"), help="decode: some of greedy,beam,rank"
  )
  parser.add_argument(
    "--hbm_bandwidth",
    type=float,
    default=None,
    metavar="TB_PER_S",
    help="decode: the card's HBM bandwidth in TB/s for the bound (default: from a table by device kind)",
  )
  parser.add_argument(
    "--torch_compile_backend",
    default="inductor",
    help="decode, workload: TorchDynamo backend of the compiled transformers/PEFT rows ('eager' traces without codegen)",
  )
  parser.add_argument(
    "--profile",
    default=None,
    metavar="DIR",
    help="train, decode: after timing, trace --profile_calls more calls of each of our rows into DIR/<row> "
    "(jax.profiler: TensorBoard, Perfetto) and print their device kernels by time",
  )
  parser.add_argument("--profile_calls", type=int, default=5, help="calls traced per row with --profile")
  parser.add_argument("--json", default=None, metavar="PATH", help="also write the results here as JSON")
  parser.add_argument("--seed", type=int, default=defaults.seed)
  return parser.parse_args(argv)


def _key(name: str) -> str:
  return name.replace(" ", "_")


def _ratio(ours: RunResult, other: RunResult) -> float | None:
  """Throughput ratio ours/other (= other's step time / ours); > 1 means ours is faster."""
  if ours.examples_per_s is None or other.examples_per_s is None:
    return None
  return ours.examples_per_s / other.examples_per_s


def _environment(peft_ran: bool) -> dict[str, Any]:
  import flax
  import jax
  import optax

  from prompt_tuning.bench import peft_baseline

  devices = jax.devices()
  out = {
    "jax_device": devices[0].device_kind,
    "jax_platform": devices[0].platform,
    "jax_devices": len(devices),
    "versions": {
      "jax": jax.__version__,
      "flax": flax.__version__,
      "optax": optax.__version__,
      **peft_baseline.versions(),
    },
  }
  out["torch_device"] = peft_baseline.device_name() if peft_ran else None
  return out


def report(cfg: BenchConfig, results: list[RunResult], environment: dict[str, Any]) -> dict[str, Any]:
  """Everything the table shows, as one JSON-able dict."""
  config = cfg.t5_config()
  n = flops.matmul_params(config)
  by_name = {r.name: r for r in results}
  ours_rows = [r for r in results if r.name.startswith("ours")]
  ratios = {
    f"{_key(o.name)}/{_key(r.name)}": _ratio(o, r) for o in ours_rows for r in results if not r.name.startswith("ours")
  }
  if "ours" in by_name and "ours fp8" in by_name:
    ratios["ours_fp8/ours"] = _ratio(by_name["ours fp8"], by_name["ours"])
  return {
    "config": dataclasses.asdict(cfg),
    "environment": environment,
    "flops": {
      "per_step": flops.flops_per_step(config, cfg.batch, cfg.input_length, cfg.target_length),
      "naive_per_step": flops.naive_flops_per_step(config, cfg.batch, cfg.input_length, cfg.target_length),
      "n_encoder_side": n.encoder_side,
      "n_decoder_side": n.decoder_side,
      "convention": flops.CONVENTION,
    },
    "results": {_key(r.name): r.to_dict() for r in results},
    "ratios": ratios,
    "ratio_definition": "ours examples/s / baseline examples/s (> 1: ours faster)",
  }


# The train and infer tables' columns (bench/tables.py).
_STEP_MS = ("step ms", "10.2f", tables.field("step_ms"))
_EXAMPLES = ("examples/s", "11.2f", tables.field("examples_per_s"))
_PEAK = ("peak GiB", "9.2f", tables.field("peak_gib"))


def format_table(data: dict[str, Any]) -> str:
  cfg, env, fl = data["config"], data["environment"], data["flops"]
  versions = ", ".join(f"{k} {v}" for k, v in env["versions"].items() if v)
  matmuls = "/".join(dict.fromkeys(r["extra"].get("matmul_dtype", "default") for r in data["results"].values()))
  lines = [
    (
      f"prompt-tuning bench: {cfg['model']} {cfg['dtype']} (ours: attention {cfg['attention_impl']}, "
      f"remat {cfg['remat_policy']}, matmuls {matmuls}{', fused projections' if cfg.get('fuse_projections') else ''}), batch {cfg['batch']}, input {cfg['input_length']} "
      f"(prompt {cfg['prompt_length']} + {cfg['input_length'] - cfg['prompt_length']} tokens), "
      f"target {cfg['target_length']}; {cfg['steps']} timed steps after {cfg['warmup']} warmup"
    ),
    (
      f"jax device: {env['jax_device']} x{env['jax_devices']} ({env['jax_platform']}); "
      f"torch device: {env['torch_device'] or '-'}"
    ),
    f"versions: {versions}",
    "",
  ]
  first = ("1st step s", "11.1f", tables.field("compile_s"))
  lines += tables.table(
    data["results"], 14, [_STEP_MS, _EXAMPLES, ("TFLOP/s", "9.2f", tables.field("tflops")), _PEAK, first]
  )
  memory = [(n, r["extra"]["step_memory_gib"]) for n, r in data["results"].items() if r["extra"].get("step_memory_gib")]
  if memory:  # the device's peak is the process's so far; this is each step program's own need
    lines += ["", "step GiB (XLA's memory analysis: arguments + outputs + temporaries): "]
    lines[-1] += ", ".join(f"{n.replace('_', ' ')} {gib:.2f}" for n, gib in memory)
  if data["ratios"]:
    lines.append("")
    for name, ratio in data["ratios"].items():
      lines.append(
        f"{name.replace('_', ' ') + ':':24s} {'-' if ratio is None else f'{ratio:.2f}x'}  "
        "(examples/s; > 1: the left one faster)"
      )
  lines += [
    "",
    (
      f"model FLOPs/step: {fl['per_step']:.4g} (N_enc {fl['n_encoder_side']:,}, "
      f"N_dec {fl['n_decoder_side']:,}); naive 4*N*all tokens would be {fl['naive_per_step']:.4g}"
    ),
    f"convention: {fl['convention']}",
  ]
  return "\n".join(lines)


def _check_devices(cfg: BenchConfig) -> str | None:
  """Why the mesh or batch cannot work on these devices, before anything runs."""
  import jax

  count = jax.device_count()
  if count % cfg.num_partitions:
    return f"--num_partitions={cfg.num_partitions} must divide the {count} devices"
  if cfg.batch % (count // cfg.num_partitions):
    return f"--batch={cfg.batch} must be divisible by the data axis size {count // cfg.num_partitions}"
  return None


def _write_json(data: dict[str, Any], path: str | None) -> None:
  if path:
    with open(path, "w") as f:
      json.dump(data, f, indent=2)
    print(f"\nwrote {path}")


def _check_rounding(cfg: BenchConfig, json_path: str | None) -> int:
  from prompt_tuning.bench import rounding

  try:
    data = rounding.compare(cfg)
  except ValueError as e:
    print(f"prompt-tuning bench: {e}", file=sys.stderr)
    return 2
  print(rounding.format_report(data))
  _write_json({"config": dataclasses.asdict(cfg), "environment": _environment(peft_ran=False), **data}, json_path)
  return 0


def format_infer_table(data: dict[str, Any]) -> str:
  cfg, infer, env = data["config"], data["inference"], data["environment"]
  versions = ", ".join(f"{k} {v}" for k, v in env["versions"].items() if v)
  lengths = "lengths spread over [p/2, p]" if infer["vary_prompt_lengths"] else "all of the same length"
  lines = [
    (
      f"prompt-tuning bench --mode infer: {cfg['model']} {cfg['dtype']} (attention {cfg['attention_impl']}), "
      f"batch {cfg['batch']}, input {cfg['input_length']} (prompt {cfg['prompt_length']} + "
      f"{cfg['input_length'] - cfg['prompt_length']} tokens); greedy decode of {cfg['target_length']} tokens, "
      f"rank classification of {infer['candidates']} candidates of {cfg['target_length']} "
      f"tokens; 1 prompt vs {infer['tasks']} prompts ({lengths}) mixed in the batch; "
      f"{cfg['steps']} timed calls after {cfg['warmup']} warmup"
    ),
    f"jax device: {env['jax_device']} x{env['jax_devices']} ({env['jax_platform']}); versions: {versions}",
    "",
  ]
  call, first = ("call ms", "10.2f", tables.field("step_ms")), ("1st call s", "11.1f", tables.field("compile_s"))
  lines += tables.table(data["results"], 18, [call, _EXAMPLES, _PEAK, first])
  lines.append("")
  for name, ratio in data["ratios"].items():
    lines.append(
      f"{name + ':':28s} {'-' if ratio is None else f'{ratio:.3f}'}  (examples/s; 1.0: mixing costs nothing)"
    )
  return "\n".join(lines)


def _infer(cfg: BenchConfig, args: argparse.Namespace) -> int:
  from prompt_tuning.bench import inference

  if args.peft not in (None, "none"):
    print("prompt-tuning bench: --mode infer has no PEFT baseline; leave --peft out", file=sys.stderr)
    return 2
  try:
    infer = inference.InferenceConfig(args.tasks, args.candidates, args.vary_prompt_lengths)
  except ValueError as e:
    print(f"prompt-tuning bench: {e}", file=sys.stderr)
    return 2
  results = inference.run(cfg, infer)
  data = {
    "config": dataclasses.asdict(cfg),
    "inference": dataclasses.asdict(infer),
    "environment": _environment(peft_ran=False),
    "results": {_key(r.name): r.to_dict() for r in results},
    "ratios": inference.ratios(results, infer),
    "ratio_definition": "examples/s with k tasks mixed in the batch / examples/s with one prompt (1.0: no cost)",
  }
  print(format_infer_table(data))
  _write_json(data, args.json)
  return 0


def _decode(cfg: BenchConfig, args: argparse.Namespace, profiler: Profiler | None) -> int:
  from prompt_tuning.bench import generation, peft_baseline

  try:
    dec = generation.DecodeConfig(
      decode_steps=args.decode_steps,
      beam_size=args.beam_size,
      candidates=args.rank_candidates,
      workloads=args.workloads,
      hbm_bandwidth=None if args.hbm_bandwidth is None else args.hbm_bandwidth * 1e12,
      torch_compile_backend=args.torch_compile_backend,
    )
  except ValueError as e:
    print(f"prompt-tuning bench: {e}", file=sys.stderr)
    return 2
  # The peers of issue 15: generate() with the static cache compiled, and PEFT's compiled forward.
  peft_mode = args.peft or ("compile" if peft_baseline.available() else "none")
  if peft_mode != "none" and not peft_baseline.available():
    print(f"prompt-tuning bench: --peft {peft_mode} needs torch, transformers and peft installed", file=sys.stderr)
    return 2
  results = generation.run(cfg, dec, PEFT_CHOICES[peft_mode], profiler)
  data = generation.report(cfg, dec, results, _environment(peft_ran=peft_mode != "none"))
  print(generation.format_report(data))
  _write_json(data, args.json)
  return 0


def _serve(cfg: BenchConfig, args: argparse.Namespace) -> int:
  try:
    from prompt_tuning.bench import serving
  except ImportError as e:
    print(
      f"prompt-tuning bench: --mode serve needs the serve extra (pip install prompt-tuning[serve]): {e}",
      file=sys.stderr,
    )
    return 2
  if args.peft not in (None, "none"):
    print("prompt-tuning bench: --mode serve has no PEFT baseline; leave --peft out", file=sys.stderr)
    return 2
  try:
    load = serving.LoadConfig(args.tasks, args.requests, args.concurrency, args.max_wait_ms, args.endpoint)
  except ValueError as e:
    print(f"prompt-tuning bench: {e}", file=sys.stderr)
    return 2
  data = {
    "config": dataclasses.asdict(cfg),
    "load": dataclasses.asdict(load),
    "environment": _environment(peft_ran=False),
    "results": serving.run(cfg, load),
  }
  print(serving.format_report(data))
  _write_json(data, args.json)
  return 0 if all(set(r["status"]) == {"200"} for r in data["results"]) else 1


def _bucket_spec(text: str) -> Any:
  """--length_buckets: 'pow2', or '64,128,256' as {'inputs': [64, 128, 256]}."""
  if text == "pow2":
    return text
  try:
    return {"inputs": [int(x) for x in text.split(",")]}
  except ValueError:
    raise ValueError(f"--length_buckets must be 'pow2' or comma-separated input lengths, got {text!r}") from None


def _workload(cfg: BenchConfig, args: argparse.Namespace) -> int:
  from prompt_tuning.bench import peft_baseline, workload
  from prompt_tuning.data.buckets import make_buckets

  peft_mode = args.peft or ("both" if peft_baseline.available() else "none")
  if peft_mode != "none" and not peft_baseline.available():
    print(f"prompt-tuning bench: --peft {peft_mode} needs torch, transformers and peft installed", file=sys.stderr)
    return 2
  vocab_size = cfg.t5_config().vocab_size
  try:
    ours_rows = () if args.ours_rows == ("none",) else args.ours_rows
    unknown = sorted(set(ours_rows) - set(workload.OURS_ROWS))
    if not args.ours_rows or unknown:
      raise ValueError(
        f"--ours_rows must name some of {','.join(workload.OURS_ROWS)} or be none, got {','.join(args.ours_rows)}"
      )
    if not ours_rows and peft_mode == "none" and not args.peft_symbolic:
      raise ValueError("--ours_rows none with --peft none leaves no row to run")
    for flag in ("packed_target_length", "peft_pad_to_multiple_of"):
      if getattr(args, flag) is not None and getattr(args, flag) < 1:
        raise ValueError(f"--{flag} must be >= 1, got {getattr(args, flag)}")
    spec = _bucket_spec(args.length_buckets)
    make_buckets(spec, workload.feature_lengths(cfg))  # a bad spec: one line now, not after the PEFT rows
    if args.workload_task:
      work = workload.from_task(args.workload_task, args.workload_split, vocab_size)
    else:
      work = workload.from_histogram(args.workload, args.workload_examples, vocab_size, args.seed)
  except ValueError as e:
    print(f"prompt-tuning bench: {e}", file=sys.stderr)
    return 2
  peft_modes = PEFT_CHOICES[peft_mode] + (("compile_symbolic",) if args.peft_symbolic else ())
  if peft_modes and not peft_baseline.available():
    print("prompt-tuning bench: --peft_symbolic needs torch, transformers and peft installed", file=sys.stderr)
    return 2
  options = peft_baseline.Dynamic(args.torch_compile_backend, args.peft_pad_to_multiple_of, args.peft_mark_dynamic)
  results = workload.run(cfg, work, spec, peft_modes, options, ours_rows, args.packed_target_length)
  data = {
    "config": dataclasses.asdict(cfg),
    "workload": {"name": work.name, "source": work.source, "examples": len(work.inputs)},
    "environment": _environment(peft_ran=bool(peft_modes)),
    "results": {_key(r.name): r.to_dict() for r in results},
    "ratios": workload.ratios(results),
    "ratio_definition": (
      "ours (packed, bucketed, padded) examples/s / the row's examples/s, the same stream of examples in every row"
    ),
  }
  print(workload.format_report(data))
  _write_json(data, args.json)
  return 0


def _fp8(cfg: BenchConfig, args: argparse.Namespace) -> int:
  from prompt_tuning.bench import trajectory

  if args.peft not in (None, "none"):
    print("prompt-tuning bench: --mode fp8 has no PEFT baseline; leave --peft out", file=sys.stderr)
    return 2
  try:
    tcfg = trajectory.TrajectoryConfig(
      steps=args.trajectory_steps, points=args.trajectory_points, learning_rate=args.trajectory_learning_rate
    )
  except ValueError as e:
    print(f"prompt-tuning bench: {e}", file=sys.stderr)
    return 2
  rows, comparisons = trajectory.run(cfg, tcfg)
  data = trajectory.report(cfg, tcfg, rows, comparisons, _environment(peft_ran=False))
  print(trajectory.format_report(data))
  _write_json(data, args.json)
  return 0


def main(argv: list[str] | None = None) -> int:
  args = parse(sys.argv[1:] if argv is None else argv)
  # Before JAX initializes a backend: take device memory as needed, so torch is not starved.
  os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
  # jax, torch and the model load only once the flags parse.
  from prompt_tuning.bench import ours, peft_baseline

  try:
    cfg = BenchConfig(
      model=args.model,
      batch=args.batch,
      input_length=args.input_length,
      target_length=args.target_length,
      prompt_length=args.prompt_length,
      dtype=args.dtype,
      steps=args.steps,
      warmup=args.warmup,
      num_partitions=args.num_partitions,
      seed=args.seed,
      attention_impl=args.attention_impl,
      remat_policy=args.remat_policy,
      matmul_dtype="default" if args.matmul_dtype == "both" else args.matmul_dtype,
      fuse_projections=args.fuse_projections,
    )
  except ValueError as e:
    print(f"prompt-tuning bench: {e}", file=sys.stderr)
    return 2
  profiler = None
  if args.profile is not None:
    if args.mode not in ("train", "decode") or args.check_rounding:
      print(
        f"prompt-tuning bench: --profile traces --mode train or decode rows, not --mode {args.mode}", file=sys.stderr
      )
      return 2
    from prompt_tuning.bench.profile import Profiler  # noqa: PLC0415 -- imports jax: after the flags parse

    try:
      profiler = Profiler(args.profile, args.profile_calls)
    except ValueError as e:
      print(f"prompt-tuning bench: {e}", file=sys.stderr)
      return 2
  if args.check_rounding:  # a 1 x num_partitions mesh on the first devices: any device count >= it
    return _check_rounding(cfg, args.json)
  problem = _check_devices(cfg)
  if problem:
    print(f"prompt-tuning bench: {problem}", file=sys.stderr)
    return 2
  if args.matmul_dtype == "both" and args.mode != "train":
    print(
      f"prompt-tuning bench: --matmul_dtype both times --mode train only (--mode {args.mode} takes default or fp8; "
      "--mode fp8 runs both itself)",
      file=sys.stderr,
    )
    return 2
  if args.mode == "fp8":
    return _fp8(cfg, args)
  if args.mode == "infer":
    return _infer(cfg, args)
  if args.mode == "serve":
    return _serve(cfg, args)
  if args.mode == "decode":
    return _decode(cfg, args, profiler)
  if args.mode == "workload":
    return _workload(cfg, args)
  peft_mode = args.peft or ("both" if peft_baseline.available() else "none")
  if peft_mode != "none" and not peft_baseline.available():
    print(f"prompt-tuning bench: --peft {peft_mode} needs torch, transformers and peft installed", file=sys.stderr)
    return 2
  # PEFT first: it hands its memory back when done, JAX would not.
  baseline = peft_baseline.run(cfg, PEFT_CHOICES[peft_mode]) if peft_mode != "none" else []
  variants = ("default", "fp8") if args.matmul_dtype == "both" else (cfg.matmul_dtype,)
  results = [ours.run(dataclasses.replace(cfg, matmul_dtype=m), profiler) for m in variants] + baseline
  data = report(cfg, results, _environment(peft_ran=bool(baseline)))
  print(format_table(data))
  _write_json(data, args.json)
  return 0


if __name__ == "__main__":
  sys.exit(main())
