"""prompt-tuning: soft prompt tuning of frozen T5-family models in JAX/Flax."""

import os
import re

import setuptools

HERE = os.path.dirname(os.path.abspath(__file__))


def _data_files(package_dir: str, suffixes: tuple) -> list:
  """Files under `package_dir` (relative to it) ending in one of `suffixes`."""
  root = os.path.join(HERE, package_dir)
  found = []
  for dirpath, _, files in os.walk(root):
    found += [os.path.relpath(os.path.join(dirpath, f), root) for f in files if f.endswith(suffixes)]
  return sorted(found)


def _version() -> str:
  """`__version__` of prompt_tuning/__init__.py: one place to bump (read as text: nothing is installed yet)."""
  with open(os.path.join(HERE, "prompt_tuning", "__init__.py")) as f:
    return re.search(r'^__version__ = "([^"]+)"', f.read(), re.M).group(1)


setuptools.setup(
    name="prompt-tuning",
    version=_version(),
    description="Soft prompt tuning (Lester et al. 2021) of frozen T5 models in JAX/Flax, t5x-compatible.",
    long_description=open(os.path.join(HERE, "README.md")).read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    # The top-level gin/ and tasks/ folders install inside our namespace, so
    # they never clash with the `gin` library or another `tasks` package.
    packages=(setuptools.find_packages(include=["prompt_tuning", "prompt_tuning.*"])
              + ["prompt_tuning.gin", "prompt_tuning.tasks"]),
    package_dir={"prompt_tuning.gin": "gin", "prompt_tuning.tasks": "tasks"},
    package_data={"prompt_tuning.gin": _data_files("gin", (".gin",)),
                  "prompt_tuning.data": ["quickstart/*.jsonl", "quickstart/*.model"]},
    install_requires=[
        "absl-py",
        "etils[epath]",
        "flax",
        "gin-config",
        "jax",
        "msgpack",
        "numpy",
        "optax",
        "orbax-checkpoint",
        "safetensors",
        "sentencepiece",
        "tensorstore",
    ],
    extras_require={
        # The data layer (seqio tasks, tfds) brings TensorFlow; the core never imports it.
        "data": ["seqio", "tensorflow-datasets", "tensorflow"],
        "test": ["pytest", "torch", "transformers", "peft"],
    },
    entry_points={"console_scripts": ["prompt-tuning=prompt_tuning.cli.main:main"]},
)
