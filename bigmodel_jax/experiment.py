"""Everything a config describes, built and sharded, for train.py and notebooks.

  exp = experiment.build(config)
  state = exp.factory.init(jax.random.key(0))
  state, metrics = exp.train_step(state, exp.global_batch(exp.data.train_batch(0)), rng)
  exp.evaluate(state)  # {"loss": ..., "accuracy": ..., ...}
"""
import dataclasses
from typing import Any, Callable

import jax
import optax
from flax import traverse_util

from bigmodel_jax import (checkpoints, metrics, optim, perf, registry,
                          sharding, state, steps)


@dataclasses.dataclass
class Experiment:
  config: Any
  mesh: jax.sharding.Mesh
  data: Any  # None when built with load_data=False.
  model: Any
  tx: optax.GradientTransformation
  factory: state.StateFactory
  train_step: Callable
  eval_step: Callable

  def global_batch(self, local_batch: dict) -> dict:
    return sharding.global_batch(local_batch, self.mesh)

  def eval_totals(self, train_state, split: str | None = None) -> dict:
    """Eval outputs summed over the eval split (or `split`) (numpy)."""
    args = () if split is None else (split,)
    batches = perf.progress(self.data.eval_batches(*args),
                            self.data.num_eval_batches(*args), "eval batch")
    return steps.evaluate(self.eval_step, train_state, batches, self.mesh)

  def evaluate(self, train_state) -> dict:
    """Scalar eval metrics (see `metrics.summarize`)."""
    return metrics.summarize(self.eval_totals(train_state))

  def load_pretrained(self, train_state, init_from) -> tuple[Any, str]:
    """(`train_state` with pretrained params, a one-line report).

    `init_from.workdir` (+ `.step`): another run's checkpoint, fitted by the
    model module's `adapt_params` where it has one (ViT resamples position
    embeddings, restarts a head of another class count); `init_from.hf_dir`:
    a Hugging Face checkpoint through the module's `load_hf`. Parameters the
    checkpoint lacks (a new head, LoRA adapters) keep their initial values;
    the optimizer state starts fresh.
    """
    module = registry.get("models", self.config.model.name)
    if init_from.workdir and init_from.get("hf_dir"):
      raise ValueError("Set one of init_from.workdir and init_from.hf_dir.")
    source = init_from.workdir or init_from.get("hf_dir")
    if init_from.workdir:
      params = checkpoints.load_params(init_from.workdir, init_from.step)
    elif hasattr(module, "load_hf"):
      params = module.load_hf(init_from.hf_dir, self.config.model)
    else:
      raise ValueError(f"Model {self.config.model.name!r} has no Hugging "
                       "Face importer (init_from.hf_dir).")
    if hasattr(module, "adapt_params"):
      params = module.adapt_params(params, self.factory.abstract.params)
    target = traverse_util.flatten_dict(self.factory.abstract.params, sep="/")
    given = traverse_util.flatten_dict(params, sep="/")
    fresh = sorted(target.keys() - given.keys())
    unused = sorted(given.keys() - target.keys())
    report = (f"initialised {len(target) - len(fresh)} of {len(target)} "
              f"parameter tensors from {source}" +
              (f"; new: {_abbreviate(fresh)}" if fresh else "") +
              (f"; not used: {_abbreviate(unused)}" if unused else ""))
    return self.factory.with_params(train_state, params), report

  def units(self) -> tuple[str, int]:
    """("tokens" or "images", how many a global batch holds)."""
    return registry.get("data", self.config.input.name).units(
        self.config.input)

  def flops_per_item(self) -> float:
    """Training FLOPs per token (language models) or example."""
    return self.model.flops_per_item(self.factory.abstract.params,
                                     self.factory.example_inputs.shape)


def _abbreviate(names: list[str], most: int = 6) -> str:
  return ", ".join(names[:most]) + (f" (+{len(names) - most} more)"
                                    if len(names) > most else "")


def model_and_optimizer(config):
  """(model, optimizer, trainable mask function or None) of a config."""
  module = registry.get("models", config.model.name)
  model = module.make(config.model)
  presets = getattr(module, "trainable_presets", lambda _: {})(config.model)
  trainable = optim.trainable(config.optimizer, presets)
  return model, optim.make(config.optimizer, config.total_steps,
                           trainable), trainable


def build(config, devices=None, *, load_data: bool = True) -> Experiment:
  """Mesh -> data -> model -> sharded state -> jitted steps, from a config.

  Uses all devices unless `devices` is given. Model fields that the config
  leaves None and the data knows (vocab_size, num_classes) are filled in.
  With `load_data=False` (ahead-of-time planning) nothing is read and shapes
  come from the config alone.
  """
  # Mesh.
  mesh = sharding.make_mesh(config.mesh, devices)
  accum = config.get("grad_accum_steps", 1)
  if config.input.batch_size % (sharding.num_batch_shards(mesh) * accum):
    raise ValueError(
        f"input.batch_size={config.input.batch_size} is not divisible by the "
        f"{sharding.num_batch_shards(mesh)} data x fsdp shards of the mesh "
        f"times grad_accum_steps={accum}.")

  # Data: this process's share of each global batch.
  data_module = registry.get("data", config.input.name)
  data = None
  if load_data:
    data = data_module.Input(
        config.input, seed=config.seed, process_index=jax.process_index(),
        process_count=jax.process_count())
    for key, value in data.model_fields().items():
      if config.model.get(key, 0) is None:
        config.model[key] = value
  example_inputs = data_module.batch_spec(config.input)["inputs"]

  # Model and optimizer (on the trainable parameters).
  model, tx, trainable = model_and_optimizer(config)

  # Sharded state layout, then the jitted steps with explicit shardings.
  factory = state.StateFactory(model, tx, mesh, example_inputs)
  train_step, eval_step = steps.jit_steps(
      factory, optim.schedule(config.optimizer, config.total_steps),
      config.model.get("num_classes"), accum, trainable)
  return Experiment(config, mesh, data, model, tx, factory, train_step,
                    eval_step)
