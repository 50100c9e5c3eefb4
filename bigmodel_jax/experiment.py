"""Everything a config describes, built and sharded, for train.py and notebooks.

  exp = experiment.build(config)       # `config` is left as it was
  exp.config                           # the resolved config (data fields, task)
  state = exp.factory.init(jax.random.key(0))
  state, metrics = exp.train_step(state, exp.global_batch(exp.data.train_batch(0)), rng)
  exp.evaluate(state)                  # {"loss": ..., "accuracy": ..., ...}
"""
import dataclasses
from typing import Any, Callable

import jax
import optax
from flax import traverse_util

from bigmodel_jax import (checkpoints, distill, federated, grouped, optim,
                          perf, privacy, pruning, registry, runs, sharding,
                          state, steps)
from bigmodel_jax.errors import ConfigError


@dataclasses.dataclass
class Experiment:
  config: Any  # Resolved: data fields filled in, task named.
  layout: sharding.Layout
  data: Any  # None when built with load_data=False.
  family: Any  # The model family module (contracts.ModelFamily).
  task: Any  # contracts.Task.
  model: Any
  tx: optax.GradientTransformation
  factory: state.StateFactory
  train_step: Callable
  eval_step: Callable
  trainable: Callable | None = None  # params -> bools (optim.trainable).

  @property
  def mesh(self) -> jax.sharding.Mesh:
    return self.layout.mesh

  def global_batch(self, local_batch: dict) -> dict:
    return self.layout.global_batch(local_batch)

  def eval_totals(self, variables, split: str | None = None) -> dict:
    """Eval outputs summed over a split (default `input.eval_split`)."""
    batches = perf.progress(self.data.eval_batches(split),
                            self.data.num_eval_batches(split), "eval batch")
    return steps.evaluate(self.eval_step, variables, batches, self.layout)

  def summary(self, totals: dict, split: str | None = None
              ) -> tuple[dict, dict, str | None]:
    """(scalars, records, text table) of eval totals: the task's summary
    and report, and each group's metrics with the gaps (`grouped.py`)."""
    records, text = self.task.report(totals, self.data.class_names)
    groups = grouped.per_group(self.task, totals,
                               self.data.group_names(split))
    scalars = {**self.task.summarize(totals), **grouped.summarize(groups)}
    if groups:
      text = ((text + "\n\n" if text else "") + "Per group:\n" +
              grouped.table(groups))
    return scalars, records, text

  def evaluate(self, train_state, split: str | None = None) -> dict:
    """Scalar eval metrics of the task (e.g. loss, accuracy)."""
    return self.task.summarize(self.eval_totals(train_state.variables, split))

  def rngs(self) -> tuple:
    """(init rng, train rng) of the run's seed."""
    return tuple(jax.random.split(jax.random.key(self.config.seed)))

  def initial_state(self) -> tuple[Any, str | None]:
    """(the freshly initialised state, with pretrained parameters when
    `init_from` names them; the loading report or None)."""
    train_state = self.factory.init(self.rngs()[0])
    init_from = self.config.init_from
    if init_from.workdir or init_from.get("hf_dir"):
      return self.load_pretrained(train_state, init_from)
    return train_state, None

  def evaluators(self) -> dict:
    """KEY -> the evaluator of `config.evals.KEY` (evaluators/)."""
    return {key: registry.get("evaluators", block.get("name") or key
                              ).Evaluator(block, self)
            for key, block in (self.config.get("evals") or {}).items()}

  def load_pretrained(self, train_state, init_from) -> tuple[Any, str]:
    """(`train_state` with pretrained params, a one-line report).

    `init_from.workdir` (+ `.step`): another run's checkpoint, read into this
    mesh's shards and fitted by the family's `adapt_params` where it has one
    (ViT resamples position embeddings, restarts a head of another class
    count); `init_from.hf_dir`: a Hugging Face checkpoint through the
    family's `load_hf` (with BatchNorm statistics where it has them).
    Parameters the checkpoint lacks (a new head, LoRA adapters) keep their
    initial values; the optimizer state starts fresh.
    """
    if init_from.workdir and init_from.get("hf_dir"):
      raise ConfigError("Set one of init_from.workdir and init_from.hf_dir.")
    target = self.factory.abstract.params
    source = init_from.workdir or init_from.get("hf_dir")
    model_state = None
    if init_from.workdir:
      params, _ = checkpoints.restore_params(init_from.workdir, target,
                                             init_from.step)
    elif self.family.load_hf is not None:
      model_state = self.family.load_hf(init_from.hf_dir, self.config.model)
      params = model_state.pop("params")
    else:
      raise ConfigError(f"Model {self.config.model.name!r} has no Hugging "
                       "Face importer (init_from.hf_dir).")
    if self.family.adapt_params is not None:
      params = self.family.adapt_params(params, target)
    wanted = traverse_util.flatten_dict(target, sep="/")
    given = traverse_util.flatten_dict(params, sep="/")
    fresh = sorted(wanted.keys() - given.keys())
    unused = sorted(given.keys() - wanted.keys())
    report = (f"initialised {len(wanted) - len(fresh)} of {len(wanted)} "
              f"parameter tensors from {source}" +
              (f"; new: {_abbreviate(fresh)}" if fresh else "") +
              (f"; not used: {_abbreviate(unused)}" if unused else ""))
    return self.factory.with_params(train_state, params, model_state), report

  def units(self) -> tuple[str, int]:
    """("tokens" or "images", how many a global batch holds)."""
    unit, items = registry.get("data", self.config.input.name).units(
        self.config.input)  # A federated round is several batches.
    return unit, items * getattr(self.task, "batches_per_step", 1)

  def train_batch_spec(self) -> dict:
    """Name -> ShapeDtypeStruct of a global train batch (a federated
    round's when the task trains in rounds: `round_spec`)."""
    spec = registry.get("data", self.config.input.name).batch_spec(
        self.config.input)
    round_spec = getattr(self.task, "round_spec", None)
    return round_spec(spec) if round_spec is not None else spec

  def flops_per_item(self) -> float:
    """Training FLOPs per token (language models) or example."""
    return self.family.flops_per_item(self.model, self.factory.abstract.params,
                                      self.factory.example_args)

  def num_params(self) -> int:
    return self.family.num_params(self.factory.abstract.params)


