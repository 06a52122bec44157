"""`prompt-tuning serve`: flags, one-line errors, and the command serving over HTTP in its own process."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import jax
import numpy as np
import pytest

from prompt_tuning import param_tree
from prompt_tuning.checkpoints import bundle as bundle_lib
from prompt_tuning.cli import serve
from prompt_tuning.data.quickstart import data_path
from prompt_tuning.models.t5 import get_config, network

CONFIG = get_config("tiny")  # what `--config tiny` initializes, seed 0


def _bundle(path: str, fingerprint: str, length: int = 2, **changes) -> str:
  fields = dict(
    prompt=np.random.RandomState(length).randn(length, CONFIG.emb_dim).astype(np.float32),
    config=bundle_lib.architecture(CONFIG),
    fingerprint=fingerprint,
    vocabulary_path=data_path("sentencepiece.model"),
    feature_lengths={"inputs": 16, "targets": 3},
  )
  return bundle_lib.write_bundle(path, bundle_lib.PromptBundle(**{**fields, **changes}))


def test_bad_flags_and_prompts_are_one_line_before_the_model_loads(tmp_path, capsys):
  with pytest.raises(SystemExit):
    serve.parse(["--config", "tiny", "--prompt", "a=x", "--prompt", "a=y"])
  assert "--prompt names task a twice" in capsys.readouterr().err
  with pytest.raises(SystemExit):
    serve.parse(["--config", "tiny", "--prompt", "a=x", "--batch_buckets", "4,2"])
  assert "--batch_buckets takes ascending sizes" in capsys.readouterr().err
  assert serve.main(["--config", "tiny", "--prompt", f"a={tmp_path}/missing"]) == 1
  err = capsys.readouterr().err
  assert err.strip() == f"prompt-tuning serve: error: task a: {tmp_path}/missing: no such prompt bundle", err
  one = _bundle(str(tmp_path / "one.safetensors"), "", placement="prefix")
  two = _bundle(str(tmp_path / "two.safetensors"), "", placement="suffix")
  assert serve.main(["--config", "tiny", "--prompt", f"a={one}", "--prompt", f"b={two}"]) == 1
  err = capsys.readouterr().err.strip()
  assert (
    err
    == "prompt-tuning serve: error: the prompt bundles mix placements (prefix, suffix); one server needs one placement"
  )


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _call(url: str, path: str, body=None) -> tuple[int, dict]:
  data = None if body is None else json.dumps(body).encode()
  request = urllib.request.Request(url + path, data=data, headers={"Content-Type": "application/json"})
  try:
    with urllib.request.urlopen(request, timeout=60) as response:
      return response.status, json.loads(response.read())
  except urllib.error.HTTPError as e:
    return e.code, json.loads(e.read())


@pytest.mark.slow
def test_the_command_serves_over_http_and_checks_each_prompt_against_its_model(tmp_path):
  fingerprint = param_tree.fingerprint(network.init_params(CONFIG, jax.random.PRNGKey(0)))
  first = _bundle(str(tmp_path / "first.safetensors"), fingerprint, length=2)
  second = tmp_path / "second"  # a MODEL_DIR: its latest bundle
  _bundle(str(second / "prompts" / "step_3.safetensors"), fingerprint, length=3)
  foreign = _bundle(str(tmp_path / "foreign.safetensors"), "0123abcd")
  port = _free_port()
  command = shutil.which("prompt-tuning") or "prompt-tuning"
  flags = ["--config", "tiny", "--prompt", f"first={first}", "--prompt", f"second={second}", "--port", str(port)]
  flags += ["--max_batch_size", "2", "--log_level", "warning"]
  server = subprocess.Popen([command, "serve", *flags], stderr=subprocess.PIPE, text=True, env=dict(os.environ))
  url = f"http://127.0.0.1:{port}"
  try:
    deadline = time.monotonic() + 180
    while True:
      try:
        status, health = _call(url, "/health")
        break
      except (urllib.error.URLError, ConnectionError):
        assert server.poll() is None, server.stderr.read()
        assert time.monotonic() < deadline, "the server did not come up"
        time.sleep(0.2)
    assert status == 200 and health["tasks"] == 2
    tasks = {t["task"]: t for t in _call(url, "/tasks")[1]["tasks"]}
    assert tasks["second"]["prompt_length"] == 3 and tasks["second"]["source"] == str(second)
    assert tasks["first"]["feature_lengths"] == {"inputs": 16, "targets": 3}
    status, answer = _call(url, "/predict", {"task": "second", "inputs": ["sentence: fine", "sentence: bad"]})
    assert status == 200 and len(answer["predictions"]) == 2 and answer["truncated"] == [False, False], answer
    status, answer = _call(url, "/prompts", {"task": "foreign", "source": foreign})
    assert status == 422 and "trained on frozen weights 0123abcd, this frozen model's are" in answer["error"]
    assert fingerprint in answer["error"], answer
  finally:
    server.terminate()
    _, err = server.communicate(timeout=60)
  assert "compiled" in err and "serving first (2), second (3)" in err, err
  assert server.returncode in (0, -signal.SIGTERM), err  # uvicorn shuts down, then re-raises the signal


def test_serving_imports_without_the_cli_or_the_trainer():
  """The server's room sits below the entry points: run outside prompt_tuning so nothing else loads."""
  script = "import sys; import prompt_tuning.serving.start; " + (
    "print(sorted(m for m in sys.modules if m.startswith(('prompt_tuning.cli', 'prompt_tuning.train', 'gin'))))"
  )
  result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.strip() == "[]"
