"""Bad input and storage failures end in one line, the right exit status, and an untouched MODEL_DIR.

One table, every case of issue 12's "Why" that is not divergence, corruption, preemption or two
trainers (those have their own tests), and the cases that already passed, so they stay passing.
Each case runs `prompt-tuning ...` in-process against one shared quick-start MODEL_DIR trained
to step 4, and checks: the exit status, exactly one `error:` line on stderr (the last line; phase
lines such as "initializing the frozen model" may come before it) naming the problem, no
traceback, and MODEL_DIR and the scratch folder byte-identical before and after.

Cases that need what one process cannot give run together in one subprocess: read-only folders
(as root, with CAP_DAC_OVERRIDE dropped by setpriv, since root writes anywhere otherwise) and two
CPU devices (a BATCH_SIZE the data axis does not divide).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys

import pytest

from prompt_tuning.cli import gin_runner
from prompt_tuning.cli import main as cli
from support import processes

pytestmark = pytest.mark.slow  # trains one quick-start MODEL_DIR (a few seconds), then runs ~35 commands

QS = "--gin_file=quickstart.gin"
SPM = os.path.join(os.path.dirname(cli.__file__), "..", "data", "quickstart", "sentencepiece.model")


def tree_hash(root: str) -> str:
  """Hash of every path under `root` with its bytes (symlinks by target)."""
  digest = hashlib.sha256()
  for directory, dirs, files in sorted(os.walk(root)):
    dirs.sort()
    digest.update(os.path.relpath(directory, root).encode() + b"/\0")
    for name in sorted(files):
      path = os.path.join(directory, name)
      digest.update(name.encode() + b"\0")
      if os.path.islink(path):
        digest.update(b"-> " + os.readlink(path).encode())
      else:
        with open(path, "rb") as f:
          digest.update(f.read())
  return digest.hexdigest()


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
  """{'model': a quick-start MODEL_DIR trained to step 4, 'scratch': a folder with the cases' files}."""
  model = str(tmp_path_factory.mktemp("trained") / "model")
  argv = [
    "train",
    QS,
    f"--gin.MODEL_DIR='{model}'",
    "--gin.TRAIN_STEPS=4",
    "--gin.BATCH_SIZE=4",
    "--gin.EVAL_BATCH_SIZE=50",
    "--gin.TrainSpec.save_period=2",
  ]
  assert cli.main(argv) == 0
  scratch = tmp_path_factory.mktemp("scratch")
  (scratch / "empty.gin").write_text("")
  (scratch / "a_file").write_text("not a directory\n")
  (scratch / "latin1.jsonl").write_bytes(b'{"text": "fine", "label": 0}\n{"text": "caf\xe9", "label": 1}\n')
  return {"model": model, "scratch": str(scratch)}


def byod(scratch: str) -> list[str]:
  data = os.path.join(scratch, "latin1.jsonl")
  return [
    QS,
    "--gin_file=tasks/byod.gin",
    f"--gin.MODEL_DIR='{os.path.join(scratch, 'byod_model')}'",
    f"--gin.BYOD_TRAIN='{data}'",
    f"--gin.BYOD_VALIDATION='{data}'",
    "--gin.BYOD_TEMPLATE='{text}'",
    "--gin.BYOD_TARGET='label'",
    "--gin.BYOD_LABELS=['negative', 'positive']",
  ]


# (id, argv with {model} and {scratch} filled in, exit status, what the error line says)
CASES = [
  # Already one line before issue 12.
  ("missing REQUIRED macro", ["train", "--gin_file=runs/prompt_finetune.gin"], 1, "missing required gin macros"),
  ("gin file not found", ["train", "--gin_file=no_such.gin"], 1, "gin file not found: no_such.gin"),
  (
    "typo'd parameter",
    ["train", QS, "--gin.MODEL_DIR='{model}'", "--gin.TrainSpec.batch_sise=3"],
    1,
    "(did you mean 'batch_size'?)",
  ),
  (
    "moved parameter",
    ["train", QS, "--gin.MODEL_DIR='{model}'", "--gin.train.batch_size=3"],
    1,
    "TrainSpec.batch_size",
  ),
  ("unquoted string", ["train", QS, "--gin.MODEL_DIR={scratch}/x"], 1, "string values need quotes"),
  ("unknown flag", ["train", QS, "--bogus"], 2, "unknown flag(s) --bogus"),
  ("log_period=0", ["train", QS, "--gin.MODEL_DIR='{model}'", "--gin.TrainSpec.log_period=0"], 1, "log_period must be"),
  ("mesh too big", ["train", QS, "--gin.MODEL_DIR='{model}'", "--gin.MESH_SHAPE=(64, 1)"], 1, "needs 64 devices"),
  (
    "bucket above the feature length",
    ["train", QS, "--gin.MODEL_DIR='{model}'", "--gin.LENGTH_BUCKETS={{'inputs': [16, 64]}}"],
    1,
    "LENGTH_BUCKETS['inputs'] has the length 64, above TASK_FEATURE_LENGTHS['inputs'] = 32",
  ),
  (
    "packing with length buckets",
    ["train", QS, "--gin.MODEL_DIR='{model}'", "--gin.PACKING=True", "--gin.LENGTH_BUCKETS='pow2'"],
    1,
    "PACKING and LENGTH_BUCKETS cannot both be on",
  ),
  (
    "packing with a suffix prompt",
    ["train", QS, "--gin.MODEL_DIR='{model}'", "--gin.PACKING=True", "--gin.PROMPT_PLACEMENT='suffix'"],
    1,
    "PACKING needs PROMPT_PLACEMENT = 'prefix', got 'suffix'",
  ),
  # Tracebacks before.
  (
    "unknown task",
    ["train", QS, "--gin.MODEL_DIR='{scratch}/new'", "--gin.MIXTURE_OR_TASK_NAME='quickstart_sentimnet'"],
    1,
    "unknown task 'quickstart_sentimnet' (did you mean 'quickstart_sentiment'?)",
  ),
  ("empty gin file", ["train", "--gin_file={scratch}/empty.gin"], 1, "the gin files do not configure train"),
  (
    "evaluate without runs/evaluate.gin",
    ["evaluate", QS, "--gin.MODEL_DIR='{model}'"],
    1,
    "do not configure evaluate (evaluate.model",
  ),
  (
    "infer on a split the task lacks",
    ["infer", QS, "--gin_file=runs/infer.gin", "--gin.MODEL_DIR='{model}'", "--gin.EvaluationSpec.split='test'"],
    1,
    "task quickstart_sentiment has no split 'test' (splits: train, validation)",
  ),
  (
    "resume with another prompt length",
    ["train", QS, "--gin.MODEL_DIR='{model}'", "--gin.TRAIN_STEPS=6", "--gin.PROMPT_LENGTH=5"],
    1,
    "was trained with PROMPT_LENGTH=20, this run has PROMPT_LENGTH=5",
  ),
  (
    "resume with another architecture",
    ["train", QS, "--gin.MODEL_DIR='{model}'", "--gin.TRAIN_STEPS=6", "--gin.random_init_config.emb_dim=64"],
    1,
    "was trained on a frozen model with emb_dim=128 (random weights from MODEL_CONFIG), this run's has emb_dim=64",
  ),
  (
    "evaluate with another prompt length",
    ["evaluate", QS, "--gin_file=runs/evaluate.gin", "--gin.MODEL_DIR='{model}'", "--gin.PROMPT_LENGTH=5"],
    1,
    "was trained with PROMPT_LENGTH=20",
  ),
  # Exit 0 before, although the run should refuse or say more.
  (
    "TRAIN_STEPS below the trained step",
    ["train", QS, "--gin.MODEL_DIR='{model}'", "--gin.TRAIN_STEPS=2"],
    1,
    "is already trained to step 4, past TRAIN_STEPS=2: nothing was done",
  ),
  ("TRAIN_STEPS=0", ["train", QS, "--gin.MODEL_DIR='{scratch}/new'", "--gin.TRAIN_STEPS=0"], 1, "TRAIN_STEPS must be"),
  ("empty MODEL_DIR", ["train", QS, "--gin.MODEL_DIR=''"], 1, "MODEL_DIR is empty"),
  ("keep=0", ["train", QS, "--gin.MODEL_DIR='{scratch}/new'", "--gin.TrainSpec.keep=0"], 1, "TrainSpec.keep must be"),
  ("generate on empty text", ["generate", "--vocab", SPM, "--input", ""], 1, "--input is empty"),
  ("generate on no ids", ["generate", "--input_ids", ""], 1, "--input_ids is empty"),
  (
    "misspelt macro",
    ["train", QS, "--gin.MODEL_DIR='{scratch}/new'", "--gin.TRAIN_STEP=2"],
    1,
    "gin macro TRAIN_STEP is set but nothing uses it (did you mean TRAIN_STEPS?)",
  ),
  (
    "unknown matmul_dtype",
    ["train", QS, "--gin.MODEL_DIR='{scratch}/new'", "--gin.ModelSpec.matmul_dtype='fp16'"],
    1,
    "T5Config.matmul_dtype='fp16': expected one of ('default', 'fp8')",
  ),
  (
    "fp8 matmuls with model tuning",
    [
      "train",
      QS,
      "--gin.MODEL_DIR='{scratch}/new'",
      "--gin.ModelSpec.matmul_dtype='fp8'",
      "--gin.TRAINABLE_PARAMS='.*'",
    ],
    1,
    "matmul_dtype='fp8' gives the layers' kernels no gradient, but TRAINABLE_PARAMS='.*' trains decoder/layers_0/",
  ),
  # Unhelpful messages before.
  ("non-UTF-8 BYOD file", ["train", "{byod}"], 1, "latin1.jsonl:2: not UTF-8 text (byte 0xe9 at column 14)"),
  # Storage.
  ("MODEL_DIR is a file", ["train", QS, "--gin.MODEL_DIR='{scratch}/a_file'"], 1, "a_file is a file, not a directory"),
  (
    "evaluate a mistyped MODEL_DIR",
    ["evaluate", QS, "--gin_file=runs/evaluate.gin", "--gin.MODEL_DIR='{scratch}/mistyped'"],
    1,
    "mistyped does not exist",
  ),
  (
    "infer a mistyped MODEL_DIR",
    ["infer", QS, "--gin_file=runs/infer.gin", "--gin.MODEL_DIR='{scratch}/mistyped'"],
    1,
    "mistyped does not exist",
  ),
  (
    "evaluate a MODEL_DIR with no checkpoints",
    ["evaluate", QS, "--gin_file=runs/evaluate.gin", "--gin.MODEL_DIR='{scratch}'"],
    1,
    "has no checkpoints/ (no train checkpoint): train first",
  ),
]


def fill(argv: list[str], dirs: dict[str, str]) -> list[str]:
  out = []
  for arg in argv:
    if arg == "{byod}":
      out += byod(dirs["scratch"])
    else:
      out.append(arg.format(**dirs))
  return out


def check_one_line(status: int, err: str, expected_status: int, expected: str) -> None:
  lines = [line for line in err.splitlines() if line.strip()]
  errors = [line for line in lines if "error:" in line]
  assert status == expected_status, err[-2000:]
  assert "Traceback" not in err, err[-3000:]
  assert len(errors) == 1 and errors[0] == lines[-1], lines
  assert expected in errors[0], errors[0]


@pytest.mark.parametrize("name, argv, status, expected", CASES, ids=[case[0] for case in CASES])
def test_bad_input_is_one_line_and_changes_nothing(dirs, name, argv, status, expected, capsys, monkeypatch):
  monkeypatch.chdir(dirs["scratch"])  # an empty MODEL_DIR would write here
  before = tree_hash(dirs["model"]), tree_hash(dirs["scratch"])
  assert cli.main(fill(argv, dirs)) == status, capsys.readouterr().err[-3000:]
  check_one_line(status, capsys.readouterr().err, status, expected)
  assert (tree_hash(dirs["model"]), tree_hash(dirs["scratch"])) == before, name


def test_full_disk_names_model_dir_and_changes_nothing(dirs, capsys, monkeypatch):
  """Simulated: the run-config write (the first write of a resumed run) raises ENOSPC, as a full disk
  would. orbax's own ENOSPC arrives as text, checked in test_orbax_os_errors_are_storage_lines."""
  from prompt_tuning.runs import train

  def full(model_dir, run):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.path.join(model_dir, "run_config.json"))

  monkeypatch.setattr(train, "write_run_config", full)
  before = tree_hash(dirs["model"])
  status = cli.main(["train", QS, f"--gin.MODEL_DIR='{dirs['model']}'", "--gin.TRAIN_STEPS=6"])
  expected = f"cannot write MODEL_DIR {dirs['model']}: No space left on device: {dirs['model']}/run_config.json"
  check_one_line(status, capsys.readouterr().err, 1, expected)
  assert tree_hash(dirs["model"]) == before


