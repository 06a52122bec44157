"""`prompt-tuning bench`: the FLOP convention, the JSON report of a tiny run, failures, and imports."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from prompt_tuning.bench import BenchConfig, RunResult, flops, inference, ours, peft_baseline
from prompt_tuning.cli import main as cli
from prompt_tuning.models.prompt import PromptConfig, PromptedTransformer
from prompt_tuning.models.t5.config import get_config
from support import param_counts, processes

TINY_ARGS = [
  "--model",
  "tiny",
  "--batch",
  "2",
  "--input_length",
  "24",
  "--target_length",
  "4",
  "--prompt_length",
  "4",
  "--steps",
  "2",
  "--warmup",
  "1",
  "--dtype",
  "float32",
]


def _tiny_flops_by_hand() -> int:
  # tiny: d=32, heads*kv = 4*8 = 32, mlp 64, gated (wi_0, wi_1, wo), 2+2 layers, vocab 32128.
  attention = 4 * 32 * 32  # q, k, v, o
  mlp = 3 * 32 * 64
  encoder_side = 2 * (attention + mlp) + 2 * (2 * 32 * 32)  # + decoder cross-attention k, v
  decoder_side = 2 * (attention + 2 * 32 * 32 + mlp) + 32 * 32128  # self-attn, cross q/o, mlp; logits
  assert (encoder_side, decoder_side) == (24_576, 1_052_672)
  return 4 * (encoder_side * 2 * 24 + decoder_side * 2 * 4)  # batch 2, input 24 (prompt incl.), target 4


def test_flops_formula_by_hand():
  config = get_config("tiny")
  assert flops.matmul_params(config) == flops.MatmulParams(24_576, 1_052_672)
  assert flops.flops_per_step(config, 2, 24, 4) == _tiny_flops_by_hand() == 38_404_096
  assert flops.naive_flops_per_step(config, 2, 24, 4) == 4 * (24_576 + 1_052_672) * 2 * (24 + 4)
  # Linear in batch; the prompt positions count as encoder tokens.
  assert flops.flops_per_step(config, 4, 24, 4) == 2 * flops.flops_per_step(config, 2, 24, 4)


@pytest.mark.parametrize("overrides", [{}, {"mlp_activations": ("relu",), "logits_via_embedding": True}])
def test_closed_form_matches_the_parameter_tree(overrides):
  """The closed form counts exactly the kernels of the real (prompted) network, T5 1.1 and 1.0."""
  config = get_config("tiny", **overrides)
  module = PromptedTransformer(config, prompt_config=PromptConfig(3))
  tokens = jax.numpy.ones((1, 2), jax.numpy.int32)
  abstract = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), tokens, tokens))["params"]
  abstract = jax.tree.map(lambda x: getattr(x, "value", x), abstract, is_leaf=lambda x: hasattr(x, "names"))
  assert param_counts.matmul_params_from_tree(abstract, config.logits_via_embedding) == flops.matmul_params(config)


def test_bench_tiny_writes_the_json_report(tmp_path, capsys):
  path = tmp_path / "out.json"
  traces = tmp_path / "traces"
  argv = ["bench", *TINY_ARGS, "--peft", "eager", "--matmul_dtype", "both", "--json", str(path)]
  assert cli.main([*argv, "--profile", str(traces), "--profile_calls", "2"]) == 0
  data = json.loads(path.read_text())
  results = data["results"]
  assert set(results) == {"ours", "ours_fp8", "peft_eager"}
  assert results["ours"]["error"] is None and results["ours"]["examples_per_s"] > 0
  # The same step with FP8 matmuls: its own row, its first loss off by FP8's rounding only.
  fp8_row = results["ours_fp8"]
  assert fp8_row["error"] is None and fp8_row["extra"]["matmul_dtype"] == "fp8"
  assert fp8_row["extra"]["first_loss"] != results["ours"]["extra"]["first_loss"]
  assert fp8_row["extra"]["first_loss"] == pytest.approx(results["ours"]["extra"]["first_loss"], rel=0.02)
  assert data["ratios"]["ours_fp8/ours"] == pytest.approx(fp8_row["examples_per_s"] / results["ours"]["examples_per_s"])
  assert 0 < results["ours"]["extra"]["step_memory_gib"] < 1  # XLA's analysis of the compiled step
  assert results["peft_eager"]["error"] is None and results["peft_eager"]["examples_per_s"] > 0
  assert results["ours"]["extra"]["step"] == 3  # 1 warmup + 2 timed steps of the real optimizer
  assert data["flops"]["per_step"] == _tiny_flops_by_hand()
  ours_row = results["ours"]
  assert ours_row["tflops"] == pytest.approx(data["flops"]["per_step"] / (ours_row["step_ms"] / 1e3) / 1e12)
  ratio = data["ratios"]["ours/peft_eager"]
  assert ratio == pytest.approx(ours_row["examples_per_s"] / results["peft_eager"]["examples_per_s"])
  assert data["config"]["input_length"] == 24 and "4N per token" in data["flops"]["convention"]
  out = capsys.readouterr().out
  assert "peft eager" in out and "ours/peft eager" in out and "convention:" in out
  # --profile: each of our rows traced after timing (the step count above excludes those calls).
  for row, directory in (("ours", "ours"), ("ours_fp8", "ours_fp8")):
    profiled = results[row]["extra"]["profile"]
    assert profiled["calls"] == 2 and profiled["trace_dir"] == str(traces / directory)
    assert list((traces / directory).glob("**/*.xplane.pb"))
  assert "profile of 'ours fp8': 2 calls traced" in out and "no device kernels in the trace" in out


def test_bench_rejects_a_prompt_longer_than_the_input(capsys):
  assert cli.main(["bench", "--model", "tiny", "--input_length", "4", "--prompt_length", "4", "--peft", "none"]) == 2
  assert "includes the prompt" in capsys.readouterr().err


@pytest.mark.parametrize(
  "argv, expected",
  [
    (["--mode", "infer", "--matmul_dtype", "both"], "--matmul_dtype both times --mode train only"),
    (["--mode", "fp8", "--trajectory_points", "400"], "--trajectory_points=400 exceeds --trajectory_steps=300"),
    (["--mode", "fp8", "--peft", "eager"], "--mode fp8 has no PEFT baseline"),
  ],
)
def test_bench_fp8_options_are_checked_before_anything_runs(argv, expected, capsys):
  assert cli.main(["bench", "--model", "tiny", *argv]) == 2
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1 and expected in err


@pytest.mark.slow
def test_bench_fp8_mode_compares_fp8_and_nudged_bf16_with_bf16(tmp_path, capsys):
  """--mode fp8: three runs of a few steps from one initial prompt on the same batches, the rows, the
  loss series and the prompt gaps at the compared steps, and the held-out label metrics."""
  path = tmp_path / "fp8.json"
  args = ["--model", "tiny", "--batch", "2", "--input_length", "12", "--target_length", "2", "--prompt_length", "2"]
  argv = ["bench", "--mode", "fp8", *args, "--trajectory_steps", "4", "--trajectory_points", "2", "--json", str(path)]
  assert cli.main(argv) == 0
  data = json.loads(path.read_text())
  results, comparisons = data["results"], data["comparisons"]
  assert list(results) == ["f32", "fp8", "f32_nudged"] or list(results) == ["bf16", "fp8", "bf16_nudged"]
  ref, fp8_row, nudged = results.values()
  assert all(r["error"] is None and r["examples_per_s"] > 0 for r in results.values())
  assert [r["extra"]["matmul_dtype"] for r in results.values()] == ["default", "fp8", "default"]
  assert ref["extra"]["steps"] == [2, 4] and len(fp8_row["extra"]["loss"]) == 2
  assert fp8_row["extra"]["loss"] != ref["extra"]["loss"]  # quantized: not the reference's numbers
  assert set(comparisons) == {"fp8", list(results)[2]}
  for c in comparisons.values():
    values = [c["final_loss_gap"], c["heldout_loss_gap"], *c["loss_gap"], *c["prompt_rel_l2"], *c["update_cosine"]]
    assert c["steps"] == [2, 4] and all(np.isfinite(values))
    assert all(0 < gap for gap in c["prompt_rel_l2"])  # both moved the prompt away from the reference's
  assert data["fp8_speedup"] == pytest.approx(fp8_row["examples_per_s"] / ref["examples_per_s"])
  out = capsys.readouterr().out
  assert "fp8 vs " in out and "nudged vs " in out and "keyword classification" in out


def test_out_of_memory_is_reported_not_raised(monkeypatch):
  def oom(*args, **kwargs):
    raise RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 123 bytes.")

  cfg = BenchConfig(
    model="tiny", batch=2, input_length=8, target_length=2, prompt_length=2, dtype="float32", steps=1, warmup=1
  )
  monkeypatch.setattr(ours, "_run", oom)
  assert ours.run(cfg).error == "out of memory"
  monkeypatch.setattr(peft_baseline, "_time", oom)
  rows = peft_baseline.run(cfg, ("eager",))
  assert [(r.name, r.error) for r in rows] == [("peft eager", "out of memory")]


def test_run_result_rates():
  row = RunResult.timed("x", seconds=2.0, steps=4, batch=8, flops_per_step=10**12, peak_bytes=2**31, compile_s=1.0)
  assert (row.step_ms, row.examples_per_s, row.tflops, row.peak_gib) == (500.0, 16.0, 2.0, 2.0)


def test_imports_without_tensorflow_seqio_or_gin():
  script = textwrap.dedent("""
      import sys
      for name in ("tensorflow", "seqio", "gin", "tensorflow_datasets"):
        sys.modules[name] = None  # importing any of these now raises ImportError
      import prompt_tuning.cli.bench
      from prompt_tuning.bench import ours, peft_baseline, flops, inference, generation, hbm, hf_decoding, workload, lengths
      from prompt_tuning.bench import trajectory
      assert "torch" not in sys.modules, "torch must be imported lazily"
      assert not any(m.startswith(("prompt_tuning.data", "prompt_tuning.tasks", "prompt_tuning.gin_utils"))
                     for m in sys.modules)
      print("ok")
  """)
  result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.strip() == "ok"


@pytest.mark.slow
def test_random_weights_and_first_loss_do_not_depend_on_the_mesh():
  """The bench's model-parallel check compares first-step losses across meshes: the weights made on
  the devices must be the same numbers whatever the sharding (float32: equal to rounding)."""
  script = textwrap.dedent("""
      from prompt_tuning.bench import BenchConfig, ours
      for partitions in (1, 2, 4):
        cfg = BenchConfig(model="tiny", batch=4, input_length=24, target_length=4, prompt_length=4,
                          dtype="float32", steps=1, warmup=1, num_partitions=partitions, remat_policy="full")
        row = ours.run(cfg)
        print(row.extra["mesh"]["model"], row.extra["first_loss"])
  """)
  env = processes.cpu_env(4)
  result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=600)
  assert result.returncode == 0, result.stderr[-2000:]
  rows = [line.split() for line in result.stdout.strip().splitlines()]
  assert [int(model) for model, _ in rows] == [1, 2, 4]
  losses = [float(loss) for _, loss in rows]
  assert losses[0] > 5.0  # ~ln(vocab) for random weights: a real loss, not a placeholder
  np.testing.assert_allclose(losses[1:], losses[0], rtol=1e-5)


def test_task_ids_cover_every_task_shuffled():
  ids = inference.task_ids(32, 8, seed=0)
  assert np.bincount(ids).tolist() == [4] * 8
  assert not np.array_equal(ids, np.arange(32) % 8)
  assert inference.InferenceConfig(tasks=4, vary_prompt_lengths=True).task_lengths(10) == (5, 7, 8, 10)


@pytest.mark.slow
def test_bench_infer_mode_reports_one_and_many_tasks(tmp_path, capsys):
  """--mode infer: decode and rank rows for 1 prompt and for a table of 3 prompts of mixed lengths,
  every row decoded to the full target length, and the ratios the rows give."""
  path = tmp_path / "infer.json"
  args = [a if a != "2" else "1" for a in TINY_ARGS]  # one timed call: compiling is most of it
  argv = ["bench", "--mode", "infer", *args, "--tasks", "3", "--vary_prompt_lengths", "--json", str(path)]
  assert cli.main(argv) == 0
  data = json.loads(path.read_text())
  results = data["results"]
  assert set(results) == {"decode_1_task", "rank_1_task", "decode_3_tasks", "rank_3_tasks"}
  assert all(r["error"] is None and r["examples_per_s"] > 0 for r in results.values())
  assert results["decode_3_tasks"]["extra"]["task_lengths"] == [2, 3, 4]
  assert results["decode_1_task"]["extra"]["decoded_tokens_per_row"] == 4  # random weights: never EOS
  ratio = data["ratios"]["decode: 3 tasks / 1 task"]
  assert ratio == pytest.approx(
    results["decode_3_tasks"]["examples_per_s"] / results["decode_1_task"]["examples_per_s"]
  )
  assert "rank: 3 tasks / 1 task" in capsys.readouterr().out
  assert cli.main(["bench", "--mode", "infer", *args, "--tasks", "1"]) == 2
  assert "--tasks must be >= 2" in capsys.readouterr().err


@pytest.mark.slow
def test_bench_serve_mode_loads_the_real_server(tmp_path, capsys):
  """--mode serve: bundles of the random model, the HTTP server on 127.0.0.1, every request answered,
  batches that mix the tasks."""
  path = tmp_path / "serve.json"
  args = ["--model", "tiny", "--batch", "2", "--input_length", "12", "--target_length", "2", "--prompt_length", "2"]
  load = ["--tasks", "2", "--requests", "12", "--concurrency", "1,4", "--max_wait_ms", "50"]
  assert cli.main(["bench", "--mode", "serve", *args, "--dtype", "float32", *load, "--json", str(path)]) == 0
  single, concurrent = json.loads(path.read_text())["results"]
  assert single["concurrency"] == 1 and single["batches"] == 12 and single["mixed_batches"] == 0
  assert concurrent["status"] == {"200": 12} and concurrent["requests_per_s"] > 0
  assert concurrent["batches"] >= 6 and concurrent["mixed_batches"] >= 1  # 12 rows in batches of <= 2
  assert "requests/s" in capsys.readouterr().out
  assert cli.main(["bench", "--mode", "serve", *args, "--requests", "0"]) == 2
  assert "--requests must be >= 1" in capsys.readouterr().err


def test_result_tables_align_cells_under_their_titles():
  from prompt_tuning.bench import tables

  results = {
    "ours_fp8": {"error": None, "step_ms": 12.345, "extra": {"padding": 0.25}},
    "peft_eager": {"error": None, "step_ms": 123.4, "extra": {}},
    "peft_compile": {"error": "out of memory", "step_ms": None, "extra": {}},
  }
  columns = [("step ms", "9.2f", tables.field("step_ms")), ("padding share", "8.1%", tables.extra("padding"))]
  assert tables.table(results, 12, columns) == [
    "               step ms padding share",  # a column is as wide as its spec or its title
    "ours fp8         12.35         25.0%",
    "peft eager      123.40             -",
    "peft compile out of memory",
  ]
