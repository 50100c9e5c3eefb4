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
import numpy as np
import optax
from flax import linen as nn
from flax import traverse_util

from bigmodel_jax import sharding


@flax.struct.dataclass
class TrainState:
  """`model_state` holds the model's other variable collections (e.g.
  BatchNorm's "batch_stats"), updated by the train step, empty for most models."""
  step: jax.Array
  params: Any
  model_state: Any
  opt_state: Any

  @property
  def variables(self) -> dict:
    """What `model.apply` takes."""
    return {"params": self.params, **self.model_state}


def _create(model: nn.Module, tx: optax.GradientTransformation, rng,
            example: jax.ShapeDtypeStruct) -> TrainState:
  """The boxed (logically annotated) initial state."""
  variables = dict(model.init(rng, jnp.zeros(example.shape, example.dtype)))
  params = variables.pop("params")
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    model_state=variables, opt_state=tx.init(params))


class StateFactory:
  """Abstract state, shardings and sharded init for one model on one mesh."""

  def __init__(self, model: nn.Module, tx: optax.GradientTransformation,
               mesh, example_inputs):
    self.model, self.tx, self.mesh = model, tx, mesh
    self.example_inputs = jax.ShapeDtypeStruct(example_inputs.shape,
                                                example_inputs.dtype)
    boxed = jax.eval_shape(
        lambda rng: _create(model, tx, rng, self.example_inputs),
        jax.random.key(0))
    self.shardings: TrainState = sharding.tree_shardings(boxed, mesh)
    self.abstract: TrainState = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
        nn.unbox(boxed), self.shardings)

  def init(self, rng) -> TrainState:
    """A freshly initialised state, each shard created on its own device."""
    def init_fn(rng):
      return nn.unbox(_create(self.model, self.tx, rng, self.example_inputs))

    with sharding.context(self.mesh):
      return jax.jit(init_fn, out_shardings=self.shardings)(rng)

  def with_params(self, train_state: TrainState, params) -> TrainState:
    """`train_state` with the parameters `params` holds (host or device
    arrays, any layout, the model's shapes) put into the sharded layout;
    parameters it lacks keep their values, entries the model lacks are
    ignored."""
    target = traverse_util.flatten_dict(self.abstract.params)
    given = traverse_util.flatten_dict(params)
    wrong = {"/".join(k): (tuple(given[k].shape), target[k].shape)
             for k in target.keys() & given.keys()
             if tuple(given[k].shape) != target[k].shape}
    if wrong:
      raise ValueError(f"Loaded parameters do not match the model's shapes "
                       f"(loaded, model): {wrong}.")
    merged = traverse_util.flatten_dict(train_state.params)
    for k in target.keys() & given.keys():  # Host copies, sharded on the way.
      merged[k] = jax.device_put(
          np.asarray(given[k]).astype(target[k].dtype), target[k].sharding)
    return train_state.replace(params=traverse_util.unflatten_dict(merged))