def test_orbax_os_errors_are_storage_lines():
  """The text tensorstore gave (through orbax) when a checkpoint filled a real 120 KB tmpfs."""
  text = (
    'RESOURCE_EXHAUSTED: Error writing local file "/full/m/checkpoints/4.orbax-checkpoint-tmp/state/_sharding": '
    'Failed writing: "/full/m/checkpoints/4.orbax-checkpoint-tmp/state/_sharding.__lock": Failed to write 1805 '
    "bytes to file 14: No space left on device [os_error_code='28']"
  )
  line, bug = gin_runner.report(ValueError(text), "/full/m")
  assert not bug
  assert line == (
    "cannot write MODEL_DIR /full/m: No space left on device: /full/m/checkpoints/4.orbax-checkpoint-tmp/state/_sharding"
  )
  line, bug = gin_runner.report(PermissionError(errno.EACCES, "Permission denied", "/data/train.jsonl"), "/full/m")
  assert (line, bug) == ("Permission denied: /data/train.jsonl", False)


def test_a_bug_shows_its_traceback_and_says_so(dirs, capsys, monkeypatch):
  """Failures not caused by the input keep their traceback; PROMPT_TUNING_TRACEBACK=1 shows any."""
  from prompt_tuning.runs import setup

  def broken(*args, **kwargs):
    raise TypeError("unsupported operand")

  monkeypatch.setattr(setup, "frozen_model", broken)
  argv = ["train", QS, f"--gin.MODEL_DIR='{dirs['scratch']}/bug'", "--gin.TRAIN_STEPS=6"]
  assert cli.main(argv) == 1
  err = capsys.readouterr().err
  assert "Traceback" in err and 'in broken\n    raise TypeError("unsupported operand")' in err
  assert err.splitlines()[-1].startswith("prompt-tuning train: error: internal error (TypeError: unsupported operand)")
  monkeypatch.setenv("PROMPT_TUNING_TRACEBACK", "1")
  assert cli.main(["train", QS, f"--gin.MODEL_DIR='{dirs['scratch']}/x'", "--gin.TRAIN_STEPS=0"]) == 1
  err = capsys.readouterr().err
  assert "Traceback" in err and err.splitlines()[-1].endswith("TRAIN_STEPS must be a positive integer, got 0")


