"""`prompt-tuning bench --check_rounding`: a model-parallel mesh differs from one device only by rounding."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from prompt_tuning.cli import main as cli
from support import processes

# A T5 1.1 of 6 encoder layers with the bench's random weights, on a 1x2 mesh vs one CPU device.
COMPARE_SCRIPT = textwrap.dedent("""
    import json
    from prompt_tuning.bench import BenchConfig, rounding
    from prompt_tuning.models.t5 import get_config
    cfg = BenchConfig(model="tiny", batch=4, input_length=48, target_length=8, prompt_length=8, num_partitions=2)
    config = get_config("tiny", emb_dim=256, num_heads=4, head_dim=64, mlp_dim=512, num_encoder_layers=6,
                        vocab_size=2048)
    report = rounding.compare(cfg, config)
    print(rounding.format_report(report))
    print("REPORT" + json.dumps(report))
""")


def _two_cpu_devices() -> dict[str, str]:
  return processes.cpu_env(2)


@pytest.mark.slow
def test_model_parallel_gap_is_rounding_at_every_layer():
  """float32: the 1x2 mesh's gap tracks a one-ulp prompt nudge (a sharding bug would be O(1) from
  layer 0). bf16: its gap from one device stays within one device's own bf16-vs-float32 gap, at every
  encoder layer and in the per-example losses. Both gaps grow with depth in a random-weight T5."""
  result = subprocess.run(
    [sys.executable, "-c", COMPARE_SCRIPT], env=_two_cpu_devices(), capture_output=True, text=True, timeout=600
  )
  assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
  report = json.loads(result.stdout.split("REPORT", 1)[1])
  column = {name: i for i, name in enumerate(report["pairs"])}
  gaps = report["layer_gaps"]
  assert len(gaps) == 6
  for layer, row in enumerate(gaps):
    f32_mp, nudged = row[column["f32_mp~f32"]], row[column["f32_nudged~f32"]]
    assert 0 < f32_mp <= 3 * nudged < 1e-4, (layer, row)
    assert row[column["bf16_mp~bf16"]] <= row[column["bf16~f32"]], (layer, row)
  assert gaps[-1][column["bf16~f32"]] > 3 * gaps[0][column["bf16~f32"]]  # rounding grows with depth
  per_example = report["example_loss_rms_gaps"]
  assert per_example["f32_mp~f32"] < 1e-4
  assert per_example["bf16_mp~bf16"] <= per_example["bf16~f32"]
  assert per_example["bf16_mp~f32"] <= 1.5 * per_example["bf16~f32"]
  assert all(loss > 5.0 for loss in report["loss"].values())  # ~ln(vocab): real losses


@pytest.mark.slow
def test_check_rounding_command_writes_its_report(tmp_path):
  path = tmp_path / "rounding.json"
  args = [
    "-m",
    "prompt_tuning.cli.bench",
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
    "--num_partitions",
    "2",
    "--check_rounding",
    "--json",
    str(path),
  ]
  result = subprocess.run([sys.executable, *args], env=_two_cpu_devices(), capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "f32_nudged~f32" in result.stdout and "per-example loss, rms gap" in result.stdout
  data = json.loads(path.read_text())
  assert data["config"]["num_partitions"] == 2 and len(data["layer_gaps"]) == 2  # tiny: 2 encoder layers
  assert set(data["loss"]) == {"f32", "f32_nudged", "f32_mp", "bf16", "bf16_mp"}


def test_check_rounding_needs_a_model_parallel_mesh(capsys):
  assert cli.main(["bench", "--model", "tiny", "--check_rounding"]) == 2
  assert "give --num_partitions 2 or more" in capsys.readouterr().err
