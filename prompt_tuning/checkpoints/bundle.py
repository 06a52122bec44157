"""Prompt bundles: a trained prompt that says what it belongs to.

A bundle is one safetensors file: the tensor `prompt` [p, embed] (float32) and, in the header's
string metadata, a JSON record under the key `prompt_tuning`:

  format           'prompt-tuning/bundle/1'
  model            {'config': the frozen T5Config's architecture, 'fingerprint': of its weights}
  placement        'prefix' | 'after_first' | 'suffix'
  task, vocabulary_path, feature_lengths   what the prompt was trained on (may be null)
  step, metrics    the training step, and its evaluation when there was one

safetensors is what the HuggingFace world reads (PEFT stores its prompt tables in it), and the
header is plain JSON, so `python -c "import safetensors"` or any JSON tool can inspect a bundle.
A prompt put on a frozen model other than its own (another fingerprint or width) is refused with
one line naming both; plain .npy prompts carry no record and load as before (prompted.py).

HuggingFace PEFT prompt-tuning adapters (a folder with adapter_config.json and
adapter_model.safetensors, as `PeftModel.save_pretrained` writes it) read as bundles too, and
`export_peft` writes one that PEFT loads and computes with exactly as we do (see there).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import struct
import uuid
from typing import Any, Mapping

import numpy as np
from absl import logging
from etils import epath

from prompt_tuning.checkpoints.structure import CheckpointError
from prompt_tuning.models.t5.config import T5Config

FORMAT = "prompt-tuning/bundle/1"
SUFFIX = ".safetensors"
_METADATA_KEY = "prompt_tuning"
_TENSOR = "prompt"


def architecture(config: T5Config) -> dict[str, Any]:
  """The fields of `config` that decide what a prompt means to the model (not dtypes or speed knobs), as
  JSON stores them."""
  return json.loads(json.dumps(config.architecture()))


@dataclasses.dataclass(frozen=True)
class PromptBundle:
  """A trained prompt and its record.

  prompt: float32 [p, embed].
  config: the frozen model's architecture (see `architecture`); fingerprint: param_tree.fingerprint
    of its weights ('' when unknown).
  """

  prompt: np.ndarray
  config: Mapping[str, Any]
  fingerprint: str
  placement: str = "prefix"
  task: str | None = None
  vocabulary_path: str | None = None
  feature_lengths: Mapping[str, int] | None = None
  step: int | None = None
  metrics: Mapping[str, float] = dataclasses.field(default_factory=dict)

  def record(self) -> dict[str, Any]:
    """The metadata as stored (JSON-ready)."""
    return {
      "format": FORMAT,
      "model": {"config": dict(self.config), "fingerprint": self.fingerprint},
      "placement": self.placement,
      "task": self.task,
      "vocabulary_path": self.vocabulary_path,
      "feature_lengths": None if self.feature_lengths is None else dict(self.feature_lengths),
      "step": self.step,
      "metrics": {k: float(v) for k, v in self.metrics.items()},
    }

  def to_bytes(self) -> bytes:
    import safetensors.numpy

    prompt = np.ascontiguousarray(self.prompt, np.float32)
    if prompt.ndim != 2:
      raise ValueError(f"a bundle holds one prompt [p, embed], got shape {prompt.shape}")
    return safetensors.numpy.save({_TENSOR: prompt}, metadata={_METADATA_KEY: json.dumps(self.record())})

  @classmethod
  def from_bytes(cls, data: bytes, source: str) -> "PromptBundle":
    """Raises CheckpointError (one line naming `source`) for anything but a bundle."""
    record = _record(data, source)
    import safetensors.numpy

    try:
      prompt = safetensors.numpy.load(data)[_TENSOR]
    except Exception as e:  # safetensors raises its own error types
      raise CheckpointError(f"{source}: unreadable prompt bundle ({type(e).__name__}: {e})") from None
    return _from_record(record, np.asarray(prompt, np.float32))


def _from_record(record: Mapping[str, Any], prompt: np.ndarray) -> PromptBundle:
  model = record.get("model") or {}
  return PromptBundle(
    prompt=prompt,
    config=dict(model.get("config") or {}),
    fingerprint=str(model.get("fingerprint") or ""),
    placement=record.get("placement") or "prefix",
    task=record.get("task"),
    vocabulary_path=record.get("vocabulary_path"),
    feature_lengths=record.get("feature_lengths"),
    step=record.get("step"),
    metrics=dict(record.get("metrics") or {}),
  )


def _record(data: bytes, source: str, tensor: str = _TENSOR) -> dict[str, Any]:
  """The bundle record in a safetensors header: 8 bytes (little-endian length), then JSON."""
  try:
    (size,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + size])
    record = json.loads(header["__metadata__"][_METADATA_KEY])
  except Exception:
    raise CheckpointError(f"{source}: not a prompt bundle (a safetensors file with a {_METADATA_KEY} record)") from None
  if record.get("format") != FORMAT:
    raise CheckpointError(f"{source}: bundle format {record.get('format')!r} is not {FORMAT!r}")
  if tensor not in header:
    raise CheckpointError(f"{source}: the bundle has no {tensor!r} tensor")
  return record


def write_bundle(path: str, bundle: PromptBundle) -> str:
  """Writes `bundle` to `path` (local or gs://) under a temporary name, then renames it into place:
  a reader never sees half a bundle. Returns the path."""
  target = epath.Path(path)
  target.parent.mkdir(parents=True, exist_ok=True)
  temporary = target.parent / f".{target.name}.{uuid.uuid4().hex}.tmp"
  temporary.write_bytes(bundle.to_bytes())
  temporary.rename(target)
  return os.fspath(target)


def read_bundle(path: str) -> PromptBundle:
  """The bundle at `path`, or the PEFT prompt-tuning adapter in folder `path`; CheckpointError (one
  line) when it is missing or is neither."""
  source = epath.Path(path)
  if source.is_dir() and (source / PEFT_CONFIG).exists():
    return read_peft(path)
  if not source.exists():
    raise CheckpointError(f"{path}: no such prompt bundle")
  if source.is_dir():
    raise CheckpointError(f"{path}: a folder without {PEFT_CONFIG}, neither a bundle nor a PEFT adapter")
  return PromptBundle.from_bytes(source.read_bytes(), str(path))


def latest_bundle(source: str, prompts_dir: str, task: str | None = None) -> str:
  """`source` if it is a bundle (or a PEFT adapter folder), else the newest bundle in MODEL_DIR `source`'s
  `prompts_dir` (train_state.PROMPTS_DIR): step_<n>.safetensors, or of a multi-task run
  step_<n>/<task>.safetensors, the bundle of `task` (one line when the run has none of it)."""
  path = epath.Path(source)
  prompts = path / prompts_dir
  if not path.is_dir() or (path / PEFT_CONFIG).exists() or not prompts.is_dir():
    return source
  pattern = re.compile(r"^step_(\d+)(" + re.escape(SUFFIX) + ")?$")
  found = [(int(m.group(1)), p) for p in prompts.iterdir() if (m := pattern.match(p.name))]
  found = [(step, p) for step, p in found if p.name.endswith(SUFFIX) or p.is_dir()]  # not step_<n>.npy's kin
  if not found:
    raise CheckpointError(f"{prompts}: no prompt bundle (step_<n>{SUFFIX}); was it trained by 0.2 or later?")
  _, newest = max(found, key=lambda item: (item[0], item[1].name))
  if not newest.is_dir():
    return os.fspath(newest)
  tasks = sorted(p.name[: -len(SUFFIX)] for p in newest.iterdir() if p.name.endswith(SUFFIX))
  if task is None or task not in tasks:
    which = "name the task" if task is None else f"it has no prompt of task {task}"
    raise CheckpointError(f"{source}: a multi-task run with prompts of {', '.join(tasks) or 'no task'}; {which}")
  return os.fspath(newest / f"{task}{SUFFIX}")


def check_fits(bundle: PromptBundle, config: T5Config, fingerprint: str, source: str) -> None:
  """Raises CheckpointError unless `bundle` was trained on this frozen model (architecture and weights).

  An empty fingerprint on either side (unknown) checks the architecture alone.
  """
  here = architecture(config)
  if bundle.prompt.shape[-1] != config.emb_dim:
    raise CheckpointError(
      f"{source}: the prompt is {bundle.prompt.shape[-1]} wide (trained on a model with emb_dim "
      f"{bundle.config.get('emb_dim')}), this frozen model's emb_dim is {config.emb_dim}"
    )
  # A record without the architecture (a PEFT adapter from elsewhere) is checked by width alone.
  differ = sorted(k for k in bundle.config if here.get(k) != bundle.config.get(k))
  if differ:
    name = differ[0]
    raise CheckpointError(
      f"{source}: trained on another architecture ({name}={bundle.config.get(name)!r}; this frozen model "
      f"has {name}={here.get(name)!r})"
    )
  if bundle.fingerprint and fingerprint and bundle.fingerprint != fingerprint:
    raise CheckpointError(
      f"{source}: trained on frozen weights {bundle.fingerprint}, this frozen model's are {fingerprint} "
      "(same architecture, another checkpoint)"
    )


# ---------------------------------------------------------------- HuggingFace PEFT

PEFT_CONFIG = "adapter_config.json"
PEFT_WEIGHTS = "adapter_model.safetensors"
_PEFT_TENSOR = "prompt_embeddings"


def export_peft(bundle: PromptBundle, directory: str, base_model_name_or_path: str = "") -> str:
  """Writes `bundle` as a PEFT prompt-tuning adapter that `PeftModel.from_pretrained` loads.

  PEFT prepends its prompt to the encoder's input embeddings, with an all-ones mask, which is our
  'prefix' placement; other placements cannot be expressed and are refused. PEFT's seq2seq default
  (num_transformer_submodules=2) would also prepend a second table to the decoder inputs in its
  training forward; the adapter says 1, so PEFT computes exactly what we compute. Our record rides
  along in the safetensors metadata, so reading the adapter back keeps the fingerprint.
  """
  import safetensors.numpy

  if bundle.placement != "prefix":
    raise CheckpointError(
      f"a {bundle.placement!r} prompt cannot be a PEFT adapter: PEFT prepends its prompt (placement 'prefix')"
    )
  prompt = np.ascontiguousarray(bundle.prompt, np.float32)
  config = bundle.config
  adapter = {
    "peft_type": "PROMPT_TUNING",
    "task_type": "SEQ_2_SEQ_LM",
    "num_virtual_tokens": int(prompt.shape[0]),
    "token_dim": int(prompt.shape[1]),
    "num_transformer_submodules": 1,
    "num_attention_heads": config.get("num_heads"),
    "num_layers": config.get("num_encoder_layers"),
    "prompt_tuning_init": "RANDOM",
    "prompt_tuning_init_text": None,
    "tokenizer_name_or_path": None,
    "base_model_name_or_path": base_model_name_or_path or None,
    "inference_mode": True,
    "revision": None,
  }
  out = epath.Path(directory)
  if out.exists() and any(out.iterdir()):
    raise CheckpointError(f"{directory}: exists and is not empty; PEFT adapters are written to a new folder")
  out.mkdir(parents=True, exist_ok=True)
  metadata = {"format": "pt", _METADATA_KEY: json.dumps(bundle.record())}
  (out / PEFT_WEIGHTS).write_bytes(safetensors.numpy.save({_PEFT_TENSOR: prompt}, metadata=metadata))
  (out / PEFT_CONFIG).write_text(json.dumps(adapter, indent=2, sort_keys=True))
  return os.fspath(out)


def read_peft(directory: str) -> PromptBundle:
  """A PEFT prompt-tuning adapter folder as a bundle (its encoder prompt rows)."""
  import safetensors.numpy

  folder = epath.Path(directory)
  try:
    adapter = json.loads((folder / PEFT_CONFIG).read_text())
  except (OSError, ValueError) as e:
    raise CheckpointError(f"{directory}/{PEFT_CONFIG}: unreadable ({type(e).__name__}: {e})") from None
  if adapter.get("peft_type") != "PROMPT_TUNING":
    raise CheckpointError(f"{directory}: a PEFT {adapter.get('peft_type')} adapter, not PROMPT_TUNING")
  if adapter.get("task_type") not in (None, "SEQ_2_SEQ_LM"):
    raise CheckpointError(f"{directory}: a PEFT adapter for {adapter.get('task_type')}, not a seq2seq (T5) model")
  weights = folder / PEFT_WEIGHTS
  if not weights.exists():
    raise CheckpointError(f"{directory}: no {PEFT_WEIGHTS} (adapters saved without safetensors are not read)")
  data = weights.read_bytes()
  try:
    table = safetensors.numpy.load(data)[_PEFT_TENSOR]
  except Exception as e:
    raise CheckpointError(f"{directory}/{PEFT_WEIGHTS}: no readable {_PEFT_TENSOR!r} ({type(e).__name__})") from None
  p = int(adapter.get("num_virtual_tokens") or table.shape[0])
  if (adapter.get("num_transformer_submodules") or 1) > 1:
    # PEFT's generate uses these rows alone; its training forward also prompts the decoder.
    logging.warning("%s: using the encoder's %d prompt rows; the decoder's are not part of this model", directory, p)
  prompt = np.asarray(table[:p], np.float32)
  try:
    return _from_record(_record(data, str(weights), tensor=_PEFT_TENSOR), prompt)
  except CheckpointError:  # PEFT's own adapter: no record of ours
    return PromptBundle(prompt=prompt, config={}, fingerprint="", placement="prefix")