# Read-only folders and two devices: one subprocess, as a user that file permissions apply to.
SUBPROCESS_CASES = [
  ("MODEL_DIR's parent is read-only", ["train", QS, "--gin.MODEL_DIR='{ro}/new'"], "cannot create MODEL_DIR"),
  (
    "resume on a read-only MODEL_DIR",
    ["train", QS, "--gin.MODEL_DIR='{ro}/model'", "--gin.TRAIN_STEPS=6"],
    "cannot write MODEL_DIR {ro}/model: Permission denied: {ro}/model",
  ),
  (
    "evaluate on a read-only MODEL_DIR",
    ["evaluate", QS, "--gin_file=runs/evaluate.gin", "--gin.MODEL_DIR='{ro}/model'"],
    "cannot write MODEL_DIR {ro}/model: Permission denied",
  ),
  (
    "BATCH_SIZE the data axis does not divide",
    ["train", QS, "--gin.MODEL_DIR='{scratch}/new'", "--gin.BATCH_SIZE=5"],
    "BATCH_SIZE=5 does not split over the 2 data-parallel devices",
  ),
]

_CHILD = """
import contextlib, io, json, sys
from prompt_tuning.cli import main as cli
results = []
for argv in json.loads(sys.argv[1]):
  err = io.StringIO()
  with contextlib.redirect_stderr(err):
    status = cli.main(argv)
  results.append([status, err.getvalue()])
print(json.dumps(results))
"""


