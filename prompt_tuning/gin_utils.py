"""Gin plumbing for the entry points, following t5x's conventions.

Command lines look like t5x's:

  prompt-tuning train --gin_file=runs/prompt_finetune.gin \
      --gin_search_paths=/my/configs --gin.MODEL_DIR="'/tmp/model'"

`add_gin_flags` and `rewrite_gin_args` give a command t5x's gin flags (`--gin.X=Y`
is shorthand for `--gin_bindings=X=Y`; cli/gin_runner.py parses a command line with
them), and `parse_gin_flags` parses the files and bindings, turning gin's multi-line
exceptions into one-line `GinConfigError`s (file not found, typo in a configurable
or parameter name, malformed binding, unquoted string, REQUIRED macro left unset, macro set but
unused).

Gin files installed with the package (the repo's top-level gin/ folder, mapped
to `prompt_tuning.gin`) are always on the search path.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import functools
import inspect
import logging
import os
import re
from typing import Any, Callable, Iterable, Mapping, Sequence

import gin
from prompt_tuning.errors import first_line

if not hasattr(gin, "parse_config"):  # e.g. `python -c` run in the repo root, whose gin/ folder shadows it
  raise ImportError(
    f"`import gin` found {getattr(gin, '__file__', gin)!r}, not the gin-config library; "
    "run from outside the repository root (its gin/ configs folder shadows the library)"
  )
_GIN_SHORTHAND = "--gin."
_BINDINGS_FLAG = "--gin_bindings"

# gin-config 0.5.0 keeps these as module globals; there is no public accessor.
_gin_config = gin.config


class GinConfigError(ValueError):
  """A one-line, user-facing gin configuration error."""


def bundled_gin_dir() -> str:
  """Directory of the gin configs installed as package data (`prompt_tuning.gin`)."""
  package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the folder holding prompt_tuning/
  # A regular install puts the configs in prompt_tuning/gin/; an editable install or a source
  # checkout has them in the top-level gin/ beside prompt_tuning/.
  for candidate in (os.path.join(package, "prompt_tuning", "gin"), os.path.join(package, "gin")):
    if os.path.isfile(os.path.join(candidate, "quickstart.gin")):
      return candidate
  raise GinConfigError(
    f"the bundled gin configs are missing (looked in {package}/prompt_tuning/gin and "
    f"{package}/gin); reinstall prompt-tuning"
  )


# ---------------------------------------------------------------------------
# Command line.


def rewrite_gin_args(argv: Sequence[str]) -> list[str]:
  """Turns each `--gin.NAME=VALUE` (or `--gin.NAME VALUE`) into `--gin_bindings=NAME=VALUE`.

  Values are kept verbatim (t5x semantics: strings need gin quotes, e.g.
  `--gin.MODEL_DIR="'/tmp/x'"`). Arguments after a bare `--` are left alone.
  """
  out, i = [], 0
  while i < len(argv):
    arg = argv[i]
    if arg == "--":
      out += argv[i:]
      break
    if arg.startswith(_GIN_SHORTHAND):
      name, sep, value = arg[len(_GIN_SHORTHAND) :].partition("=")
      if not sep:  # `--gin.NAME VALUE`
        if i + 1 >= len(argv):
          raise GinConfigError(f"{arg} needs a value: {arg}=VALUE")
        i += 1
        value = argv[i]
      if not name:
        raise GinConfigError(f"malformed gin flag {arg!r}: expected --gin.NAME=VALUE")
      arg = f"{_BINDINGS_FLAG}={name}={value}"
    out.append(arg)
    i += 1
  return out


def add_gin_flags(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
  """Adds t5x's gin flags (`--gin_file`, `--gin_search_paths`, `--gin_bindings`) to `parser`."""
  group = parser.add_argument_group("gin")
  group.add_argument(
    "--gin_file",
    action="append",
    default=[],
    metavar="FILE",
    help="gin file to parse (repeatable; later files win). Searched in the "
    "working directory, --gin_search_paths, then the bundled configs.",
  )
  group.add_argument(
    "--gin_search_paths",
    action="append",
    default=[],
    metavar="DIRS",
    help="comma-separated directories to search for gin files (repeatable).",
  )
  group.add_argument(
    "--gin_bindings",
    action="append",
    default=[],
    metavar="BINDING",
    help="gin binding, e.g. \"MODEL_DIR='/tmp/x'\" (repeatable; applied after "
    "the files). Shorthand: --gin.MODEL_DIR=\"'/tmp/x'\".",
  )
  return parser


