"""The train state: what changes during training, and nothing else.

The frozen model is held apart (it is loaded once from its checkpoint and
never re-saved): a prompt checkpoint of a T5-Base run is ~300 KB, not 1 GB.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

from prompt_tuning.train.guard import Guard


@flax.struct.dataclass
class TrainState:
  """step: int32 scalar; params: the trainable subtree; opt_state: optimizer state of it alone.

  guard: the divergence guard's scalars (train/guard.py); not checkpointed, it starts afresh.
  """

  step: jax.Array
  params: Any
  opt_state: Any
  guard: Guard = dataclasses.field(default_factory=Guard.create)

  @classmethod
  def create(cls, params: Any, tx: optax.GradientTransformation) -> "TrainState":
    return cls(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))

  def to_checkpoint(self) -> dict:
    return {"step": self.step, "params": self.params, "opt_state": self.opt_state}

  @classmethod
  def from_checkpoint(cls, tree: dict) -> "TrainState":
    return cls(step=tree["step"], params=tree["params"], opt_state=tree["opt_state"])
