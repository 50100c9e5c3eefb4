"""A trained run, loaded for inference: config, model, parameters, tokenizer.

  run = runs.load("runs/shakespeare")        # newest checkpoint
  logits = run.task.apply(run.model, run.variables, batch)
  run.require("generate")                    # or one line naming what lacks

A compressed run (`compress.py`) comes back as its quantized model and
weights. Only the model's variables are restored (`checkpoints.restore_variables`:
parameters and e.g. BatchNorm statistics), straight
into their shards on a mesh over the devices at hand (`mesh` overrides the
run's), laid out by the run's own sharding rules: never the optimizer
moments, never an unsharded copy. Sampling, evaluation and serving use it.
"""
import argparse
import copy
import dataclasses
import os
from typing import Any

import ml_collections

from bigmodel_jax import (capabilities, checkpoints, config_loader,
                          quantization, registry, selection, sharding, state)
from bigmodel_jax.dataio import chat
from bigmodel_jax.errors import NotFound


@dataclasses.dataclass
class Run:
  workdir: str
  config: ml_collections.ConfigDict
  family: Any  # contracts.ModelFamily.
  task: Any  # contracts.Task: how the model is called, what it predicts.
  model: Any
  variables: dict  # "params" and the model's other collections.
  step: int
  layout: Any  # sharding.Layout: the mesh the variables are sharded over.
  tokenizer: Any  # None for inputs without text.
  chat_template: Any = None  # dataio.chat.Template of conversation runs.

  @property
  def params(self):
    return self.variables["params"]

  @property
  def parts(self) -> dict:
    """What its family, task and input declare (see capabilities.py)."""
    return capabilities.parts(self.family, self.task, self.config.model,
                              self.tokenizer)

  @property
  def capabilities(self) -> list[str]:
    return capabilities.of(self.parts)

  def require(self, name: str) -> None:
    """ConfigError in one line unless the run has capability `name`."""
    capabilities.require(
        self.parts, name, f"{self.workdir} (model {self.config.model.name!r},"
        f" task {self.config.task.name!r})")


# Tasks of runs saved before they became something else.
_RENAMED_TASKS = {"distill": None}  # Now a wrapper (distill.py): the default.


def resolve(config, family) -> ml_collections.ConfigDict:
  """A copy of `config` with the sections configs written before them lack
  (`task`, `sharding`) and the task named (the family's default)."""
  config = copy.deepcopy(config)
  if "task" not in config:
    config.task = ml_collections.ConfigDict({"name": None})
  if "sharding" not in config:
    config.sharding = ml_collections.ConfigDict(
        {"rules": dict(sharding.RULES)})
  config.task.name = _RENAMED_TASKS.get(config.task.name, config.task.name)
  if config.task.name is None:
    config.task.name = family.default_task(config.model)
  return config


def layout(config, devices=None) -> sharding.Layout:
  """The mesh of `config.mesh` over `devices` (default all) and its rules."""
  return sharding.Layout(sharding.make_mesh(config.mesh, devices),
                         sharding.rules_from_config(config.sharding.rules))


def example_args(task, config) -> tuple:
  """The model's arguments for a global batch of the config's input, as
  `task` calls it (`state.example_args`)."""
  return state.example_args(task, registry.get(
      "data", config.input.name).batch_spec(config.input))


def model_and_args(family, task, config):
  """(the model as the run's config runs it, its example arguments): for
  init, restore targets and quantization."""
  args = example_args(task, config)
  return (quantization.configured(family.make(config.model), config, args),
          args)


def step_arg(text: str) -> int | str:
  """A --step value: a checkpoint step, or "best" (selection.best_step)."""
  if text == "best":
    return text
  try:
    step = int(text)
  except ValueError:
    raise argparse.ArgumentTypeError(
        f"{text!r} is not a step number or 'best'") from None
  if step < 0:
    raise argparse.ArgumentTypeError(f"{step} is below 0")
  return step


def add_step_arg(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--step", type=step_arg, default=None,
                      help="checkpoint step, or 'best' (the best evaluation's"
                      " when trained with config.keep_best; default: newest)")


def load(workdir: str, step: int | str | None = None, *,
         mesh: dict | None = None, devices=None) -> Run:
  """The run in `workdir` at its newest (or given, or "best") checkpoint."""
  path = os.path.join(workdir, "config.json")
  if not os.path.isfile(path):
    raise NotFound(f"{workdir!r} is not a training run: it has no "
                   "config.json.")
  if step == "best":
    step = selection.best_step(workdir)
  family = registry.get("models", config_loader.load_json(path).model.name)
  config = resolve(config_loader.load_json(path), family)
  config.mesh = mesh or {"data": -1}
  layout_ = layout(config, devices)
  task = registry.get("tasks", config.task.name).Task(config)
  model, args = model_and_args(family, task, config)
  target = state.abstract_variables(model, layout_, args)
  variables, step = checkpoints.restore_variables(
      workdir, quantization.to_pure(target), step)
  variables = quantization.from_pure(variables, target)
  data_module = registry.get("data", config.input.name)
  tokenizer = (data_module.load_tokenizer(workdir)
               if data_module.load_tokenizer is not None else None)
  return Run(workdir, config, family, task, model, variables, step, layout_,
             tokenizer, chat.load(workdir))


def arg_parser(doc: str) -> argparse.ArgumentParser:
  """The parser of a command that turns a run into a new directory:
  --workdir, --out, --step."""
  parser = argparse.ArgumentParser(
      description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--out", required=True, help="a new directory")
  add_step_arg(parser)
  return parser
