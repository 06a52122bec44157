"""The baseline: HF transformers T5 + PEFT prompt tuning, one optimizer step, eager or torch.compile.

The HF model has the dimensions of our named config (gated GELU for T5 1.1,
d_ff, heads, d_kv, layers, vocab), random weights, in the same dtype, built on
the GPU directly when there is one (no float32 host copy). PEFT's stock
`PromptTuningConfig(task_type=SEQ_2_SEQ_LM, num_virtual_tokens=p)` prepends p
trainable vectors to the encoder input embeddings, so with input_ids of
input_length - p tokens the encoder sees input_length positions, as ours does.
(PEFT allocates the table for two transformer submodules, [2p, d] float32, but
a seq2seq forward uses only its first p rows: the optimizer's cost is noise.)

One step = forward with labels (cross-entropy over target_length tokens) +
backward + optimizer.step() + zero_grad(). The optimizer is transformers'
Adafactor with the paper's settings (our optax adafactor() defaults), over the
trainable parameters only.

torch is imported inside the functions, so importing this module is free.
"""

from __future__ import annotations

import dataclasses
import gc
import time
from typing import Any, Callable

from prompt_tuning.bench import BenchConfig, RunResult, flops, is_out_of_memory, log, log_row
from prompt_tuning.errors import first_line
from prompt_tuning.models.t5.config import T5Config

MODES = ("eager", "compile")
# run_dynamic's modes and their row labels: variable shapes also try torch.compile(dynamic=True).
DYNAMIC_MODE_LABELS = {"eager": "eager", "compile": "compile", "compile_symbolic": "compile symbolic"}


def available() -> bool:
  """Whether torch, transformers and peft import."""
  try:
    import peft  # noqa: F401
    import torch  # noqa: F401
    import transformers  # noqa: F401
  except ImportError:
    return False
  return True


def hf_config(config: T5Config) -> Any:
  """A transformers T5Config with our config's dimensions, dropout off, no KV cache in training."""
  from transformers import T5Config as HFConfig

  if config.mlp_activations == ("gelu", "linear"):
    feed_forward = "gated-gelu"
  elif config.mlp_activations == ("relu",):
    feed_forward = "relu"
  else:
    raise ValueError(f"no transformers T5 equivalent of mlp_activations={config.mlp_activations}")
  # transformers 5 quirk: tie_word_embeddings=False only turns off the decoder-output scaling
  # (scale_decoder_outputs=False, as T5 1.1 needs); lm_head stays tied to the shared embedding.
  # For speed it makes no difference: the logits matmul is [d_model, vocab] either way and frozen.
  return HFConfig(
    vocab_size=config.vocab_size,
    d_model=config.emb_dim,
    d_kv=config.head_dim,
    d_ff=config.mlp_dim,
    num_layers=config.num_encoder_layers,
    num_decoder_layers=config.num_decoder_layers,
    num_heads=config.num_heads,
    relative_attention_num_buckets=config.relative_attention_num_buckets,
    relative_attention_max_distance=config.relative_attention_max_distance,
    layer_norm_epsilon=config.layer_norm_epsilon,
    feed_forward_proj=feed_forward,
    dropout_rate=0.0,
    tie_word_embeddings=config.logits_via_embedding,
    decoder_start_token_id=0,
    pad_token_id=0,
    eos_token_id=1,
    use_cache=False,
  )


def device_name() -> str:
  import torch

  return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"


def peft_model(cfg: BenchConfig, device: Any) -> Any:
  """The PEFT prompt-tuning model of cfg (random T5 weights in cfg.dtype, made on `device`), in eval mode."""
  import torch
  from peft import PromptTuningConfig, TaskType, get_peft_model
  from transformers import T5ForConditionalGeneration

  torch.manual_seed(cfg.seed)
  dtype = {"bfloat16": torch.bfloat16, "float32": torch.float32}[cfg.dtype]
  with torch.device(device):  # weights are allocated on the device, in `dtype`
    base = T5ForConditionalGeneration._from_config(hf_config(cfg.t5_config()), dtype=dtype)
  model = get_peft_model(
    base, PromptTuningConfig(task_type=TaskType.SEQ_2_SEQ_LM, num_virtual_tokens=cfg.prompt_length)
  )
  return model.to(device).eval()


