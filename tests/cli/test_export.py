"""`prompt-tuning export --peft`: a MODEL_DIR's latest bundle (or a bundle) as a PEFT adapter folder."""

from __future__ import annotations

import json
import os

import numpy as np

from prompt_tuning.checkpoints import bundle as bundle_lib
from prompt_tuning.cli import main as cli


def _write(model_dir, step, placement="prefix"):
  bundle = bundle_lib.PromptBundle(
    np.full((3, 8), step, np.float32), {"emb_dim": 8, "num_heads": 2}, "abc", placement=placement, step=step
  )
  return bundle_lib.write_bundle(os.path.join(model_dir, "prompts", f"step_{step}.safetensors"), bundle)


def test_exports_the_latest_bundle_of_a_model_dir(tmp_path, capsys):
  model_dir = str(tmp_path / "run")
  for step in (2, 10, 4):
    _write(model_dir, step)
  out = str(tmp_path / "peft")
  assert cli.main(["export", "--peft", model_dir, out, "--base_model", "google/t5-v1_1-small"]) == 0
  assert "(step 10): 3 virtual tokens" in capsys.readouterr().out
  adapter = json.load(open(os.path.join(out, "adapter_config.json")))
  assert (adapter["num_virtual_tokens"], adapter["token_dim"], adapter["num_transformer_submodules"]) == (3, 8, 1)
  assert adapter["base_model_name_or_path"] == "google/t5-v1_1-small"
  back = bundle_lib.read_bundle(out)
  assert back.step == 10 and (back.prompt == 10).all()


def test_what_cannot_be_exported_is_one_line(tmp_path, capsys):
  os.makedirs(tmp_path / "empty" / "prompts")
  suffix = _write(str(tmp_path / "s"), 1, placement="suffix")
  (tmp_path / "taken").mkdir()
  (tmp_path / "taken" / "x").write_text("")
  good = _write(str(tmp_path / "g"), 1)
  for argv, message in [
    ([str(tmp_path / "empty"), str(tmp_path / "o1")], "no prompt bundle (step_<n>.safetensors)"),
    ([suffix, str(tmp_path / "o2")], "a 'suffix' prompt cannot be a PEFT adapter"),
    ([good, str(tmp_path / "taken")], "exists and is not empty"),
    ([str(tmp_path / "missing.safetensors"), str(tmp_path / "o3")], "no such prompt bundle"),
  ]:
    assert cli.main(["export", "--peft", *argv]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("prompt-tuning export: error: ") and message in err, err
