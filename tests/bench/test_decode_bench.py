"""`prompt-tuning bench --mode decode`: the HBM byte count by hand, bad flags, and one tiny run of both sides."""

from __future__ import annotations

import json

import pytest

from prompt_tuning.bench import hbm
from prompt_tuning.cli import main as cli
from prompt_tuning.models.t5.config import get_config

# tiny: d=32, 4 heads x 8 = 32 wide K/V, mlp 64 gated, 2 decoder layers, vocab 32128.
TINY_DECODER_WEIGHTS = (
  2 * (4 * 32 * 32 + 2 * 32 * 32 + 3 * 32 * 64) + 32 * 32128
)  # self q/k/v/o, cross q/o, mlp; logits


def _tiny_step_bytes(batch: int, encoder_length: int, position: float, size: int) -> tuple[float, float, float]:
  per_position = 2 * 2 * 32 * size  # key + value, 2 layers, 32 wide
  return TINY_DECODER_WEIGHTS * size, batch * position * per_position, batch * encoder_length * per_position


@pytest.mark.parametrize("dtype, size", [("float32", 4), ("bfloat16", 2)])
def test_step_bytes_by_hand(dtype, size):
  config = get_config("tiny", dtype=dtype, param_dtype=dtype)
  assert TINY_DECODER_WEIGHTS == 1_052_672
  got = hbm.step_bytes(config, batch=2, encoder_length=24, position=5)
  assert (got.weights, got.self_kv, got.cross_kv) == _tiny_step_bytes(2, 24, 5, size)
  assert got.total == sum(_tiny_step_bytes(2, 24, 5, size))
  # Steps 3..4 attend to 3 and 4 positions: their mean reads 3.5 positions of self-attention K/V.
  mean = hbm.mean_step_bytes(config, batch=2, encoder_length=24, first=3, last=4)
  assert mean.self_kv == (hbm.step_bytes(config, 2, 24, 3).self_kv + hbm.step_bytes(config, 2, 24, 4).self_kv) / 2
  with pytest.raises(ValueError, match="1 <= first <= last"):
    hbm.mean_step_bytes(config, 2, 24, 0, 4)


def test_t5_1_1_base_step_reads_more_cache_than_weights_at_batch_32():
  """What the bound says for the issue's configuration (bf16, batch 32, 512 encoder positions)."""
  config = get_config("t5_1_1_base", dtype="bfloat16", param_dtype="bfloat16")
  got = hbm.step_bytes(config, batch=32, encoder_length=512, position=36.5)
  assert got.cross_kv == 32 * 512 * 2 * 12 * 768 * 2  # 604 MB: over twice the decoder weights
  assert got.weights == (12 * (2 * 4 * 768**2 - 2 * 768**2 + 3 * 768 * 2048) + 768 * 32128) * 2
  assert hbm.bandwidth("NVIDIA H200", None)[0] == 4.8e12
  assert hbm.bandwidth("NVIDIA H200", 1e12) == (1e12, "--hbm_bandwidth")
  assert hbm.bandwidth("cpu", None)[0] is None and "--hbm_bandwidth" in hbm.bandwidth("cpu", None)[1]


@pytest.mark.parametrize(
  "flags, message",
  [
    (["--decode_steps", "8,8"], "--decode_steps must be distinct"),
    (["--rank_candidates", "0"], "--rank_candidates must be"),
    (["--workloads", "greedy,topk"], "--workloads must name some of greedy,beam,rank"),
    (["--beam_size", "1"], "--beam_size must be >= 2"),
    (["--hbm_bandwidth", "-1"], "--hbm_bandwidth must be positive"),
  ],
)
def test_bad_decode_flags_are_one_line_errors(flags, message, capsys):
  argv = ["bench", "--mode", "decode", "--model", "tiny", "--input_length", "24", "--prompt_length", "4", *flags]
  assert cli.main(argv) == 2
  err = capsys.readouterr().err.strip()
  assert message in err and len(err.splitlines()) == 1


