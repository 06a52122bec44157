"""PEFT interop: our prompt as a PEFT prompt-tuning adapter computes what ours computes, and back."""

from __future__ import annotations

import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")

from prompt_tuning import param_tree  # noqa: E402
from prompt_tuning.checkpoints import bundle as bundle_lib  # noqa: E402
from prompt_tuning.checkpoints import loader  # noqa: E402
from prompt_tuning.checkpoints.structure import CheckpointError  # noqa: E402
from prompt_tuning.models.prompt import PromptConfig, PromptedTransformer  # noqa: E402


@pytest.fixture(scope="module")
def frozen(hf_checkpoints):
  """The tiny T5 1.1 saved by transformers: (its directory, our config and weights of it)."""
  _, path = hf_checkpoints["t5_1_1"]
  config, params = loader.load_checkpoint(path)
  return path, config, params


def _our_logits(config, params, prompt, enc, dec_in):
  module = PromptedTransformer(config, PromptConfig(len(prompt)))
  return np.asarray(module.apply({"params": {**params, "prompt": {"prompt": prompt}}}, enc, dec_in))


def test_exported_adapter_computes_our_logits_in_peft_and_reads_back(frozen, padded_batch, tmp_path):
  import transformers

  path, config, params = frozen
  enc, dec_in, _ = padded_batch
  prompt = np.random.RandomState(3).randn(4, config.emb_dim).astype(np.float32)
  bundle = bundle_lib.PromptBundle(
    prompt, bundle_lib.architecture(config), param_tree.fingerprint(params), task="quickstart_sentiment", step=7
  )
  out = bundle_lib.export_peft(bundle, str(tmp_path / "adapter"), base_model_name_or_path=path)
  assert sorted(os.listdir(out)) == ["adapter_config.json", "adapter_model.safetensors"]

  base = transformers.T5ForConditionalGeneration.from_pretrained(path).eval()
  model = peft.PeftModel.from_pretrained(base, out).eval()
  with torch.no_grad():
    theirs = model(
      input_ids=torch.tensor(enc, dtype=torch.long),
      attention_mask=torch.tensor(enc > 0, dtype=torch.long),
      decoder_input_ids=torch.tensor(dec_in, dtype=torch.long),
    ).logits.numpy()
  np.testing.assert_allclose(theirs, _our_logits(config, params, prompt, enc, dec_in), atol=1e-4, rtol=1e-4)

  back = bundle_lib.read_bundle(out)  # a PEFT folder is accepted wherever a bundle is
  np.testing.assert_array_equal(back.prompt, prompt)
  assert back.record() == bundle.record()
  bundle_lib.check_fits(back, config, param_tree.fingerprint(params), out)


def test_an_adapter_peft_saved_itself_loads_as_its_encoder_prompt(frozen, padded_batch, tmp_path):
  import transformers
  from peft import PromptTuningConfig, TaskType, get_peft_model

  path, config, params = frozen
  base = transformers.T5ForConditionalGeneration.from_pretrained(path)
  model = get_peft_model(base, PromptTuningConfig(task_type=TaskType.SEQ_2_SEQ_LM, num_virtual_tokens=3))
  model.save_pretrained(str(tmp_path / "theirs"))  # PEFT's seq2seq default: a [2 * 3, d] table
  table = model.prompt_encoder["default"].embedding.weight.detach().numpy()
  read = bundle_lib.read_bundle(str(tmp_path / "theirs"))
  np.testing.assert_array_equal(read.prompt, table[:3])
  assert (read.placement, read.fingerprint, read.config) == ("prefix", "", {})
  bundle_lib.check_fits(read, config, param_tree.fingerprint(params), "theirs")  # width alone
  enc, dec_in, _ = padded_batch  # PEFT generates with these rows alone: the same encoder input as ours
  with torch.no_grad():
    encoded = (
      model.get_base_model()
      .encoder(
        inputs_embeds=torch.cat(
          [torch.tensor(table[None, :3]).expand(len(enc), -1, -1), base.shared(torch.tensor(enc, dtype=torch.long))],
          dim=1,
        ),
        attention_mask=torch.cat(
          [torch.ones(len(enc), 3, dtype=torch.long), torch.tensor(enc > 0, dtype=torch.long)], 1
        ),
      )
      .last_hidden_state.numpy()
    )
  module = PromptedTransformer(config, PromptConfig(3))
  ours, mask = module.apply({"params": {**params, "prompt": {"prompt": read.prompt}}}, enc, method="encode_tokens")
  real = np.asarray(mask) > 0
  np.testing.assert_allclose(encoded[real], np.asarray(ours)[real], atol=1e-4, rtol=1e-4)


def test_what_peft_cannot_express_is_refused_in_one_line(frozen, tmp_path):
  _, config, params = frozen
  suffix = bundle_lib.PromptBundle(np.zeros((2, config.emb_dim), np.float32), {}, "", placement="suffix")
  with pytest.raises(CheckpointError, match="a 'suffix' prompt cannot be a PEFT adapter"):
    bundle_lib.export_peft(suffix, str(tmp_path / "x"))
  (tmp_path / "lora").mkdir()
  (tmp_path / "lora" / "adapter_config.json").write_text('{"peft_type": "LORA", "task_type": "SEQ_2_SEQ_LM"}')
  with pytest.raises(CheckpointError, match="a PEFT LORA adapter, not PROMPT_TUNING"):
    bundle_lib.read_bundle(str(tmp_path / "lora"))
