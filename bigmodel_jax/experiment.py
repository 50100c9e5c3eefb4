"""Everything a config describes, built and sharded, for train.py and notebooks.

  exp = experiment.build(config)
  state = exp.factory.init(jax.random.key(0))
  state, metrics = exp.train_step(state, exp.global_batch(exp.data.train_batch(0)), rng)
"""
import dataclasses
from typing import Any, Callable

import jax
import numpy as np
import optax

from bigmodel_jax import optim, registry, sharding, state, steps


@dataclasses.dataclass
class Experiment:
  config: Any
  mesh: jax.sharding.Mesh
  data: Any
  model: Any
  tx: optax.GradientTransformation
  factory: state.StateFactory
  train_step: Callable
  eval_step: Callable

  def global_batch(self, local_batch: dict) -> dict:
    return sharding.global_batch(local_batch, self.mesh)

  def evaluate(self, params) -> dict:
    return steps.evaluate(self.eval_step, params, self.data.eval_batches(),
                          self.mesh)


def build(config, devices=None) -> Experiment:
  """Mesh -> data -> model -> sharded state -> jitted steps, from a config.

  Uses all devices unless `devices` is given. Fills `config.model.vocab_size`
  from the data when the config leaves it None.
  """
  # Mesh.
  mesh = sharding.make_mesh(config.mesh, devices)
  if config.input.batch_size % sharding.num_batch_shards(mesh):
    raise ValueError(
        f"input.batch_size={config.input.batch_size} is not divisible by the "
        f"{sharding.num_batch_shards(mesh)} data x fsdp shards of the mesh.")

  # Data: this process's share of each global batch.
  data = registry.get("data", config.input.name).Input(
      config.input, seed=config.seed, process_index=jax.process_index(),
      process_count=jax.process_count())
  if config.model.get("vocab_size", 0) is None:
    config.model.vocab_size = data.vocab_size
  example_batch = {
      k: np.zeros((config.input.batch_size,) + v.shape[1:], v.dtype)
      for k, v in data.train_batch(0).items()}

  # Model and optimizer.
  model = registry.get("models", config.model.name).make(config.model)
  tx = optim.make(config.optimizer, config.total_steps)

  # Sharded state layout, then the jitted steps with explicit shardings.
  factory = state.StateFactory(model, tx, mesh, example_batch["inputs"])
  train_step, eval_step = steps.jit_steps(
      factory, optim.schedule(config.optimizer, config.total_steps),
      example_batch)
  return Experiment(config, mesh, data, model, tx, factory, train_step,
                    eval_step)
