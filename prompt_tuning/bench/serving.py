"""The server under load (`prompt-tuning bench --mode serve`): requests/s of `prompt-tuning serve`'s
own stack (serving.start.build_server, uvicorn in a thread, HTTP on 127.0.0.1) for k tasks.

The frozen model has random weights made on the device (bench.ours.init_on_device); each of the
k tasks gets a random prompt of --prompt_length rows, written as a real prompt bundle (with the
model's fingerprint) and read back by the server as `--prompt task=path` would be. The server's
fixed shapes are the bench's: inputs of input_length - prompt_length tokens (every row padded to
it), greedy decoding of target_length tokens, batches of up to --batch rows gathered for at most
--max_wait_ms. The vocabulary is the quick start's SentencePiece model (shipped in the package):
only the text side uses it; the model's shapes are the named config's.

The load (serving.load.run_load): --requests /predict (or /score) requests round-robin over the
tasks, --concurrency in flight at most, each one input; first one untimed round of --concurrency
requests so every batch size the load produces has run once.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from typing import Any

import jax
import numpy as np

import prompt_tuning
from prompt_tuning import param_tree, partitioning
from prompt_tuning.bench import BenchConfig, log
from prompt_tuning.bench.ours import init_on_device
from prompt_tuning.checkpoints import bundle as bundle_lib
from prompt_tuning.models.prompt import PromptConfig, PromptedTransformer
from prompt_tuning.serving import load as load_lib
from prompt_tuning.serving.start import ServerThread, build_server

VOCABULARY = os.path.join(os.path.dirname(prompt_tuning.__file__), "data", "quickstart", "sentencepiece.model")
INPUT_TEXT = "sentence: the film is a quiet delight, and its second half never lets go."


@dataclasses.dataclass(frozen=True)
class LoadConfig:
  """What the serve mode adds to BenchConfig (whose batch is the server's --max_batch_size).

  tasks: prompts served (requests round-robin over them); requests / concurrency: the load;
  max_wait_ms: how long the first queued row waits for others; endpoint: 'predict' or 'score'.
  """

  tasks: int = 8
  requests: int = 2000
  concurrency: int = 64
  max_wait_ms: float = 5.0
  endpoint: str = "predict"
  candidates: tuple[str, ...] = ("negative", "positive")

  def __post_init__(self):
    for name in ("tasks", "requests", "concurrency"):
      if getattr(self, name) < 1:
        raise ValueError(f"--{name} must be >= 1, got {getattr(self, name)}")
    if self.max_wait_ms < 0:
      raise ValueError(f"--max_wait_ms must be >= 0, got {self.max_wait_ms}")
    if self.endpoint not in ("predict", "score"):
      raise ValueError(f"--endpoint must be predict or score, got {self.endpoint!r}")


def write_bundles(cfg: BenchConfig, load: LoadConfig, config: Any, frozen: Any, directory: str) -> dict[str, str]:
  """k random prompts [prompt_length, embed] as bundles of the frozen model; {task: path}."""
  fingerprint = param_tree.fingerprint(frozen)
  rng = np.random.default_rng(cfg.seed)
  sources = {}
  for k in range(load.tasks):
    name = f"task{k}"
    bundle = bundle_lib.PromptBundle(
      prompt=rng.uniform(-0.5, 0.5, (cfg.prompt_length, config.emb_dim)).astype(np.float32),
      config=bundle_lib.architecture(config),
      fingerprint=fingerprint,
      task=name,
      vocabulary_path=VOCABULARY,
      feature_lengths={"inputs": cfg.token_length, "targets": cfg.target_length},
    )
    sources[name] = bundle_lib.write_bundle(os.path.join(directory, f"{name}.safetensors"), bundle)
  return sources


def bodies(load: LoadConfig, tasks: list[str]) -> list[tuple[str, dict]]:
  """One request body per task, as the load generator sends them (round-robin)."""
  if load.endpoint == "predict":
    return [("/predict", {"task": t, "inputs": [INPUT_TEXT], "truncate": True}) for t in tasks]
  return [
    ("/score", {"task": t, "input": INPUT_TEXT, "candidates": list(load.candidates), "truncate": True}) for t in tasks
  ]


def run(cfg: BenchConfig, load: LoadConfig) -> dict[str, Any]:
  """Starts the server, sends the load, stops it; the load's figures plus the server's batch counts."""
  config = cfg.t5_config()
  mesh = partitioning.make_mesh(1)
  module = PromptedTransformer(config, prompt_config=PromptConfig(cfg.prompt_length))
  log(f"serve: initializing {cfg.model} ({cfg.dtype}) on one device")
  _, frozen, _ = init_on_device(module, mesh, cfg.seed)
  with tempfile.TemporaryDirectory(prefix="bench_serve_") as directory:
    sources = write_bundles(cfg, load, config, frozen, directory)
    log(f"serve: building the server of {load.tasks} prompts (compiles every batch size)")
    server = build_server(
      config,
      frozen,
      sources,
      max_batch_size=cfg.batch,
      max_wait_ms=load.max_wait_ms,
      max_candidates=max(len(load.candidates), 1),
      note=log,
    )
    with ServerThread(server) as running:
      requests = bodies(load, list(sources))
      log(f"serve: {load.concurrency} untimed requests, then {load.requests} at concurrency {load.concurrency}")
      warm = load_lib.run_load(running.url, requests, load.concurrency, load.concurrency)
      _, before = load_lib.request(running.url, "GET", "/health")
      result = load_lib.run_load(running.url, requests, load.requests, load.concurrency)
      _, after = load_lib.request(running.url, "GET", "/health")
  batches = after["batches"] - before["batches"]
  rows = after["rows"] - before["rows"]
  return {
    **result,
    "warmup_status": warm["status"],
    "batches": batches,
    "rows_per_batch": rows / batches if batches else None,
    "mixed_batches": after["mixed_batches"] - before["mixed_batches"],
    "device": jax.devices()[0].device_kind,
  }


def format_report(data: dict[str, Any]) -> str:
  cfg, load, r = data["config"], data["load"], data["result"]
  latency = r["latency_ms"]
  return "\n".join(
    [
      (
        f"prompt-tuning bench --mode serve: {cfg['model']} {cfg['dtype']} on {r['device']}, {load['tasks']} prompts of "
        f"{cfg['prompt_length']}, inputs {cfg['input_length'] - cfg['prompt_length']} tokens, "
        f"{'greedy decode of ' + str(cfg['target_length']) + ' tokens' if load['endpoint'] == 'predict' else 'scoring'}; "
        f"batches of up to {cfg['batch']} rows, max wait {load['max_wait_ms']} ms"
      ),
      (
        f"{r['requests']} /{load['endpoint']} requests at concurrency {r['concurrency']}: "
        f"{r['requests_per_s']:.1f} requests/s in {r['seconds']:.2f} s; latency ms p50 {latency['p50']}, "
        f"p90 {latency['p90']}, p99 {latency['p99']}, max {latency['max']}; status {r['status']}"
      ),
      (
        f"device batches: {r['batches']}, {r['rows_per_batch'] or 0:.1f} rows each on average, "
        f"{r['mixed_batches']} mixing tasks"
      ),
    ]
  )