def split_search_paths(entries: Sequence[str]) -> list[str]:
  """The directories of repeated, comma-separated --gin_search_paths values."""
  return [p.strip() for entry in entries for p in entry.split(",") if p.strip()]


# ---------------------------------------------------------------------------
# Parsing.


def _dedupe(items: Iterable[str]) -> list[str]:
  return list(dict.fromkeys(items))


def _remote(path: str) -> bool:
  return "://" in path


def _remote_open(path: str):
  from etils import epath  # deferred: only needed for gs:// etc.

  return epath.Path(path).open("r")


def _remote_exists(path: str) -> bool:
  if not _remote(path):
    return False
  from etils import epath

  return epath.Path(path).exists()


def _add_search_paths(dirs: Sequence[str]) -> None:
  """Puts `dirs` on gin's search path (used by `include`), in this order, after ''."""
  prefixes = getattr(_gin_config, "_LOCATION_PREFIXES", None)
  if isinstance(prefixes, list):
    prefixes[:] = [p for p in prefixes if p not in dirs] + list(dirs)
  else:  # pragma: no cover - other gin versions
    for d in dirs:
      gin.add_config_file_search_path(d)
  _gin_config.register_file_reader(_remote_open, _remote_exists)  # deduplicated by gin
  _guard_existence_checks()


def _guard_existence_checks() -> None:
  """Makes every gin file reader's existence check answer False instead of raising.

  gin's package-resource reader looks `include 'runs/common.gin'` up as package `runs` too, and
  raises TypeError when a namespace package of that name is importable (a `runs/` folder on
  sys.path); the include then fails although the next search path has the file.
  """
  readers = getattr(_gin_config, "_FILE_READERS", None)
  if not isinstance(readers, list):  # pragma: no cover - other gin versions
    return
  for i, (reader, exists) in enumerate(readers):
    if not getattr(exists, "_guarded", False):

      def guarded(path, exists=exists):
        try:
          return exists(path)
        except Exception:  # a path this reader cannot even look up is not one it has
          return False

      guarded._guarded = True
      readers[i] = (reader, guarded)


def resolve_gin_file(name: str, search_paths: Sequence[str] = ()) -> str:
  """Path of gin file `name`: as given (absolute, remote, or relative to the
  working directory), else the first match in `search_paths`, then the bundled dir."""
  if _remote(name):
    if _remote_exists(name):
      return name
    raise GinConfigError(f"gin file not found: {name}")
  dirs = _dedupe([*search_paths, bundled_gin_dir()])
  candidates = [name] if os.path.isabs(name) else [name] + [os.path.join(d, name) for d in dirs]
  for path in candidates:
    if os.path.isfile(path):
      return os.path.abspath(path)
  where = "" if os.path.isabs(name) else f" (searched the working directory, {', '.join(dirs)})"
  raise GinConfigError(f"gin file not found: {name}{where}")


