"""The installed package: entry points and the top-level folders mapped into our namespace."""

from __future__ import annotations

import os
import shutil
import sys


def test_gin_and_tasks_install_inside_the_namespace():
  import prompt_tuning.tasks

  # gin/ is data only (no __init__.py), so `import gin` from a checkout still finds gin-config.
  from prompt_tuning import gin_utils

  configs = gin_utils.bundled_gin_dir()
  for name in ("quickstart.gin", "runs/prompt_finetune.gin", "models/t5_1_1/xxl.gin", "prompts/class_labels.gin"):
    assert os.path.isfile(os.path.join(configs, name)), name
  assert prompt_tuning.__version__


def test_console_script_is_installed():
  bin_dir = os.path.dirname(sys.executable)  # the environment's scripts, whether or not it is activated
  assert shutil.which("prompt-tuning", path=bin_dir + os.pathsep + os.environ.get("PATH", "")) is not None


def test_a_source_checkout_behaves_like_the_install():
  """`python -m ...` in the repo root imports the checkout's package: tasks/ and gin/ must still be found."""
  import subprocess

  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  script = (
    "import prompt_tuning, prompt_tuning.tasks; from prompt_tuning import gin_utils; "
    "from prompt_tuning.data.task import get_task; get_task('super_glue_rte_v102'); "
    "print(prompt_tuning.__file__, gin_utils.bundled_gin_dir())"
  )
  out = subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True, text=True, check=True).stdout
  assert out.startswith(os.path.join(root, "prompt_tuning")), out


def test_version_from_the_command_line_matches_the_installed_metadata(capsys):
  from importlib import metadata

  import prompt_tuning
  from prompt_tuning.cli import main as cli

  assert metadata.version("prompt-tuning") == prompt_tuning.__version__  # setup.py reads __init__.py
  assert cli.main(["--version"]) == 0
  assert capsys.readouterr().out == (
    f"prompt-tuning {prompt_tuning.__version__} (jax {metadata.version('jax')}, flax {metadata.version('flax')})\n"
  )


def test_import_is_cheap_and_the_python_api_loads_on_first_use():
  import subprocess

  script = (
    "import sys, prompt_tuning; heavy = [m for m in ('jax', 'flax', 'gin', 'orbax') if m in sys.modules]; "
    "assert not heavy, heavy; from prompt_tuning import train_prompt; "
    "from prompt_tuning.runs import train; assert train_prompt is train.train; "
    "assert callable(prompt_tuning.load_pretrained) and 'train_prompt' in dir(prompt_tuning)"
  )
  result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
  assert result.returncode == 0, result.stderr[-2000:]