def _build_model(cfg: BenchConfig, device: Any) -> tuple[Any, Any]:
  """(peft model in train mode on `device`, transformers Adafactor over its trainable parameters)."""
  from transformers.optimization import Adafactor

  model = peft_model(cfg, device).train()
  trainable = [p for p in model.parameters() if p.requires_grad]
  optimizer = Adafactor(
    trainable,
    lr=0.3,
    decay_rate=-0.8,
    clip_threshold=1.0,
    weight_decay=1e-5,
    beta1=None,
    scale_parameter=False,
    relative_step=False,
    warmup_init=False,
  )
  return model, optimizer


def _build(cfg: BenchConfig, device: Any) -> tuple[Any, Any, dict[str, Any]]:
  """(peft model in train mode, optimizer, batch of tensors on `device`)."""
  import torch

  model, optimizer = _build_model(cfg, device)
  config = cfg.t5_config()
  generator = torch.Generator().manual_seed(cfg.seed)
  batch = {
    "input_ids": torch.randint(2, config.vocab_size, (cfg.batch, cfg.token_length), generator=generator),
    "attention_mask": torch.ones(cfg.batch, cfg.token_length, dtype=torch.long),
    # HF shifts labels right (decoder_start_token_id=0) to make decoder_input_ids, as our batch does.
    "labels": torch.randint(2, config.vocab_size, (cfg.batch, cfg.target_length), generator=generator),
  }
  return model, optimizer, {k: v.to(device) for k, v in batch.items()}


def _make_step(forward: Callable, optimizer: Any, batch: dict[str, Any]) -> Callable[[], Any]:
  def step():
    loss = forward(**batch).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss

  return step


def _time(
  name: str, step: Callable[[], Any], cfg: BenchConfig, device: Any, flops_per_step: int, **extra: Any
) -> RunResult:
  """Same protocol as ours: warmup steps (the first timed as compile_s), then cfg.steps timed steps."""
  import torch

  cuda = device.type == "cuda"
  sync = torch.cuda.synchronize if cuda else (lambda: None)
  if cuda:
    torch.cuda.reset_peak_memory_stats(device)
  start = time.perf_counter()
  loss = step()
  sync()
  compile_s = time.perf_counter() - start
  for _ in range(cfg.warmup - 1):
    loss = step()
  sync()
  start = time.perf_counter()
  for _ in range(cfg.steps):
    loss = step()
  sync()
  seconds = time.perf_counter() - start
  peak = torch.cuda.max_memory_allocated(device) if cuda else None
  return RunResult.timed(
    name,
    seconds,
    cfg.steps,
    cfg.batch,
    flops_per_step,
    peak,
    compile_s,
    final_loss=float(loss.detach().float()),
    **extra,
  )


def free(device: Any) -> None:
  """Hands torch's cached device memory back (JAX runs after it in the same process)."""
  import torch

  gc.collect()
  if device.type == "cuda":
    torch.cuda.empty_cache()


def failure(name: str, error: Exception) -> RunResult:
  """A row saying why `name` has no figures: 'out of memory', or the error's first line."""
  if is_out_of_memory(error):
    return RunResult(name, error="out of memory")
  return RunResult(name, error=f"{type(error).__name__}: {first_line(str(error))[:200]}")


def run(cfg: BenchConfig, modes: tuple[str, ...] = MODES) -> list[RunResult]:
  """Runs the PEFT step in each of `modes` ('eager', 'compile'); a failing mode (e.g. out of
  memory) gives a row with `error` set. All torch memory is released before returning, so
  JAX can have the device afterwards."""
  import torch

  unknown = [m for m in modes if m not in MODES]
  if unknown:
    raise ValueError(f"unknown PEFT mode(s) {unknown}: expected some of {MODES}")
  device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
  flops_per_step = flops.flops_per_step(cfg.t5_config(), cfg.batch, cfg.input_length, cfg.target_length)
  results: list[RunResult] = []
  model = optimizer = batch = None
  try:
    log(f"peft: building {cfg.model} ({cfg.dtype}) on {device}")
    model, optimizer, batch = _build(cfg, device)
  except Exception as e:  # noqa: BLE001 -- e.g. the weights alone do not fit
    free(device)
    return [failure(f"peft {mode}", e) for mode in modes]
  info = dict(
    optimizer="Adafactor (transformers)",
    torch_device=str(device),
    trainable_params=sum(p.numel() for p in model.parameters() if p.requires_grad),
  )
  for mode in modes:
    name = f"peft {mode}"
    try:
      log(f"peft {mode}: warmup and {cfg.steps} timed steps")
      forward = model if mode == "eager" else torch.compile(model)
      results.append(_time(name, _make_step(forward, optimizer, batch), cfg, device, flops_per_step, **info))
    except Exception as e:  # noqa: BLE001 -- OOM, or torch.compile unavailable here: report, don't crash
      optimizer.zero_grad(set_to_none=True)
      results.append(failure(name, e))
    finally:
      forward = None
      free(device)
  del model, optimizer, batch
  if "compile" in modes:
    torch._dynamo.reset()  # drop compiled graphs (and the memory they pin)
  free(device)
  return results