def _as_unprivileged() -> list[str] | None:
  """The command prefix under which file permissions apply ([] when not root), or None."""
  if os.geteuid() != 0:
    return []
  setpriv = shutil.which("setpriv")
  if setpriv is None:
    return None
  # Root ignores permission bits through these capabilities; without them it is an ordinary owner.
  return [setpriv, "--bounding-set", "-dac_override,-dac_read_search,-fowner", "--"]


def test_read_only_storage_and_undividable_batch(dirs, tmp_path):
  prefix = _as_unprivileged()
  if prefix is None:
    pytest.skip("running as root without setpriv: permission bits cannot be made to apply")
  ro = tmp_path / "read_only"
  ro.mkdir()
  shutil.copytree(dirs["model"], ro / "model")
  for directory, subdirs, files in os.walk(ro):
    for name in subdirs + files:
      path = os.path.join(directory, name)
      os.chmod(path, os.stat(path).st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
  os.chmod(ro, 0o555)
  try:
    before = tree_hash(str(ro)), tree_hash(dirs["scratch"])
    places = {**dirs, "ro": str(ro)}
    argvs = [[arg.format(**places) for arg in argv] for _, argv, _ in SUBPROCESS_CASES]
    env = processes.cpu_env(2)
    result = subprocess.run(
      [*prefix, sys.executable, "-c", _CHILD, json.dumps(argvs)],
      cwd=dirs["scratch"],
      env=env,
      capture_output=True,
      text=True,
      timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for (name, _, expected), (status, err) in zip(SUBPROCESS_CASES, json.loads(result.stdout.splitlines()[-1])):
      check_one_line(status, err, 1, expected.format(**places)), name
    assert (tree_hash(str(ro)), tree_hash(dirs["scratch"])) == before
  finally:
    for directory, _, _ in os.walk(ro):
      os.chmod(directory, 0o755)