class _DropPathNotFound(logging.Filter):
  def filter(self, record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("Path not found")


@contextlib.contextmanager
def _quiet_include_search():
  """gin logs 'ERROR: Path not found' for every search-path entry an `include` misses
  before it finds the file; a file that is really missing still raises (and is reported)."""
  quiet = _DropPathNotFound()
  root = logging.getLogger()
  root.addFilter(quiet)
  try:
    yield
  finally:
    root.removeFilter(quiet)


def parse_gin_flags(
  gin_files: Sequence[str],
  gin_bindings: Sequence[str],
  search_paths: Sequence[str] = (),
  *,
  skip_unknown: bool | Sequence[str] = False,
  finalize: bool = True,
) -> list[str]:
  """Parses gin files (in order; later files win), then bindings (they win over files).

  With `finalize` (the default) also checks that no REQUIRED macro or parameter
  is left unset, no undefined macro is referenced and no macro is set but unused, then locks the config.
  Without it, call `check_required_macros()` once the last binding is in.

  Returns:
    The resolved paths of `gin_files`.

  Raises:
    GinConfigError: a one-line description of the first problem.
  """
  if gin.config_is_locked():
    raise GinConfigError("gin config is already finalized; call gin.clear_config() before parsing again")
  dirs = _dedupe([*search_paths, bundled_gin_dir()])
  _add_search_paths(dirs)
  paths = [resolve_gin_file(f, dirs) for f in gin_files]
  for path in paths:
    try:
      with _quiet_include_search():
        gin.parse_config_file(path, skip_unknown=skip_unknown)
    except Exception as e:  # gin raises ValueError, SyntaxError, OSError, ImportError, ...
      raise GinConfigError(f"in gin file {_location(e, path)}: {_describe(e)}") from None
  for binding in gin_bindings:
    try:
      gin.parse_config(binding, skip_unknown=skip_unknown)
    except Exception as e:
      raise GinConfigError(f"bad gin binding {binding.strip()!r}: {_describe(e, binding)}") from None
  if finalize:
    check_required_macros()
    try:
      gin.finalize()
    except Exception as e:
      raise GinConfigError(f"invalid gin config: {_describe(e)}") from None
  return paths


# ---------------------------------------------------------------------------
# REQUIRED values and undefined macros.


def _is_required(value: Any) -> bool:
  """Whether `value` is `%gin.REQUIRED`.

  gin 0.5.0 stores `X = %gin.REQUIRED` as a ConfigurableReference to the
  constant `gin.REQUIRED` (selector 'gin.constant', scope 'gin.REQUIRED'), whose
  evaluation returns the sentinel `gin.REQUIRED`.
  """
  ref_type = getattr(_gin_config, "ConfigurableReference", None)
  if value is gin.REQUIRED:
    return True
  if ref_type is None or not isinstance(value, ref_type) or not value.evaluate:
    return False
  if value.configurable.wrapped is not getattr(_gin_config, "_retrieve_constant", None):
    return False
  try:
    return value.scoped_configurable_fn() is gin.REQUIRED
  except Exception:  # an unknown constant: not ours to report
    return False


def _format_key(scope: str, selector: str, arg: str) -> str:
  try:
    selector = _gin_config._REGISTRY.minimal_selector(selector)
  except Exception:
    pass
  return f"{scope + '/' if scope else ''}{selector}.{arg}"


def missing_required() -> tuple[list[str], list[str]]:
  """(macro names, parameter binding keys) still bound to `%gin.REQUIRED`."""
  macros, params = [], []
  for (scope, selector), bindings in dict(_gin_config._CONFIG).items():
    for arg, value in bindings.items():
      if _is_required(value):
        if selector == "gin.macro":
          macros.append(scope)
        else:
          params.append(_format_key(scope, selector, arg))
  return sorted(macros), sorted(params)


def undefined_macros() -> dict[str, str]:
  """{macro name: first binding key using it} for macros referenced but never bound."""
  config = _gin_config._CONFIG
  found = {}
  for (scope, selector), bindings in dict(config).items():
    for arg, value in bindings.items():
      for ref in _gin_config.iterate_references(value):
        if ref.configurable.wrapped is _gin_config.macro and ref.config_key not in config:
          name = "/".join(ref.scopes)
          found.setdefault(name, scope if selector == "gin.macro" else _format_key(scope, selector, arg))
  return found


def unused_macros() -> dict[str, str | None]:
  """{macro name: the closest macro that is used, or None} for macros bound but used by no binding.

  gin lets any binding define a new macro, so a misspelt `--gin.TRAIN_STEP=2` would define one
  that nothing reads while the run trains toward TRAIN_STEPS' value. A use is any reference in
  the parsed config, whether or not this command calls its configurable: runs/common.gin binds
  every macro to a spec field, so evaluate-only or train-only macros are used in every command.
  """
  config = _gin_config._CONFIG
  used = set()
  for bindings in dict(config).values():
    for value in bindings.values():
      for ref in _gin_config.iterate_references(value):
        if ref.configurable.wrapped is _gin_config.macro:
          used.add("/".join(ref.scopes))
  bound = {scope for scope, selector in dict(config) if selector == "gin.macro"}
  return {name: _closest(name, used) for name in sorted(bound - used)}


def check_required_macros() -> None:
  """Raises one GinConfigError naming every REQUIRED macro/parameter left unset, every macro
  that is used but never defined, and every macro that is defined but never used (a typo)."""
  macros, params = missing_required()
  problems = []
  if macros:
    plural = len(macros) > 1
    flags = " ".join(f"--gin.{m}=..." for m in macros)
    problems.append(
      f"missing required gin macro{'s' if plural else ''} {', '.join(macros)}: "
      f"pass {flags} or set {'them' if plural else 'it'} in a gin file"
    )
  if params:
    plural = len(params) > 1
    flags = " ".join(f"--gin.{p}=..." for p in params)
    problems.append(
      f"missing required gin parameter{'s' if plural else ''} {', '.join(params)}: "
      f"pass {flags} or set {'them' if plural else 'it'} in a gin file"
    )
  undefined = undefined_macros()
  if undefined:
    uses = ", ".join(f"{name} (used by {user})" for name, user in sorted(undefined.items()))
    problems.append(
      f"undefined gin macro{'s' if len(undefined) > 1 else ''} {uses}: "
      f"pass {' '.join(f'--gin.{m}=...' for m in sorted(undefined))} or set it in a gin file"
    )
  for name, closest in unused_macros().items():
    hint = f" (did you mean {closest}?)" if closest else ""
    problems.append(f"gin macro {name} is set but nothing uses it{hint}")
  if problems:
    raise GinConfigError("; ".join(problems))


# ---------------------------------------------------------------------------
# Error messages.

_UNKNOWN_PARAM_RE = re.compile(r"Configurable '([^']+)' doesn't have a parameter named '([^']+)'")
_UNKNOWN_CONFIGURABLE_RE = re.compile(r"No configurable matching (?:reference )?'@?([\w./]+?)(?:\(\))?'")
_FILE_LOCATION_RE = re.compile(r'In file "([^"]+)", line (\d+)')
_BARE_VALUE_RE = re.compile(r"^[^'\"\d\[\](){}%@+\-.\s]")


def _location(e: BaseException, path: str) -> str:
  """`file:line` of a gin error raised while parsing `path` (innermost include)."""
  loc = e.args[1] if isinstance(e, SyntaxError) and len(e.args) > 1 else None
  if loc is not None and getattr(loc, "filename", None):
    return f"{loc.filename}:{loc.line_num}"
  matches = _FILE_LOCATION_RE.findall(str(e))
  if matches:
    return f"{matches[-1][0]}:{matches[-1][1]}"
  return path


def _closest(word: str, candidates: Iterable[str]) -> str | None:
  matches = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
  return matches[0] if matches else None


def _suggest_configurable(selector: str) -> str | None:
  """The registered configurable name closest to `selector`, in the same form: configurables are
  registered under their module path, so 'optimizers.adafactor' gets 'optimizer.adafactor'."""
  registry = _gin_config._REGISTRY
  forms = set()
  for complete, _ in registry.items():
    if complete.startswith("gin."):
      continue
    parts = complete.split(".")
    forms.update(".".join(parts[i:]) for i in range(len(parts)))  # every tail gin accepts
  return _closest(selector, forms) or _closest(selector.rsplit(".", 1)[-1], forms)


def _parameters(configurable: Any) -> list[str]:
  fn = configurable.wrapped
  fn = fn.__init__ if inspect.isclass(fn) else fn
  return [
    p.name
    for p in inspect.signature(fn).parameters.values()
    if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and p.name != "self"
  ]


def _suggest_parameter(selector: str, arg: str) -> str | None:
  """A close parameter name of `selector`, else 'Other.arg' for the (at most three) configurables
  that have `arg` (e.g. 'train.eval_period' -> 'TrainSpec.eval_period': train takes specs)."""
  try:
    close = _closest(arg, _parameters(_gin_config._REGISTRY.get_match(selector)))
  except Exception:
    return None
  if close:
    return close
  registry = _gin_config._REGISTRY
  owners = []
  for complete, configurable in registry.items():
    try:
      if not complete.startswith("gin.") and arg in _parameters(configurable):
        owners.append(registry.minimal_selector(complete))
    except (TypeError, ValueError):  # no inspectable signature
      continue
  return "' or '".join(f"{owner}.{arg}" for owner in sorted(owners)) if 0 < len(owners) <= 3 else None


def _unquoted_hint(statement: str | None, command_line: bool) -> str:
  """A hint when `NAME = value` failed because a string value lacks quotes."""
  if not statement or "=" not in statement:
    return ""
  name, _, value = statement.partition("=")
  name, value = name.strip(), value.strip()
  if not value or not _BARE_VALUE_RE.match(value) or value in ("True", "False", "None"):
    return ""
  hint = f" (string values need quotes: {name} = '{value}'"
  return hint + (f"; on the command line --gin.{name}=\"'{value}'\")" if command_line else ")")


def _describe(e: BaseException, statement: str | None = None) -> str:
  """One line explaining gin exception `e` (raised for `statement`, if known)."""
  text = str(e.args[0]) if isinstance(e, SyntaxError) and e.args else str(e)
  first = first_line(text) or type(e).__name__
  m = _UNKNOWN_PARAM_RE.search(text)
  if m:
    selector, arg = m.groups()
    hint = _suggest_parameter(selector, arg)
    msg = f"configurable '{selector}' has no parameter '{arg}'"
    return msg + (f" (did you mean '{hint}'?)" if hint else "")
  m = _UNKNOWN_CONFIGURABLE_RE.search(text)
  if m:
    selector = m.group(1).rsplit("/", 1)[-1]
    hint = _suggest_configurable(selector)
    if hint:
      return f"unknown configurable '{selector}' (did you mean '{hint}'?)"
    return f"unknown configurable '{selector}' (is the module that registers it imported?)"
  if isinstance(e, SyntaxError):
    line = getattr(e, "text", None) or statement
    detail = "could not parse value" if "Failed to parse token" in text else first.rstrip(".")
    bad_value = "parse value" in text or "Failed to parse token" in text
    hint = _unquoted_hint(line, command_line=statement is not None) if bad_value else ""
    return f"malformed binding ({detail}){hint}"
  if isinstance(e, ImportError):
    return f"import failed: {first}"
  return first


# ---------------------------------------------------------------------------
# Operative config and registration.


def save_operative_config(model_dir: str, filename: str = "config.gin") -> str:
  """Writes `gin.operative_config_str()` to `model_dir/filename` (local or gs://), whole or not at all
  (prompt_tuning/atomic.py); returns the path."""
  from etils import epath

  from prompt_tuning import atomic

  path = epath.Path(model_dir) / filename
  atomic.write_text(path, gin.operative_config_str())
  return os.fspath(path)


def _same_callable(existing: Any, fn: Callable[..., Any]) -> bool:
  """Whether registered configurable `existing` already wraps `fn`."""
  wrapped = existing.wrapped
  if fn is wrapped or fn is existing.wrapper:
    return True
  if isinstance(fn, functools.partial) and isinstance(wrapped, functools.partial):
    return (fn.func, fn.args, fn.keywords) == (wrapped.func, wrapped.args, wrapped.keywords)
  # The same module-level definition, e.g. after importlib.reload.
  qualname = getattr(fn, "__qualname__", None)
  return (
    qualname is not None
    and "<" not in qualname
    and qualname == getattr(wrapped, "__qualname__", None)
    and getattr(fn, "__module__", None) == getattr(wrapped, "__module__", None)
  )


def register_configurables(mapping: Mapping[str, Callable[..., Any]], module: str) -> dict[str, Callable[..., Any]]:
  """Registers each `name: fn` as configurable `module.name`; idempotent.

  gin 0.5.0 raises "A different configurable matching ... already exists" when a
  selector is registered again for another object (and RuntimeError for any
  registration after `gin.finalize()`); re-registering the same object would
  silently rewrap it. Here a name already registered for the same callable
  returns the existing wrapper, and one registered for another callable raises
  a GinConfigError.

  Returns:
    {name: gin wrapper}; call these (or reference `@name` in gin) to get bindings applied.
  """
  registry = _gin_config._REGISTRY
  out = {}
  for name, fn in mapping.items():
    selector = f"{module}.{name}" if module else name
    existing = registry.get(selector)
    if existing is not None:
      if not _same_callable(existing, fn):
        raise GinConfigError(
          f"gin configurable {selector} is already registered for "
          f"{existing.wrapped!r}; refusing to re-register it for {fn!r}"
        )
      out[name] = existing.wrapper
      continue
    try:
      out[name] = gin.external_configurable(fn, name=name, module=module)
    except (ValueError, RuntimeError) as e:
      raise GinConfigError(f"cannot register gin configurable {selector}: {first_line(e)}") from None
  return out