def _abbreviate(names: list[str], most: int = 6) -> str:
  return ", ".join(names[:most]) + (f" (+{len(names) - most} more)"
                                    if len(names) > most else "")


def build(config, devices=None, *, load_data: bool = True) -> Experiment:
  """Mesh -> data -> task -> model -> sharded state -> jitted steps.

  Uses all devices unless `devices` is given. Returns the resolved config
  (`Experiment.config`): model fields that the config leaves None and the
  data knows (vocab_size, num_classes) filled in, the task named. With
  `load_data=False` (ahead-of-time planning) nothing is read and shapes
  come from the config alone.
  """
  family = registry.get("models", config.model.name)
  config = runs.resolve(config, family)

  # Mesh and sharding rules.
  layout_ = runs.layout(config, devices)
  accum = config.get("grad_accum_steps", 1)
  shards = layout_.num_batch_shards()
  if config.input.batch_size % (shards * accum):
    raise ConfigError(
        f"input.batch_size={config.input.batch_size} is not divisible by the "
        f"{shards} batch shards of the mesh times grad_accum_steps={accum}.")

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
  spec = data_module.batch_spec(config.input)

  # Task: it must understand what the input's batches hold.
  task = registry.get("tasks", config.task.name).Task(config)
  missing = task.required_keys - spec.keys()
  extra = spec.keys() - task.required_keys - task.optional_keys
  if missing or extra:
    raise ConfigError(
        f"Task {task.name!r} needs batch entries {sorted(task.required_keys)}"
        f" (optional {sorted(task.optional_keys)}); input "
        f"{config.input.name!r} gives {sorted(spec)}.")
  task = distill.wrap(task, config)  # With a teacher when one is set.
  task = privacy.wrap(task, config, data)  # DP-SGD when config.dp says so.
  task, data = federated.wrap(task, config, data)  # Rounds of clients.

  # Model (called as the task declares) and optimizer (on the trainable
  # parameters, pruned when pruning is set).
  model, args = runs.model_and_args(family, task, config)
  presets = (family.trainable_presets(config.model)
             if family.trainable_presets is not None else {})
  trainable = optim.trainable(config.optimizer, presets)
  tx = pruning.wrap(task.optimizer(trainable), config)

  # Sharded state layout, then the jitted steps with explicit shardings.
  factory = state.StateFactory(model, tx, layout_, args)
  train_step, eval_step = steps.jit_steps(
      factory, task.train_step(model, tx, trainable), task.eval_step(model))
  return Experiment(config, layout_, data, family, task, model, tx, factory,
                    train_step, eval_step, trainable)