def versions() -> dict[str, str | None]:
  """torch / transformers / peft versions, None where a package is missing."""
  out: dict[str, str | None] = {}
  for name in ("torch", "transformers", "peft"):
    try:
      out[name] = __import__(name).__version__
    except ImportError:
      out[name] = None
  return out


def _pad_tokenizer() -> Any:
  """A transformers tokenizer that only pads (pad id 0, as T5's): DataCollatorForSeq2Seq pads through
  one, and the examples come already tokenized (T5's own vocabulary cannot be downloaded here)."""
  from tokenizers import Tokenizer
  from tokenizers.models import WordLevel
  from transformers import PreTrainedTokenizerFast

  vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2}
  return PreTrainedTokenizerFast(
    tokenizer_object=Tokenizer(WordLevel(vocab, unk_token="<unk>")),
    pad_token="<pad>",
    eos_token="</s>",
    unk_token="<unk>",
  )


@dataclasses.dataclass(frozen=True)
class Dynamic:
  """How the rows with dynamic padding feed and compile PEFT.

  compile_backend: the TorchDynamo backend of the compiled rows ('eager' traces without generating
    code).
  pad_to_multiple_of: DataCollatorForSeq2Seq's option of that name (transformers' examples set 8 for
    mixed precision): fewer distinct shapes, lengths aligned for the tensor cores.
  mark_dynamic: mark each batch's length dimensions dynamic before the call
    (`torch._dynamo.maybe_mark_dynamic`), so torch.compile traces symbolic lengths from its first
    compile instead of recompiling when a second length arrives (the batch size stays static).
  """

  compile_backend: str = "inductor"
  pad_to_multiple_of: int | None = None
  mark_dynamic: bool = False


def run_dynamic(
  cfg: BenchConfig,
  examples: list[dict[str, list[int]]],
  order: list[int],
  modes: tuple[str, ...] = MODES,
  options: Dynamic = Dynamic(),
) -> list[RunResult]:
  """PEFT with its usual dynamic padding, end to end from tokenized examples, in each of `modes`.

  A torch DataLoader (main-process loading, its default) draws the examples in `order`, the same
  examples per step as our rows, and transformers' DataCollatorForSeq2Seq pads each batch to its
  longest input and target (labels with -100); the batch is moved to the device, then one optimizer
  step as in `run`. torch.compile gets variable shapes, as a user's does: mode 'compile' is its
  default, which recompiles on new shapes until it marks them dynamic; 'compile_symbolic' is
  torch.compile(dynamic=True), symbolic shapes from the first compile; `options` (`Dynamic`) for the
  backend, the collator's rounding and marking lengths dynamic. cfg.warmup untimed steps come first,
  then cfg.steps timed.

  examples: {'input_ids': [...], 'labels': [...]}, each EOS-terminated and cut to the feature lengths.
  order: example indices, (cfg.warmup + cfg.steps) * cfg.batch of them.
  Returns rows named 'peft <mode> dynamic'; extra has target_tokens_per_s and input_padding.
  """
  import torch
  from transformers import DataCollatorForSeq2Seq

  device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
  names = [f"peft {DYNAMIC_MODE_LABELS[mode]} dynamic" for mode in modes]
  try:
    log(f"peft: building {cfg.model} ({cfg.dtype}) on {device}")
    model, optimizer = _build_model(cfg, device)
  except Exception as e:  # noqa: BLE001 -- e.g. the weights alone do not fit
    free(device)
    return [failure(name, e) for name in names]
  features = [
    {"input_ids": ex["input_ids"], "attention_mask": [1] * len(ex["input_ids"]), "labels": ex["labels"]}
    for ex in examples
  ]
  collator = DataCollatorForSeq2Seq(
    _pad_tokenizer(), model=None, padding="longest", pad_to_multiple_of=options.pad_to_multiple_of
  )
  results = []
  for mode, name in zip(modes, names):
    forward = loader = None
    try:
      log(f"{name}: {cfg.warmup} warmup and {cfg.steps} timed steps")
      # 'compile': torch.compile's default, which recompiles on new shapes until it marks them dynamic;
      # 'compile_symbolic': dynamic=True, symbolic shapes from the first compile (what a user tries next).
      dynamic = True if mode == "compile_symbolic" else None
      forward = model if mode == "eager" else torch.compile(model, dynamic=dynamic, backend=options.compile_backend)
      loader = iter(
        torch.utils.data.DataLoader(features, cfg.batch, sampler=order, collate_fn=collator, drop_last=True)
      )
      mark = options.mark_dynamic and mode != "eager"
      results.append(_time_dynamic(name, forward, optimizer, loader, cfg, device, mark))
      results[-1].extra.update(pad_to_multiple_of=options.pad_to_multiple_of, mark_dynamic=mark)
    except Exception as e:  # noqa: BLE001 -- OOM, or torch.compile unavailable here: report, don't crash
      optimizer.zero_grad(set_to_none=True)
      results.append(failure(name, e))
    finally:
      forward = loader = None
      free(device)
    log_row(results[-1])
  del model, optimizer
  if "compile" in modes:
    torch._dynamo.reset()
  free(device)
  return results


