"""The installed package: entry points and the top-level folders mapped into our namespace."""

from __future__ import annotations

import importlib.resources
import shutil

import prompt_tuning


def test_gin_and_tasks_install_inside_the_namespace():
  import prompt_tuning.gin
  import prompt_tuning.tasks

  assert importlib.resources.files("prompt_tuning.gin").is_dir()
  assert prompt_tuning.__version__


def test_console_script_is_installed():
  assert shutil.which("prompt-tuning") is not None
