"""The README's Cloud TPU section: every command line in it is checked as far as this machine allows.

The gcloud lines are checked for the multi-host pattern (one slice, one zone, every `ssh` and `scp`
on `--worker=all`); the install names extras and versions that exist; each `prompt-tuning` command
is parsed by our own CLI and gin, as a worker would; and the train command runs as two CPU
processes, with every gs:// path on a GCS emulator.
"""

from __future__ import annotations

import importlib.metadata
import io
import json
import os
import re
import shlex

import pytest

import gin
from prompt_tuning.cli import gin_runner

README = os.path.join(os.path.dirname(__file__), "..", "..", "README.md")
HEADING = "### Cloud TPU"


def readme_tpu_commands() -> list[list[str]]:
  """The shell words of each command in the README's Cloud TPU code block (comments dropped)."""
  text = open(README).read()
  section = text[text.index(HEADING) :]
  block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
  return [shlex.split(line, comments=True) for line in block.replace("\\\n", "").splitlines() if line.strip()]


def _flag(words: list[str], name: str) -> str | None:
  values = [w.split("=", 1)[1] for w in words if w.startswith(f"--{name}=")]
  return values[-1] if values else None


def remote_commands() -> list[list[str]]:
  """Each `&&`-separated command that `gcloud ... ssh --worker=all --command=...` runs on the workers."""
  out = []
  for words in readme_tpu_commands():
    if words[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh"]:
      remote, current = [], []
      for word in shlex.split(_flag(words, "command")):
        if word == "&&":
          remote.append(current)
          current = []
        else:
          current.append(word)
      out += [*remote, current]
  return out


def worker_commands(program: str) -> list[tuple[dict[str, str], list[str]]]:
  """(environment assignments, argv after the program) of each remote `program` command."""
  found = []
  for words in remote_commands():
    env = {}
    while words and re.match(r"^[A-Z_]+=", words[0]):
      key, value = words.pop(0).split("=", 1)
      env[key] = value
    if words and words[0] == program:
      found.append((env, words[1:]))
  return found


def test_gcloud_lines_form_one_multi_host_session():
  commands = readme_tpu_commands()
  assert all(words[:4] == ["gcloud", "compute", "tpus", "tpu-vm"] for words in commands), commands
  verbs = [words[4] for words in commands]
  assert verbs[0] == "create" and verbs[-1] == "delete" and {"scp", "ssh"} <= set(verbs[1:-1])
  name = commands[0][5]
  assert commands[0][6:] and _flag(commands[0], "accelerator-type").startswith("v")
  zones = {_flag(words, "zone") for words in commands}
  assert len(zones) == 1 and None not in zones
  for words in commands[1:-1]:
    # Multi-host jax needs the command on every worker at once.
    assert "--worker=all" in words, words
    assert any(w == name or w.startswith(f"{name}:") for w in words), words
  assert commands[-1][5] == name


def test_install_names_extras_and_versions_that_exist():
  pips = [words for words in remote_commands() if words[:2] == ["pip", "install"]]
  assert len(pips) == 1
  words = pips[0]
  constraints = words[words.index("-c") + 1]
  pinned = dict(
    line.strip().split("==", 1)
    for line in open(os.path.join(os.path.dirname(README), constraints))
    if "==" in line and not line.startswith("#")
  )
  extras = set(importlib.metadata.metadata("prompt-tuning").get_all("Provides-Extra"))
  for requirement in words[words.index("-c") + 2 :]:
    match = re.fullmatch(r"([.\w-]+)(?:\[([\w,]+)\])?(?:==(.+))?", requirement)
    assert match, requirement
    package, wanted, version = match.groups()
    if package == ".":
      assert set(wanted.split(",")) <= extras, (wanted, extras)
    else:
      assert version == pinned[package], (requirement, pinned.get(package))  # the tested jax, on TPU


def _parsed(command: str, argv: list[str]):
  command_line = gin_runner.parse_command_line(argv, command)
  entry = gin_runner.parse_gin(command_line)
  return command_line, entry


@pytest.fixture
def clean_gin():
  yield
  gin.clear_config()


@pytest.mark.parametrize("command", ["train", "evaluate"])
def test_worker_commands_parse_and_point_at_gcs(command, clean_gin):
  runs = [(env, argv) for env, argv in worker_commands("prompt-tuning") if argv[0] == command]
  assert len(runs) == 1
  env, argv = runs[0]
  assert env["TFDS_DATA_DIR"].startswith("gs://")
  command_line, _ = _parsed(command, argv[1:])
  assert command_line.distributed.multiprocess and command_line.distributed.coordinator_address is None
  for macro in ("MODEL_DIR", "INITIAL_CHECKPOINT_PATH", "VOCABULARY_PATH"):
    assert str(gin_runner.macro(macro)).startswith("gs://"), macro
  for macro in ("MIXTURE_OR_TASK_NAME", "TASK_FEATURE_LENGTHS"):
    assert gin_runner.macro(macro) not in (None, gin.REQUIRED), macro
  assert gin_runner.macro("MODEL_CONFIG") == "t5_1_1_base"


def test_train_and_eval_agree_on_the_run(clean_gin):
  macros = {}
  for _, argv in worker_commands("prompt-tuning"):
    _parsed(argv[0], argv[1:])
    macros[argv[0]] = {
      name: gin_runner.macro(name)
      for name in (
        "MODEL_DIR",
        "MIXTURE_OR_TASK_NAME",
        "TASK_FEATURE_LENGTHS",
        "INITIAL_CHECKPOINT_PATH",
        "VOCABULARY_PATH",
        "PROMPT_LENGTH",
        "BATCH_SIZE",
      )
    }
  assert macros["train"] == macros["evaluate"]


@pytest.mark.slow
def test_train_command_runs_as_two_workers_on_gcs(tmp_path):
  """The README's train command as two CPU processes (two workers) of one job, all paths on a GCS emulator.

  Only what this machine cannot have is replaced: jax cannot detect CPU processes, so
  --multiprocess becomes the explicit coordinator flags; the frozen model is a tiny
  t5x checkpoint written at the README's gs:// path (MODEL_CONFIG: its config file);
  the task is the built-in quickstart (tfds on gs:// needs TensorFlow's own GCS
  client); 2 steps. etils opens gs:// through gcsfs (EPATH_USE_TF=false), which the
  emulator serves, as on a TensorFlow-free worker.
  """
  import jax
  import numpy as np

  from prompt_tuning.models.t5 import network
  from prompt_tuning.models.t5.config import get_config
  from support import gcs_emulator, processes, t5x_format

  ((env, argv),) = [(env, argv) for env, argv in worker_commands("prompt-tuning") if argv[0] == "train"]
  flags = [flag for flag in argv[1:] if flag != "--multiprocess"]
  assert len(flags) == len(argv) - 2
  model_dir = gin_runner_macro_after(flags, "MODEL_DIR")
  checkpoint = gin_runner_macro_after(flags, "INITIAL_CHECKPOINT_PATH")

  config = get_config("tiny", vocab_size=256)  # the quickstart task's vocabulary
  rng = np.random.default_rng(0)  # random values of the model's shapes: no init to compile
  shapes = jax.eval_shape(lambda: network.init_params(config, jax.random.PRNGKey(0)))
  params = jax.tree.map(lambda s: (0.1 * rng.standard_normal(s.shape)).astype(s.dtype), shapes)
  step_dir = t5x_format.write_t5x_checkpoint(params, str(tmp_path / "t5x"), 1, zarr_min_size=256)
  (tmp_path / "tiny.json").write_text(config.to_json())
  overrides = [
    f"--gin.MODEL_CONFIG='{tmp_path / 'tiny.json'}'",
    "--gin.MIXTURE_OR_TASK_NAME='quickstart_sentiment'",
    "--gin.TASK_FEATURE_LENGTHS={'inputs': 32, 'targets': 4}",
    "--gin.TRAIN_STEPS=2",
  ]

  buckets = sorted({path.split("/")[2] for path in (model_dir, checkpoint)})
  with gcs_emulator.running(buckets, str(tmp_path / "fake_gcs_server.log")) as url:
    gcs = gcs_emulator.filesystem(url)
    gcs.put(step_dir, checkpoint.removeprefix("gs://"), recursive=True)
    outs = processes.run_processes(
      tmp_path, ["train", *flags, *overrides], env={**env, **gcs_emulator.environment(url), "EPATH_USE_TF": "false"}
    )
    written = sorted(
      path.removeprefix(model_dir.removeprefix("gs://") + "/") for path in gcs.find(model_dir.removeprefix("gs://"))
    )
    metrics = [json.loads(line) for line in gcs.cat_file(f"{model_dir}/metrics.jsonl").decode().splitlines()]
    prompt = np.load(io.BytesIO(gcs.cat_file(f"{model_dir}/prompts/step_2.npy")))

  # Both workers report the same evaluation; worker 0 alone wrote each record.
  evals = [[line for line in out.splitlines() if line.strip().startswith("eval ")] for out in outs]
  assert evals[0] == evals[1] and any("accuracy" in line for line in evals[0]), outs
  assert sorted(record["step"] for record in metrics) == [2, 2], metrics  # train and eval, once each
  assert prompt.shape == (100, config.emb_dim)
  assert "config.gin" in written and any(path.startswith("checkpoints/2/") for path in written), written
  assert any(path.startswith("tensorboard/") for path in written), written


def gin_runner_macro_after(flags: list[str], name: str):
  """The value of macro `name` once the train command's flags are parsed."""
  try:
    gin_runner.parse_gin(gin_runner.parse_command_line(flags, "train"))
    return gin_runner.macro(name)
  finally:
    gin.clear_config()