def _time_dynamic(
  name: str, forward: Callable, optimizer: Any, loader: Any, cfg: BenchConfig, device: Any, mark_dynamic: bool
) -> RunResult:
  """`_time`'s protocol over batches drawn from `loader` (each step loads, collates and moves its own
  batch); counts the real target and input tokens of the timed steps on the host batches.
  `mark_dynamic`: each batch's length dimensions are marked dynamic (see `Dynamic`)."""
  import torch

  cuda = device.type == "cuda"
  sync = torch.cuda.synchronize if cuda else (lambda: None)
  counts = {"targets": 0, "inputs": 0, "positions": 0}
  shapes = set()  # (input length, target length) of the timed batches

  def step(count: bool) -> Any:
    batch = next(loader)
    if count:  # on the host batch: no device sync
      counts["targets"] += int((batch["labels"] != -100).sum())
      counts["inputs"] += int(batch["attention_mask"].sum())
      counts["positions"] += batch["input_ids"].numel()
      shapes.add((batch["input_ids"].shape[1], batch["labels"].shape[1]))
    batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
    if mark_dynamic:
      for tensor in batch.values():
        torch._dynamo.maybe_mark_dynamic(tensor, 1)
    loss = forward(**batch).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss

  if cuda:
    torch.cuda.reset_peak_memory_stats(device)
  graphs_at_start = _compiled_graphs()
  start = time.perf_counter()
  loss = step(False)
  sync()
  compile_s = time.perf_counter() - start
  for _ in range(cfg.warmup - 1):
    loss = step(False)
  sync()
  graphs_before = _compiled_graphs()
  start = time.perf_counter()
  for _ in range(cfg.steps):
    loss = step(True)
  sync()
  seconds = time.perf_counter() - start
  # torch.compile's graphs compiled during the timed steps: shapes it had not generalized over.
  recompiled = None if graphs_before is None else _compiled_graphs() - graphs_before
  compiled = None if graphs_at_start is None else _compiled_graphs() - graphs_at_start
  return RunResult.timed(
    name,
    seconds,
    cfg.steps,
    cfg.batch,
    None,
    torch.cuda.max_memory_allocated(device) if cuda else None,
    compile_s,
    target_tokens_per_s=counts["targets"] / seconds,
    input_padding=1 - counts["inputs"] / counts["positions"],
    final_loss=float(loss.detach().float()),
    torch_device=str(device),
    batch_shapes_timed=len(shapes),
    input_lengths_timed=sorted({inputs for inputs, _ in shapes}),
    graphs_compiled_timed=recompiled,
    graphs_compiled=compiled,
  )


def _compiled_graphs() -> int | None:
  """How many graphs TorchDynamo has compiled in this process so far (None where it is unavailable)."""
  try:
    from torch._dynamo.utils import counters
  except ImportError:
    return None
  return int(counters["stats"]["unique_graphs"])
