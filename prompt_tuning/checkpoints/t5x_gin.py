"""The model settings a t5x run saved beside its checkpoints, in `config.gin`.

t5x writes the operative gin config of a run to `<model_dir>/config.gin`, the
parent of its `checkpoint_<step>` directories. The arrays alone do not pin the
model: the relative-attention `max_distance` has no parameter at all, and a
wrong one loads silently and changes the logits. This module reads, without
gin or t5x, the few bindings that matter:

  *RelativePositionBiases.num_buckets / .max_distance   (flaxformer, and the
      reference prompt-tuning repo's architectures; t5x's own
      t5x.examples.t5.network hard-codes 32 / 128, T5's values)
  network.T5Config.<field>                                (t5x.examples.t5: the
      sizes, activations and head; the field names are ours)

Both the flat operative form (`scope/module.Class.param = value`, values
continued with a trailing backslash) and the block form (`module.Class:` then
indented `param = value` lines) are read; `%MACRO` values resolve through
`MACRO = value` lines. Anything else in the file is ignored.
"""

from __future__ import annotations

import ast
import re
from typing import Any, Mapping

from etils import epath

from prompt_tuning.checkpoints.structure import CheckpointError
from prompt_tuning.models.t5.config import T5Config

CONFIG_FILE = "config.gin"
RELPOS_FIELDS = {"num_buckets": "relative_attention_num_buckets", "max_distance": "relative_attention_max_distance"}
# t5x network.T5Config fields that fix the architecture (dtype and dropout_rate describe the run, not the model).
ARCH_FIELDS = (
  "vocab_size",
  "emb_dim",
  "num_heads",
  "head_dim",
  "mlp_dim",
  "num_encoder_layers",
  "num_decoder_layers",
  "mlp_activations",
  "logits_via_embedding",
)

_BINDING = re.compile(r"^(?P<selector>[\w./]+)\.(?P<param>\w+)\s*=\s*(?P<value>.+)$")
_MACRO = re.compile(r"^(?P<name>[A-Za-z_]\w*)\s*=\s*(?P<value>.+)$")
_BLOCK = re.compile(r"^(?P<selector>[\w./]+)\s*:\s*$")
_STRING = re.compile(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"")


def _code(line: str) -> str:
  """The line with string literals blanked, to find comments and brackets outside them."""
  return _STRING.sub(lambda m: "_" * len(m.group()), line)


def _logical_lines(text: str) -> list[tuple[str, bool]]:
  """(line, indented) with comments dropped and backslash / open-bracket continuations joined."""
  out: list[tuple[str, bool]] = []
  pending, indented, depth = "", False, 0
  for raw in text.splitlines():
    comment = _code(raw).find("#")
    line = (raw if comment < 0 else raw[:comment]).rstrip()
    if not pending:
      if not line.strip():
        continue
      indented = line[:1].isspace()
    continued = line.endswith("\\")
    line = line[:-1] if continued else line
    pending = f"{pending} {line.strip()}" if pending else line.strip()
    code = _code(line)
    depth += code.count("(") + code.count("[") + code.count("{") - code.count(")") - code.count("]") - code.count("}")
    if continued or depth > 0:
      continue
    out.append((pending, indented))
    pending, depth = "", 0
  if pending:
    out.append((pending, indented))
  return out


def parse_bindings(text: str) -> tuple[dict[tuple[str, str], str], dict[str, str]]:
  """({(selector, param): value text}, {macro: value text}) of a gin file's simple bindings."""
  bindings: dict[tuple[str, str], str] = {}
  macros: dict[str, str] = {}
  block = None
  for line, indented in _logical_lines(text):
    if indented and block is not None:
      match = _MACRO.match(line)  # `param = value` inside a block
      if match:
        bindings[(block, match.group("name"))] = match.group("value").strip()
      continue
    block = None
    if line.startswith(("import ", "from ", "include ")):
      continue
    match = _BLOCK.match(line)
    if match:
      block = match.group("selector")
      continue
    match = _BINDING.match(line)
    if match:
      bindings[(match.group("selector"), match.group("param"))] = match.group("value").strip()
      continue
    match = _MACRO.match(line)
    if match:
      macros[match.group("name")] = match.group("value").strip()
  return bindings, macros


def _value(text: str, macros: Mapping[str, str], depth: int = 0) -> Any:
  """A literal value, following %MACRO references; None if it is no literal (e.g. @ref)."""
  if text.startswith("%") and depth < 10:
    name = text[1:]
    return _value(macros[name], macros, depth + 1) if name in macros else None
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return None