@pytest.mark.slow
def test_decode_mode_runs_both_sides_and_the_bound(tmp_path, capsys):
  """Greedy decoding of 2 and 3 tokens and rank classification of 2 candidates, ours and transformers
  compiled (TorchDynamo's 'eager' backend: the same full-graph capture of the static-cache decoder
  step, no code generation), every row decoded to full length, the ratios and the bound from the
  rows. Beam search (method='beam' / num_beams on the same paths) is left out to keep this cheap."""
  path = tmp_path / "decode.json"
  argv = [
    "bench",
    "--mode",
    "decode",
    *("--model", "tiny", "--dtype", "float32", "--batch", "2", "--input_length", "24", "--prompt_length", "4"),
    *("--target_length", "4", "--steps", "1", "--warmup", "1", "--decode_steps", "2,3", "--workloads", "greedy,rank"),
    *("--rank_candidates", "2", "--peft", "compile", "--torch_compile_backend", "eager"),
    *("--hbm_bandwidth", "0.002", "--json", str(path), "--profile", str(tmp_path / "traces"), "--profile_calls", "1"),
  ]
  assert cli.main(argv) == 0
  data = json.loads(path.read_text())
  results = data["results"]
  workloads = ["greedy_2", "greedy_3"]
  expected = {f"{w}_{side}" for w in workloads for side in ("ours", "hf_compile")}
  expected |= {"rank_2_ours", "rank_2_peft_compile"}
  assert set(results) == expected
  for name, row in results.items():
    assert row["error"] is None and row["step_ms"] > 0, (name, row)
    if not name.startswith("rank"):
      assert row["extra"]["tokens_per_row"] == int(name.split("_")[1]), name  # nobody stopped early
  ratio = data["ratios"]["greedy 3: hf compile / ours"]
  assert ratio == pytest.approx(results["greedy_3_hf_compile"]["step_ms"] / results["greedy_3_ours"]["step_ms"])
  assert "rank 2: peft compile / ours" in data["ratios"]
  for name in ("greedy_2_ours", "greedy_3_ours", "rank_2_ours"):  # --profile: ours traced, each in its own folder
    assert results[name]["extra"]["profile"]["trace_dir"] == str(tmp_path / "traces" / name)
    assert list((tmp_path / "traces" / name).glob("**/*.xplane.pb")), name
  assert "profile" not in results["greedy_3_hf_compile"]["extra"]

  bound = data["bound"]
  weights, self_kv, cross_kv = _tiny_step_bytes(2, 24, 3, 4)  # steps 3..3: the 3-token call's last step
  assert bound["steps"] == [3, 3]
  assert bound["bytes"] == {
    "weights": weights,
    "self_kv": self_kv,
    "cross_kv": cross_kv,
    "total": bound["bytes"]["total"],
  }
  assert bound["bytes"]["total"] == weights + self_kv + cross_kv
  assert bound["bound_ms"] == pytest.approx(1e3 * (weights + self_kv + cross_kv) / 2e9)
  step = results["greedy_3_ours"]["step_ms"] - results["greedy_2_ours"]["step_ms"]
  assert bound["step_ms"]["ours"] == pytest.approx(step)
  assert bound["over_bound"]["ours"] == pytest.approx(step / bound["bound_ms"])
  assert set(bound["step_ms"]) == {"ours", "hf compile"}
  out = capsys.readouterr().out
  assert "HBM bound of a greedy decoder step at batch 2" in out and "--hbm_bandwidth" in out


@pytest.mark.slow
def test_compiled_beam_rows_compile_the_models_forward_themselves(monkeypatch):
  """generate() compiles nothing for beam search, so the compile mode's beam rows run the model's
  forward under torch.compile (TorchDynamo's 'eager' backend here, full graph): every decoding step
  of every call goes through it, to full length, and the model's own forward is back afterwards."""
  from prompt_tuning.bench import BenchConfig, hf_decoding, peft_baseline

  build, built = peft_baseline.peft_model, []

  def keep_the_model(*args):
    built.append(build(*args))
    return built[-1]

  monkeypatch.setattr(peft_baseline, "peft_model", keep_the_model)
  cfg = BenchConfig(
    model="tiny", batch=2, input_length=24, prompt_length=4, target_length=4, steps=1, warmup=1, dtype="float32"
  )
  (row,) = hf_decoding.run(cfg, (3,), ("beam",), 2, 0.6, (), ("compile",), backend="eager")
  assert row.error is None and row.extra["tokens_per_row"] == 3 and row.extra["compiled"] == "forward"
  assert row.extra["compiled_forward_calls"] == 3 * 2  # 3 steps in each of the first call and the timed one
  assert "forward" not in vars(built[0].base_model)
