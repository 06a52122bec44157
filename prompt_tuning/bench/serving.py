"""The server under load (`prompt-tuning bench --mode serve`): requests/s of `prompt-tuning serve`'s
own stack (serving.start.build_server, uvicorn in a thread, HTTP on 127.0.0.1) for k tasks.

The frozen model has random weights made on the device (bench.ours.init_on_device); each of the
k tasks gets a random prompt of --prompt_length rows, written as a real prompt bundle (with the
model's fingerprint) and read back by the server as `--prompt task=path` would be. The server's
fixed shapes are the bench's: inputs of input_length - prompt_length tokens (every row padded to
it), greedy decoding of target_length tokens, batches of up to --batch rows gathered for at most
--max_wait_ms. The vocabulary is the quick start's SentencePiece model (shipped in the package):
only the text side uses it; the model's shapes are the named config's.

The load (serving.load): --requests /predict (or /score) requests round-robin over the tasks,
--concurrency in flight at most (several levels: one load each, on the same server), each request
one input; first one untimed round of --concurrency requests so every batch size the load produces
has run once. The load generator runs in its own process (`python -m prompt_tuning.serving.load`),
so its threads do not share the server's interpreter lock.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tempfile
from typing import Any

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

  tasks: prompts served (requests round-robin over them); requests / concurrency: the load, one
  per concurrency level; max_wait_ms: how long the first queued row waits for others; endpoint: 'predict' or 'score'.
  """

  tasks: int = 8
  requests: int = 2000
  concurrency: tuple[int, ...] = (64,)
  max_wait_ms: float = 5.0
  endpoint: str = "predict"
  candidates: tuple[str, ...] = ("negative", "positive")

  def __post_init__(self):
    for name in ("tasks", "requests"):
      if getattr(self, name) < 1:
        raise ValueError(f"--{name} must be >= 1, got {getattr(self, name)}")
    if not self.concurrency or min(self.concurrency) < 1:
      raise ValueError(f"--concurrency must be one or more integers >= 1, got {self.concurrency}")
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


def generate_load(url: str, load: LoadConfig, requests: int, concurrency: int) -> dict[str, Any]:
  """One run of the load generator in its own process; its JSON line."""
  command = [sys.executable, "-m", "prompt_tuning.serving.load", "--url", url, "--requests", str(requests)]
  command += ["--concurrency", str(concurrency), "--endpoint", load.endpoint, "--input", INPUT_TEXT]
  command += ["--candidates", ",".join(load.candidates)]
  done = subprocess.run(command, capture_output=True, text=True, timeout=3600)
  if not done.stdout.strip():
    raise RuntimeError(f"the load generator failed: {done.stderr.strip().splitlines()[-1:]}")
  return json.loads(done.stdout.strip().splitlines()[-1])


def run(cfg: BenchConfig, load: LoadConfig) -> list[dict[str, Any]]:
  """Starts the server, sends each load, stops it; per concurrency level the load's figures plus the
  server's batch counts during it."""
  config = cfg.t5_config()
  mesh = partitioning.make_mesh(1)
  module = PromptedTransformer(config, prompt_config=PromptConfig(cfg.prompt_length))
  log(f"serve: initializing {cfg.model} ({cfg.dtype}) on one device")
  _, frozen, _ = init_on_device(module, mesh, cfg.seed)
  results = []
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
      for concurrency in load.concurrency:
        log(f"serve: {concurrency} untimed requests, then {load.requests} at concurrency {concurrency}")
        warm = generate_load(running.url, load, concurrency, concurrency)
        _, before = load_lib.request(running.url, "GET", "/health")
        result = generate_load(running.url, load, load.requests, concurrency)
        _, after = load_lib.request(running.url, "GET", "/health")
        batches = after["batches"] - before["batches"]
        results.append(
          {
            **{k: v for k, v in result.items() if k not in ("url", "tasks")},
            "warmup_status": warm["status"],
            "batches": batches,
            "rows_per_batch": (after["rows"] - before["rows"]) / batches if batches else None,
            "mixed_batches": after["mixed_batches"] - before["mixed_batches"],
          }
        )
  return results


def format_report(data: dict[str, Any]) -> str:
  cfg, load = data["config"], data["load"]
  work = f"greedy decode of {cfg['target_length']} tokens" if load["endpoint"] == "predict" else "scoring"
  lines = [
    (
      f"prompt-tuning bench --mode serve: {cfg['model']} {cfg['dtype']} on {data['environment']['jax_device']}, "
      f"{load['tasks']} prompts of {cfg['prompt_length']}, inputs {cfg['input_length'] - cfg['prompt_length']} "
      f"tokens, {work}; batches of up to {cfg['batch']} rows, max wait {load['max_wait_ms']} ms; "
      f"{load['requests']} /{load['endpoint']} requests per concurrency level"
    ),
    "",
    f"{'concurrency':>11s} {'requests/s':>11s} {'p50 ms':>8s} {'p90 ms':>8s} {'p99 ms':>8s} {'rows/batch':>11s} "
    f"{'mixed':>7s}  status",
  ]
  for r in data["results"]:
    latency = r["latency_ms"]
    lines.append(
      f"{r['concurrency']:11d} {r['requests_per_s']:11.1f} {latency['p50']:8.2f} {latency['p90']:8.2f} "
      f"{latency['p99']:8.2f} {r['rows_per_batch'] or 0:11.1f} {r['mixed_batches']:3d}/{r['batches']:<3d}  {r['status']}"
    )
  return "\n".join(lines)