def read_model_settings(text: str, source: str) -> dict[str, Any]:
  """T5Config fields bound in a saved t5x config.gin (only those it binds to literals)."""
  bindings, macros = parse_bindings(text)
  fields: dict[str, Any] = {}
  relpos: dict[str, dict[str, Any]] = {}
  for (selector, param), text_value in bindings.items():
    name = selector.rsplit("/", 1)[-1]  # drop a scope such as `encoder/`
    value = _value(text_value, macros)
    if value is None:
      continue
    if name.endswith("RelativePositionBiases") and param in RELPOS_FIELDS:
      relpos.setdefault(RELPOS_FIELDS[param], {})[selector] = value
    elif name.split(".")[-1] == "T5Config" and param in ARCH_FIELDS:
      if param == "mlp_activations":
        value = tuple(value) if isinstance(value, (list, tuple)) else (value,)
      fields[param] = value
  for field, by_selector in relpos.items():
    if len(set(by_selector.values())) > 1:
      found = ", ".join(f"{s}={v}" for s, v in sorted(by_selector.items()))
      raise CheckpointError(f"{source}: different {field} per scope ({found}); this T5 shares one setting")
    fields[field] = next(iter(by_selector.values()))
  return fields


def saved_config_file(step_dir: epath.Path) -> epath.Path | None:
  """`<model_dir>/config.gin` beside a checkpoint_<step> directory, if t5x wrote one."""
  for candidate in (step_dir.parent / CONFIG_FILE, step_dir / CONFIG_FILE):
    if candidate.exists():
      return candidate
  return None


def describe(config: T5Config) -> str:
  """One line of the architecture, e.g. for the 'config used' message."""
  return (
    f"{config.num_encoder_layers}+{config.num_decoder_layers} layers, emb_dim {config.emb_dim}, "
    f"{config.num_heads} heads x {config.head_dim}, mlp {config.mlp_dim} {'/'.join(config.mlp_activations)}, "
    f"vocab {config.vocab_size}, relative attention {config.relative_attention_num_buckets} buckets "
    f"max distance {config.relative_attention_max_distance}"
  )


def config_for_checkpoint(path: str, step_dir: epath.Path, config: T5Config | None) -> tuple[T5Config, str]:
  """The config to read a t5x checkpoint with, and one line saying which and from where.

  The saved config.gin's relative-attention settings replace the given
  config's (they have no parameter to check them by); its network.T5Config
  sizes must agree with a given config, and stand in for a missing one.
  """
  gin_file = saved_config_file(step_dir)
  try:
    settings = read_model_settings(gin_file.read_text(), str(gin_file)) if gin_file else {}
  except (OSError, UnicodeDecodeError) as e:
    raise CheckpointError(f"{gin_file}: unreadable saved gin config ({e})") from None
  arch = {k: v for k, v in settings.items() if k in ARCH_FIELDS}
  relpos = {k: v for k, v in settings.items() if k in RELPOS_FIELDS.values()}
  if config is None:
    missing = [k for k in ARCH_FIELDS if k not in arch]
    if missing:
      where = f"{gin_file} binds no network.T5Config.{missing[0]}" if gin_file else f"no {CONFIG_FILE} beside it"
      raise CheckpointError(
        f"{path}: a t5x checkpoint carries no model config ({where}); name it: MODEL_CONFIG='t5_1_1_base' "
        f"(gin), --config t5_1_1_base (generate/convert) or config= (Python), a named size or a t5_config.json"
      )
    try:
      config = T5Config(**arch)
    except (TypeError, ValueError) as e:
      raise CheckpointError(f"{gin_file}: {e}") from None
  for field, value in arch.items():
    if getattr(config, field) != value:
      raise CheckpointError(
        f"{path}: the config says {field}={getattr(config, field)!r} but the run's {gin_file} says {value!r}"
      )
  try:
    config = config.replace(**relpos)
  except ValueError as e:
    raise CheckpointError(f"{gin_file}: {e}") from None
  if relpos:
    origin = f"relative attention from {gin_file}"
  elif gin_file:
    origin = f"relative attention as configured; {gin_file} binds none"
  else:
    origin = f"relative attention as configured; no {CONFIG_FILE} beside the checkpoint to check it by"
  return config, f"t5x checkpoint {step_dir}: {describe(config)} ({origin})"
