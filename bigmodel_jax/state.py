"""Train state, created directly in its sharded layout.

Parameters are never materialised unsharded: `jax.eval_shape` gives the
abstract state with its logical axis names, the rules table turns those into
shardings, and `jit(init, out_shardings=...)` creates every shard in place.
The abstract state with shardings is also the restore target for checkpoints.
"""
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax
from flax import linen as nn

from bigmodel_jax import sharding


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any


def _create(model: nn.Module, tx: optax.GradientTransformation, rng,
            example: jax.ShapeDtypeStruct) -> TrainState:
  """The boxed (logically annotated) initial state."""
  params = model.init(rng, jnp.zeros(example.shape, example.dtype))["params"]
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    opt_state=tx.init(params))


class StateFactory:
  """Abstract state, shardings and sharded init for one model on one mesh."""

  def __init__(self, model: nn.Module, tx: optax.GradientTransformation,
               mesh, example_inputs):
    self.model, self.tx, self.mesh = model, tx, mesh
    self._example = jax.ShapeDtypeStruct(example_inputs.shape,
                                         example_inputs.dtype)
    boxed = jax.eval_shape(lambda rng: _create(model, tx, rng, self._example),
                           jax.random.key(0))
    self.shardings: TrainState = sharding.tree_shardings(boxed, mesh)
    self.abstract: TrainState = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
        nn.unbox(boxed), self.shardings)

  def init(self, rng) -> TrainState:
    """A freshly initialised state, each shard created on its own device."""
    def init_fn(rng):
      return nn.unbox(_create(self.model, self.tx, rng, self._example))

    with sharding.context(self.mesh):
      return jax.jit(init_fn, out_shardings=self.shardings)(rng)
