"""Train state, created directly in its sharded layout.

Parameters are never materialised unsharded: `jax.eval_shape` gives the
abstract state with its logical axis names, the layout's rules turn those
into shardings, and `jit(init, out_shardings=...)` creates every shard in
place. The abstract state with shardings is also the restore target for
checkpoints (`abstract_variables` alone, for sampling, export and serving).

The model is built by calling it as the task declares
(`example_args(task, batch_spec)`: the task's `model_args` of a whole
abstract batch), so a model of several inputs needs nothing special.
"""
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax
from flax import linen as nn
from flax import traverse_util

from bigmodel_jax import sharding
from bigmodel_jax.errors import ConfigError


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


def example_args(task, batch_spec: dict) -> tuple:
  """The model's arguments for a batch of `batch_spec` (name ->
  ShapeDtypeStruct), as ShapeDtypeStructs: what init, quantization, export
  and FLOP counting call the model with."""
  return jax.eval_shape(task.model_args, dict(batch_spec))


def _variables(model: nn.Module, rng, args: tuple) -> dict:
  return dict(model.init(rng, *jax.tree.map(
      lambda a: jnp.zeros(a.shape, a.dtype), args)))


def _create(model: nn.Module, tx: optax.GradientTransformation, rng,
            args: tuple) -> TrainState:
  """The boxed (logically annotated) initial state."""
  variables = _variables(model, rng, args)
  params = variables.pop("params")
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    model_state=variables, opt_state=tx.init(params))


def _with_shardings(boxed, shardings):
  return jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
      nn.unbox(boxed), shardings)


def abstract_variables(model: nn.Module, layout: sharding.Layout,
                       args: tuple) -> dict:
  """The model's variables ("params", "batch_stats", ...) as
  ShapeDtypeStructs with their shardings (`args`: `example_args`)."""
  boxed = jax.eval_shape(lambda rng: _variables(model, rng, args),
                         jax.random.key(0))
  return _with_shardings(boxed, layout.tree_shardings(boxed))


class StateFactory:
  """Abstract state, shardings and sharded init for one model on one mesh.

  `fallbacks` lists the parameters a mesh axis could not split (see
  `sharding.describe_fallbacks`).
  """

  def __init__(self, model: nn.Module, tx: optax.GradientTransformation,
               layout: sharding.Layout, args: tuple):
    self.model, self.tx, self.layout = model, tx, layout
    self.mesh = layout.mesh
    self.example_args = args  # `example_args`: the model's arguments.
    boxed = jax.eval_shape(lambda rng: _create(model, tx, rng, args),
                           jax.random.key(0))
    fallbacks = []
    self.shardings: TrainState = layout.tree_shardings(boxed, fallbacks)
    self.fallbacks = [f for f in fallbacks if f.path.startswith("params/")]
    self.abstract: TrainState = _with_shardings(boxed, self.shardings)

  def init(self, rng) -> TrainState:
    """A freshly initialised state, each shard created on its own device."""
    def init_fn(rng):
      return nn.unbox(_create(self.model, self.tx, rng, self.example_args))

    with self.layout.context():
      return jax.jit(init_fn, out_shardings=self.shardings)(rng)

  def with_params(self, train_state: TrainState, params,
                  model_state: dict | None = None) -> TrainState:
    """`train_state` with the parameters `params` holds (host or device
    arrays, any layout, the model's shapes) put into the sharded layout
    shard by shard, and likewise the model state (BatchNorm statistics)
    `model_state` holds; arrays they lack keep their values, entries the
    model lacks are ignored."""
    return train_state.replace(
        params=self._merge(self.abstract.params, train_state.params, params),
        model_state=self._merge(self.abstract.model_state,
                                train_state.model_state, model_state or {}))

  @staticmethod
  def _merge(abstract, current, given):
    target = traverse_util.flatten_dict(abstract)
    given = traverse_util.flatten_dict(given)
    wrong = {"/".join(k): (tuple(given[k].shape), target[k].shape)
             for k in target.keys() & given.keys()
             if tuple(given[k].shape) != target[k].shape}
    if wrong:
      raise ConfigError(f"Loaded parameters do not match the model's shapes "
                       f"(loaded, model): {wrong}.")
    merged = traverse_util.flatten_dict(current)
    for k in target.keys() & given.keys():
      merged[k] = jax.device_put(given[k].astype(target[k].dtype),
                                 target[k].sharding)
    return traverse_util.unflatten_dict(merged)
