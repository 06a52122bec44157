"""`prompt-tuning bench --mode workload`: the stored length histograms are their documented derivation,
PEFT gets exactly our pipeline's examples in our order, and a tiny run reports every row."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from prompt_tuning.bench import BenchConfig, RunResult, lengths, workload
from prompt_tuning.cli import main as cli

CFG = BenchConfig(
  model="tiny", batch=4, input_length=40, target_length=4, prompt_length=8, dtype="float32", steps=3, warmup=2
)


@pytest.mark.parametrize("name", sorted(lengths.SOURCES))
def test_stored_histograms_are_their_documented_derivation(name):
  stored, derived = lengths.HISTOGRAMS[name], lengths.derive(lengths.SOURCES[name])
  assert stored.mean_tokens == derived.mean_tokens
  np.testing.assert_allclose(stored.inputs, derived.inputs, atol=1e-12)
  assert len(stored.inputs) == len(lengths.EDGES) - 1 and sum(stored.inputs) == pytest.approx(1, abs=1e-3)
  assert stored.targets == derived.targets and sum(stored.targets.values()) == pytest.approx(1)
  inputs, targets = stored.sample(20000, seed=0)
  assert inputs.mean() == pytest.approx(stored.mean_tokens, rel=0.02)  # the bins keep the documented mean
  assert set(targets) <= set(stored.targets) and inputs.min() >= 1


def test_rte_mean_from_the_dataset_card():
  # 848745 bytes / 2490 train examples, less 20 non-text bytes each, plus 26 characters of T5's format,
  # at 4 characters a token, plus EOS.
  assert lengths.SOURCES["rte"].mean_tokens() == pytest.approx((848745 / 2490 - 20 + 26) / 4 + 1)
  assert set(lengths.HISTOGRAMS) >= {"rte", "boolq", "cb", "copa", "wic", "multirc"}


def test_peft_gets_our_pipelines_examples_in_our_order():
  work = workload.from_histogram("rte", 10, vocab_size=100, seed=3)
  assert [len(x) + 1 for x in work.inputs] == lengths.HISTOGRAMS["rte"].sample(10, 3)[0].tolist()
  examples, order = workload.peft_examples(CFG, work, vocab_size=100)
  assert len(order) == (CFG.warmup + CFG.steps) * CFG.batch  # 20: the stream crosses two epochs
  ours = workload._iterator(CFG, work, 100, None)
  for k, batch in enumerate(itertools.islice(ours, CFG.warmup + CFG.steps)):
    rows = [examples[i] for i in order[k * CFG.batch : (k + 1) * CFG.batch]]
    for row, tokens, targets in zip(
      rows, batch.arrays["encoder_input_tokens"], batch.arrays["decoder_target_tokens"]
    ):  # fmt: skip
      assert row["input_ids"] == tokens[tokens > 0].tolist() and row["input_ids"][-1] == 1  # cut, EOS kept
      assert row["labels"] == targets[targets > 0].tolist()


def test_bad_workloads_fail_in_one_line(capsys):
  base = ["bench", "--mode", "workload", "--model", "tiny", "--peft", "none"]
  assert cli.main([*base, "--workload", "squad"]) == 2
  assert "--workload 'squad': no histogram of that name; there are rte, boolq" in capsys.readouterr().err
  assert cli.main([*base, "--length_buckets", "64,x"]) == 2
  assert "--length_buckets must be 'pow2' or comma-separated input lengths" in capsys.readouterr().err
  assert cli.main([*base, "--length_buckets", "64,1024"]) == 2  # inputs are 512 - 100 = 412 tokens
  assert "LENGTH_BUCKETS['inputs'] has the length 1024, above TASK_FEATURE_LENGTHS['inputs'] = 412" in (
    capsys.readouterr().err
  )
  assert cli.main([*base, "--ours_rows", "padded,sorted"]) == 2
  assert "--ours_rows must name some of bucketed,padded,packed or be none, got padded,sorted" in capsys.readouterr().err
  assert cli.main([*base, "--ours_rows", "none"]) == 2
  assert "--ours_rows none with --peft none leaves no row to run" in capsys.readouterr().err
  assert cli.main([*base, "--peft_pad_to_multiple_of", "0"]) == 2
  assert "--peft_pad_to_multiple_of must be >= 1, got 0" in capsys.readouterr().err
  assert cli.main([*base, "--packed_target_length", "0"]) == 2
  assert "--packed_target_length must be >= 1, got 0" in capsys.readouterr().err


def test_ours_rows_and_the_packed_decoder_row(monkeypatch):
  calls = []

  def run_ours(cfg, work, buckets, packed):
    calls.append((buckets, packed))
    return RunResult("ours", error="not run")

  monkeypatch.setattr(workload, "run_ours", run_ours)
  work = workload.from_histogram("rte", 10, vocab_size=100, seed=3)
  workload.run(CFG, work, "pow2", (), ours_rows=("packed", "bucketed"))
  # In the table's order; the packed row's decoder row twice the unpacked one's by default.
  assert calls == [("pow2", None), (None, {"inputs": 32, "targets": 8})]
  calls.clear()
  workload.run(CFG, work, "pow2", (), ours_rows=("padded", "packed"), packed_target_length=12)
  assert calls == [(None, None), (None, {"inputs": 32, "targets": 12})]


@pytest.mark.slow  # compiles our step for four shapes and runs PEFT eager: ~25 s on 2 CPU cores
def test_workload_mode_on_a_tasks_own_data_reports_both_sides(tmp_path, capsys):
  path = tmp_path / "workload.json"
  args = ["--model", "tiny", "--batch", "4", "--input_length", "40", "--prompt_length", "8", "--target_length", "4"]
  args += ["--steps", "3", "--warmup", "2", "--dtype", "float32", "--peft", "both", "--json", str(path)]
  args += ["--peft_symbolic", "--torch_compile_backend", "eager"]  # TorchDynamo's trace, no code generation
  args += ["--peft_pad_to_multiple_of", "8", "--peft_mark_dynamic"]
  assert cli.main(["bench", "--mode", "workload", "--workload_task", "quickstart_sentiment", *args]) == 0
  data = json.loads(path.read_text())
  assert data["workload"]["source"].startswith("task quickstart_sentiment, split train (600 examples, measured)")
  results = data["results"]
  assert set(results) == {
    "ours_bucketed", "ours_padded", "ours_packed", "peft_eager_dynamic", "peft_compile_dynamic",
    "peft_compile_symbolic_dynamic",
  }  # fmt: skip
  for row in results.values():
    assert row["error"] is None and row["examples_per_s"] > 0 and row["extra"]["target_tokens_per_s"] > 0
  bucketed, padded = results["ours_bucketed"]["extra"], results["ours_padded"]["extra"]
  assert bucketed["buckets"] == "inputs 16/32, targets 4 (2 shapes)" and bucketed["step"] == 5
  # Bucketing runs a few shapes, every one compiled before the timed steps; dynamic padding more.
  assert bucketed["graphs_compiled_timed"] == padded["graphs_compiled_timed"] == 0
  assert 1 <= bucketed["batch_shapes_timed"] <= 2 and padded["batch_shapes_timed"] == 1
  assert results["peft_eager_dynamic"]["extra"]["batch_shapes_timed"] >= bucketed["batch_shapes_timed"]
  assert results["peft_eager_dynamic"]["extra"]["graphs_compiled_timed"] == 0  # eager: nothing compiles
  assert results["peft_compile_symbolic_dynamic"]["extra"]["graphs_compiled_timed"] >= 0
  # Lengths marked dynamic: the compiled row traced its 5 batches of several lengths once.
  compiled = results["peft_compile_dynamic"]["extra"]
  assert compiled["mark_dynamic"] and compiled["graphs_compiled"] == 1 and len(compiled["input_lengths_timed"]) > 1
  assert not results["peft_eager_dynamic"]["extra"]["mark_dynamic"]  # eager compiles nothing to mark for
  # PEFT's collator pads each batch to its longest example, rounded up to a multiple of 8 here.
  for name in ("peft_eager_dynamic", "peft_compile_symbolic_dynamic"):
    extra = results[name]["extra"]
    assert extra["pad_to_multiple_of"] == 8 and extra["input_lengths_timed"]
    assert all(length % 8 == 0 for length in extra["input_lengths_timed"])
  # The same examples: bucketing pads less than the fixed length; dynamic padding pads least.
  assert results["peft_eager_dynamic"]["extra"]["input_padding"] <= bucketed["input_padding"]
  assert bucketed["input_padding"] < padded["input_padding"]
  # Packing: one shape compiled before the timed steps, less padding than the fixed length, and more
  # examples per step than the batch's rows, counted as they were read.
  packed = results["ours_packed"]
  assert packed["extra"]["batch_shapes_timed"] == 1 and packed["extra"]["graphs_compiled_timed"] == 0
  assert packed["extra"]["target_length"] == 8 and padded["target_length"] == 4  # packed: twice by default
  assert packed["extra"]["input_padding"] < padded["input_padding"]
  # At least a row's worth per row (more where two short reviews fit one 40-position row).
  assert packed["extra"]["examples_timed"] >= CFG.steps * CFG.batch == padded["examples_timed"]
  assert packed["examples_per_s"] == pytest.approx(packed["extra"]["examples_timed"] / (packed["step_ms"] * 3 / 1e3))
  # Every unpacked row counts the same target tokens over its timed steps (the packed row reads further).
  unpacked = [r for name, r in results.items() if name != "ours_packed"]
  tokens = [r["extra"]["target_tokens_per_s"] * r["step_ms"] * CFG.steps / 1e3 for r in unpacked]
  np.testing.assert_allclose(tokens, tokens[0], rtol=1e-6)
  # Each row is logged as it finishes (a job cut short by its time limit keeps what it measured).
  said = capsys.readouterr()
  logged = said.err
  for name in ("ours bucketed", "ours padded", "ours packed", "peft eager dynamic", "peft compile symbolic dynamic"):
    assert any(f"] {name}: " in line and line.endswith(" ex/s") for line in logged.splitlines()), name
  for ours in ("packed", "bucketed", "padded"):
    assert data["ratios"][f"ours {ours} / peft eager dynamic"] == pytest.approx(
      results[f"ours_{ours}"]["examples_per_s"] / results["peft_eager_dynamic"]["examples_per_s"]
    )
  assert "ours padded / ours bucketed" not in data["ratios"] and "ours bucketed / ours packed" not in data["ratios"]
  assert data["ratios"]["ours packed / ours padded"] == pytest.approx(
    packed["examples_per_s"] / results["ours_padded"]["examples_per_s"]
  )
  out = said.out
  assert "target tok/s" in out and "ours bucketed / peft eager dynamic" in out
  assert "PEFT rows: DataCollatorForSeq2Seq(pad_to_multiple_of=8)" in out
  assert "PEFT compiled rows: each batch's length dimensions marked dynamic" in out
